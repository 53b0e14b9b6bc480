"""The daemon's configuration: a YAML file parsed once into typed, frozen dataclasses."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import socket
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    Final,
    Literal,
    TypeGuard,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

import yaml

from asd_edge.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ClipsConfig",
    "Config",
    "DetectorConfig",
    "InputConfig",
    "LogFormat",
    "LogLevel",
    "LoggingConfig",
    "MonitorConfig",
    "MqttConfig",
    "config_to_dict",
    "load_config",
    "parse_config",
]

DEFAULT_CONFIG_PATH: Final = Path("/etc/asd-edge/config.yaml")
"""Where the daemon reads its configuration when it is not given a path."""

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "console"]

# Field metadata understood by the validator: "min"/"max" (numbers, inclusive),
# "pattern" (strings, whole match), "describe" (the expectation shown for a bad
# string), "path" (a non-empty path, resolved against the config file's directory),
# "secret" (redacted by config_to_dict, never echoed in errors), "internal" (not a key).
_DEVICE_ID: Final = r"^[A-Za-z0-9_-]{1,64}$"
"""A device_id goes into MQTT topics, so it is kept to these characters."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InputConfig:
    """The audio input: one PortAudio stream and a ring buffer per channel."""

    device: str | int | None = field(default=None, metadata={"min": 0})
    """PortAudio device name or index; None opens the system default input."""
    sample_rate: int | None = field(default=None, metadata={"min": 8000, "max": 192000})
    """Capture rate in Hz; None captures at the models' rate when the device allows it."""
    channels: int = field(default=1, metadata={"min": 1, "max": 32})
    """How many input channels to open."""
    block_s: float = field(default=0.02, metadata={"min": 0.001, "max": 1.0})
    """PortAudio block length, in seconds."""
    ring_s: float = field(default=60.0, metadata={"min": 5.0, "max": 600.0})
    """Seconds of audio kept in memory per channel."""
    stall_timeout_s: float = field(default=2.0, metadata={"min": 0.2, "max": 60.0})
    """No new samples for this many seconds means the stream is dead."""
    restart_backoff_max_s: float = field(default=30.0, metadata={"min": 1.0, "max": 3600.0})
    """Cap, in seconds, of the back-off between stream restarts."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorConfig:
    """One model watching one input channel, and when its scores make an event."""

    name: str = field(metadata={"pattern": r"^[a-z0-9][a-z0-9_-]{0,63}$"})
    """Unique name of the monitor, used in topics, logs and clip file names."""
    channel: int = field(default=0, metadata={"min": 0})
    """Input channel the model listens to, 0 <= channel < input.channels."""
    model: str = field(
        metadata={"path": True, "pattern": r"^.*\.onnx$", "describe": "a path to a .onnx file"}
    )
    """Absolute path of the ONNX model (relative in the file: against the file's directory)."""
    hop_s: float = field(default=0.5, metadata={"min": 0.05, "max": 10.0})
    """Seconds between two scores."""
    threshold: float | None = None
    """Score above which a frame is anomalous; None uses the model's calibrated threshold."""
    onset_k: int = field(default=2, metadata={"min": 1, "max": 100})
    """An event starts when onset_k of the last onset_n scores are above threshold."""
    onset_n: int = field(default=3, metadata={"min": 1, "max": 100})
    """How many recent scores the onset rule looks at."""
    hold_s: float = field(default=1.0, metadata={"min": 0.0, "max": 3600.0})
    """Seconds below threshold before an event ends."""
    refractory_s: float = field(default=5.0, metadata={"min": 0.0, "max": 86400.0})
    """Seconds after an event ends during which no new event starts."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorConfig:
    """How the ONNX models are run."""

    threads: int = field(default=1, metadata={"min": 1, "max": 64})
    """onnxruntime intra-op threads per model."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttConfig:
    """The MQTT broker that alerts are published to."""

    host: str = field(
        default="localhost", metadata={"pattern": r"^\S+$", "describe": "a non-empty host name"}
    )
    """Broker host name or address."""
    port: int = field(default=1883, metadata={"min": 1, "max": 65535})
    """Broker TCP port."""
    topic_prefix: str | None = field(
        default=None,
        metadata={
            "pattern": r"^[^+#/\x00](?:[^+#\x00]*[^+#/\x00])?$",
            "describe": "a topic prefix without '+' or '#' that neither starts nor ends with '/'",
        },
    )
    """Prefix of every topic published; None in the file means "asd/<device_id>"."""
    client_id: str | None = None
    """MQTT client id; None in the file means "asd-edge-<device_id>"."""
    username: str | None = None
    """User name for the broker; None connects without credentials."""
    password: str | None = field(default=None, metadata={"secret": True})
    """Password for the broker (redacted when shown); prefer password_file."""
    password_file: str | None = field(default=None, metadata={"path": True})
    """Absolute path of a file holding the password (relative in the file: as for model)."""
    keepalive_s: int = field(default=60, metadata={"min": 5, "max": 3600})
    """MQTT keep-alive interval, in seconds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClipsConfig:
    """The audio clips saved around each event."""

    pre_s: float = field(default=5.0, metadata={"min": 0.0, "max": 300.0})
    """Seconds of audio kept from before the event starts; below input.ring_s - 2."""
    post_s: float = field(default=5.0, metadata={"min": 0.0, "max": 300.0})
    """Seconds of audio kept from after the event ends."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    """What the daemon logs and how."""

    level: LogLevel = "info"
    """Lowest level that is logged."""
    format: LogFormat = "auto"
    """json lines, a readable console format, or auto: console on a TTY, json otherwise."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration; build it with load_config or parse_config."""

    device_id: str | None = field(default=None, metadata={"pattern": _DEVICE_ID})
    """Name of this machine in topics and alerts; parsed, never None (null: the host name)."""
    state_dir: str = field(default="/var/lib/asd-edge", metadata={"path": True})
    """Absolute path of the directory for the daemon's persistent state."""
    input: InputConfig = field(default_factory=InputConfig)
    """The audio input."""
    monitors: tuple[MonitorConfig, ...] = field(default_factory=tuple)
    """The models, one per monitored channel (a list in the file)."""
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    """How the models are run."""
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    """The MQTT broker; once parsed, topic_prefix and client_id are never None."""
    clips: ClipsConfig = field(default_factory=ClipsConfig)
    """The clips saved around events."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Logging."""
    source: str | None = field(default=None, compare=False, metadata={"internal": True})
    """Absolute path of the file this came from (not a key); None when not read from a file."""


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read, parse and check a YAML configuration file; None gives the defaults.

    Relative paths in the file are resolved against the file's directory (against
    the working directory when ``path`` is None). Raises ConfigError listing every
    problem found; a file that cannot be read or parsed is named in the message.
    """
    if path is None:
        return parse_config(None, base_dir=Path.cwd())
    shown = os.fspath(path)
    try:
        raw = Path(shown).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{shown}: cannot read the configuration file: {reason}") from exc
    data = _load_yaml(raw, shown)
    config = parse_config(data, base_dir=Path(shown).parent)
    return dataclasses.replace(config, source=os.path.abspath(shown))


def parse_config(data: object, *, base_dir: str | os.PathLike[str]) -> Config:
    """Check already-loaded YAML data (None counts as empty) and build the Config.

    Relative paths are resolved against ``base_dir``. Raises ConfigError listing
    every problem, each as ``dotted.path: expected ..., got ...``.
    """
    problems: list[str] = []
    tree = _convert_mapping(Config, data, "", os.path.abspath(base_dir), problems)
    if isinstance(tree, dict):
        _check_across_fields(tree, problems)
    if problems or not isinstance(tree, dict):
        raise ConfigError(problems)
    _fill_derived(tree)
    return _build(Config, tree)


def config_to_dict(cfg: Config, *, redact: bool = True) -> dict[str, Any]:
    """The configuration as plain, YAML-dumpable data; secrets are "***" if ``redact``."""
    return _to_plain(cfg, redact)


# --- YAML ------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key repeated in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the base class reports it
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _load_yaml(raw: bytes, shown: str) -> object:
    """The YAML document in ``raw``; a ConfigError naming the file (and line) if it is bad."""
    try:
        return yaml.load(raw, Loader=_StrictLoader)  # a SafeLoader: builds plain data only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark is not None else shown
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(f"{where}: invalid YAML: {what}") from exc
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        # ValueError: a date such as 2024-13-45, or an integer too long to convert.
        raise ConfigError(f"{shown}: invalid YAML: {exc}") from exc


# --- the generic validator -------------------------------------------------------------

_INVALID: Final = object()
"""Stands in the parsed tree for a value that was reported as a problem."""

_T = TypeVar("_T")


def _schema(cls: type) -> dict[str, tuple[Any, dataclasses.Field[Any]]]:
    """The YAML keys of a config dataclass: name -> (resolved type, field)."""
    hints = get_type_hints(cls)
    return {
        f.name: (hints[f.name], f)
        for f in dataclasses.fields(cls)
        if not f.metadata.get("internal")
    }


def _is_record(tp: object) -> TypeGuard[type[Any]]:
    """Whether a schema type is a config dataclass (a mapping in the file)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert_mapping(
    cls: type, value: object, path: str, base_dir: str, problems: list[str]
) -> dict[str, Any] | object:
    """The fields of ``cls`` read from ``value`` as a dict (defaults filled), or _INVALID."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        problems.append(f"{path or '<top level>'}: expected a mapping, got {_show(value)}")
        return _INVALID
    schema = _schema(cls)
    for key in value:
        if key not in schema:
            hint = ""
            if isinstance(key, str) and (close := difflib.get_close_matches(key, schema, n=1)):
                hint = f"; did you mean {close[0]!r}?"
            problems.append(f"{_join(path, key)}: unknown key{hint}")
    tree: dict[str, Any] = {}
    for name, (tp, f) in schema.items():
        where = _join(path, name)
        if name in value:
            raw = value[name]
        elif f.default is not dataclasses.MISSING:
            raw = f.default
        elif f.default_factory is not dataclasses.MISSING:
            raw = None  # a section or a list: converting None gives its defaults
        else:
            problems.append(f"{where}: required key is missing")
            tree[name] = _INVALID
            continue
        tree[name] = _convert(tp, f.metadata, raw, where, base_dir, problems)
    return tree


def _convert(
    tp: Any, meta: Mapping[str, Any], value: object, path: str, base_dir: str, problems: list[str]
) -> object:
    """``value`` parsed as a ``tp`` (dataclasses as dicts, tuples as lists), or _INVALID."""
    if _is_record(tp):
        return _convert_mapping(tp, value, path, base_dir, problems)
    if get_origin(tp) is tuple:
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            problems.append(f"{path}: expected a list, got {_show(value)}")
            return _INVALID
        item_tp = get_args(tp)[0]
        return [
            _convert(item_tp, {}, item, f"{path}[{i}]", base_dir, problems)
            for i, item in enumerate(value)
        ]
    ok, parsed = _match(tp, meta, value, base_dir)
    if ok:
        return parsed
    shown = _kind(value) if meta.get("secret") else _show(value)
    problems.append(f"{path}: expected {_describe(tp, meta)}, got {shown}")
    return _INVALID


def _match(tp: Any, meta: Mapping[str, Any], value: object, base_dir: str) -> tuple[bool, object]:
    """Whether ``value`` is a ``tp`` meeting the field's constraints, and its parsed form."""
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        for member in get_args(tp):
            ok, parsed = _match(member, meta, value, base_dir)
            if ok:
                return True, parsed
        return False, None
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in get_args(tp)), value
    if tp is type(None):
        return value is None, None
    if tp is bool:
        return isinstance(value, bool), value
    if isinstance(value, bool):  # a bool is an int to Python, never to this schema
        return False, None
    if tp is int:
        return isinstance(value, int) and _in_range(value, meta), value
    if tp is float:
        if not isinstance(value, int | float):
            return False, None
        try:
            number = float(value)
        except OverflowError:
            return False, None
        return math.isfinite(number) and _in_range(number, meta), number
    if tp is str:
        if not isinstance(value, str):
            return False, None
        pattern = meta.get("pattern")
        if pattern is not None and re.fullmatch(pattern, value) is None:
            return False, None
        if meta.get("path"):
            if not value or "\x00" in value:
                return False, None
            return True, os.path.normpath(os.path.join(base_dir, value))
        return True, value
    raise TypeError(f"config schema: unsupported type {tp!r}")


def _in_range(number: float, meta: Mapping[str, Any]) -> bool:
    low, high = meta.get("min"), meta.get("max")
    return (low is None or number >= low) and (high is None or number <= high)


def _describe(tp: Any, meta: Mapping[str, Any]) -> str:
    """What a value of ``tp`` with these constraints looks like, for an error message."""
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        parts = [_describe(member, meta) for member in get_args(tp)]
        return ", ".join(parts[:-1]) + " or " + parts[-1]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if tp is str:
        if "describe" in meta:
            return str(meta["describe"])
        if "pattern" in meta:
            return f"a string matching {meta['pattern']}"
        return "a non-empty path" if meta.get("path") else "a string"
    if tp is int or tp is float:
        return ("an integer" if tp is int else "a number") + _range_text(meta)
    return "null" if tp is type(None) else "true or false"


def _range_text(meta: Mapping[str, Any]) -> str:
    low, high = meta.get("min"), meta.get("max")
    if low is not None and high is not None:
        return f" {_number(low)}-{_number(high)}"
    if low is not None:
        return f" >= {_number(low)}"
    return f" <= {_number(high)}" if high is not None else ""


def _number(number: float) -> str:
    """A bound as a person writes it: 5, not 5.0; 0.001, not 1e-03."""
    return str(int(number)) if number == int(number) else repr(number)


def _kind(value: object) -> str:
    """The kind of a YAML value, without the value (for secrets and containers)."""
    if value is None:
        return "null"
    kinds = [(bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string")]
    kinds += [(Mapping, "a mapping"), (list, "a list"), (tuple, "a list"), (bytes, "binary data")]
    for kind, text in kinds:
        if isinstance(value, kind):
            return text
    return f"a {type(value).__name__}"


def _show(value: object) -> str:
    """A found value as written in an error message: 'abc', 70000, true, null, a list."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if len(value) <= 100 else repr(value[:100]) + "..."
    if isinstance(value, int | float):
        try:
            return repr(value)
        except ValueError:  # more digits than int -> str allows
            return "an integer too long to show"
    return _kind(value)


def _join(path: str, key: object) -> str:
    name = key if isinstance(key, str) else repr(key)
    return f"{path}.{name}" if path else name


def _check_across_fields(tree: dict[str, Any], problems: list[str]) -> None:
    """The checks that involve two fields, on the values that were valid on their own."""
    channels = _at(tree, "input", "channels")
    monitors = tree["monitors"]
    first_use: dict[str, int] = {}
    for i, monitor in enumerate(monitors if isinstance(monitors, list) else []):
        where = f"monitors[{i}]"
        name = _at(monitor, "name")
        if isinstance(name, str) and name in first_use:
            problems.append(
                f"{where}.name: expected a name unique across monitors, "
                f"got {name!r}, already used by monitors[{first_use[name]}]"
            )
        elif isinstance(name, str):
            first_use[name] = i
        channel = _at(monitor, "channel")
        if isinstance(channel, int) and isinstance(channels, int) and channel >= channels:
            problems.append(
                f"{where}.channel: expected an integer 0-{channels - 1} "
                f"(input.channels is {channels}), got {channel}"
            )
        onset_k, onset_n = _at(monitor, "onset_k"), _at(monitor, "onset_n")
        if isinstance(onset_k, int) and isinstance(onset_n, int) and onset_k > onset_n:
            problems.append(
                f"{where}.onset_k: expected an integer 1-{onset_n} (at most onset_n), got {onset_k}"
            )
    pre_s, ring_s = _at(tree, "clips", "pre_s"), _at(tree, "input", "ring_s")
    if isinstance(pre_s, float) and isinstance(ring_s, float) and pre_s >= ring_s - 2:
        problems.append(
            f"clips.pre_s: expected a number below {ring_s - 2:g} (input.ring_s - 2), "
            f"got {_show(pre_s)}"
        )
    password, password_file = _at(tree, "mqtt", "password"), _at(tree, "mqtt", "password_file")
    if isinstance(password, str) and isinstance(password_file, str):
        problems.append("mqtt.password: expected password or password_file, got both")


def _at(tree: object, *keys: str) -> object:
    """The parsed value at ``keys`` in the tree, or _INVALID if it or a parent is invalid."""
    for key in keys:
        if not isinstance(tree, dict):
            return _INVALID
        tree = tree[key]
    return tree


def _fill_derived(tree: dict[str, Any]) -> None:
    """Replace the nulls that stand for a derived value by that value."""
    if tree["device_id"] is None:
        host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64]
        tree["device_id"] = host or "asd-edge"
    mqtt = tree["mqtt"]
    if mqtt["topic_prefix"] is None:
        mqtt["topic_prefix"] = f"asd/{tree['device_id']}"
    if mqtt["client_id"] is None:
        mqtt["client_id"] = f"asd-edge-{tree['device_id']}"


def _build(cls: type[_T], tree: Mapping[str, Any]) -> _T:
    """The dataclass instance for a parsed tree in which every value is valid."""
    kwargs: dict[str, Any] = {}
    for name, (tp, _f) in _schema(cls).items():
        value = tree[name]
        if _is_record(tp):
            value = _build(tp, value)
        elif get_origin(tp) is tuple:
            item_tp = get_args(tp)[0]
            is_record = _is_record(item_tp)
            value = tuple(_build(item_tp, item) if is_record else item for item in value)
        kwargs[name] = value
    return cls(**kwargs)


def _to_plain(obj: object, redact: bool) -> dict[str, Any]:
    plain: dict[str, Any] = {}
    for name, (_tp, f) in _schema(type(obj)).items():
        value = getattr(obj, name)
        if dataclasses.is_dataclass(value):
            value = _to_plain(value, redact)
        elif isinstance(value, tuple):
            value = [
                _to_plain(item, redact) if dataclasses.is_dataclass(item) else item
                for item in value
            ]
        elif redact and f.metadata.get("secret") and value is not None:
            value = "***"
        plain[name] = value
    return plain
