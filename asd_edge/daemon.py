"""The daemon: capture, tick every monitor on a monotonic clock, report events, stop cleanly."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import structlog

from .alerts import Alerts, AlertSink, MonitorInfo, lost_clip
from .assembly import command_router, load_detectors, open_input
from .capture import AudioSource
from .clips import ClipRecorder, ClipStore
from .config import Config, MonitorConfig, load_config
from .decision import Event
from .detector import Detector
from .errors import AudioError, ConfigError
from .filesource import FileSource
from .inputhealth import InputChange, InputHealth
from .logs import configure_logging
from .machine import MachineChange
from .modelstore import ModelManager, Swap
from .monitor import Monitor, TickResult, WindowScore
from .mqtt import Command, MqttLink
from .reload import plan_reload
from .reporting import describe, model_facts, model_payload, status_line
from .sdnotify import Liveness, Notifier
from .telemetry import MonitorState, Telemetry

__all__ = [
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_SOFTWARE",
    "EXIT_UNAVAILABLE",
    "Daemon",
    "Link",
]

log = structlog.get_logger()

EXIT_OK = 0
EXIT_UNAVAILABLE = 69
"""sysexits EX_UNAVAILABLE: the audio input could not be opened or kept alive."""
EXIT_SOFTWARE = 70
"""sysexits EX_SOFTWARE: an internal error."""
EXIT_CONFIG = 78
"""sysexits EX_CONFIG: bad configuration or model; systemd should not restart-loop."""

POLL_S = 0.05
"""How often the loop wakes to look for completed windows (bounds the added latency)."""
STOP_TIMEOUT_S = 5.0
"""How long shutdown waits for the clip writer and for the broker to take the last messages."""
SWAP_WARMUP_S = 1.0
"""Audio before the swap point that a new model's monitor is fed (pre-filter settling), so
that its first window ends where the old monitor stopped: no scoring gap."""


class Link(AlertSink, Protocol):
    """The daemon's connection to the world (``MqttLink``): alerts, health, state."""

    def start(self) -> None: ...

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None: ...

    def held_alerts(self) -> list[tuple[str, str, dict[str, Any]]]: ...

    def publish_health(self, payload: Mapping[str, Any]) -> None: ...

    def publish_model(self, payload: Mapping[str, Any]) -> None: ...

    def publish_monitor_state(self, monitor: str, payload: Mapping[str, Any]) -> None: ...

    def publish_score(self, monitor: str, payload: Mapping[str, Any]) -> None: ...

    def set_discovery(
        self, monitors: Sequence[str], *, model_names: Mapping[str, str] = ...
    ) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class Daemon:
    """Runs the monitors of a configuration until asked to stop.

    Its collaborators are injected: the audio source, the link to the broker (None:
    no MQTT), the clip store (None: no clips) and the clocks. ``from_config`` builds
    the real ones; tests pass a file source and real or no services.
    """

    def __init__(
        self,
        config: Config,
        detectors: dict[str, Detector],
        *,
        source: AudioSource | None = None,
        link: Link | None = None,
        clip_store: ClipStore | None = None,
        models: ModelManager | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.detectors = detectors
        self.models = models
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self._clock = clock
        self._wall = wall_clock
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self._health_now = threading.Event()
        self._reload_now = threading.Event()
        self.input_health: InputHealth | None = None
        self.liveness = Liveness(
            self.notifier, stall_timeout_s=config.input.stall_timeout_s, clock=clock
        )
        self.source = source if source is not None else self._open_source()
        self.link = link
        self.clip_store = clip_store
        recorder = None
        if clip_store is not None:
            recorder = ClipRecorder(
                clip_store, config.clips, device_id=self._device_id, wall_clock=wall_clock
            )
        self.alerts = Alerts(
            device_id=self._device_id, sink=link, recorder=recorder, wall_clock=wall_clock
        )
        self.monitors: list[Monitor] = []
        self.telemetry: Telemetry | None = None
        self._infos: dict[str, MonitorInfo] = {}
        self._reported_callback_errors = 0

    @property
    def _device_id(self) -> str:
        return self.config.device_id or "asd-edge"

    @classmethod
    def from_config(cls, config: Config) -> Daemon:
        """The daemon with its real services: the models (the configured ones, or those
        pushed since, from ``state_dir/models``), PortAudio (or a replayed file), the
        clip store under ``state_dir/clips`` and the MQTT link with its outbox.
        Raises ConfigError naming every bad key, model or key file."""
        state_dir = Path(config.state_dir)
        if config.clips.enabled or config.mqtt.enabled:
            try:
                state_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"state_dir: cannot create {state_dir}: {exc.strerror or exc}"
                ) from exc
        models = ModelManager(state_dir, device_id=config.device_id or "asd-edge")
        detectors = models.load(config)
        holder: list[Daemon] = []  # the callbacks below need the daemon they belong to
        link = None
        if config.mqtt.enabled:
            router = command_router(config, models, lambda: holder[0].request_health())
            link = MqttLink(
                config.mqtt,
                device_id=config.device_id or "asd-edge",
                outbox_path=state_dir / "outbox.sqlite",
                outbox=config.outbox,
                on_command=router,
                fleet_prefix=config.push.fleet_prefix,
            )
            router.reply = link.publish_command_result
        store = None
        if config.clips.enabled:
            store = ClipStore(
                state_dir / "clips",
                config.clips,
                on_done=lambda result: holder[0].alerts.clip_done(result),
            )
        daemon = cls(config, detectors, link=link, clip_store=store, models=models)
        holder.append(daemon)
        return daemon

    def _open_source(self) -> AudioSource:
        rates = {d.spec.sample_rate for d in self.detectors.values()}
        return open_input(self.config.input, preferred_rate=max(rates) if rates else None)

    def stop(self, reason: str = "requested") -> None:
        """Ask the loop to finish. Safe from signal handlers and other threads: it
        only sets a flag (logging here could deadlock on the logger's lock)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop.set()

    def request_health(self, _command: Command | None = None) -> None:
        """Publish a health report at the next wake (the ``cmd/health`` command)."""
        self._health_now.set()

    def request_reload(self) -> None:
        """Reload the configuration and models at the next wake (SIGHUP). Only sets a flag."""
        self._reload_now.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the loop cleanly; SIGHUP reloads."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            self.stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGHUP, lambda _signum, _frame: self.request_reload())

    def run(self) -> int:
        """Capture and tick until stopped; return the process exit code."""
        try:
            self.source.start()
        except AudioError as exc:
            log.error("audio_unavailable", error=str(exc))
            return EXIT_UNAVAILABLE
        code = EXIT_SOFTWARE
        try:
            self._start_services()
            # Anchored at the first captured sample: nothing is missed while we set up.
            self.monitors = [
                Monitor.from_config(
                    m,
                    self.detectors[m.name],
                    self.source.ring(m.channel),
                    self.source.sample_rate,
                    start_index=0,
                )
                for m in self.config.monitors
            ]
            self._describe_monitors()
            self.input_health = InputHealth(
                self.source,
                channels=_channels(self.config),
                config=self.config.health,
                stall_timeout_s=self.config.input.stall_timeout_s,
                clock=self._clock,
            )
            if self.models is not None:
                self.models.set_capture(self.source.sample_rate, self.config.input.ring_s)
                self.models.start()
            log.info(
                "daemon_started",
                device_id=self._device_id,
                sample_rate=self.source.sample_rate,
                channels=self.source.channels,
                monitors=[describe(m) for m in self.monitors],
            )
            self.notifier.ready(self._status_line())
            code = self._loop()
        except Exception:  # the supervisor boundary: log it, exit so systemd restarts us
            log.exception("daemon_failed")
            code = EXIT_SOFTWARE
        finally:
            log.info("daemon_stopping", reason=self._stop_reason or "error")
            self._shutdown()
            log.info("daemon_stopped", exit_code=code)
        return code

    def _start_services(self) -> None:
        if self.clip_store is not None:
            self.clip_store.start()
        if self.link is not None:
            self.link.start()
            for alert_id, phase, payload in self.link.held_alerts():
                # An end alert whose clip a killed daemon never finished: send it now.
                log.warning("held_alert_released", alert_id=alert_id, phase=phase)
                self.link.release_alert(alert_id, phase, lost_clip(payload))

    def _shutdown(self) -> None:
        """Close events in progress, finish their clips, hand the last alerts over."""
        self.notifier.stopping()
        if self.models is not None:
            self.models.stop(STOP_TIMEOUT_S)
        for monitor in self.monitors:
            self._end_event(monitor)
        self.alerts.close()
        self.alerts.end_input_problems("daemon_stopped")
        self.alerts.end_machine(None, {"reason": "daemon_stopped"})
        self.source.stop()
        if self.clip_store is not None:
            self.clip_store.stop(STOP_TIMEOUT_S)
        if self.link is not None:
            self.link.stop(STOP_TIMEOUT_S)
        self.notifier.close()

    def _describe_monitors(self) -> None:
        """Monitor facts for alerts, telemetry, Home Assistant and the model topic."""
        self.telemetry = Telemetry(
            device_id=self._device_id,
            source=self.source,
            channels=_channels(self.config),
            health=self.config.health,
            clock=self._clock,
            wall_clock=self._wall,
        )
        for cfg, monitor in zip(self.config.monitors, self.monitors, strict=True):
            self._describe_monitor(cfg, monitor)
        if self.link is not None:
            self._announce_monitors()
            for monitor in self.monitors:
                self.link.publish_monitor_state(
                    monitor.name, self.telemetry.monitor_payload(monitor.name)
                )

    def _announce_monitors(self) -> None:
        """Home Assistant discovery and the model topic for the monitors running now."""
        assert self.link is not None
        self.link.set_discovery(
            [m.name for m in self.monitors],
            model_names={m.name: m.detector.spec.name for m in self.monitors},
        )
        self.link.publish_model(self._model_payload())

    def _end_event(self, monitor: Monitor) -> None:
        """End the monitor's event in progress, if any (shutdown, swap, removal), with
        its end alert."""
        event = monitor.close(monitor.now_s())
        if event is not None:
            self._event(monitor, event)

    def _describe_monitor(self, cfg: MonitorConfig, monitor: Monitor) -> None:
        """The facts alerts and telemetry give about one monitor (again after a swap)."""
        model = model_facts(monitor)
        self._infos[monitor.name] = MonitorInfo(
            name=monitor.name,
            model=model,
            window_s=monitor.detector.spec.window_s,
            ring=monitor.source,
            sample_rate=self.source.sample_rate,
            bands=monitor.detector.spec.bands,
        )
        if self.telemetry is None:
            return
        state = self.telemetry.monitors.get(monitor.name)
        described = {**model, "kind": monitor.detector.spec.kind}
        threshold = monitor.decision.policy.threshold
        if state is None:
            state = self.telemetry.monitors[monitor.name] = MonitorState(
                name=monitor.name, channel=cfg.channel, model=described, threshold=threshold
            )
        else:  # a swap keeps the monitor's counters
            state.channel, state.model, state.threshold = cfg.channel, described, threshold
            state.anomaly = False
            state.window_level_dbfs = None
        state.machine = monitor.machine.state if monitor.machine is not None else None

    def _loop(self) -> int:
        assert self.telemetry is not None
        telemetry = self.telemetry
        interval_s = self.config.mqtt.health_interval_s
        next_wake = self._clock()
        next_report = next_wake + interval_s
        self.liveness.start(next_wake)
        while not self._stop.is_set():
            now = self._clock()
            try:
                self.source.poll(now)
            except AudioError as exc:
                log.error("audio_failed", error=str(exc))
                self.stop("audio_failed")
                return EXIT_UNAVAILABLE
            if self._reload_now.is_set():
                self._reload_now.clear()
                self._reload()
                interval_s = self.config.mqtt.health_interval_s
            self._apply_model_results()
            end_of_input = isinstance(self.source, FileSource) and self.source.finished
            started = self._clock()
            if self._tick_all(final=end_of_input):
                telemetry.durations_s.append(self._clock() - started)
            telemetry.update()
            self.alerts.poll()
            self._supervise_input(now)
            self._feed_watchdog(now)
            if end_of_input:
                self.stop("end_of_input")
            if now >= next_report or self._health_now.is_set():
                self._health_now.clear()
                self._report_health()
                next_report = now + interval_s
            next_wake += POLL_S
            now = self._clock()
            if next_wake < now:  # late: skip the missed wakes rather than pile them up
                missed = int((now - next_wake) // POLL_S) + 1
                telemetry.skipped_wakes += missed
                next_wake += missed * POLL_S
            self._stop.wait(max(0.0, next_wake - now))
        return EXIT_OK

    def _tick_all(self, *, final: bool = False) -> bool:
        """Tick every monitor; True if any window was scored."""
        scored = False
        for monitor in self.monitors:
            result = monitor.tick(final=final)
            self._check(monitor, result)
            for window in result.scores:
                scored = True
                self._scored(monitor, window)
            for change in result.machine:
                self._machine_changed(monitor, change)
            for event in result.events:
                self._event(monitor, event)
        return scored

    # --- input health, watchdog, status --------------------------------------------------

    def _supervise_input(self, now: float) -> None:
        """Raise and clear input alerts (lost, silent, clipping, overrun); publish health
        at once when a condition changes."""
        if self.input_health is None:
            return
        self._input_changes(self.input_health.update(now), now)

    def _input_changes(self, changes: Sequence[InputChange], now: float) -> None:
        if not changes:
            return
        wall_now = self._wall()
        for change in changes:
            monitors = [
                m.name
                for m in self.config.monitors
                if change.channel is None or m.channel == change.channel
            ]
            self.alerts.input_problem(
                change.condition,
                change.channel,
                change.phase,
                since_s=wall_now - max(0.0, now - change.since_s),
                monitors=monitors,
                details=change.details,
            )
        self._health_now.set()
        self.liveness.status(now, self._status_line, force=True)

    def _feed_watchdog(self, now: float) -> None:
        channel = self.config.monitors[0].channel if self.config.monitors else 0
        self.liveness.tick(
            now, self.source.ring(channel).written, self.source.recovering, self._status_line
        )

    def _status_line(self) -> str:
        return status_line(
            self.source.sample_rate, self.monitors, self.telemetry, self.input_health
        )

    def _model_payload(self) -> dict[str, Any]:
        return model_payload(self._device_id, self.monitors, self.models)

    # --- models: swaps, refusals, reloads -------------------------------------------------

    def _apply_model_results(self) -> None:
        """Put models the manager validated into service between two ticks."""
        if self.models is None:
            return
        results = self.models.take_results()
        for result in results:
            if isinstance(result, Swap):
                cfg = self._monitor_config(result.monitor)
                if cfg is None:  # the monitor went away in a reload meanwhile
                    self.models.discard(result, f"monitor {result.monitor!r} is not running")
                    continue
                self._replace_monitor(cfg, result.detector, why=result.source)
                self.models.applied(result)
            else:
                log.warning(
                    "model_refused",
                    monitor=result.monitor,
                    command=result.command,
                    id=result.request_id,
                    reason=result.reason,
                )
        if results and self.link is not None:
            self.link.publish_model(self._model_payload())

    def _monitor_config(self, name: str) -> MonitorConfig | None:
        return next((m for m in self.config.monitors if m.name == name), None)

    def _replace_monitor(self, cfg: MonitorConfig, detector: Detector, *, why: str) -> None:
        """Run ``cfg`` with ``detector`` from the next tick on, continuing the old monitor's
        audio without a gap: an event in progress is ended (alerting with the old model)
        and the new monitor is fed the last window of audio again, so its first score
        covers the audio right before the swap."""
        old = next((m for m in self.monitors if m.name == cfg.name), None)
        ring = self.source.ring(cfg.channel)
        rate = self.source.sample_rate
        if old is not None:
            self._end_event(old)
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
        self.monitors = [monitor if m.name == cfg.name else m for m in self.monitors]
        if old is None:
            self.monitors.append(monitor)
        self.detectors[cfg.name] = detector
        self._describe_monitor(cfg, monitor)
        log.info(
            "model_swapped",
            monitor=cfg.name,
            why=why,
            old=model_facts(old) if old is not None else None,
            new=model_facts(monitor),
            threshold=monitor.decision.policy.threshold,
        )

    def _reload(self) -> None:
        """SIGHUP: load the configuration file again and apply it without stopping the
        audio; a file that does not validate (or whose models do not) changes nothing."""
        self.notifier.reloading()
        try:
            loaded = load_config(self.config.source)
            plan = plan_reload(self.config, loaded)
            if not plan.config.monitors:
                raise ConfigError("monitors: at least one monitor is needed to run, got none")
            opened = self.source.channels
            for index, cfg in enumerate(plan.config.monitors):
                if cfg.channel >= opened:
                    raise ConfigError(
                        f"monitors[{index}].channel: expected 0-{opened - 1}, the channels "
                        f"open now (a change of input.channels needs a restart), got {cfg.channel}"
                    )
            detectors = (
                self.models.load(plan.config)
                if self.models is not None
                else load_detectors(plan.config)
            )
        except ConfigError as exc:
            log.error("reload_rejected", problems=exc.problems, kept=self.config.source)
            self.notifier.ready(self._status_line())
            return
        old_config, new = self.config, plan.config
        if new.logging != old_config.logging:
            configure_logging(new.logging.level, new.logging.format)
        self.config = new
        keep = {cfg.name for cfg in new.monitors}
        for monitor in [m for m in self.monitors if m.name not in keep]:
            self._end_event(monitor)
            self.alerts.end_machine(monitor.name, {"reason": "monitor_removed"})
            self.monitors.remove(monitor)
            self.detectors.pop(monitor.name, None)
            self._infos.pop(monitor.name, None)
        changed = []
        for cfg in new.monitors:
            running = next((m for m in self.monitors if m.name == cfg.name), None)
            before = next((c for c in old_config.monitors if c.name == cfg.name), None)
            detector = detectors[cfg.name]
            if running is not None and before == cfg and running.detector.sha256 == detector.sha256:
                continue  # unchanged: keeps its state (an event in progress goes on)
            self._replace_monitor(cfg, detector, why="reload")
            changed.append(cfg.name)
        order = [cfg.name for cfg in new.monitors]
        self.monitors.sort(key=lambda m: order.index(m.name))
        if self.telemetry is not None:
            self.telemetry.configure(_channels(new), new.health)
            for name in [n for n in self.telemetry.monitors if n not in keep]:
                del self.telemetry.monitors[name]
        if self.input_health is not None:
            ended = self.input_health.configure(channels=_channels(new), config=new.health)
            self._input_changes(ended, self._clock())
        if self.link is not None:
            self._announce_monitors()
        log.info(
            "config_reloaded",
            source=new.source,
            monitors_changed=changed,
            needs_restart=list(plan.needs_restart),
        )
        if plan.needs_restart:
            log.warning("reload_needs_restart", keys=list(plan.needs_restart))
        self._health_now.set()
        self.notifier.ready(self._status_line())

    def _check(self, monitor: Monitor, result: TickResult) -> None:
        trouble = {
            "skipped_windows": result.skipped_windows,
            "lost_samples": result.lost_samples,
            "nonfinite_samples": result.nonfinite_samples,
            "nonfinite_scores": result.nonfinite_scores,
        }
        if result.gap or any(trouble.values()):
            log.warning("monitor_degraded", monitor=monitor.name, gap=result.gap, **trouble)

    def _scored(self, monitor: Monitor, window: WindowScore) -> None:
        end_s, score = window.end_s, window.score
        log.debug("window_scored", monitor=monitor.name, end_s=round(end_s, 3), score=score)
        assert self.telemetry is not None
        self.telemetry.monitors[monitor.name].scored(score, window.level_dbfs)
        self.alerts.score(monitor.name, end_s, score)
        if self.link is not None and self.config.mqtt.publish_scores:
            self.link.publish_score(
                monitor.name,
                {
                    "monitor": monitor.name,
                    "score": score,
                    "threshold": monitor.decision.policy.threshold,
                    "end_s": round(end_s, 3),
                },
            )

    def _machine_changed(self, monitor: Monitor, change: MachineChange) -> None:
        """The machine stopped or runs again: log it (and alert, with ``stopped: alert``),
        publish the monitor's state at once."""
        cfg = self._monitor_config(monitor.name)
        alert = cfg is not None and cfg.stopped == "alert"
        self.alerts.machine(self._infos[monitor.name], change, alert=alert)
        assert self.telemetry is not None
        self.telemetry.monitors[monitor.name].machine = change.state
        if self.link is not None:
            self.link.publish_monitor_state(
                monitor.name, self.telemetry.monitor_payload(monitor.name)
            )

    def _event(self, monitor: Monitor, event: Event) -> None:
        self.alerts.event(self._infos[monitor.name], event)
        assert self.telemetry is not None
        state = self.telemetry.monitors[monitor.name]
        state.anomaly = event.phase == "start"
        state.events += event.phase == "start"
        if self.link is not None:
            self.link.publish_monitor_state(
                monitor.name, self.telemetry.monitor_payload(monitor.name)
            )

    def _report_health(self) -> None:
        """Log ``daemon_stats`` and publish the retained health message."""
        assert self.telemetry is not None
        stats = self.source.stats
        if stats.callback_errors > self._reported_callback_errors:
            log.error("capture_callback_failing", errors=stats.callback_errors)
            self._reported_callback_errors = stats.callback_errors
        extra: dict[str, Any] = {}
        if self.input_health is not None:
            extra["input"] = self.input_health.as_dict()
        if self.clip_store is not None:
            extra["clips"] = self.clip_store.usage().as_dict()
        if self.link is not None:
            link_stats = self.link.stats()
            extra["mqtt"] = link_stats
            extra["outbox"] = {
                k: link_stats.get(k) for k in ("outbox_depth", "dropped_rows", "dropped_age")
            }
        payload = self.telemetry.report(extra)
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
        if self.link is not None:
            self.link.publish_health(payload)
            for monitor in self.monitors:
                self.link.publish_monitor_state(
                    monitor.name, self.telemetry.monitor_payload(monitor.name)
                )


def _channels(config: Config) -> list[int]:
    """The input channels the configuration's monitors listen to, in order."""
    return sorted({m.channel for m in config.monitors})
