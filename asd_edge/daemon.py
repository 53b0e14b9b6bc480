"""The daemon: capture, tick every monitor on a monotonic clock, report events, stop cleanly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from .alerts import Alerts, Link, finish_previous_run
from .assembly import Services, build_services, open_input
from .capture import AudioSource, block_due_s
from .clips.types import ClipResult
from .config import Config
from .decision import Event
from .detector import Detector
from .errors import AudioError, ChildFailed, ConfigError, Refused
from .filesource import FileSource
from .inputhealth import InputChange, InputHealth
from .learning.learner import Learner
from .live import LiveFeed
from .logs import configure_logging
from .machine import MachineChange
from .modelstore import Swap
from .monitor import Monitor, WindowScore
from .monitors import Monitors, listened_channels, prepare_reload
from .runtime import MemoryRelease, install_signal_handlers
from .sdnotify import WATCHDOG_DIVISOR, Liveness, Notifier
from .telemetry import Telemetry, describe, status_line

__all__ = ["EXIT_CONFIG", "EXIT_OK", "EXIT_SOFTWARE", "EXIT_UNAVAILABLE", "Daemon"]

log = structlog.get_logger()

EXIT_OK = 0
EXIT_UNAVAILABLE = 69
"""sysexits EX_UNAVAILABLE: the audio input could not be opened or kept alive."""
EXIT_SOFTWARE = 70
"""sysexits EX_SOFTWARE: an internal error."""
EXIT_CONFIG = 78
"""sysexits EX_CONFIG: bad configuration or model; systemd should not restart-loop."""

MAX_SLEEP_S = 0.5
"""Longest sleep of the loop: input health, the watchdog, clip copying and a reload or
health request are looked at least this often."""
MIN_SLEEP_S = 0.02
"""Shortest sleep: when the block holding a due window's last sample is late, the loop
looks again this soon."""
DUE_MARGIN_S = 0.002
"""Slack after the moment a window's audio is due, for the block to land in the ring."""
LATE_S = 0.05
"""A wake this much later than planned counts in ``ticks.skipped_wakes`` (a busy CPU)."""
STOP_TIMEOUT_S = 5.0
"""How long shutdown waits for the clip writer and for the broker to take the last messages."""


def _then(
    first: Callable[[ClipResult], None], then: Callable[[], None]
) -> Callable[[ClipResult], None]:
    """``first(result)``, then ``then()`` (also when ``first`` raises)."""

    def both(result: ClipResult) -> None:
        try:
            first(result)
        finally:
            then()

    return both


class Daemon:
    """Runs the monitors of a configuration until asked to stop.

    Its collaborators are injected: the audio source, the services (``Services``: the
    link to the broker, the clip store and recorder, the alerts, the model manager,
    the health request; None: alerts only, no MQTT, no clips, no model manager), the
    clocks and what gives free memory back (``runtime.MemoryRelease``). ``from_config``
    builds the real ones (``assembly.build_services``). The daemon owns the clip
    recorder: it feeds it every score and tick.
    """

    def __init__(
        self,
        config: Config,
        detectors: dict[str, Detector],
        *,
        source: AudioSource | None = None,
        services: Services | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        memory: MemoryRelease | None = None,
    ) -> None:
        if services is None:
            alerts = Alerts(
                device_id=config.device_id, sink=None, recorder=None, wall_clock=wall_clock
            )
            services = Services(detectors, None, None, None, None, alerts, threading.Event())
        self.config = config
        self.detectors = detectors
        self.models = services.models
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self._clock = clock
        self._wall = wall_clock
        self.memory = memory if memory is not None else MemoryRelease()
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self._health_now = services.health_request
        self._reload_now = threading.Event()
        self.input_health: InputHealth | None = None
        self.liveness = Liveness(
            self.notifier, stall_timeout_s=config.input.stall_timeout_s, clock=clock
        )
        self.source = source if source is not None else self._open_source()
        self.link: Link | None = services.link
        self.clip_store = services.clip_store
        if self.clip_store is not None:  # a clip written has freed its buffers: give them back
            self.clip_store.on_done = _then(self.clip_store.on_done, self.memory.after_work)
        self.recorder = services.recorder
        self.alerts = services.alerts
        self.disk = services.disk  # the state directory's writes: the ``disk`` condition
        self.learner = services.learner or Learner(config, models=None, publish=None)
        self.live = services.live or LiveFeed(clock=clock, wall_clock=wall_clock)
        self.monitors: Monitors | None = None
        self.telemetry: Telemetry | None = None
        self._reported_callback_errors = 0

    @classmethod
    def from_config(cls, config: Config) -> Daemon:
        """The daemon with its real services: the models (the configured ones, or those
        pushed since, from ``state_dir/models``), PortAudio (or a replayed file), the
        clip store under ``state_dir/clips`` and the MQTT link with its outbox.
        Raises ConfigError naming every bad key, model or key file."""
        services = build_services(config)
        return cls(config, services.detectors, services=services)

    def _open_source(self) -> AudioSource:
        rates = {d.spec.sample_rate for d in self.detectors.values()}
        return open_input(self.config.input, preferred_rate=max(rates) if rates else None)

    def stop(self, reason: str = "requested") -> None:
        """Ask the loop to finish. Safe from signal handlers and other threads: it
        only sets a flag (logging here could deadlock on the logger's lock)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop.set()

    def request_reload(self) -> None:
        """Reload the configuration and models at the next wake (SIGHUP). Only sets a flag."""
        self._reload_now.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the loop cleanly; SIGHUP reloads. A SIGHUP or SIGTERM
        that arrived while the process started (``runtime.hold_early_signals``) is
        acted on now: a reload at the first wake, or a clean stop."""

        for early in install_signal_handlers(self.stop, self.request_reload):
            log.info("early_signal", signal=early.name)

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
            self.telemetry = Telemetry(
                device_id=self.config.device_id,
                source=self.source,
                channels=listened_channels(self.config),
                health=self.config.health,
                clock=self._clock,
                wall_clock=self._wall,
            )
            self.monitors = Monitors(
                source=self.source,
                detectors=self.detectors,
                alerts=self.alerts,
                telemetry=self.telemetry,
                link=self.link,
                models=self.models,
                device_id=self.config.device_id,
                on_event=self._event,
                wall_clock=self._wall,
            )
            self.monitors.start(self.config.monitors)
            self.input_health = InputHealth(
                self.source,
                channels=listened_channels(self.config),
                config=self.config.health,
                stall_timeout_s=self.config.input.stall_timeout_s,
                clock=self._clock,
            )
            if self.models is not None:
                self.models.set_capture(self.source.sample_rate, self.config.input.ring_s)
                self.models.start()
            self.learner.attach(self.source)  # what a killed run's learning left, then listen
            log.info(
                "daemon_started",
                device_id=self.config.device_id,
                sample_rate=self.source.sample_rate,
                channels=self.source.channels,
                monitors=[describe(m) for m in self.monitors],
            )
            self.notifier.ready(self._status_line())
            code = self._loop()
        except ConfigError as exc:  # the link's start: a credentials file gone since checked,
            # or a password without a user name (check-config lets that through)
            log.error("config_invalid", problems=exc.problems)
            code = EXIT_CONFIG
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
            # What a killed daemon left (held ends, alerts never ended), before any new alert.
            finish_previous_run(self.link)

    def _shutdown(self) -> None:
        """Close events in progress, finish their clips, hand the last alerts over."""
        self.notifier.stopping()
        self.learner.stop()
        if self.models is not None:
            self.models.stop(STOP_TIMEOUT_S)
        if self.monitors is not None:
            self.monitors.end_all()
        if self.recorder is not None:
            self.recorder.flush()  # every open clip cut at what the ring holds now
        self.alerts.end_input_problems("daemon_stopped")
        self.alerts.end_machine(None, {"reason": "daemon_stopped"})
        self.source.stop()
        if self.clip_store is not None:
            self.clip_store.stop(STOP_TIMEOUT_S)
        if self.link is not None:
            self.link.stop(STOP_TIMEOUT_S)
        self.notifier.close()

    def _loop(self) -> int:
        assert self.telemetry is not None
        telemetry = self.telemetry
        interval_s = self.config.mqtt.health_interval_s
        next_wake = self._clock()
        next_report = next_wake + interval_s
        self.liveness.start(next_wake)
        assert self.monitors is not None
        monitors, last_heard, heard_at = self.monitors, -1, next_wake  # audio seen, and when
        stall_s = max(MAX_SLEEP_S, 2.0 * self.source.stats.block_s)  # longer: no block came
        watchdog_s = self.notifier.watchdog_interval_s
        while not self._stop.is_set():
            now = self._clock()
            if now - next_wake > LATE_S:  # woke late: a busy CPU
                telemetry.skipped_wakes += 1
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
            self.live.poll(now, telemetry.monitors, self.source)  # one comparison unleased
            if self.recorder is not None:
                self.recorder.poll()  # clips whose audio is in go to the writer
            self.learner.poll()  # new audio to the learning in progress, if any
            self._supervise_input(now)
            self._feed_watchdog(now)
            if end_of_input:
                self.stop("end_of_input")
            if now >= next_report or self._health_now.is_set():
                self._health_now.clear()
                self._report_health()
                next_report = now + interval_s
            self.memory.poll(now)  # free memory back to the system: after the tick, not in its way
            # Sleep until the next window's audio is due (not a fixed poll): few wakes idle.
            block_at = self.source.stats.last_block_at  # before the rings: see block_due_s
            now, heard = self._clock(), self.source.ring(self.config.monitors[0].channel).written
            if heard != last_heard:
                last_heard, heard_at = heard, now
            due_s = min((m.due_in_s() for m in monitors), default=MAX_SLEEP_S)
            if now - heard_at > stall_s:  # no audio for a while (a stall): no hurry
                due_s = MAX_SLEEP_S
            elif due_s > 0.0:  # audio comes in whole blocks: wake when the right one lands
                due_s = block_due_s(due_s, now, self.source.stats, block_at)
            sleep_s = min(MAX_SLEEP_S, max(MIN_SLEEP_S, due_s + DUE_MARGIN_S))
            sleep_s = min(sleep_s, max(MIN_SLEEP_S, next_report - now))
            if watchdog_s is not None:  # WATCHDOG=1 at least every third of systemd's interval
                sleep_s = min(sleep_s, max(MIN_SLEEP_S, watchdog_s / WATCHDOG_DIVISOR))
            live_s = self.live.due_in_s(now)  # None unless someone watches (cmd/live)
            if live_s is not None:
                sleep_s = min(sleep_s, max(MIN_SLEEP_S, live_s + DUE_MARGIN_S))
            next_wake = now + sleep_s
            self._stop.wait(sleep_s)
        return EXIT_OK

    def _tick_all(self, *, final: bool = False) -> bool:
        """Tick every monitor; True if any window was scored."""
        scored = False
        assert self.monitors is not None
        for monitor in self.monitors:
            result = monitor.tick(final=final)
            result.log_trouble(monitor.name)
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
        """Raise and clear input alerts (lost, silent, clipping, overrun, and ``disk``: the
        state directory refusing writes, see ``StateDisk``); publish health at once when a
        condition changes."""
        if self.input_health is None:
            return
        changes = self.input_health.update(now)
        if self.disk is not None and (disk_changes := self.disk.update(now)):
            changes = [*changes, *disk_changes]
        self._input_changes(changes, now)

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
        running = self.monitors.running if self.monitors is not None else []
        return status_line(self.source.sample_rate, running, self.telemetry, self.input_health)

    # --- models: swaps, refusals, reloads -------------------------------------------------

    def _apply_model_results(self) -> None:
        """Put models the manager validated into service between two ticks."""
        if self.models is None:
            return
        assert self.monitors is not None
        results = self.models.take_results()
        for result in results:
            if isinstance(result, Swap):
                cfg = self.monitors.configs.get(result.monitor)
                if cfg is None:  # the monitor went away in a reload meanwhile
                    self.models.discard(result, f"monitor {result.monitor!r} is not running")
                    continue
                self.monitors.replace(cfg, result.detector, why=result.source)
                self.models.applied(result)
            elif isinstance(result, Refused):  # (a ReplayReset changes no model)
                log.warning(
                    "model_refused",
                    monitor=result.monitor,
                    command=result.command,
                    id=result.request_id,
                    reason=result.reason,
                )
        if results:  # the model topic, and discovery (Home Assistant names the model)
            self.monitors.announce()
            self.memory.after_work()  # the validation's and the old model's memory

    def _reload(self) -> None:
        """SIGHUP: load the configuration file again and apply it without stopping the
        audio; a file that does not validate (or whose models do not) changes nothing."""
        self.notifier.reloading()
        try:
            plan, detectors = prepare_reload(self.config, self.source.channels, self.models)
        except (ConfigError, ChildFailed) as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
            log.error("reload_rejected", problems=problems, kept=self.config.source)
            self.notifier.ready(self._status_line())
            return
        old_config, new = self.config, plan.config
        if new.logging != old_config.logging:
            configure_logging(new.logging.level, new.logging.format)
        self.config = new
        self.learner.config = new  # a learning in progress keeps its monitor's settings
        assert self.monitors is not None and self.telemetry is not None
        changed = self.monitors.reload(old_config.monitors, new.monitors, detectors)
        self.telemetry.configure(listened_channels(new), new.health)
        if self.input_health is not None:
            ended = self.input_health.configure(channels=listened_channels(new), config=new.health)
            self._input_changes(ended, self._clock())
        self.monitors.announce()
        self.memory.after_work()  # the models the reload replaced
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

    def _scored(self, monitor: Monitor, window: WindowScore) -> None:
        end_s, score = window.end_s, window.score
        log.debug("window_scored", monitor=monitor.name, end_s=round(end_s, 3), score=score)
        assert self.telemetry is not None
        self.telemetry.monitors[monitor.name].scored(score, window.level_dbfs)
        if self.recorder is not None:  # the timeline of the monitor's open clip
            self.recorder.score(monitor.name, end_s, score)
        if self.config.mqtt.publish_scores:
            assert self.monitors is not None
            self.monitors.publish_score(monitor, end_s, score)

    def _machine_changed(self, monitor: Monitor, change: MachineChange) -> None:
        """The machine stopped or runs again: log it (and alert, with ``stopped: alert``),
        publish the monitor's state at once."""
        assert self.monitors is not None and self.telemetry is not None
        cfg = self.monitors.configs.get(monitor.name)
        alert = cfg is not None and cfg.stopped == "alert"
        self.alerts.machine(self.monitors.info(monitor.name), change, alert=alert)
        self.telemetry.monitors[monitor.name].machine = change.state
        self.monitors.publish_state(monitor.name)

    def _event(self, monitor: Monitor, event: Event) -> None:
        assert self.monitors is not None and self.telemetry is not None
        self.alerts.event(self.monitors.info(monitor.name), event)
        state = self.telemetry.monitors[monitor.name]
        state.anomaly = event.phase == "start"
        state.events += event.phase == "start"
        self.monitors.publish_state(monitor.name)

    def _report_health(self) -> None:
        """Log ``daemon_stats`` and publish the retained health message."""
        assert self.telemetry is not None
        stats = self.source.stats
        if stats.callback_errors > self._reported_callback_errors:
            log.error("capture_callback_failing", errors=stats.callback_errors)
            self._reported_callback_errors = stats.callback_errors
        extra: dict[str, Any] = {}
        if self.input_health is not None:
            now = self._clock()
            extra["input"] = self.input_health.as_dict(now)
            if self.disk is not None:
                extra["input"] += [condition.as_dict(now) for condition in self.disk.active()]
        if self.clip_store is not None:
            extra["clips"] = self.clip_store.usage().as_dict()
        if self.link is not None:
            link_stats = self.link.stats()
            extra["mqtt"] = link_stats
            extra["outbox"] = {
                **{k: link_stats.get(k) for k in ("outbox_depth", "dropped_rows", "dropped_age")},
                "storage": link_stats.get("outbox_storage"),  # "memory": the disk refuses it
                "reason": link_stats.get("outbox_reason"),
            }
        payload = self.telemetry.report(extra)
        self.telemetry.log_stats(payload, stats)
        if self.link is not None:
            self.link.publish_health(payload)
            if self.monitors is not None:
                for monitor in self.monitors:
                    self.monitors.publish_state(monitor.name)
