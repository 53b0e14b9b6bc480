"""The whole configuration: ``Config``, read from YAML once (``load_config``), checked
across fields, and written back out (``config_to_dict``)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asd_edge.durable import read_regular
from asd_edge.errors import ConfigError
from asd_edge.runtime import host_device_id
from asd_edge.schema import INVALID, at, build, convert, load_yaml, show, to_plain

from .sections import (
    _DEVICE_ID,
    CONFIG_MAX_BYTES,
    ClipsConfig,
    DetectorConfig,
    HealthConfig,
    InputConfig,
    LearnConfig,
    LoggingConfig,
    MonitorConfig,
    MqttConfig,
    OutboxConfig,
    PushConfig,
    WebConfig,
)

__all__ = ["Config", "config_to_dict", "load_config", "parse_config"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration; build it with load_config or parse_config."""

    device_id: str = field(
        default_factory=lambda: host_device_id(), metadata={"pattern": _DEVICE_ID, "derived": True}
    )
    """Name of this machine in topics and alerts (null in the file: ``host_device_id()``)."""
    state_dir: str = field(default="/var/lib/asd-edge", metadata={"path": True})
    """Absolute path of the directory for the daemon's persistent state."""
    input: InputConfig = field(default_factory=InputConfig)
    """The audio input."""
    monitors: tuple[MonitorConfig, ...] = field(default_factory=tuple)
    """The models, one per monitored channel (a list in the file)."""
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    """How the models are run."""
    push: PushConfig = field(default_factory=PushConfig)
    """Models pushed over MQTT."""
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    """The MQTT broker; once parsed, topic_prefix and client_id are never None."""
    clips: ClipsConfig = field(default_factory=ClipsConfig)
    """The clips saved around events, under <state_dir>/clips; once parsed, max_clip_s is
    never None."""
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    """The durable alert queue, <state_dir>/outbox.sqlite."""
    health: HealthConfig = field(default_factory=HealthConfig)
    """How the input's health is judged."""
    learn: LearnConfig = field(default_factory=LearnConfig)
    """Learning normal sound on the device."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Logging."""
    web: WebConfig = field(default_factory=WebConfig)
    """The web dashboard (``asd-edge web``)."""
    source: str | None = field(default=None, compare=False, metadata={"internal": True})
    """Absolute path of the file this came from (not a key); None when not read from a file."""


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read, parse and check a YAML configuration file; None gives the defaults.

    Relative paths in the file are resolved against the file's directory (against
    the working directory when ``path`` is None). Raises ConfigError listing every
    problem found; a file that cannot be read or parsed is named in the message, as is
    one that is not a regular file or is larger than ``CONFIG_MAX_BYTES`` (not read).
    """
    if path is None:
        return parse_config(None, base_dir=Path.cwd())
    shown = os.fspath(path)
    try:
        raw = read_regular(shown, CONFIG_MAX_BYTES)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{shown}: cannot read the configuration file: {reason}") from exc
    data = load_yaml(raw, shown)
    config = parse_config(data, base_dir=Path(shown).parent)
    return dataclasses.replace(config, source=os.path.abspath(shown))


def parse_config(data: object, *, base_dir: str | os.PathLike[str]) -> Config:
    """Check already-loaded YAML data (None counts as empty) and build the Config.

    Relative paths are resolved against ``base_dir``. Raises ConfigError listing
    every problem, each as ``dotted.path: expected ..., got ...``.
    """
    problems: list[str] = []
    tree = convert(Config, data, base_dir=os.path.abspath(base_dir), problems=problems)
    if isinstance(tree, dict):
        _check_across_fields(tree, problems)
    if problems or not isinstance(tree, dict):
        raise ConfigError(problems)
    _fill_derived(tree)
    return build(Config, tree)


def config_to_dict(cfg: Config, *, redact: bool = True) -> dict[str, Any]:
    """The configuration as plain, YAML-dumpable data; secrets are "***" if ``redact``."""
    return to_plain(cfg, redact=redact)


# --- the checks and values that are particular to this configuration -------------------


def _check_across_fields(tree: dict[str, Any], problems: list[str]) -> None:
    """The checks that involve two fields, on the values that were valid on their own."""
    channels = at(tree, "input", "channels")
    monitors = tree["monitors"]
    first_use: dict[str, int] = {}
    for i, monitor in enumerate(monitors if isinstance(monitors, list) else []):
        where = f"monitors[{i}]"
        name = at(monitor, "name")
        if isinstance(name, str) and name in first_use:
            problems.append(
                f"{where}.name: expected a name unique across monitors, "
                f"got {name!r}, already used by monitors[{first_use[name]}]"
            )
        elif isinstance(name, str):
            first_use[name] = i
        channel = at(monitor, "channel")
        if isinstance(channel, int) and isinstance(channels, int) and channel >= channels:
            problems.append(
                f"{where}.channel: expected an integer 0-{channels - 1} "
                f"(input.channels is {channels}), got {channel}"
            )
        onset_k, onset_n = at(monitor, "onset_k"), at(monitor, "onset_n")
        if isinstance(onset_k, int) and isinstance(onset_n, int) and onset_k > onset_n:
            problems.append(
                f"{where}.onset_k: expected an integer 1-{onset_n} (at most onset_n), got {onset_k}"
            )
    default_s, max_s = at(tree, "learn", "default_s"), at(tree, "learn", "max_s")
    if isinstance(default_s, float) and isinstance(max_s, float) and default_s > max_s:
        problems.append(
            f"learn.default_s: expected a number at most {max_s:g} (learn.max_s), "
            f"got {show(default_s)}"
        )
    pre_s, ring_s = at(tree, "clips", "pre_s"), at(tree, "input", "ring_s")
    if isinstance(pre_s, float) and isinstance(ring_s, float) and pre_s >= ring_s - 2:
        problems.append(
            f"clips.pre_s: expected a number below {ring_s - 2:g} (input.ring_s - 2), "
            f"got {show(pre_s)}"
        )
    max_clip_s = at(tree, "clips", "max_clip_s")
    if isinstance(max_clip_s, float) and isinstance(ring_s, float) and max_clip_s > ring_s - 2:
        problems.append(
            f"clips.max_clip_s: expected a number at most {ring_s - 2:g} (input.ring_s - 2), "
            f"got {show(max_clip_s)}"
        )
    if isinstance(max_clip_s, float) and isinstance(pre_s, float) and pre_s >= max_clip_s - 1:
        problems.append(
            f"clips.pre_s: expected a number below {show(max_clip_s - 1)} "
            "(clips.max_clip_s - 1), "
            f"got {show(pre_s)}"
        )
    low, high = at(tree, "mqtt", "reconnect_min_s"), at(tree, "mqtt", "reconnect_max_s")
    if isinstance(low, float) and isinstance(high, float) and low > high:
        problems.append(
            f"mqtt.reconnect_min_s: expected a number at most {high:g} "
            f"(mqtt.reconnect_max_s), got {show(low)}"
        )
    cert, key = at(tree, "mqtt", "tls", "cert_file"), at(tree, "mqtt", "tls", "key_file")
    if (cert is None) != (key is None) and INVALID not in (cert, key):
        problems.append("mqtt.tls.key_file: expected cert_file and key_file together, got one")
    password, password_file = at(tree, "mqtt", "password"), at(tree, "mqtt", "password_file")
    if isinstance(password, str) and isinstance(password_file, str):
        problems.append("mqtt.password: expected password or password_file, got both")
    cert, key = at(tree, "web", "tls_cert_file"), at(tree, "web", "tls_key_file")
    if (cert is None) != (key is None) and INVALID not in (cert, key):
        problems.append(
            "web.tls_key_file: expected tls_cert_file and tls_key_file together, got one"
        )


def _fill_derived(tree: dict[str, Any]) -> None:
    """Replace the nulls that stand for a derived value by that value."""
    if tree["device_id"] is None:
        tree["device_id"] = host_device_id()
    mqtt = tree["mqtt"]
    if mqtt["topic_prefix"] is None:
        mqtt["topic_prefix"] = f"asd/{tree['device_id']}"
    if mqtt["client_id"] is None:
        mqtt["client_id"] = f"asd-edge-{tree['device_id']}"
    clips = tree["clips"]
    if clips["max_clip_s"] is None:
        clips["max_clip_s"] = tree["input"]["ring_s"] - 2.0
