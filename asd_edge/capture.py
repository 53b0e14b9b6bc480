"""Audio sources: a supervised PortAudio input stream, and a file played as if live."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar, Protocol

import structlog

from asd_edge.backoff import Backoff
from asd_edge.errors import AudioError
from asd_edge.ring import RingBuffer

__all__ = [
    "AudioSource",
    "Backoff",
    "CaptureStats",
    "SoundDeviceSource",
    "block_due_s",
    "list_input_devices",
]

log = structlog.get_logger()

PROBE_RATES = (8000, 16000, 22050, 32000, 44100, 48000)


@dataclass
class CaptureStats:
    """Counters of a source (the audio thread only ever increments them), and when its
    newest block came: the tick loop sleeps until the block that completes a window."""

    callbacks: int = 0  # blocks delivered
    frames: int = 0  # sample frames delivered (per channel)
    overflows: int = 0  # blocks flagged input_overflow: the driver dropped samples
    status_flags: int = 0  # blocks that carried any status flag
    callback_errors: int = 0  # exceptions caught in the callback (none ever escapes it)
    restarts: int = 0  # successful reopenings after the stream died
    stalls: int = 0  # times found dead: finished, or no samples for stall_timeout_s
    block_s: float = 0.0  # the length of a delivered block, seconds (0: unknown)
    last_block_at: float = 0.0  # time.monotonic() of the newest block (0: none yet)


def block_due_s(due_s: float, now: float, stats: CaptureStats, last_block_at: float) -> float:
    """Seconds from ``now`` until the block that completes ``due_s`` more seconds of audio
    lands: the source delivers whole blocks of ``stats.block_s`` after the one that came at
    ``last_block_at`` (``stats.last_block_at``, read *before* the ring's fill that gave
    ``due_s``: a block landing in between then makes the wake early, never late). 0 when
    that block is already late (the caller looks again after its shortest sleep);
    ``due_s`` unchanged when the block timing is unknown."""
    if stats.block_s <= 0.0 or last_block_at <= 0.0:
        return due_s
    blocks = max(1, math.ceil(due_s / stats.block_s - 1e-6))
    lands_in = last_block_at + blocks * stats.block_s - now
    if not -stats.block_s < lands_in < due_s + stats.block_s:
        return due_s  # impossible with time.monotonic(): another clock (tests)
    return max(0.0, lands_in)  # a late block: look again at once (the caller's shortest sleep)


class AudioSource(Protocol):
    """What the tick loop needs from an input: rings per channel and supervision."""

    sample_rate: int
    channels: int
    stats: CaptureStats

    def ring(self, channel: int) -> RingBuffer:
        """The ring of one input channel; the same object for the source's lifetime."""
        ...

    def start(self) -> None:
        """Open the input; raises ``AudioError`` with a clear message if it cannot."""
        ...

    def stop(self) -> None:
        """Close the input; idempotent."""
        ...

    def poll(self, now_s: float) -> None:
        """Supervise (called each tick with ``time.monotonic()``); never blocks for long."""
        ...

    @property
    def alive(self) -> bool:
        """Whether samples are expected to be arriving now."""
        ...

    @property
    def recovering(self) -> bool:
        """Whether a dead input is being reopened (with back-off) right now."""
        ...


def _sounddevice() -> ModuleType:
    try:
        import sounddevice
    except OSError as e:  # the Python package is there but libportaudio is not
        raise AudioError(f"PortAudio is not available ({e}); apt-get install libportaudio2") from e
    module: ModuleType = sounddevice
    return module


class SoundDeviceSource:
    """One supervised ``sounddevice.InputStream``; its callback only copies into the rings.

    ``sample_rate`` and the rings are fixed at the first ``start()`` and kept across
    restarts, so stream indices held by readers stay valid. Until then
    ``sample_rate`` is 0. ``open_stream`` (default ``sounddevice.InputStream``) is
    injectable for tests.
    """

    _open_streams: ClassVar[int] = 0  # PortAudio may only be re-initialised when this is 0

    def __init__(
        self,
        device: str | int | None,
        channels: int,
        sample_rate: int | None,
        preferred_rate: int | None,
        ring_s: float,
        block_s: float,
        stall_timeout_s: float,
        restart_backoff_max_s: float,
        max_failures: int = 10,
        rng: random.Random | None = None,
        open_stream: Callable[..., Any] | None = None,
    ) -> None:
        if channels < 1:
            raise ValueError(f"channels must be at least 1, got {channels}")
        self.device = device
        self.channels = channels
        self.sample_rate = 0
        self.stats = CaptureStats(block_s=block_s)
        self._requested_rate = sample_rate
        self._preferred_rate = preferred_rate
        self._ring_s = ring_s
        self._block_s = block_s
        self._stall_timeout_s = stall_timeout_s
        self._max_failures = max_failures
        self._backoff = Backoff(1.0, restart_backoff_max_s, 0.2, rng)
        self._open_stream = open_stream
        self._rings: tuple[RingBuffer, ...] = ()
        self._stream: Any = None
        self._generation = 0  # which opening of the stream is current
        self._finished = False
        self._started = False
        self._retry_at_s: float | None = None
        self._failures = 0
        self._on_probation = False  # reopened, not yet delivering for stall_timeout_s
        self._refresh_devices = False
        self._opened_at_s: float | None = None
        self._progress_at_s: float | None = None
        self._progress_written = 0

    def ring(self, channel: int) -> RingBuffer:
        """The ring of input channel ``channel`` (0-based); exists after the first start."""
        if not self._rings:
            raise RuntimeError("the source has no rings before its first start()")
        return self._rings[channel]

    @property
    def alive(self) -> bool:
        """True while the stream is open and has not finished."""
        return self._started and self._stream is not None and not self._finished

    @property
    def recovering(self) -> bool:
        """True while a dead stream is being reopened (a retry is due, or a reopened
        stream has not yet delivered for ``stall_timeout_s``)."""
        return self._started and (
            (self._stream is None and self._retry_at_s is not None) or self._on_probation
        )

    def start(self) -> None:
        """Open the stream (choosing the rate at the first start); raises ``AudioError``."""
        if self._started:
            return
        if not self._rings:
            self.sample_rate = self._choose_rate()
            capacity = max(1, round(self._ring_s * self.sample_rate))
            self._rings = tuple(RingBuffer(capacity) for _ in range(self.channels))
        self._open()
        self._started = True
        self._retry_at_s = None
        self._opened_at_s = self._progress_at_s = None
        self._progress_written = self._rings[0].written

    def stop(self) -> None:
        """Close the stream and stop supervising it; idempotent."""
        self._started = False
        self._retry_at_s = None
        self._close()

    def poll(self, now_s: float) -> None:
        """Find a dead or stalled stream and reopen it with backoff.

        Raises ``AudioError`` after ``max_failures`` consecutive restarts that did
        not bring samples back.
        """
        if not self._started:
            return
        if self._stream is None:
            if self._retry_at_s is not None and now_s >= self._retry_at_s:
                self._restart(now_s)
            return
        if self._opened_at_s is None:
            self._opened_at_s = self._progress_at_s = now_s
        written = self._rings[0].written
        if self._finished:
            reason = "stream_finished"
        elif written != self._progress_written:
            self._progress_written = written
            self._progress_at_s = now_s
            if self._on_probation and now_s - self._opened_at_s >= self._stall_timeout_s:
                self._on_probation = False  # delivering steadily again: the restart worked
                self._failures = 0
                self._backoff.reset()
            return
        elif now_s - (self._progress_at_s or now_s) >= self._stall_timeout_s:
            reason = "stream_stalled"
        else:
            return
        self.stats.stalls += 1
        log.warning(
            reason,
            device=self.device,
            silent_s=round(now_s - (self._progress_at_s or now_s), 3),
            samples=written,
        )
        self._close()
        if self._on_probation:  # a restarted stream that died before proving itself
            self._on_probation = False
            self._fail(now_s, AudioError(f"{reason} soon after a restart"))
        else:
            self._retry_at_s = now_s + self._backoff.next_delay()

    def _restart(self, now_s: float) -> None:
        for ring in self._rings:  # readers must not stitch audio across the outage
            ring.mark_gap()
        if self._refresh_devices and SoundDeviceSource._open_streams == 0:
            sd = _sounddevice()
            sd._terminate()  # re-enumerate: the device may be back under a new index
            sd._initialize()
        try:
            self._open()
        except AudioError as e:
            self._fail(now_s, e)
            return
        self._on_probation = True
        self.stats.restarts += 1
        self._opened_at_s = self._progress_at_s = now_s
        self._progress_written = self._rings[0].written
        log.warning("stream_restarted", device=self.device, sample_rate=self.sample_rate)

    def _fail(self, now_s: float, error: AudioError) -> None:
        self._failures += 1
        if self._failures >= self._max_failures:
            self._started = False
            raise AudioError(
                f"input device {self.device!r} failed {self._failures} restarts in a row; "
                f"last: {error}"
            ) from error
        delay = self._backoff.next_delay()
        self._retry_at_s = now_s + delay
        log.warning(
            "stream_restart_failed",
            device=self.device,
            error=str(error),
            failures=self._failures,
            retry_in_s=round(delay, 3),
        )

    def _choose_rate(self) -> int:
        if self._requested_rate is not None:
            return self._requested_rate  # opening it checks it, naming device and rate
        sd = _sounddevice()
        if self._preferred_rate is not None:
            try:
                sd.check_input_settings(
                    device=self.device,
                    channels=self.channels,
                    dtype="float32",
                    samplerate=self._preferred_rate,
                )
                return self._preferred_rate
            except (ValueError, sd.PortAudioError) as e:
                log.info(
                    "preferred_rate_unsupported",
                    device=self.device,
                    preferred_rate=self._preferred_rate,
                    error=str(e),
                )
        try:
            info = sd.query_devices(self.device, "input")
        except (ValueError, sd.PortAudioError) as e:
            if self.device is None:
                raise AudioError(
                    f"no default input device ({e}): PortAudio sees no microphone; "
                    "`asd-edge devices` lists the inputs, input.device chooses one"
                ) from e
            raise AudioError(
                f"no input device {self.device!r} ({e}); `asd-edge devices` lists the inputs"
            ) from e
        return int(info["default_samplerate"])

    def _open(self) -> None:
        sd = _sounddevice()
        factory = self._open_stream or sd.InputStream
        self._generation += 1
        generation = self._generation
        self._finished = False
        stream = None
        try:
            stream = factory(
                device=self.device,
                channels=self.channels,
                samplerate=self.sample_rate,
                dtype="float32",
                blocksize=max(1, round(self._block_s * self.sample_rate)),
                callback=self._callback,
                finished_callback=lambda: self._on_finished(generation),
            )
            stream.start()
        except (ValueError, sd.PortAudioError) as e:
            if stream is not None:
                stream.close()
            self._refresh_devices = isinstance(e, ValueError)  # "no device matching ..."
            raise AudioError(
                f"cannot open input device {self.device!r} with {self.channels} channel(s) "
                f"at {self.sample_rate} Hz: {e}"
            ) from e
        self._refresh_devices = False
        self._stream = stream
        SoundDeviceSource._open_streams += 1

    def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            SoundDeviceSource._open_streams -= 1
            stream.close()  # ignores PortAudio errors: the stream may be dead already

    def _on_finished(self, generation: int) -> None:
        if generation == self._generation:  # not a late word from a stream already replaced
            self._finished = True

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's thread: copy each channel into its ring and count; nothing else."""
        stats = self.stats
        try:
            stats.callbacks += 1
            stats.frames += frames
            if status:
                stats.status_flags += 1
                if status.input_overflow:
                    stats.overflows += 1
            rings = self._rings
            for c in range(len(rings)):
                rings[c].write(indata[:, c])
            stats.last_block_at = time.monotonic()  # after the samples: the next is due then
        except Exception:
            stats.callback_errors += 1


def list_input_devices() -> list[dict[str, Any]]:
    """Describe every input-capable PortAudio device, with the rates it accepts."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
    except sd.PortAudioError:
        return []
    try:
        default_index = int(sd.query_devices(kind="input")["index"])
    except (ValueError, sd.PortAudioError):
        default_index = -1
    result: list[dict[str, Any]] = []
    for index, dev in enumerate(devices):
        if dev["max_input_channels"] <= 0:
            continue
        rates = []
        for rate in PROBE_RATES:
            try:
                sd.check_input_settings(device=index, channels=1, dtype="float32", samplerate=rate)
            except (ValueError, sd.PortAudioError):
                continue
            rates.append(rate)
        result.append(
            {
                "index": index,
                "name": dev["name"],
                "hostapi": sd.query_hostapis(dev["hostapi"])["name"],
                "max_input_channels": int(dev["max_input_channels"]),
                "default_samplerate": float(dev["default_samplerate"]),
                "default": index == default_index,
                "rates": rates,
            }
        )
    return result
