"""A recording played into rings as if it were a live microphone (for replay and tests)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import structlog

from asd_edge.audiofile import AudioData, read_audio
from asd_edge.capture import CaptureStats
from asd_edge.errors import AudioError
from asd_edge.ring import RingBuffer

__all__ = ["FileSource"]

log = structlog.get_logger()


class FileSource:
    """An audio file (all its channels, at its own rate) fed into rings.

    ``realtime=True``: ``start()`` runs a daemon thread that writes one block per
    ``block_s`` on absolute monotonic deadlines (no drift). ``realtime=False``: no
    thread; the caller advances time with ``step()``. At the end of the file
    (unless ``loop``) writing stops and ``finished`` turns True; ``alive`` stays
    True until ``stop()``, because a file source never fails.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | AudioData,
        channels: int | None = None,
        *,
        realtime: bool = True,
        loop: bool = False,
        block_s: float = 0.02,
        ring_s: float = 60.0,
    ) -> None:
        audio = source if isinstance(source, AudioData) else read_audio(source)
        n = audio.channels if channels is None else channels
        if not 1 <= n <= audio.channels:
            raise AudioError(f"{source!r} has {audio.channels} channel(s), {n} requested")
        self._samples = np.ascontiguousarray(audio.samples[:, :n].T, dtype=np.float32)
        self.sample_rate = audio.sample_rate
        self.channels = n
        self.stats = CaptureStats(block_s=block_s if realtime else 0.0)
        self.realtime = realtime
        self.loop = loop
        self._block = max(1, round(block_s * self.sample_rate))
        capacity = max(1, round(ring_s * self.sample_rate))
        self._rings = tuple(RingBuffer(capacity) for _ in range(n))
        self._pos = 0
        self._started = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ring(self, channel: int) -> RingBuffer:
        """The ring of file channel ``channel`` (0-based)."""
        return self._rings[channel]

    @property
    def alive(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._started

    @property
    def recovering(self) -> bool:
        """A recording never needs reopening."""
        return False

    @property
    def finished(self) -> bool:
        """True once every sample of the file has been written (never when looping)."""
        return not self.loop and self._pos >= self._samples.shape[1]

    def start(self) -> None:
        """Begin delivering (realtime: start the pacing thread)."""
        self._started = True
        if self.realtime and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="file-source", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop delivering; idempotent. A later ``start()`` resumes where it left off."""
        self._started = False
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def poll(self, now_s: float) -> None:
        """Nothing to supervise: a file cannot die."""

    def step(self, n_frames: int) -> int:
        """Write the next ``n_frames`` into the rings (non-realtime); returns how many."""
        if self.realtime:
            raise RuntimeError("step() is for realtime=False sources; this one has a thread")
        return self._write(n_frames)

    def _write(self, n_frames: int) -> int:
        total = self._samples.shape[1]
        done = 0
        while done < n_frames and total:
            if self._pos >= total:
                if not self.loop:
                    break
                self._pos = 0
            m = min(n_frames - done, total - self._pos)
            for c, ring in enumerate(self._rings):
                ring.write(self._samples[c, self._pos : self._pos + m])
            self._pos += m
            done += m
        if done:
            self.stats.callbacks += 1
            self.stats.frames += done
            self.stats.last_block_at = time.monotonic()
        return done

    def _run(self) -> None:
        t0 = time.monotonic()
        sent = 0
        while not self._stop.is_set():
            delay = t0 + (sent + self._block) / self.sample_rate - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            n = self._write(self._block)
            if n == 0:
                break
            sent += n
        log.debug("file_source_done", frames=self._pos)
