"""Tests of asd_edge.config: the shipped file, defaults, strict checking, dumping."""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import re
import socket
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin, get_type_hints

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from support import REPO
from support.files import REJECTED_KINDS, rejected_file

from asd_edge.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    MonitorConfig,
    config_to_dict,
    load_config,
    parse_config,
)
from asd_edge.errors import ConfigError

SHIPPED = REPO / "config" / "asd-edge.yaml"
BASE = Path("/srv/asd")
"""base_dir of parse_config in these tests; nothing is read from it."""

MONITOR = {"name": "main", "model": "m.onnx"}


def parse(data: object) -> Config:
    return parse_config(data, base_dir=BASE)


def problems_of(data: object) -> list[str]:
    """The problems parse_config reports for ``data`` (it must report some)."""
    with pytest.raises(ConfigError) as caught:
        parse(data)
    return caught.value.problems


def record_keys(cls: type) -> dict[str, Any]:
    """The YAML keys of a config dataclass and their types, as the user sees them."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "source"}


def missing_keys(cls: type, data: object, path: str) -> list[str]:
    """Every key of ``cls`` (recursively) that ``data`` does not spell out."""
    if not isinstance(data, dict):
        return [f"{path or '<top level>'} (not a mapping)"]
    missing = []
    for name, tp in record_keys(cls).items():
        where = f"{path}.{name}" if path else name
        if name not in data:
            missing.append(where)
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            missing += missing_keys(tp, data[name], where)
        elif get_origin(tp) is tuple:
            items = data[name] or []
            if not items:
                missing.append(f"{where}[0]")
            for i, item in enumerate(items):
                missing += missing_keys(get_args(tp)[0], item, f"{where}[{i}]")
    return missing


class TestShippedConfig:
    """config/asd-edge.yaml, the documented defaults shipped with the project."""

    def test_parses(self) -> None:
        """The shipped file is valid and configures the one 'main' monitor."""
        cfg = load_config(SHIPPED)
        assert cfg.source == str(SHIPPED)
        assert [m.name for m in cfg.monitors] == ["main"]
        assert cfg.monitors[0].model == str(REPO / "models" / "level.onnx")
        assert cfg.state_dir == "/var/lib/asd-edge"

    def test_every_field_is_a_key_in_the_file(self) -> None:
        """Each dataclass field appears in the shipped file, so the docs cannot drift."""
        data = yaml.safe_load(SHIPPED.read_text())
        assert missing_keys(Config, data, "") == []

    def test_every_key_is_commented(self) -> None:
        """Every key line has a comment on it or just above it explaining the key."""
        lines = SHIPPED.read_text().splitlines()
        uncommented = []
        for i, line in enumerate(lines):
            if re.match(r"^\s*(- )?[a-z_]+:", line) and "#" not in line:
                above = lines[i - 1].strip() if i else ""
                if not above.startswith("#"):
                    uncommented.append(line.strip())
        assert uncommented == []

    def test_values_are_the_defaults(self) -> None:
        """Apart from its monitor, the shipped file sets every key to its default."""
        shipped = load_config(SHIPPED)
        assert dataclasses.replace(shipped, monitors=()) == parse(None)
        assert shipped.monitors[0] == dataclasses.replace(
            parse({"monitors": [MONITOR]}).monitors[0], model=shipped.monitors[0].model
        )


class TestDefaults:
    """What an empty configuration means."""

    def test_empty_file(self, tmp_path: Path) -> None:
        """An empty file is valid and gives every default."""
        path = tmp_path / "empty.yaml"
        path.write_text("# nothing set\n")
        cfg = load_config(path)
        assert cfg == parse(None)
        assert cfg.source == str(path)

    def test_no_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """load_config(None) gives the defaults, relative paths against the cwd."""
        monkeypatch.chdir(tmp_path)
        cfg = load_config(None)
        assert cfg == parse({})
        assert cfg.source is None
        assert cfg.monitors == ()

    def test_default_values(self) -> None:
        """The defaults are the documented ones."""
        cfg = parse(None)
        assert cfg.state_dir == "/var/lib/asd-edge"
        assert (cfg.input.device, cfg.input.sample_rate, cfg.input.channels) == (None, None, 1)
        assert (cfg.input.block_s, cfg.input.ring_s, cfg.input.stall_timeout_s) == (0.1, 60, 2)
        assert cfg.input.restart_backoff_max_s == 30
        assert cfg.detector.threads == 1
        assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.keepalive_s) == ("localhost", 1883, 60)
        assert (cfg.mqtt.username, cfg.mqtt.password, cfg.mqtt.password_file) == (None,) * 3
        assert (cfg.clips.pre_s, cfg.clips.post_s) == (5, 5)
        assert (cfg.logging.level, cfg.logging.format) == ("info", "auto")
        assert str(DEFAULT_CONFIG_PATH) == "/etc/asd-edge/config.yaml"

    def test_stopped_machine_settings(self) -> None:
        """A stopped machine is a state by default (held 2 s); ``alert`` is accepted."""
        default = parse({"monitors": [MONITOR]}).monitors[0]
        assert (default.stopped, default.stopped_hold_s) == ("state", 2.0)
        chosen = parse({"monitors": [{**MONITOR, "stopped": "alert", "stopped_hold_s": 5}]})
        assert (chosen.monitors[0].stopped, chosen.monitors[0].stopped_hold_s) == ("alert", 5.0)

    def test_monitor_defaults(self) -> None:
        """A monitor needs only a name and a model."""
        monitor = parse({"monitors": [MONITOR]}).monitors[0]
        assert monitor == MonitorConfig(
            name="main", model="/srv/asd/m.onnx", channel=0, hop_s=0.5, threshold=None,
            onset_k=2, onset_n=3, hold_s=1.0, refractory_s=5.0,
        )  # fmt: skip

    def test_null_section_is_empty(self) -> None:
        """A section left empty in YAML (null) takes its defaults."""
        assert parse({"mqtt": None, "input": None, "monitors": None}) == parse({})

    def test_frozen(self) -> None:
        """A parsed config cannot be changed by the code that uses it."""
        cfg = parse(None)
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.mqtt.port = 1  # type: ignore[misc]


class TestEffectiveValues:
    """device_id, topic_prefix and client_id when left null, and when set."""

    def test_device_id_is_the_sanitised_host_name(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """null device_id: the host name, characters outside [A-Za-z0-9_-] made '-'."""
        monkeypatch.setattr(socket, "gethostname", lambda: "press 4.plant.example")
        cfg = parse(None)
        assert cfg.device_id == "press-4-plant-example"
        assert cfg.mqtt.topic_prefix == "asd/press-4-plant-example"
        assert cfg.mqtt.client_id == "asd-edge-press-4-plant-example"

    def test_long_host_name_is_cut_to_a_valid_id(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A host name longer than 64 characters still gives a valid device_id."""
        monkeypatch.setattr(socket, "gethostname", lambda: "h" * 100)
        device_id = parse(None).device_id
        assert device_id == "h" * 64
        assert parse({"device_id": device_id}).device_id == device_id

    def test_explicit_device_id_drives_the_mqtt_names(self) -> None:
        """An explicit device_id is used in the derived topic prefix and client id."""
        cfg = parse({"device_id": "Line_2-press"})
        assert cfg.device_id == "Line_2-press"
        assert cfg.mqtt.topic_prefix == "asd/Line_2-press"
        assert cfg.mqtt.client_id == "asd-edge-Line_2-press"

    def test_explicit_mqtt_names_are_kept(self) -> None:
        """An explicit topic_prefix and client_id are used as they are."""
        cfg = parse({"mqtt": {"topic_prefix": "plant/hall 3/asd", "client_id": "x"}})
        assert (cfg.mqtt.topic_prefix, cfg.mqtt.client_id) == ("plant/hall 3/asd", "x")

    @pytest.mark.parametrize("device_id", ["a b", "a/b", "", "x" * 65, "é"])
    def test_bad_device_id(self, device_id: str) -> None:
        """A device_id that would break an MQTT topic is refused."""
        assert problems_of({"device_id": device_id}) == [
            f"device_id: expected a string matching ^[A-Za-z0-9_-]{{1,64}}$ or null, "
            f"got {device_id!r}"
        ]

    @pytest.mark.parametrize("prefix", ["a/+/b", "a/#", "/asd", "asd/", "/", ""])
    def test_bad_topic_prefix(self, prefix: str) -> None:
        """A topic prefix with a wildcard or a leading/trailing '/' is refused."""
        assert problems_of({"mqtt": {"topic_prefix": prefix}}) == [
            "mqtt.topic_prefix: expected a topic prefix without '+' or '#' that neither "
            f"starts nor ends with '/' or null, got {prefix!r}"
        ]


class TestPaths:
    """Relative paths are resolved against the config file's directory."""

    def test_relative_paths_follow_the_file(self, tmp_path: Path) -> None:
        """model, state_dir and password_file are stored absolute, from the file's dir."""
        (tmp_path / "etc").mkdir()
        path = tmp_path / "etc" / "c.yaml"
        path.write_text(
            "state_dir: state\n"
            "mqtt: {password_file: secrets/mqtt.pw}\n"
            "monitors: [{name: a, model: ../models/a.onnx}, {name: b, model: /m/b.onnx}]\n"
        )
        cfg = load_config(path)
        assert cfg.state_dir == str(tmp_path / "etc" / "state")
        assert cfg.mqtt.password_file == str(tmp_path / "etc" / "secrets" / "mqtt.pw")
        assert [m.model for m in cfg.monitors] == [str(tmp_path / "models" / "a.onnx"), "/m/b.onnx"]

    def test_relative_config_path(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A config file named relative to the cwd still resolves against its own dir."""
        (tmp_path / "conf").mkdir()
        (tmp_path / "conf" / "c.yaml").write_text("monitors: [{name: a, model: a.onnx}]\n")
        monkeypatch.chdir(tmp_path)
        cfg = load_config(os.path.join("conf", "c.yaml"))
        assert cfg.monitors[0].model == str(tmp_path / "conf" / "a.onnx")
        assert cfg.source == str(tmp_path / "conf" / "c.yaml")

    def test_model_existence_is_not_checked(self) -> None:
        """A model file that does not exist is the model loader's problem, not config's."""
        assert parse({"monitors": [MONITOR]}).monitors[0].model == "/srv/asd/m.onnx"

    @pytest.mark.parametrize("model", ["model.pt", "", "onnx"])
    def test_model_must_be_an_onnx_path(self, model: str) -> None:
        """A model path that is not a .onnx file is refused."""
        assert problems_of({"monitors": [{"name": "a", "model": model}]}) == [
            f"monitors[0].model: expected a path to a .onnx file, got {model!r}"
        ]


class TestUnknownKeys:
    """A key the schema does not have is an error, with a did-you-mean for typos."""

    def test_top_level(self) -> None:
        """A misspelt section is named, with the section it was probably meant as."""
        assert problems_of({"mqqt": {}}) == ["mqqt: unknown key; did you mean 'mqtt'?"]

    def test_nested(self) -> None:
        """A misspelt key inside a section is named with its dotted path."""
        assert problems_of({"input": {"sampel_rate": 16000}}) == [
            "input.sampel_rate: unknown key; did you mean 'sample_rate'?"
        ]

    def test_in_a_list_item(self) -> None:
        """A misspelt key in a monitor is named with the monitor's index."""
        assert problems_of({"monitors": [MONITOR, {**MONITOR, "name": "b", "hpo_s": 1}]}) == [
            "monitors[1].hpo_s: unknown key; did you mean 'hop_s'?"
        ]

    def test_no_suggestion_when_nothing_is_close(self) -> None:
        """With no close key, the message has no suggestion."""
        assert problems_of({"mqtt": {"qos": 1}}) == ["mqtt.qos: unknown key"]

    def test_source_is_not_a_key(self) -> None:
        """Config.source records the file; it cannot be set from the file."""
        assert problems_of({"source": "x"}) == ["source: unknown key"]

    def test_non_string_key(self) -> None:
        """A key that is not a string is reported, not crashed on."""
        assert problems_of({"input": {1: 2}}) == ["input.1: unknown key"]


class TestValues:
    """Bad types and out-of-range values, with the exact message users see."""

    @pytest.mark.parametrize(
        ("data", "problem"),
        [
            ({"mqtt": {"port": "abc"}}, "mqtt.port: expected an integer 1-65535, got 'abc'"),
            ({"mqtt": {"port": 70000}}, "mqtt.port: expected an integer 1-65535, got 70000"),
            ({"mqtt": {"port": 1883.0}}, "mqtt.port: expected an integer 1-65535, got 1883.0"),
            (
                {"logging": {"level": "verbose"}},
                "logging.level: expected one of 'debug', 'info', 'warning', 'error', got 'verbose'",
            ),
            (
                {"logging": {"format": None}},
                "logging.format: expected one of 'auto', 'json', 'console', got null",
            ),
            ({"input": {"block_s": 2}}, "input.block_s: expected a number 0.001-1, got 2"),
            ({"input": {"ring_s": "60s"}}, "input.ring_s: expected a number 5-600, got '60s'"),
            (
                {"input": {"sample_rate": 4000}},
                "input.sample_rate: expected an integer 8000-192000 or null, got 4000",
            ),
            (
                {"input": {"device": 1.5}},
                "input.device: expected a string, an integer >= 0 or null, got 1.5",
            ),
            (
                {"input": {"device": -1}},
                "input.device: expected a string, an integer >= 0 or null, got -1",
            ),
            ({"detector": {"threads": 0}}, "detector.threads: expected an integer 1-64, got 0"),
            ({"mqtt": {"host": ""}}, "mqtt.host: expected a non-empty host name, got ''"),
            ({"mqtt": {"username": 42}}, "mqtt.username: expected a string or null, got 42"),
            ({"state_dir": None}, "state_dir: expected a non-empty path, got null"),
            (
                {"monitors": [{**MONITOR, "threshold": ".nan"}]},
                "monitors[0].threshold: expected a number or null, got '.nan'",
            ),
            (
                {"monitors": [{**MONITOR, "name": "Main"}]},
                "monitors[0].name: expected a string matching ^[a-z0-9][a-z0-9_-]{0,63}$, "
                "got 'Main'",
            ),
            (
                {"monitors": [{**MONITOR, "stopped": "ignore"}]},
                "monitors[0].stopped: expected one of 'state', 'alert', got 'ignore'",
            ),
            (
                {"monitors": [MONITOR, {**MONITOR, "name": "b", "stopped": True}]},
                "monitors[1].stopped: expected one of 'state', 'alert', got true",
            ),
            (
                {"monitors": [{**MONITOR, "stopped_hold_s": -1}]},
                "monitors[0].stopped_hold_s: expected a number 0-3600, got -1",
            ),
            ({"input": {"ring_s": [60]}}, "input.ring_s: expected a number 5-600, got a list"),
            (
                {"input": {"ring_s": datetime.date(2024, 1, 2)}},
                "input.ring_s: expected a number 5-600, got a date",
            ),
        ],
    )
    def test_bad_value(self, data: object, problem: str) -> None:
        """Each bad value is reported as 'path: expected X, got Y'."""
        assert problems_of(data) == [problem]

    @pytest.mark.parametrize("value", [True, False])
    def test_bool_is_not_an_int(self, value: bool) -> None:
        """YAML true/false is refused where an integer or a number is expected."""
        shown = "true" if value else "false"
        assert problems_of({"input": {"channels": value, "block_s": value}}) == [
            f"input.channels: expected an integer 1-32, got {shown}",
            f"input.block_s: expected a number 0.001-1, got {shown}",
        ]

    def test_int_is_a_float(self) -> None:
        """An integer is accepted where a number is expected, and stored as a float."""
        cfg = parse({"input": {"ring_s": 30}})
        assert cfg.input.ring_s == 30.0
        assert isinstance(cfg.input.ring_s, float)

    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
    def test_non_finite_numbers(self, value: float) -> None:
        """NaN, infinities and integers too big for a float are not numbers here."""
        (problem,) = problems_of({"monitors": [{**MONITOR, "threshold": value}]})
        assert problem.startswith("monitors[0].threshold: expected a number or null, got ")

    def test_integer_too_long_to_print(self) -> None:
        """An integer with more digits than Python will print is still reported."""
        assert problems_of({"mqtt": {"port": 10**5000}}) == [
            "mqtt.port: expected an integer 1-65535, got an integer too long to show"
        ]

    def test_device_name_or_index(self) -> None:
        """input.device takes a PortAudio device name or index."""
        assert parse({"input": {"device": "hw:1,0"}}).input.device == "hw:1,0"
        assert parse({"input": {"device": 2}}).input.device == 2

    def test_section_not_a_mapping(self) -> None:
        """A section given as a list or a scalar is reported as such."""
        assert problems_of({"mqtt": ["localhost"], "clips": 5}) == [
            "mqtt: expected a mapping, got a list",
            "clips: expected a mapping, got 5",
        ]

    def test_top_level_not_a_mapping(self) -> None:
        """A document that is not a mapping is reported, whatever it is."""
        assert problems_of(["a"]) == ["<top level>: expected a mapping, got a list"]
        assert problems_of("mqtt") == ["<top level>: expected a mapping, got 'mqtt'"]

    def test_monitors_not_a_list(self) -> None:
        """monitors must be a list, and each monitor a mapping."""
        assert problems_of({"monitors": MONITOR}) == ["monitors: expected a list, got a mapping"]
        assert problems_of({"monitors": ["main"]}) == [
            "monitors[0]: expected a mapping, got 'main'"
        ]

    def test_required_keys(self) -> None:
        """A monitor without its name or model names the missing key."""
        assert problems_of({"monitors": [{"name": "a"}, {"model": "b.onnx"}]}) == [
            "monitors[0].model: required key is missing",
            "monitors[1].name: required key is missing",
        ]

    def test_secret_is_not_echoed(self) -> None:
        """A bad password is reported by its kind only, never by its value."""
        assert problems_of({"mqtt": {"password": 123456}}) == [
            "mqtt.password: expected a string or null, got an integer"
        ]

    def test_several_problems_at_once(self) -> None:
        """All problems are reported together, each with its own path."""
        data = {
            "devise_id": "x",
            "input": {"channels": 0},
            "monitors": [{"name": "a", "model": "a.onnx", "hop_s": 0}],
            "mqtt": {"port": "abc"},
            "logging": "debug",
        }
        assert problems_of(data) == [
            "devise_id: unknown key; did you mean 'device_id'?",
            "input.channels: expected an integer 1-32, got 0",
            "monitors[0].hop_s: expected a number 0.05-10, got 0",
            "mqtt.port: expected an integer 1-65535, got 'abc'",
            "logging: expected a mapping, got 'debug'",
        ]

    def test_error_message_lists_every_problem(self) -> None:
        """str(ConfigError) is one line per problem, ready to print."""
        with pytest.raises(ConfigError) as caught:
            parse({"mqtt": {"port": 0, "keepalive_s": 1}})
        assert str(caught.value) == (
            "mqtt.port: expected an integer 1-65535, got 0\n"
            "mqtt.keepalive_s: expected an integer 5-3600, got 1"
        )


class TestCrossFieldChecks:
    """Checks that involve two keys."""

    def test_duplicate_monitor_names(self) -> None:
        """Two monitors with one name are refused, naming both."""
        data = {"monitors": [MONITOR, {**MONITOR, "name": "b"}, MONITOR]}
        assert problems_of(data) == [
            "monitors[2].name: expected a name unique across monitors, "
            "got 'main', already used by monitors[0]"
        ]

    def test_channel_beyond_input_channels(self) -> None:
        """A monitor's channel must be below input.channels."""
        data = {"input": {"channels": 2}, "monitors": [{**MONITOR, "channel": 2}]}
        assert problems_of(data) == [
            "monitors[0].channel: expected an integer 0-1 (input.channels is 2), got 2"
        ]
        data["monitors"] = [{**MONITOR, "channel": 1}]
        assert parse(data).monitors[0].channel == 1

    def test_onset_k_above_onset_n(self) -> None:
        """onset_k of onset_n scores cannot ask for more scores than it looks at."""
        data = {"monitors": [{**MONITOR, "onset_k": 4, "onset_n": 3}]}
        assert problems_of(data) == [
            "monitors[0].onset_k: expected an integer 1-3 (at most onset_n), got 4"
        ]
        data["monitors"] = [{**MONITOR, "onset_k": 3, "onset_n": 3}]
        assert parse(data).monitors[0].onset_k == 3

    def test_clip_pre_roll_must_fit_in_the_ring(self) -> None:
        """clips.pre_s must be below input.ring_s - 2."""
        data: dict[str, Any] = {"input": {"ring_s": 30}, "clips": {"pre_s": 28}}
        assert problems_of(data) == [
            "clips.pre_s: expected a number below 28 (input.ring_s - 2), got 28.0"
        ]
        data["clips"]["pre_s"] = 27.9
        assert parse(data).clips.pre_s == 27.9

    def test_clip_length_must_fit_in_the_ring(self) -> None:
        """clips.max_clip_s defaults to input.ring_s - 2 and may not exceed it."""
        assert parse({"input": {"ring_s": 30}}).clips.max_clip_s == 28.0
        assert problems_of({"input": {"ring_s": 30}, "clips": {"max_clip_s": 29}}) == [
            "clips.max_clip_s: expected a number at most 28 (input.ring_s - 2), got 29.0"
        ]

    def test_clip_pre_roll_must_leave_room_in_the_clip(self) -> None:
        """The pre-roll must leave at least a second of the clip for the event itself."""
        assert problems_of({"clips": {"pre_s": 10, "max_clip_s": 10.5}}) == [
            "clips.pre_s: expected a number below 9.5 (clips.max_clip_s - 1), got 10.0"
        ]

    def test_reconnect_backoff_bounds_in_order(self) -> None:
        """The first reconnect back-off may not exceed its cap."""
        assert problems_of({"mqtt": {"reconnect_min_s": 10, "reconnect_max_s": 5}}) == [
            "mqtt.reconnect_min_s: expected a number at most 5 (mqtt.reconnect_max_s), got 10.0"
        ]

    def test_tls_certificate_needs_its_key(self) -> None:
        """A client certificate without its key (or the reverse) is refused."""
        assert problems_of({"mqtt": {"tls": {"cert_file": "c.pem"}}}) == [
            "mqtt.tls.key_file: expected cert_file and key_file together, got one"
        ]

    def test_password_and_password_file(self) -> None:
        """Setting both a password and a password file is ambiguous, so refused."""
        assert problems_of({"mqtt": {"password": "pw", "password_file": "pw.txt"}}) == [
            "mqtt.password: expected password or password_file, got both"
        ]

    def test_skipped_when_a_side_is_invalid(self) -> None:
        """A cross-field check does not pile onto a value already reported as bad."""
        data = {"input": {"channels": "two"}, "monitors": [{**MONITOR, "channel": 5}]}
        assert problems_of(data) == ["input.channels: expected an integer 1-32, got 'two'"]


class TestLoadConfig:
    """Reading the file: errors that are about the file, not its keys."""

    def test_missing_file_is_named(self, tmp_path: Path) -> None:
        """A missing file is a ConfigError naming the file."""
        path = tmp_path / "nope.yaml"
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert caught.value.problems == [
            f"{path}: cannot read the configuration file: No such file or directory"
        ]

    def test_directory_is_named(self, tmp_path: Path) -> None:
        """A directory given as the config file is a ConfigError naming it."""
        with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
            load_config(tmp_path)

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("kind", REJECTED_KINDS)
    def test_not_a_regular_file_or_too_large_is_refused_unread(
        self, tmp_path: Path, kind: str
    ) -> None:
        """A FIFO, /dev/zero or a 2 GB sparse file given as the configuration is a
        ConfigError naming it at once, unread (a configuration is at most 1 MiB)."""
        path, problem = rejected_file(tmp_path, kind)
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        (message,) = caught.value.problems
        assert message.startswith(f"{path}: cannot read the configuration file: {problem}")

    def test_syntax_error_names_file_line_and_column(self, tmp_path: Path) -> None:
        """A YAML syntax error names the file, the line and the column."""
        path = tmp_path / "bad.yaml"
        path.write_text("mqtt:\n  host: a\n  port: [1883\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        (problem,) = caught.value.problems
        assert re.fullmatch(rf"{re.escape(str(path))}:\d+:\d+: invalid YAML: .+", problem)

    def test_tab_indentation_names_the_line(self, tmp_path: Path) -> None:
        """A classic mistake, a tab in the indentation, points at its line."""
        path = tmp_path / "tab.yaml"
        path.write_text("mqtt:\n\tport: 1883\n")
        with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:2:1: invalid YAML: "):
            load_config(path)

    def test_duplicate_key(self, tmp_path: Path) -> None:
        """A key given twice is an error, not a silent 'last one wins'."""
        path = tmp_path / "dup.yaml"
        path.write_text("mqtt:\n  port: 1\n  host: h\n  port: 2\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert caught.value.problems == [f"{path}:4:3: invalid YAML: duplicate key 'port'"]

    def test_bad_date_is_a_config_error(self, tmp_path: Path) -> None:
        """A value PyYAML reads as an impossible date is a ConfigError naming the file."""
        path = tmp_path / "date.yaml"
        path.write_text("state_dir: 2024-13-45\n")
        with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: invalid YAML: "):
            load_config(path)

    def test_value_problems_from_a_file(self, tmp_path: Path) -> None:
        """Problems in a file's values use the same dotted-path messages."""
        path = tmp_path / "c.yaml"
        path.write_text("mqtt:\n  port: abc\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert caught.value.problems == ["mqtt.port: expected an integer 1-65535, got 'abc'"]


class TestConfigToDict:
    """The effective configuration as plain data."""

    DATA: ClassVar[dict[str, Any]] = {
        "device_id": "edge-1",
        "input": {"device": "hw:1", "channels": 2, "sample_rate": 16000},
        "monitors": [MONITOR, {"name": "b", "channel": 1, "model": "b.onnx", "threshold": 0.5}],
        "mqtt": {"username": "asd", "password": "hunter2"},
        "logging": {"level": "debug", "format": "json"},
    }

    def test_password_is_redacted(self) -> None:
        """The password is shown as *** by default, and only when it is set."""
        assert config_to_dict(parse(self.DATA))["mqtt"]["password"] == "***"
        assert config_to_dict(parse({}))["mqtt"]["password"] is None
        assert "hunter2" not in yaml.safe_dump(config_to_dict(parse(self.DATA)))

    def test_unredacted_round_trip(self) -> None:
        """The unredacted dict parses back to an equal config, through YAML too."""
        cfg = parse(self.DATA)
        plain = config_to_dict(cfg, redact=False)
        assert plain["mqtt"]["password"] == "hunter2"
        assert parse(plain) == cfg
        assert parse(yaml.safe_load(yaml.safe_dump(plain))) == cfg

    def test_redacted_round_trip(self) -> None:
        """The redacted dict parses back to the same config but for the password."""
        cfg = parse(self.DATA)
        again = parse(config_to_dict(cfg))
        assert again == dataclasses.replace(cfg, mqtt=dataclasses.replace(cfg.mqtt, password="***"))

    def test_effective_values_and_shape(self) -> None:
        """The dict holds the effective values, lists for monitors, and no source."""
        plain = config_to_dict(load_config(SHIPPED))
        assert "source" not in plain
        assert isinstance(plain["monitors"], list)
        assert plain["mqtt"]["topic_prefix"] == f"asd/{plain['device_id']}"
        assert plain["monitors"][0]["model"] == str(REPO / "models" / "level.onnx")


JUNK = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.dates()
    | st.binary(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=12) | st.integers() | st.none(), inner, max_size=4)
    ),
    max_leaves=20,
)


NEAR_REQUIRED: dict[str, st.SearchStrategy[Any]] = {
    "name": st.sampled_from(["main", "pump-2", "Main", ""]),
    "model": st.sampled_from(["m.onnx", "/models/x.onnx", "m.pt"]),
}
"""Values for the required keys, mostly valid, so that whole monitors get through."""


def _plausible(tp: Any) -> st.SearchStrategy[Any]:
    """Values of about the right type and range, so that the checks deep inside run."""
    origin = get_origin(tp)
    if origin is tuple:
        return st.lists(_shaped(get_args(tp)[0]), max_size=3)
    if dataclasses.is_dataclass(tp):
        return _shaped(tp)
    if origin is Literal:
        return st.sampled_from([*get_args(tp), "verbose"])
    if get_args(tp):
        return st.one_of([_plausible(member) for member in get_args(tp)])
    strategies: dict[Any, st.SearchStrategy[Any]] = {
        type(None): st.none(),
        bool: st.booleans(),
        int: st.integers(-2, 100) | st.sampled_from([1883, 16000, 70000]),
        float: st.floats(-1, 700) | st.integers(0, 100),
        str: st.sampled_from(["edge-1", "a/b", "x+", "hw:1", "/var/x", "state", ""]),
    }
    return strategies[tp]


def _shaped(cls: Any) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings with some of a dataclass's keys, holding plausible values or junk."""
    hints = get_type_hints(cls)
    required, optional = {}, {}
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required[f.name] = NEAR_REQUIRED[f.name]
        else:
            optional[f.name] = _plausible(hints[f.name]) | JUNK
    return st.fixed_dictionaries(required, optional=optional)


VALID_MONITOR = st.fixed_dictionaries(
    {
        "name": st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True),
        "model": st.sampled_from(["m.onnx", "../m/x.onnx", "/models/y.onnx"]),
    },
    optional={
        "channel": st.integers(0, 3),
        "hop_s": st.floats(0.05, 10) | st.integers(1, 10),
        "threshold": st.none() | st.floats(-1e9, 1e9),
        "onset_k": st.integers(1, 3),
        "onset_n": st.integers(5, 100),
        "hold_s": st.floats(0, 3600),
        "refractory_s": st.floats(0, 86400) | st.integers(0, 86400),
    },
)
"""A monitor that is valid when input.channels is 4."""


class TestRandomInput:
    """Whatever the file holds, the only exception is ConfigError."""

    @given(JUNK)
    def test_junk(self, data: object) -> None:
        """Arbitrary YAML-able data is either a Config or a ConfigError."""
        try:
            assert isinstance(parse(data), Config)
        except ConfigError as exc:
            assert exc.problems
            assert all(isinstance(p, str) and p for p in exc.problems)

    @given(_shaped(Config))
    def test_schema_shaped_junk(self, data: dict[str, Any]) -> None:
        """Near-valid data is a ConfigError or a Config that round-trips through dicts."""
        try:
            cfg = parse(data)
        except ConfigError as exc:
            assert exc.problems
            return
        assert parse(config_to_dict(cfg, redact=False)) == cfg

    @given(st.lists(VALID_MONITOR, max_size=4, unique_by=lambda m: m["name"]))
    def test_valid_monitors_round_trip(self, monitors: list[dict[str, Any]]) -> None:
        """Any valid monitors parse, in order, and survive a trip through YAML."""
        cfg = parse({"input": {"channels": 4}, "monitors": monitors})
        assert [m.name for m in cfg.monitors] == [m["name"] for m in monitors]
        assert parse(yaml.safe_load(yaml.safe_dump(config_to_dict(cfg)))) == cfg

    @given(text=st.text(max_size=200))
    def test_junk_text(self, text: str, tmp_path_factory: pytest.TempPathFactory) -> None:
        """Arbitrary text as a config file gives a Config or a ConfigError."""
        path = tmp_path_factory.mktemp("junk") / "c.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            assert isinstance(load_config(path), Config)
        except ConfigError as exc:
            assert exc.problems
