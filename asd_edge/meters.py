"""Input and process health: audio level, silence and clipping per channel, CPU and RSS."""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .config import HealthConfig
from .ring import RingBuffer

__all__ = ["ChannelLevel", "LevelMeter", "ProcessMeter", "dbfs", "window_level_dbfs"]

FULL_SCALE = 0.999
"""A sample at or above this magnitude counts as clipped."""
DB_FLOOR = -200.0
"""The level reported for digital silence (all-zero samples)."""
MAX_READ_S = 2.0
"""Most audio a meter reads per update; older unread audio is skipped, not measured."""


def dbfs(mean_square: float) -> float:
    """RMS level in dB relative to a full-scale square wave (a full-scale sine is -3 dBFS)."""
    if mean_square <= 0.0 or not math.isfinite(mean_square):
        return DB_FLOOR
    return max(DB_FLOOR, 10.0 * math.log10(mean_square))


def window_level_dbfs(windows: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """The level of each window, ``dbfs(mean(x**2))``, as ``float32[batch]``.

    ``windows`` is ``[batch, window_samples]`` (or one window) at the model's rate, as
    the monitor hands them to the detector. This is the ``measure`` of the model
    contract's ``level`` metadata (``window_mean_square``): training computes the
    normal level range with this very function, the daemon each window's level.
    """
    x = np.asarray(windows, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    # float32 accumulation (several partial sums): within 1e-4 dB of float64, 5x cheaper
    mean_square = np.einsum("ij,ij->i", x, x).astype(np.float64) / max(1, x.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        level = 10.0 * np.log10(mean_square)
    level = np.where(np.isfinite(level), level, DB_FLOOR)
    return np.maximum(level, DB_FLOOR).astype(np.float32)


@dataclass(frozen=True, slots=True)
class ChannelLevel:
    """One channel's audio over the last reporting interval."""

    level_dbfs: float
    """RMS level of all samples measured in the interval."""
    peak_dbfs: float
    """Largest sample magnitude, in dB."""
    clipped_ratio: float
    """Fraction of samples at full scale."""
    silent: bool
    """The level is below ``health.silence_dbfs``."""
    clipping: bool
    """More than ``health.clipping_ratio`` of the samples were at full scale."""
    samples: int
    """How many samples the figures are computed from (0: no audio arrived)."""

    def as_dict(self) -> dict[str, float | bool | int]:
        """The figures as JSON-ready values."""
        return {
            "level_dbfs": round(self.level_dbfs, 2),
            "peak_dbfs": round(self.peak_dbfs, 2),
            "clipped_ratio": round(self.clipped_ratio, 6),
            "silent": self.silent,
            "clipping": self.clipping,
            "samples": self.samples,
        }


class LevelMeter:
    """Measures one ring's level, silence and clipping, reading only audio it has not seen.

    ``update()`` is cheap (a few µs per 10 ms of audio) and is called from the tick
    loop; ``take()`` returns the figures since the previous ``take()`` and starts a
    new interval; ``recent()`` peeks at them without resetting.
    """

    def __init__(self, ring: RingBuffer, sample_rate: int, config: HealthConfig) -> None:
        self._ring = ring
        self._config = config
        self._max_read = max(1, round(MAX_READ_S * sample_rate))
        self._cursor = ring.written
        self._reset()

    def _reset(self) -> None:
        self._sum_sq = 0.0
        self._peak = 0.0
        self._clipped = 0
        self._count = 0

    def update(self) -> None:
        """Fold in the samples captured since the last update."""
        written = self._ring.written
        start = max(self._cursor, written - self._max_read)
        if written <= start:
            return
        chunk = self._ring.read(start, written)
        self._cursor = chunk.start + chunk.data.shape[0]
        data = chunk.data[np.isfinite(chunk.data)]
        if data.size == 0:
            return
        magnitude = np.abs(data)
        self._sum_sq += float(np.dot(data, data))
        self._peak = max(self._peak, float(magnitude.max()))
        self._clipped += int(np.count_nonzero(magnitude >= FULL_SCALE))
        self._count += int(data.size)

    def recent(self) -> ChannelLevel:
        """The figures of the interval so far."""
        count = self._count
        level = dbfs(self._sum_sq / count) if count else DB_FLOOR
        ratio = self._clipped / count if count else 0.0
        return ChannelLevel(
            level_dbfs=level,
            peak_dbfs=dbfs(self._peak * self._peak),
            clipped_ratio=ratio,
            silent=count > 0 and level < self._config.silence_dbfs,
            clipping=count > 0 and ratio > self._config.clipping_ratio,
            samples=count,
        )

    def take(self) -> ChannelLevel:
        """The figures of the interval, and start a new one."""
        level = self.recent()
        self._reset()
        return level


class ProcessMeter:
    """CPU use (percent of one core) between two readings, and the resident set size."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last_wall = clock()
        self._last_cpu = _cpu_s()

    def cpu_percent(self) -> float:
        """CPU time used since the previous call, as a percentage of one core."""
        wall, cpu = self._clock(), _cpu_s()
        elapsed = wall - self._last_wall
        used = cpu - self._last_cpu
        self._last_wall, self._last_cpu = wall, cpu
        return round(100.0 * used / elapsed, 2) if elapsed > 0 else 0.0

    @staticmethod
    def rss_mb() -> float:
        """Current resident set size in MB (peak RSS where /proc is absent)."""
        try:
            with open("/proc/self/statm", "rb") as statm:
                pages = int(statm.read().split()[1])
            return round(pages * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)
        except (OSError, ValueError, IndexError):
            return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 1)


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system
