"""The daemon's parts as a configuration describes them, wired to one another: the audio
input, the models, the MQTT link and its command router, the clips and the alerts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from .alerts import Alerts
from .capture import AudioSource, SoundDeviceSource
from .clips import ClipRecorder, ClipSender, ClipStore
from .config import Config, InputConfig
from .detector import Detector
from .errors import ChildFailed, ConfigError, ModelError
from .filesource import FileSource
from .learning.learner import Learner
from .live import LiveFeed
from .modelstore import ModelManager, load_key
from .mqtt import (
    Command,
    CommandRouter,
    MqttLink,
    check_credentials,
    command_specs,
    max_message_bytes,
)
from .statedisk import StateDisk

__all__ = [
    "REPLAY_PREFIX",
    "Services",
    "build_services",
    "check_services",
    "command_router",
    "load_detectors",
    "open_input",
    "replay_path",
]

log = structlog.get_logger()

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


def check_services(config: Config) -> None:
    """What ``build_services`` would refuse over files, checked without building, starting
    or writing anything: every monitor's model (the configured file), ``push.key_file``
    and, with MQTT, its password and TLS files (``mqtt.check_credentials``). ConfigError
    listing every problem, each naming its key (``check-config``)."""
    unchecked: list[ChildFailed] = []

    def key() -> None:
        try:
            load_key(config)
        except ChildFailed as exc:  # not a configuration problem: said after the others
            unchecked.append(exc)

    checks: list[Callable[[], object]] = [lambda: load_detectors(config), key]
    if config.mqtt.enabled:
        checks.append(lambda: check_credentials(config.mqtt))
    ConfigError.check_all(*checks)
    if unchecked:
        raise unchecked[0]


def command_router(
    config: Config,
    models: ModelManager,
    request_health: Callable[[], None],
    learner: Learner,
    live: LiveFeed | None = None,
    clips: ClipSender | None = None,
) -> CommandRouter:
    """The ``cmd/...`` commands: ping, health, the model push, rollback and reset, which are
    handed to the model manager's worker (the reply says queued; the outcome follows on
    ``<prefix>/model``), learn and feedback (the reply says it started; progress on
    ``<prefix>/learn``), live (the lease of the live feed) and clip (an alert's clip,
    published once)."""
    handlers = {
        "health": lambda _cmd: request_health(),
        "model": lambda cmd: _queued(models.submit_push, cmd),
        "model/rollback": lambda cmd: _queued(models.submit_rollback, cmd),
        "model/reset": lambda cmd: _queued(models.submit_reset, cmd),
        "learn": learner.command,
        "feedback": learner.feedback,
    }
    if live is not None:
        handlers["live"] = live.command
    if clips is not None:
        handlers["clip"] = clips.command
    return CommandRouter(handlers, commands=command_specs(config.push))


@dataclass(frozen=True, slots=True)
class Services:
    """The daemon's services for one configuration, built and wired (``build_services``)."""

    detectors: dict[str, Detector]
    """Each monitor's model, as the model manager chose it."""
    models: ModelManager | None
    """None: the models are the configuration's files, loaded once (tests, tools)."""
    link: MqttLink | None
    """None only for tests and tools; with ``mqtt.enabled: false`` a link that never
    connects and keeps the alerts in its outbox."""
    clip_store: ClipStore | None
    """None: ``clips.enabled`` is false (then ``recorder`` is None too)."""
    recorder: ClipRecorder | None
    alerts: Alerts
    health_request: threading.Event
    """Set by the ``cmd/health`` command; the daemon reports at its next wake."""
    learner: Learner | None = None
    """Learning normal sound (``cmd/learn``, ``cmd/feedback``); None for tests and tools
    (the daemon then makes one that refuses every request)."""
    live: LiveFeed | None = None
    """The live feed ``cmd/live`` leases; None: the daemon makes one no command reaches."""
    disk: StateDisk | None = None
    """Which parts cannot write to ``state_dir`` (the outbox, the clips), for the daemon's
    ``disk`` alert and health; None for tests and tools."""


def build_services(config: Config, *, wall_clock: Callable[[], float] = time.time) -> Services:
    """The models (the configured ones, or those pushed since, from ``state_dir/models``),
    the MQTT link with its outbox and command router, the clip store and recorder under
    ``state_dir/clips``, and the alerts that tie them together. Nothing is started.
    With ``mqtt.enabled: false`` the link never connects (no credentials are read) but
    keeps its outbox: alerts wait there, within its bounds, until MQTT is enabled.
    Raises ConfigError naming the MQTT password and TLS files that cannot be used
    (checked first: the link reads them again at start), or every bad model or key file.
    A ``state_dir`` that cannot be made or written is logged, not refused: the parts that
    write there report it to ``Services.disk`` (the outbox then keeps alerts in memory,
    clips are skipped) and use it again once it takes writes."""
    if config.mqtt.enabled:
        check_credentials(config.mqtt)
    state_dir = Path(config.state_dir)
    disk = StateDisk(state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.error("state_dir_unwritable", path=str(state_dir), error=exc.strerror or str(exc))
    models = ModelManager(state_dir, device_id=config.device_id)
    detectors = models.load(config)
    health_request = threading.Event()
    learner = Learner(config, models=models, publish=None, wall_clock=wall_clock)
    live = LiveFeed(wall_clock=wall_clock)
    clips = ClipSender(state_dir / "clips", max_mb=config.mqtt.clip_max_mb)
    router = command_router(config, models, health_request.set, learner, live, clips)
    link = MqttLink(
        config.mqtt,
        device_id=config.device_id,
        outbox_path=state_dir / "outbox.sqlite",
        outbox=config.outbox,
        on_command=router,
        fleet_prefix=config.push.fleet_prefix,
        max_message_bytes=max_message_bytes(router.commands),
        disk=disk,
    )
    router.reply = link.publish_command_result
    learner.publish = link.publish_learn
    live.publish, clips.send = link.publish_live, link.send_clip
    if config.learn.enabled and config.mqtt.enabled:
        link.offer_learning(config.learn.default_s)
    store = recorder = None
    if config.clips.enabled:
        store = ClipStore(
            state_dir / "clips", config.clips, on_done=lambda _result: None, disk=disk
        )
        recorder = ClipRecorder(
            store, config.clips, device_id=config.device_id, wall_clock=wall_clock
        )
    alerts = Alerts(device_id=config.device_id, sink=link, recorder=recorder, wall_clock=wall_clock)
    if store is not None:
        store.on_done = alerts.clip_done  # a saved clip releases its held end alert
    learner.open_anomaly = alerts.open_anomaly  # "last" is not an alert still in progress
    return Services(
        detectors, models, link, store, recorder, alerts, health_request, learner, live, disk
    )


def _queued(
    submit: Callable[[Mapping[str, Any], str | None], None], command: Command
) -> dict[str, Any]:
    """Hand a push, rollback or reset to the model manager's worker; the immediate reply says it
    is queued, the outcome follows on ``<prefix>/model``."""
    submit(command.args, command.id)
    return {"queued": True}
