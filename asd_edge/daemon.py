"""The daemon: capture, tick every monitor on a monotonic clock, report events, stop cleanly."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import numpy as np
import structlog

from .capture import AudioSource, SoundDeviceSource
from .config import Config, InputConfig
from .decision import Event
from .detector import Detector
from .errors import AudioError, ConfigError, ModelError
from .filesource import FileSource
from .monitor import Monitor

__all__ = [
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_SOFTWARE",
    "EXIT_UNAVAILABLE",
    "Daemon",
    "load_detectors",
    "open_input",
    "replay_path",
    "tick_summary",
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
STATS_EVERY_S = 60.0
"""How often a ``daemon_stats`` line is logged."""
REPLAY_PREFIX = "file:"
"""``input.device: "file:PATH"`` replays a recording in real time instead of a microphone."""


def replay_path(cfg: InputConfig) -> str | None:
    """The recording ``input.device: "file:PATH"`` names, or None for a real device."""
    if isinstance(cfg.device, str) and cfg.device.startswith(REPLAY_PREFIX):
        return cfg.device.removeprefix(REPLAY_PREFIX)
    return None


def open_input(
    cfg: InputConfig, *, preferred_rate: int | None, ring_s: float | None = None
) -> AudioSource:
    """The audio source ``input`` describes: a PortAudio device, or a recording
    replayed in real time for ``device: "file:PATH"``. Nothing is opened yet."""
    ring_s = cfg.ring_s if ring_s is None else ring_s
    recording = replay_path(cfg)
    if recording is not None:
        return FileSource(
            recording,
            channels=cfg.channels,
            block_s=cfg.block_s,
            ring_s=ring_s,
        )
    return SoundDeviceSource(
        device=cfg.device,
        channels=cfg.channels,
        sample_rate=cfg.sample_rate,
        preferred_rate=preferred_rate,
        ring_s=ring_s,
        block_s=cfg.block_s,
        stall_timeout_s=cfg.stall_timeout_s,
        restart_backoff_max_s=cfg.restart_backoff_max_s,
    )


def load_detectors(config: Config) -> dict[str, Detector]:
    """Load and check every monitor's model; ConfigError lists every model that fails,
    each with its ``monitors[i].model`` path, the file and the field."""
    detectors: dict[str, Detector] = {}
    problems = []
    for index, monitor in enumerate(config.monitors):
        try:
            detectors[monitor.name] = Detector(monitor.model, threads=config.detector.threads)
        except ModelError as exc:
            problems.append(f"monitors[{index}].model: {exc}")
    if problems:
        raise ConfigError(problems)
    return detectors


def tick_summary(durations_s: list[float]) -> dict[str, float]:
    """p50, p95 and max of tick durations in milliseconds (empty when none)."""
    if not durations_s:
        return {}
    ms = np.asarray(durations_s) * 1e3
    return {
        "tick_p50_ms": round(float(np.percentile(ms, 50)), 3),
        "tick_p95_ms": round(float(np.percentile(ms, 95)), 3),
        "tick_max_ms": round(float(ms.max()), 3),
    }


class Daemon:
    """Runs the monitors of a configuration until asked to stop.

    The audio source and the clock are injected (a file source in tests;
    PortAudio and ``time.monotonic`` in production).
    """

    def __init__(
        self,
        config: Config,
        detectors: dict[str, Detector],
        *,
        source: AudioSource | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.detectors = detectors
        self._clock = clock
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self.source = source if source is not None else self._open_source()
        self.monitors: list[Monitor] = []
        self._durations_s: list[float] = []
        self._reported_callback_errors = 0

    def _open_source(self) -> AudioSource:
        rates = {d.spec.sample_rate for d in self.detectors.values()}
        return open_input(self.config.input, preferred_rate=max(rates) if rates else None)

    def stop(self, reason: str = "requested") -> None:
        """Ask the loop to finish. Safe from signal handlers and other threads: it
        only sets a flag (logging here could deadlock on the logger's lock)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the loop cleanly."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            self.stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        """Capture and tick until stopped; return the process exit code."""
        try:
            self.source.start()
        except AudioError as exc:
            log.error("audio_unavailable", error=str(exc))
            return EXIT_UNAVAILABLE
        code = EXIT_SOFTWARE
        try:
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
            log.info(
                "daemon_started",
                device_id=self.config.device_id,
                sample_rate=self.source.sample_rate,
                channels=self.source.channels,
                monitors=[self._describe(m) for m in self.monitors],
            )
            code = self._loop()
        except Exception:  # the supervisor boundary: log it, exit so systemd restarts us
            log.exception("daemon_failed")
            code = EXIT_SOFTWARE
        finally:
            log.info("daemon_stopping", reason=self._stop_reason or "error")
            for monitor in self.monitors:
                event = monitor.close(monitor.now_s())
                if event is not None:
                    self._report(monitor, event)
            self.source.stop()
            log.info("daemon_stopped", exit_code=code)
        return code

    def _describe(self, monitor: Monitor) -> dict[str, object]:
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
        }

    def _loop(self) -> int:
        next_wake = self._clock()
        next_stats = next_wake + STATS_EVERY_S
        skipped_wakes = 0
        while not self._stop.is_set():
            now = self._clock()
            try:
                self.source.poll(now)
            except AudioError as exc:
                log.error("audio_failed", error=str(exc))
                self.stop("audio_failed")
                return EXIT_UNAVAILABLE
            end_of_input = isinstance(self.source, FileSource) and self.source.finished
            started = self._clock()
            if self._tick_all(final=end_of_input):
                self._durations_s.append(self._clock() - started)
            if end_of_input:
                self.stop("end_of_input")
            if now >= next_stats:
                self._log_stats(skipped_wakes)
                next_stats = now + STATS_EVERY_S
            next_wake += POLL_S
            now = self._clock()
            if next_wake < now:  # late: skip the missed wakes rather than pile them up
                missed = int((now - next_wake) // POLL_S) + 1
                skipped_wakes += missed
                next_wake += missed * POLL_S
            self._stop.wait(max(0.0, next_wake - now))
        return EXIT_OK

    def _tick_all(self, *, final: bool = False) -> bool:
        """Tick every monitor; True if any window was scored."""
        scored = False
        for monitor in self.monitors:
            result = monitor.tick(final=final)
            trouble = {
                "skipped_windows": result.skipped_windows,
                "lost_samples": result.lost_samples,
                "nonfinite_samples": result.nonfinite_samples,
                "nonfinite_scores": result.nonfinite_scores,
            }
            if result.gap or any(trouble.values()):
                log.warning("monitor_degraded", monitor=monitor.name, gap=result.gap, **trouble)
            for window in result.scores:
                scored = True
                log.debug(
                    "window_scored",
                    monitor=monitor.name,
                    end_s=round(window.end_s, 3),
                    score=window.score,
                )
            for event in result.events:
                self._report(monitor, event)
        return scored

    def _report(self, monitor: Monitor, event: Event) -> None:
        fields = {
            "monitor": monitor.name,
            "onset_s": round(event.onset_s, 3),
            "at_s": round(event.at_s, 3),
            "score": event.score,
            "peak_score": event.peak_score,
            "threshold": event.threshold,
            "model": monitor.detector.spec.name,
            "model_version": monitor.detector.spec.version,
        }
        if event.phase == "start":
            log.warning("anomaly_started", **fields)
        else:
            log.info("anomaly_ended", duration_s=round(event.at_s - event.onset_s, 3), **fields)

    def _log_stats(self, skipped_wakes: int) -> None:
        stats = self.source.stats
        rings = {id(m.source): m.source for m in self.monitors}  # monitors may share a ring
        if stats.callback_errors > self._reported_callback_errors:
            log.error("capture_callback_failing", errors=stats.callback_errors)
            self._reported_callback_errors = stats.callback_errors
        log.info(
            "daemon_stats",
            skipped_wakes=skipped_wakes,
            overflows=stats.overflows,
            status_flags=stats.status_flags,
            callback_errors=stats.callback_errors,
            stalls=stats.stalls,
            restarts=stats.restarts,
            lost_samples=sum(ring.lost_samples for ring in rings.values()),
            **tick_summary(self._durations_s),
        )
        self._durations_s.clear()
