"""What the daemon reports about itself: the health payload and each monitor's state."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import __version__
from .capture import AudioSource
from .config import HealthConfig
from .jsonvalues import iso_utc
from .meters import ChannelLevel, LevelMeter, ProcessMeter

__all__ = ["MonitorState", "Telemetry", "tick_summary"]


def tick_summary(durations_s: Sequence[float]) -> dict[str, float]:
    """p50, p95 and max of tick durations in milliseconds (empty when none)."""
    if not durations_s:
        return {}
    ms = np.asarray(durations_s) * 1e3
    return {
        "tick_p50_ms": round(float(np.percentile(ms, 50)), 3),
        "tick_p95_ms": round(float(np.percentile(ms, 95)), 3),
        "tick_max_ms": round(float(ms.max()), 3),
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


@dataclass(slots=True)
class MonitorState:
    """A monitor's latest figures, for the health topic and Home Assistant."""

    name: str
    channel: int
    model: Mapping[str, Any]
    threshold: float
    anomaly: bool = False
    last_score: float | None = None
    max_score: float | None = None
    """Highest score since the last health report."""
    windows: int = 0
    """Windows scored since the last health report."""
    events: int = 0
    """Events started since the daemon started."""
    machine: str | None = None
    """``running`` or ``stopped``; None when the model has no ``level`` metadata."""
    window_level_dbfs: float | None = None
    """Level of the latest window as the model's ``level`` measures it (None without)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def scored(self, score: float, level_dbfs: float | None = None) -> None:
        """Fold in one window's score (and its level, for a model with ``level``)."""
        self.windows += 1
        self.window_level_dbfs = level_dbfs
        if math.isfinite(score):
            self.last_score = score
            self.max_score = score if self.max_score is None else max(self.max_score, score)


class Telemetry:
    """Collects levels, tick timings and scores between reports, and builds the reports.

    Everything here runs on the tick thread and costs microseconds per tick.
    """

    def __init__(
        self,
        *,
        device_id: str,
        source: AudioSource,
        channels: Sequence[int],
        health: HealthConfig,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.device_id = device_id
        self._source = source
        self._wall = wall_clock
        self._clock = clock
        self._started = clock()
        self._meters = {
            ch: LevelMeter(source.ring(ch), source.sample_rate, health) for ch in sorted(channels)
        }
        self._levels: dict[int, ChannelLevel] = {}
        self._process = ProcessMeter(clock)
        self.durations_s: list[float] = []
        self.skipped_wakes = 0
        self.monitors: dict[str, MonitorState] = {}

    def configure(self, channels: Sequence[int], health: HealthConfig) -> None:
        """After a reload: meter these channels against these thresholds from now on."""
        self._meters = {
            ch: LevelMeter(self._source.ring(ch), self._source.sample_rate, health)
            for ch in sorted(channels)
        }
        self._levels = {ch: lv for ch, lv in self._levels.items() if ch in self._meters}

    def update(self) -> None:
        """Measure the audio captured since the last call (every loop wake)."""
        for meter in self._meters.values():
            meter.update()

    def level(self, channel: int) -> ChannelLevel | None:
        """The channel's level over the current interval so far."""
        meter = self._meters.get(channel)
        return meter.recent() if meter is not None else None

    def monitor_payload(self, name: str) -> dict[str, Any]:
        """``<prefix>/monitor/<name>``: what Home Assistant's entities show."""
        state = self.monitors[name]
        level = self.level(state.channel)
        if level is None or not level.samples:  # a report just began a new interval
            level = self._levels.get(state.channel)
        return {
            "anomaly": state.anomaly,
            "score": _finite(state.last_score),
            "threshold": state.threshold,
            "level_dbfs": round(level.level_dbfs, 2) if level and level.samples else None,
            "machine": state.machine,
            "window_level_dbfs": _rounded(state.window_level_dbfs),
            "at": iso_utc(self._wall()),
        }

    def report(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        """The health payload since the last report (and start a new interval).

        ``extra`` adds sections the daemon owns (clips, outbox, mqtt).
        """
        self._levels = {ch: meter.take() for ch, meter in self._meters.items()}
        stats = self._source.stats
        rings = {ch: self._source.ring(ch) for ch in self._meters}
        payload: dict[str, Any] = {
            "device_id": self.device_id,
            "version": __version__,
            "at": iso_utc(self._wall()),
            "uptime_s": round(self._clock() - self._started, 1),
            "audio": {
                "sample_rate": self._source.sample_rate,
                "channels": [
                    {"channel": ch, **level.as_dict()} for ch, level in self._levels.items()
                ],
                "silent": any(lv.silent for lv in self._levels.values()),
                "clipping": any(lv.clipping for lv in self._levels.values()),
                "overflows": stats.overflows,
                "lost_samples": sum(ring.lost_samples for ring in rings.values()),
                "overruns": sum(ring.overruns for ring in rings.values()),
                "restarts": stats.restarts,
                "stalls": stats.stalls,
                "callback_errors": stats.callback_errors,
            },
            "ticks": {**tick_summary(self.durations_s), "skipped_wakes": self.skipped_wakes},
            "process": {
                "cpu_percent": self._process.cpu_percent(),
                "rss_mb": self._process.rss_mb(),
            },
            "monitors": [self._monitor_health(state) for state in self.monitors.values()],
            **extra,
        }
        self.durations_s.clear()
        for state in self.monitors.values():
            state.max_score, state.windows = None, 0
        return payload

    def _monitor_health(self, state: MonitorState) -> dict[str, Any]:
        return {
            "name": state.name,
            "channel": state.channel,
            "model": dict(state.model),
            "threshold": state.threshold,
            "anomaly": state.anomaly,
            "last_score": _finite(state.last_score),
            "max_score": _finite(state.max_score),
            "windows": state.windows,
            "events": state.events,
            "machine": state.machine,
            "window_level_dbfs": _rounded(state.window_level_dbfs),
            **state.extra,
        }
