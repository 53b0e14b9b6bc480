"""The daemon's parts as a configuration describes them: the audio input, the models, the
push key and the MQTT command router."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .capture import AudioSource, SoundDeviceSource
from .config import Config, InputConfig
from .detector import Detector
from .errors import ConfigError, ModelError
from .filesource import FileSource
from .modelstore import ModelManager
from .mqtt import Command, CommandRouter, command_specs

__all__ = [
    "REPLAY_PREFIX",
    "command_router",
    "load_detectors",
    "open_input",
    "replay_path",
]

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


def command_router(
    config: Config, models: ModelManager, request_health: Callable[[], None]
) -> CommandRouter:
    """The ``cmd/...`` commands: ping, health, and the model push and rollback, which are
    handed to the model manager's worker (the reply says queued; the outcome follows on
    ``<prefix>/model``)."""
    return CommandRouter(
        {
            "health": lambda _cmd: request_health(),
            "model": lambda cmd: _queued(models.submit_push, cmd),
            "model/rollback": lambda cmd: _queued(models.submit_rollback, cmd),
        },
        commands=command_specs(config.push),
    )


def _queued(
    submit: Callable[[Mapping[str, Any], str | None], None], command: Command
) -> dict[str, Any]:
    """Hand a push or rollback to the model manager's worker; the immediate reply says it
    is queued, the outcome follows on ``<prefix>/model``."""
    submit(command.args, command.id)
    return {"queued": True}
