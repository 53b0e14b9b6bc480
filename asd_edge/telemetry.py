"""What the daemon reports about itself: the health payload, each monitor's state, the
``model`` topic and the status line."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from . import __version__
from .capture import AudioSource, CaptureStats
from .config import HealthConfig
from .inputhealth import InputHealth
from .jsonvalues import iso_utc
from .meters import ChannelLevel, LevelMeter, ProcessMeter
from .modelstore import ModelManager
from .monitor import Monitor
from .scoreindex import score_index

__all__ = [
    "MonitorState",
    "Telemetry",
    "describe",
    "model_facts",
    "model_payload",
    "sorted_quantile",
    "status_line",
    "tick_summary",
]

log = structlog.get_logger()


def tick_summary(durations_s: Sequence[float]) -> dict[str, float]:
    """p50, p95 and max of tick durations in milliseconds (empty when none)."""
    if not durations_s:
        return {}
    ms = np.sort(np.asarray(durations_s, dtype=np.float64)) * 1e3
    return {
        "tick_p50_ms": round(sorted_quantile(ms, 0.50), 3),
        "tick_p95_ms": round(sorted_quantile(ms, 0.95), 3),
        "tick_max_ms": round(float(ms[-1]), 3),
    }


def sorted_quantile(values: npt.NDArray[np.float64], q: float) -> float:
    """The ``q`` quantile of sorted, non-empty ``values``, linearly interpolated between
    the two nearest ranks (numpy's default method). Not ``np.percentile``: in numpy 2.4 it
    calls ``np.unique``, which imports ``numpy.ma`` into the daemon on the first health
    report (1.4 MB of RSS for two numbers; benchmarks/bench_cost.py)."""
    position = q * (values.shape[0] - 1)
    below = math.floor(position)
    above = min(below + 1, values.shape[0] - 1)
    low, high = float(values[below]), float(values[above])
    return float(low + (high - low) * (position - below))


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
    reference: float = 0.0
    """The model's typical normal score (``scoreindex.score_reference``): the index's 0."""
    extra: dict[str, Any] = field(default_factory=dict)

    def index(self) -> float | None:
        """The latest score as ``scoreindex.score_index`` against the threshold in force
        (None before the first finite score)."""
        if self.last_score is None:
            return None
        return _finite(round(score_index(self.last_score, self.threshold, self.reference), 4))

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
            "index": state.index(),
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

    def log_stats(self, payload: Mapping[str, Any], stats: CaptureStats) -> None:
        """Log a health report (``report``'s) as one ``daemon_stats`` line, with the
        capture's counters as they were read for it."""
        audio = payload["audio"]
        log.info(
            "daemon_stats",
            skipped_wakes=payload["ticks"]["skipped_wakes"],
            overflows=audio["overflows"],
            status_flags=stats.status_flags,
            callback_errors=stats.callback_errors,
            stalls=stats.stalls,
            restarts=stats.restarts,
            lost_samples=audio["lost_samples"],
            silent=audio["silent"],
            clipping=audio["clipping"],
            cpu_percent=payload["process"]["cpu_percent"],
            rss_mb=payload["process"]["rss_mb"],
            **{k: v for k, v in payload["ticks"].items() if k != "skipped_wakes"},
        )

    def _monitor_health(self, state: MonitorState) -> dict[str, Any]:
        return {
            "name": state.name,
            "channel": state.channel,
            "model": dict(state.model),
            "threshold": state.threshold,
            "anomaly": state.anomaly,
            "last_score": _finite(state.last_score),
            "index": state.index(),
            "max_score": _finite(state.max_score),
            "windows": state.windows,
            "events": state.events,
            "machine": state.machine,
            "window_level_dbfs": _rounded(state.window_level_dbfs),
            **state.extra,
        }


def model_facts(monitor: Monitor) -> dict[str, str]:
    """``name``, ``version`` and ``sha256`` of the model a monitor runs (alerts carry them)."""
    spec = monitor.detector.spec
    return {"name": spec.name, "version": spec.version, "sha256": monitor.detector.sha256}


def describe(monitor: Monitor) -> dict[str, object]:
    """A monitor as the ``daemon_started`` log line shows it."""
    spec = monitor.detector.spec
    return {
        "name": monitor.name,
        "model": spec.name,
        "version": spec.version,
        "kind": spec.kind,
        "sha256": monitor.detector.sha256,
        "threshold": monitor.decision.policy.threshold,
        "model_rate": spec.sample_rate,
        "hop_s": monitor.hop_s,
        "bands": spec.bands.n_bands if spec.bands is not None else None,
        "stopped_below_dbfs": spec.level.stopped_below_dbfs if spec.level is not None else None,
    }


def model_payload(
    device_id: str, monitors: Sequence[Monitor], models: ModelManager | None
) -> dict[str, Any]:
    """``<prefix>/model``: the active model of every monitor, where it came from, what it
    replaced, its replay marker, the device's replay floor, and the answer to the last
    push, rollback or reset."""
    described: dict[str, Any] = {}
    for m in monitors:
        facts: dict[str, Any] = {
            "source": "config",
            "previous": None,
            "last_error": None,
            "replay_marker": None,
        }
        if models is not None:
            facts.update(models.facts(m.name))
        described[m.name] = {
            **model_facts(m),
            "kind": m.detector.spec.kind,
            "path": str(m.detector.path),
            "threshold": m.decision.policy.threshold,
            "loaded_at": m.detector.loaded_at,
            **facts,
        }
    last_push = models.last_push() if models is not None else None
    floor = models.replay_floor() if models is not None else None
    return {
        "device_id": device_id,
        "monitors": described,
        "replay_floor": floor,
        "last_push": last_push,
    }


def status_line(
    sample_rate: int,
    monitors: Sequence[Monitor],
    telemetry: Telemetry | None,
    input_health: InputHealth | None,
) -> str:
    """One line for ``systemctl status`` (sd_notify STATUS=): rate, monitors and their
    models, events so far, input problems."""
    events = sum(s.events for s in telemetry.monitors.values()) if telemetry is not None else 0
    problems = input_health.active_names() if input_health is not None else []
    names = ", ".join(
        f"{m.name} ({m.detector.spec.name} {m.detector.spec.version})" for m in monitors
    )
    return (
        f"listening at {sample_rate} Hz: {names}; {events} event(s); "
        f"input {', '.join(problems) if problems else 'ok'}"
    )
