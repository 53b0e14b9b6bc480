"""The monitors running now, and every change to that set: start, swap, reload, describe.

The daemon ticks them (``Daemon._tick_all``); this module decides which monitors run
with which model, keeps what alerts and telemetry say about each one in step, and
knows what a SIGHUP may change (``plan_reload``) and what only a restart can.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from .alerts import Alerts, Link, MonitorInfo
from .assembly import load_detectors
from .capture import AudioSource
from .config import Config, MonitorConfig, load_config
from .decision import Event
from .detector import Detector
from .errors import ConfigError
from .jsonvalues import iso_utc
from .modelstore import ModelManager
from .monitor import Monitor
from .scoreindex import score_index, score_reference
from .telemetry import MonitorState, Telemetry, model_facts, model_payload

__all__ = [
    "RELOADABLE",
    "SWAP_WARMUP_S",
    "Monitors",
    "ReloadPlan",
    "listened_channels",
    "plan_reload",
    "prepare_reload",
]

log = structlog.get_logger()

SWAP_WARMUP_S = 1.0
"""Audio before the swap point that a new model's monitor is fed (pre-filter settling), so
that its first window ends where the old monitor stopped: no scoring gap."""

RELOADABLE = ("monitors", "detector", "push", "health", "logging")
"""Top-level sections applied by a reload. The others (the input stream, the state
directory, the device's name, the broker connection, the clip store, the outbox) are
held by threads and open resources that a reload must not disturb: a change to them
is reported and waits for a restart."""


class Monitors:
    """The running monitors in configuration order, with their models and descriptions.

    Everything runs on the tick thread. An event a change ends (a swap, a removed
    monitor, shutdown) goes to ``on_event``, as the events the ticks find do.
    """

    def __init__(
        self,
        *,
        source: AudioSource,
        detectors: dict[str, Detector],
        alerts: Alerts,
        telemetry: Telemetry,
        link: Link | None,
        models: ModelManager | None,
        device_id: str,
        on_event: Callable[[Monitor, Event], None],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.detectors = detectors
        self.alerts = alerts
        self.telemetry = telemetry
        self.link = link
        self.models = models
        self.device_id = device_id
        self._on_event = on_event
        self._wall = wall_clock
        self.running: list[Monitor] = []
        self.configs: dict[str, MonitorConfig] = {}
        self._infos: dict[str, MonitorInfo] = {}

    def __iter__(self) -> Iterator[Monitor]:
        return iter(list(self.running))

    def info(self, name: str) -> MonitorInfo:
        """What alerts say about monitor ``name`` and where its audio is."""
        return self._infos[name]

    def start(self, configs: Sequence[MonitorConfig]) -> None:
        """Run ``configs`` anchored at the first captured sample (nothing is missed while
        the daemon set up), describe them, announce them on the link."""
        for cfg in configs:
            monitor = Monitor.from_config(
                cfg,
                self.detectors[cfg.name],
                self.source.ring(cfg.channel),
                self.source.sample_rate,
                start_index=0,
            )
            self.running.append(monitor)
            self._describe(cfg, monitor)
        if self.link is not None:
            self.announce()
            for monitor in self.running:
                self.publish_state(monitor.name)

    def announce(self) -> None:
        """Home Assistant discovery and the model topic for the monitors running now."""
        if self.link is None:
            return
        self.link.set_discovery(
            [m.name for m in self.running],
            model_names={m.name: m.detector.spec.name for m in self.running},
        )
        self.link.publish_model(self.model_payload())

    def publish_state(self, name: str) -> None:
        """The retained ``monitor/<name>`` message, now."""
        if self.link is not None:
            self.link.publish_monitor_state(name, self.telemetry.monitor_payload(name))

    def publish_score(self, monitor: Monitor, end_s: float, score: float) -> None:
        """A window's score on ``<prefix>/score`` (the link rate-limits it): ``at`` is the
        wall-clock time of the window's end (the newest captured sample is now), ``index``
        the score on the scale every model shares (``scoreindex.score_index``)."""
        if self.link is None:
            return
        threshold = monitor.decision.policy.threshold
        behind_s = max(0.0, monitor.source.written / monitor.source_rate - end_s)
        index = score_index(score, threshold, score_reference(monitor.detector.spec.raw))
        self.link.publish_score(
            monitor.name,
            {
                "monitor": monitor.name,
                "score": score,
                "threshold": threshold,
                "index": round(index, 4) if math.isfinite(index) else None,
                "end_s": round(end_s, 3),
                "at": iso_utc(self._wall() - behind_s),
            },
        )

    def model_payload(self) -> dict[str, Any]:
        """The ``model`` topic's body for the monitors running now."""
        return model_payload(self.device_id, self.running, self.models)

    def end_event(self, monitor: Monitor) -> None:
        """End the monitor's event in progress, if any (shutdown, swap, removal), with
        its end alert."""
        event = monitor.close(monitor.now_s())
        if event is not None:
            self._on_event(monitor, event)

    def end_all(self) -> None:
        """At shutdown: end every event in progress."""
        for monitor in self.running:
            self.end_event(monitor)

    def replace(self, cfg: MonitorConfig, detector: Detector, *, why: str) -> None:
        """Run ``cfg`` with ``detector`` from the next tick on, continuing the old monitor's
        audio without a gap: an event in progress is ended (alerting with the old model)
        and the new monitor is fed the last window of audio again, so its first score
        covers the audio right before the swap."""
        old = next((m for m in self.running if m.name == cfg.name), None)
        ring = self.source.ring(cfg.channel)
        rate = self.source.sample_rate
        if old is not None:
            self.end_event(old)
        stopped = old is not None and old.machine is not None and old.machine.stopped
        if stopped and detector.spec.level is None:
            self.alerts.end_machine(cfg.name, {"reason": "model_without_level"})
        resume = None
        if old is not None and old.source is ring:
            back = round((detector.spec.window_s + SWAP_WARMUP_S) * rate)
            start, resume = max(ring.oldest, old.cursor - back), old.cursor
        else:
            start = ring.written
        monitor = Monitor.from_config(
            cfg,
            detector,
            ring,
            rate,
            start_index=start,
            score_after=resume,
            machine_stopped=stopped,
        )
        self.running = [monitor if m.name == cfg.name else m for m in self.running]
        if old is None:
            self.running.append(monitor)
        self.detectors[cfg.name] = detector
        self._describe(cfg, monitor)
        log.info(
            "model_swapped",
            monitor=cfg.name,
            why=why,
            old=model_facts(old) if old is not None else None,
            new=model_facts(monitor),
            threshold=monitor.decision.policy.threshold,
        )

    def reload(
        self,
        old: Sequence[MonitorConfig],
        new: Sequence[MonitorConfig],
        detectors: dict[str, Detector],
    ) -> list[str]:
        """Apply a reloaded configuration's monitors: removed ones end, changed ones (their
        settings or their model's bytes) are replaced, unchanged ones go on (an event in
        progress too). Returns the names replaced or added; the caller announces the new
        set (``announce``) once the rest of the reload is applied."""
        keep = {cfg.name for cfg in new}
        for monitor in [m for m in self.running if m.name not in keep]:
            self.end_event(monitor)
            self.alerts.end_machine(monitor.name, {"reason": "monitor_removed"})
            self.running.remove(monitor)
            self.detectors.pop(monitor.name, None)
            self.configs.pop(monitor.name, None)
            self._infos.pop(monitor.name, None)
        changed = []
        for cfg in new:
            running = next((m for m in self.running if m.name == cfg.name), None)
            before = next((c for c in old if c.name == cfg.name), None)
            detector = detectors[cfg.name]
            if running is not None and before == cfg and running.detector.sha256 == detector.sha256:
                continue  # unchanged: keeps its state (an event in progress goes on)
            self.replace(cfg, detector, why="reload")
            changed.append(cfg.name)
        order = [cfg.name for cfg in new]
        self.running.sort(key=lambda m: order.index(m.name))
        for name in [n for n in self.telemetry.monitors if n not in keep]:
            del self.telemetry.monitors[name]
        return changed

    def _describe(self, cfg: MonitorConfig, monitor: Monitor) -> None:
        """The facts alerts and telemetry give about one monitor (again after a swap)."""
        self.configs[cfg.name] = cfg
        model = model_facts(monitor)
        self._infos[monitor.name] = MonitorInfo(
            name=monitor.name,
            model=model,
            window_s=monitor.detector.spec.window_s,
            ring=monitor.source,
            sample_rate=self.source.sample_rate,
            bands=monitor.detector.spec.bands,
        )
        state = self.telemetry.monitors.get(monitor.name)
        described = {**model, "kind": monitor.detector.spec.kind}
        threshold = monitor.decision.policy.threshold
        reference = score_reference(monitor.detector.spec.raw)
        if state is None:
            state = self.telemetry.monitors[monitor.name] = MonitorState(
                name=monitor.name,
                channel=cfg.channel,
                model=described,
                threshold=threshold,
                reference=reference,
            )
        else:  # a swap keeps the monitor's counters
            state.channel, state.model, state.threshold = cfg.channel, described, threshold
            state.reference = reference
            state.anomaly = False
            state.window_level_dbfs = None
        state.machine = monitor.machine.state if monitor.machine is not None else None


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """The configuration to run after a reload, and the changes it leaves for a restart."""

    config: Config
    """The new file's reloadable sections over the running configuration's others."""
    needs_restart: tuple[str, ...]
    """Dotted keys whose new value is ignored until the daemon restarts."""


def plan_reload(running: Config, loaded: Config) -> ReloadPlan:
    """Merge a freshly loaded configuration into the running one (see ``RELOADABLE``)."""
    pending: list[str] = []
    for item in dataclasses.fields(Config):
        name = item.name
        if name in RELOADABLE or item.metadata.get("internal"):
            continue
        if getattr(running, name) != getattr(loaded, name):
            pending.extend(_changed(name, getattr(running, name), getattr(loaded, name)))
    push = loaded.push
    for key in ("fleet_prefix", "max_mb"):  # the MQTT link's subscriptions, its size limit
        if getattr(push, key) != getattr(running.push, key):
            pending.append(f"push.{key}")
            push = dataclasses.replace(push, **{key: getattr(running.push, key)})
    merged = dataclasses.replace(
        running,
        **{name: getattr(loaded, name) for name in RELOADABLE if name != "push"},
        push=push,
        source=loaded.source,
    )
    return ReloadPlan(config=merged, needs_restart=tuple(pending))


def prepare_reload(
    running: Config, opened_channels: int, models: ModelManager | None
) -> tuple[ReloadPlan, dict[str, Detector]]:
    """SIGHUP: read the running configuration's file again, merge it (``plan_reload``) and
    load its models. Raises ConfigError naming every problem; nothing changes then (the
    model manager's ``load`` leaves its store as it was)."""
    plan = plan_reload(running, load_config(running.source))
    if not plan.config.monitors:
        raise ConfigError("monitors: at least one monitor is needed to run, got none")
    for index, cfg in enumerate(plan.config.monitors):
        if cfg.channel >= opened_channels:
            raise ConfigError(
                f"monitors[{index}].channel: expected 0-{opened_channels - 1}, the channels "
                f"open now (a change of input.channels needs a restart), got {cfg.channel}"
            )
    detectors = models.load(plan.config) if models is not None else load_detectors(plan.config)
    return plan, detectors


def listened_channels(config: Config) -> list[int]:
    """The input channels the configuration's monitors listen to, in order."""
    return sorted({m.channel for m in config.monitors})


def _changed(prefix: str, old: object, new: object) -> list[str]:
    """The dotted keys under ``prefix`` whose values differ."""
    if dataclasses.is_dataclass(old) and dataclasses.is_dataclass(new):
        keys: list[str] = []
        for item in dataclasses.fields(old):
            a, b = getattr(old, item.name), getattr(new, item.name)
            if a != b:
                keys.extend(_changed(f"{prefix}.{item.name}", a, b))
        return keys
    return [prefix]
