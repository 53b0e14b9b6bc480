"""A lock-free single-producer single-consumer ring of float32 samples."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = ["Chunk", "RingBuffer"]

FloatArray = npt.NDArray[np.float32]


class Chunk(NamedTuple):
    """What a read returns: the samples, where they start, and how many were lost.

    ``data[0]`` is stream sample number ``start``. ``lost`` counts the samples
    at the front of the requested range that the writer had already overwritten
    (an overrun); they are not in ``data``, so ``start`` is then later than asked.
    """

    data: FloatArray
    start: int
    lost: int


class RingBuffer:
    """A preallocated ring of float32 samples shared by one writer and readers.

    The writer (the audio callback) never waits and never allocates: it copies a
    block into the array and then advances ``written``, the monotonically
    increasing count of samples it has ever written. Before it starts copying it
    announces how far it is about to write (``_writing_end``), so a reader can
    check, *after* its own copy, that the writer had not begun to overwrite what it
    copied (a seqlock). Data that may have been torn is dropped and reported as
    lost, never returned.

    The guarantees rely on CPython publishing attribute stores in program order
    (true under the GIL); readers and the writer may copy concurrently because
    numpy can release the GIL during large copies. Several readers may share a
    ring (monitors on one channel, the clip store) as long as they read from one
    thread, as the daemon's tick does: the loss counters are not atomic.
    """

    __slots__ = (
        "_buf",
        "_capacity",
        "_writing_end",
        "_written",
        "last_gap",
        "lost_samples",
        "overruns",
    )

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self._capacity = int(capacity)
        self._buf: FloatArray = np.zeros(self._capacity, dtype=np.float32)
        self._written = 0
        self._writing_end = 0
        self.overruns = 0
        """How many reads found part of their range already overwritten."""
        self.lost_samples = 0
        """How many requested samples those reads could not return."""
        self.last_gap = -1
        """Stream index where the audio last stopped following on in time (-1: never)."""

    @property
    def capacity(self) -> int:
        """How many of the most recent samples the ring holds."""
        return self._capacity

    @property
    def written(self) -> int:
        """Samples written since creation; stream index of the next sample."""
        return self._written

    @property
    def oldest(self) -> int:
        """Stream index of the oldest sample that is still safe to read."""
        return max(0, self._writing_end - self._capacity)

    def mark_gap(self) -> None:
        """Record that the next sample does not follow the previous one in time
        (the stream was reopened). Writer side, while no block is being written."""
        self.last_gap = self._written

    def write(self, block: npt.ArrayLike) -> None:
        """Append a 1-D block (the writer's only method; never blocks or allocates).

        A block longer than the ring keeps only its last ``capacity`` samples, but
        ``written`` still advances by the whole block.
        """
        samples = np.asarray(block)
        n = samples.shape[0]
        if n == 0:
            return
        start = self._written
        cap = self._capacity
        if n > cap:
            samples = samples[n - cap :]
        m = samples.shape[0]
        self._writing_end = start + n  # announce the overwrite before it starts
        pos = (start + n - m) % cap
        first = min(m, cap - pos)
        self._buf[pos : pos + first] = samples[:first]
        if first < m:
            self._buf[: m - first] = samples[first:]
        self._written = start + n  # publish only after the copy

    def read(self, start: int, stop: int, out: FloatArray | None = None) -> Chunk:
        """Return samples ``[start, stop)`` of the stream, minus any lost to an overrun.

        ``stop`` may not be beyond ``written``. Indices before 0 (before the stream
        began) are silently clipped; indices the writer has lapped are reported in
        ``Chunk.lost`` and counted in ``overruns`` and ``lost_samples``. ``out``, when
        given, must hold ``stop - start`` samples; the returned data is a view of it.
        """
        if stop > self._written:
            raise ValueError(f"stop {stop} is beyond the samples written ({self._written})")
        start = max(0, start)
        if start > stop:
            raise ValueError(f"start {start} is after stop {stop}")
        cap = self._capacity
        # Samples of [start, stop) the writer has lapped (never more than were asked).
        lost = min(max(0, self._writing_end - cap - start), stop - start)
        first_ok = start + lost
        n = stop - first_ok
        if out is None:
            data: FloatArray = np.empty(n, dtype=np.float32)
        else:
            if out.shape[0] < stop - start:
                raise ValueError(f"out holds {out.shape[0]} samples, need {stop - start}")
            data = out[:n]
        pos = first_ok % cap
        first = min(n, cap - pos)
        data[:first] = self._buf[pos : pos + first]
        if first < n:
            data[first:] = self._buf[: n - first]
        # The writer may have started to overwrite our range while we copied.
        torn = min(max(0, self._writing_end - cap - first_ok), n)
        if torn:
            data = data[torn:]
            first_ok += torn
            lost += torn
        if lost:
            self.overruns += 1
            self.lost_samples += lost
        return Chunk(data, first_ok, lost)

    def latest(self, n: int, out: FloatArray | None = None) -> Chunk:
        """Return the most recent ``n`` samples (fewer at the start of the stream)."""
        stop = self._written
        return self.read(stop - n, stop, out)

    def since(self, start: int, max_samples: int | None = None) -> Chunk:
        """Return everything written from stream index ``start`` on (at most ``max_samples``)."""
        stop = self._written
        if max_samples is not None:
            stop = min(stop, max(start, 0) + max_samples)
        return self.read(start, stop)
