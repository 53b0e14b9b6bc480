"""``asd-train keygen``, ``push``, ``rollback`` and ``reset`` as a user runs them, against a
real mosquitto.

A small paho responder stands in for each device: it checks commands with
``asd_edge.modelstore.signing`` and the daemon's own model loader and answers on
``<prefix>/model`` and ``<prefix>/cmd_result`` as the issue 5 contract says. The real
daemon's push path is tested against the daemon itself elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import Client, MQTTMessage
from support.services import asd_train, wait_until

from asd_edge.detector import Detector
from asd_edge.errors import ModelError, Refused
from asd_edge.modelstore import load_public_key
from asd_edge.modelstore.signing import (
    format_issued_at,
    parse_push,
    parse_reset,
    parse_rollback,
)
from devkit.broker import Broker, free_port

OLD = {"name": "factory", "version": "20260101T000000Z-0000000", "sha256": "0" * 64}
"""The model each fake device runs before any push."""


class FakeDevice:
    """A paho client answering model pushes and rollbacks the way the daemon's contract says.

    It keeps the current and previous model of one monitor (``main``), publishes its
    retained status and model state, and remembers the model bytes it accepted.
    """

    def __init__(
        self,
        broker: Broker,
        device_id: str,
        folder: Path,
        *,
        key_file: Path | None,
        allow_unsigned: bool = False,
        router_limit: int | None = None,
        router_echoes_id: bool = True,
    ) -> None:
        self.device_id = device_id
        self.prefix = f"asd/{device_id}"
        self.folder = folder
        self.public_key = load_public_key(key_file) if key_file else None
        self.allow_unsigned = allow_unsigned
        self.router_limit = router_limit
        """Payloads larger than this are refused on cmd_result, as the daemon's router does."""
        self.router_echoes_id = router_echoes_id
        self.current: dict[str, Any] = dict(OLD)
        self.previous: dict[str, Any] | None = None
        self.accepted: list[bytes] = []
        self.commands: list[str] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client: Client = broker.client(client_id=f"fake-{device_id}")
        self.client.will_set(f"{self.prefix}/status", b'{"state":"offline"}', qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        wait_until(self._ready.is_set, what=f"{device_id} subscribed")
        # A stale answer to someone else's push, retained: the CLI must ignore it.
        self._publish_state({"id": "stale", "command": "model", "ok": False, "error": "old"})

    def _on_connect(self, client: Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        client.subscribe([(f"{self.prefix}/cmd/#", 1), ("asd/fleet/cmd/#", 1)])
        status = {"state": "online", "device_id": self.device_id}
        client.publish(f"{self.prefix}/status", json.dumps(status), qos=1, retain=True)

    def _on_message(self, _c: Client, _u: Any, message: MQTTMessage) -> None:
        suffix = message.topic.split("/cmd/", 1)[1]
        with self._lock:
            self.commands.append(suffix)
            if self.router_limit is not None and len(message.payload) > self.router_limit:
                peeked = json.loads(message.payload)["id"] if self.router_echoes_id else None
                limit = (
                    f"payload too large: {len(message.payload)} bytes, at most {self.router_limit}"
                )
                self._reply(suffix, peeked, limit)
                return
            try:
                data = json.loads(message.payload)
            except ValueError as exc:
                self._reply(suffix, None, f"payload is not JSON: {exc}")
                return
            request_id = data.pop("id", None)
            try:
                if suffix == "model":
                    last = self._push(data, request_id)
                elif suffix == "model/rollback":
                    last = self._rollback(data, request_id)
                else:
                    self._reply(suffix, request_id, f"unknown command {suffix!r}")
                    return
            except Refused as exc:
                last = {"id": request_id, "command": suffix, "ok": False, "error": exc.reason}
            self._publish_state(last)

    def _push(self, data: dict[str, Any], request_id: str | None) -> dict[str, Any]:
        request = parse_push(
            data,
            request_id=request_id,
            device_id=self.device_id,
            max_bytes=16_000_000,
            public_key=self.public_key,
            allow_unsigned=self.allow_unsigned,
        )
        path = self.folder / f"{self.device_id}-{request.sha256[:12]}.onnx"
        path.write_bytes(request.model)
        try:
            spec = Detector(path).spec
        except ModelError as exc:
            raise Refused(f"model: {exc.field}: {exc.problem}") from None
        self.accepted.append(request.model)
        self.previous = self.current
        self.current = {"name": spec.name, "version": spec.version, "sha256": request.sha256}
        return {"id": request.id, "command": "model", "ok": True, "error": None}

    def _rollback(self, data: dict[str, Any], request_id: str | None) -> dict[str, Any]:
        request = parse_rollback(
            data,
            request_id=request_id,
            device_id=self.device_id,
            public_key=self.public_key,
            allow_unsigned=self.allow_unsigned,
        )
        if self.previous is None:
            raise Refused("rollback: no previous model for monitor 'main'")
        self.current, self.previous = self.previous, self.current
        return {"id": request.id, "command": "model/rollback", "ok": True, "error": None}

    def _publish_state(self, last: dict[str, Any]) -> None:
        last_push = {**last, "monitor": "main", **self.current, "at": format_issued_at()}
        monitor = {**self.current, "kind": "level", "previous": self.previous, "last_error": None}
        state = {"device_id": self.device_id, "monitors": {"main": monitor}, "last_push": last_push}
        self.client.publish(f"{self.prefix}/model", json.dumps(state), qos=1, retain=True)

    def _reply(self, command: str, request_id: str | None, error: str) -> None:
        answer = {"command": command, "id": request_id, "ok": False, "error": error}
        self.client.publish(f"{self.prefix}/cmd_result", json.dumps(answer), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(push.key, device.key) made by ``asd-train keygen``."""
    out = tmp_path_factory.mktemp("keys")
    result = asd_train("keygen", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out / "push.key", out / "device.key"


@pytest.fixture
def devices(mqtt_broker: Broker, tmp_path: Path) -> Iterator[list[FakeDevice]]:
    """Fake devices made during the test (``make_device``); closed after it."""
    made: list[FakeDevice] = []
    yield made
    for device in made:
        device.close()


def make_device(
    made: list[FakeDevice], broker: Broker, device_id: str, folder: Path, **kw: Any
) -> FakeDevice:
    device = FakeDevice(broker, device_id, folder, **kw)
    made.append(device)
    return device


def broker_args(broker: Broker) -> list[str]:
    return ["--broker", f"{broker.host}:{broker.port}"]


def model_version(path: Path) -> tuple[str, str]:
    spec = Detector(path).spec
    return spec.name, spec.version


class TestKeygen:
    def test_keygen_prints_what_to_do_and_refuses_to_overwrite(self, tmp_path: Path) -> None:
        """keygen names both files and the key id; run again it exits 73 and keeps the keys."""
        first = asd_train("keygen", "--out", str(tmp_path))
        assert first.returncode == 0, first.stderr
        assert "push.key" in first.stdout and "push.key_file" in first.stdout
        kid = first.stdout.split("key id: ")[1].split()[0]
        assert len(kid) == 16
        before = (tmp_path / "push.key").read_bytes()
        again = asd_train("keygen", "--out", str(tmp_path))
        assert again.returncode == 73 and "already exists" in again.stderr
        assert (tmp_path / "push.key").read_bytes() == before


class TestPush:
    def test_accepted(
        self,
        mqtt_broker: Broker,
        devices: list[FakeDevice],
        keys: tuple[Path, Path],
        level_model: Path,
        tmp_path: Path,
    ) -> None:
        """A signed push is accepted: exit 0, the new version printed, the exact bytes
        delivered; the stale retained answer on the model topic is not taken for it."""
        device = make_device(devices, mqtt_broker, "press-1", tmp_path, key_file=keys[1])
        result = asd_train(
            "push", str(level_model), *broker_args(mqtt_broker), "--device", "press-1",
            "--key", str(keys[0]), "--timeout", "10",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        name, version = model_version(level_model)
        assert f"accepted: main now runs {name} {version}" in result.stdout
        assert device.accepted == [level_model.read_bytes()]
        assert "publishing" in result.stderr and "waiting" in result.stderr

    def test_refused_by_the_device(
        self,
        mqtt_broker: Broker,
        devices: list[FakeDevice],
        keys: tuple[Path, Path],
        level_model: Path,
        tmp_path: Path,
    ) -> None:
        """A device that holds another key refuses: exit 1 with its reason; an unsigned push
        to a device that does not allow it is refused the same way."""
        other = tmp_path / "other"
        assert asd_train("keygen", "--out", str(other)).returncode == 0
        device = make_device(
            devices, mqtt_broker, "press-2", tmp_path, key_file=other / "device.key"
        )
        common = [str(level_model), *broker_args(mqtt_broker), "--device", "press-2"]
        signed = asd_train("push", *common, "--key", str(keys[0]), "--timeout", "10")
        assert signed.returncode == 1, signed.stdout + signed.stderr
        assert "refused: bad signature" in signed.stdout
        unsigned = asd_train("push", *common, "--unsigned", "--timeout", "10", "--json")
        assert unsigned.returncode == 1, unsigned.stdout + unsigned.stderr
        document = json.loads(unsigned.stdout)
        assert document["results"][0]["status"] == "refused"
        assert document["results"][0]["error"].startswith("unsigned push refused")
        assert device.accepted == [] and device.commands == ["model", "model"]

    @pytest.mark.parametrize("echoes_id", [True, False])
    def test_refused_by_the_router(
        self,
        mqtt_broker: Broker,
        devices: list[FakeDevice],
        keys: tuple[Path, Path],
        level_model: Path,
        tmp_path: Path,
        echoes_id: bool,
    ) -> None:
        """A refusal on cmd_result (the command router: a payload over its limit) ends the
        wait at once with exit 1 and the reason, with or without the request id in it."""
        make_device(
            devices, mqtt_broker, "press-5", tmp_path, key_file=keys[1], router_limit=1000,
            router_echoes_id=echoes_id,
        )  # fmt: skip
        result = asd_train(
            "push", str(level_model), *broker_args(mqtt_broker), "--device", "press-5",
            "--key", str(keys[0]), "--timeout", "20",
        )  # fmt: skip
        assert result.returncode == 1, result.stdout + result.stderr
        assert "refused: payload too large" in result.stdout
        assert ("without a request id" in result.stdout) is not echoes_id

    def test_no_answer(
        self, mqtt_broker: Broker, keys: tuple[Path, Path], level_model: Path
    ) -> None:
        """Nobody answers: exit 75 after --timeout, saying the device may be offline."""
        offline = {"state": "offline", "device_id": "gone"}  # it connected once, long ago
        mqtt_broker.publish("asd/gone/status", json.dumps(offline), retain=True)
        result = asd_train(
            "push", str(level_model), *broker_args(mqtt_broker), "--device", "gone",
            "--key", str(keys[0]), "--timeout", "1",
        )  # fmt: skip
        assert result.returncode == 75, result.stdout + result.stderr
        assert "may be offline" in result.stderr and "reconnects" in result.stderr

    def test_a_device_that_never_connected_is_named_and_nothing_is_sent(
        self, mqtt_broker: Broker, keys: tuple[Path, Path], level_model: Path
    ) -> None:
        """A typo in --device: no retained status under its prefix, so exit 68 at once
        naming the device and the topic, and no command is left queued on the broker."""
        commands = mqtt_broker.subscriber("asd/+/cmd/#")
        result = asd_train(
            "push", str(level_model), *broker_args(mqtt_broker), "--device", "presss-1",
            "--key", str(keys[0]), "--timeout", "10",
        )  # fmt: skip
        assert result.returncode == 68, result.stdout + result.stderr
        assert "no device 'presss-1' on this broker" in result.stderr
        assert "asd/presss-1/status" in result.stderr and "nothing was published" in result.stderr
        time.sleep(0.5)
        assert commands.messages == []

    def test_unreachable_broker(self, keys: tuple[Path, Path], level_model: Path) -> None:
        """No broker on the port: exit 69 naming the broker."""
        port = free_port()
        result = asd_train(
            "push", str(level_model), "--broker", f"127.0.0.1:{port}", "--device", "x",
            "--key", str(keys[0]), "--timeout", "2",
        )  # fmt: skip
        assert result.returncode == 69, result.stdout + result.stderr
        assert f"127.0.0.1:{port}" in result.stderr

    def test_not_a_model_is_refused_locally(
        self, mqtt_broker: Broker, keys: tuple[Path, Path], tmp_path: Path
    ) -> None:
        """A file the daemon's loader rejects exits 65 with the reason and is never sent."""
        bogus = tmp_path / "model.onnx"
        bogus.write_bytes(b"this is not an ONNX file\n" * 10)
        watcher = mqtt_broker.subscriber("asd/#")
        result = asd_train(
            "push", str(bogus), *broker_args(mqtt_broker), "--device", "press-3",
            "--key", str(keys[0]),
        )  # fmt: skip
        assert result.returncode == 65, result.stdout + result.stderr
        assert "not a loadable ONNX model" in result.stderr and str(bogus) in result.stderr
        assert watcher.on("asd/press-3/cmd/model") == []

    def test_all_devices(
        self,
        mqtt_broker: Broker,
        devices: list[FakeDevice],
        keys: tuple[Path, Path],
        level_model: Path,
        tmp_path: Path,
    ) -> None:
        """--all: two online devices accept through the fleet topic, the offline one is listed
        as such and does not fail the command."""
        for name in ("line-a", "line-b"):
            make_device(devices, mqtt_broker, name, tmp_path, key_file=keys[1])
        offline = {"state": "offline", "device_id": "line-c"}
        mqtt_broker.publish("asd/line-c/status", json.dumps(offline), retain=True)
        result = asd_train(
            "push", str(level_model), *broker_args(mqtt_broker), "--all",
            "--key", str(keys[0]), "--timeout", "10", "--json",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        document = json.loads(result.stdout)
        assert document["topic"] == "asd/fleet/cmd/model"
        statuses = {r["device_id"]: r["status"] for r in document["results"]}
        assert statuses == {"line-a": "accepted", "line-b": "accepted", "line-c": "offline"}
        assert "line-c: offline: will receive it on reconnect" in result.stderr
        digest = hashlib.sha256(level_model.read_bytes()).hexdigest()
        for device in devices:
            assert [hashlib.sha256(m).hexdigest() for m in device.accepted] == [digest]

    def test_all_without_devices(
        self, mqtt_broker: Broker, keys: tuple[Path, Path], level_model: Path
    ) -> None:
        """--all with no device status on the broker: exit 69 saying none was found."""
        result = asd_train(
            "push", str(level_model), *broker_args(mqtt_broker), "--all", "--unsigned",
        )  # fmt: skip
        assert result.returncode == 69, result.stdout + result.stderr
        assert "no device found" in result.stderr


class TestRollback:
    def test_rollback_after_a_push(
        self,
        mqtt_broker: Broker,
        devices: list[FakeDevice],
        keys: tuple[Path, Path],
        level_model: Path,
        tmp_path: Path,
    ) -> None:
        """After a push, rollback returns the monitor to the model before it (exit 0); a
        second rollback of a device without a previous model is refused (exit 1)."""
        device = make_device(devices, mqtt_broker, "press-4", tmp_path, key_file=keys[1])
        common = [*broker_args(mqtt_broker), "--device", "press-4", "--key", str(keys[0])]
        assert asd_train("push", str(level_model), *common, "--quiet").returncode == 0
        back = asd_train("rollback", *common, "--monitor", "main", "--timeout", "10")
        assert back.returncode == 0, back.stdout + back.stderr
        assert f"accepted: main now runs {OLD['name']} {OLD['version']}" in back.stdout
        assert device.current["version"] == OLD["version"]
        device.previous = None
        again = asd_train("rollback", *common, "--timeout", "10")
        assert again.returncode == 1 and "no previous model" in again.stdout

    def test_help_lists_exit_codes(self) -> None:
        """--help of push, rollback and reset explains the exit codes, 75 included."""
        for command in ("push", "rollback", "reset"):
            result = asd_train(command, "--help")
            assert result.returncode == 0 and "75  no answer in time" in result.stdout


class TestReset:
    MARKER = "2099-01-01T00:00:00.000Z"

    def device(self, broker: Broker, device_id: str, model: dict[str, Any] | None) -> None:
        """A device as the broker remembers it: its retained status and model topic."""
        status = {"state": "online", "device_id": device_id}
        broker.publish(f"asd/{device_id}/status", json.dumps(status), retain=True)
        if model is not None:
            broker.publish(f"asd/{device_id}/model", json.dumps(model), retain=True)

    def test_the_marker_is_read_from_the_model_topic_and_signed(
        self, mqtt_broker: Broker, keys: tuple[Path, Path]
    ) -> None:
        """With --monitor, the reset clears that monitor's replay_marker from the retained
        model topic, signed with push.key for that device (the device would verify it);
        nobody answers here: exit 75."""
        a, b = {"replay_marker": "2026-01-01T00:00:00.000Z"}, {"replay_marker": self.MARKER}
        model = {"monitors": {"a": a, "b": b}}
        self.device(mqtt_broker, "two-1", {**model, "replay_floor": self.MARKER})
        commands = mqtt_broker.subscriber("asd/two-1/cmd/#")
        result = asd_train(
            "reset", *broker_args(mqtt_broker), "--device", "two-1", "--monitor", "b",
            "--key", str(keys[0]), "--timeout", "1",
        )  # fmt: skip
        assert result.returncode == 75, result.stdout + result.stderr
        assert f"replacing the replay marker {self.MARKER} of monitor b" in result.stderr
        (sent,) = commands.wait_for("asd/two-1/cmd/model/reset")
        data = json.loads(sent.payload)
        request = parse_reset(
            {k: v for k, v in data.items() if k != "id"},
            request_id=data["id"],
            device_id="two-1",
            public_key=load_public_key(keys[1]),
        )
        assert (request.monitor, request.clears, request.target) == ("b", self.MARKER, "two-1")

    def test_what_cannot_be_reset_is_said_and_nothing_is_sent(
        self, mqtt_broker: Broker, keys: tuple[Path, Path]
    ) -> None:
        """An asd-edge without resets (no replay_floor on its model topic) or an unknown
        monitor: exit 1 naming it; no marker at all: exit 0, nothing to reset; a
        malformed --clears: exit 2. Nothing is published in any case."""
        self.device(mqtt_broker, "old-1", {"monitors": {"main": {"version": "1"}}})
        self.device(mqtt_broker, "new-1", {"monitors": {"main": {}}, "replay_floor": None})
        commands = mqtt_broker.subscriber("asd/+/cmd/#")
        common = [*broker_args(mqtt_broker), "--key", str(keys[0]), "--timeout", "5"]
        cases = [
            (["--device", "old-1"], 1, "asd/old-1/model: no replay_floor: the device's asd-edge"),
            (["--device", "old-1", "--monitor", "main"], 1, "no replay_marker"),
            (
                ["--device", "new-1", "--monitor", "pump"],
                1,
                "no monitor named 'pump' on the device (main)",
            ),
            (["--device", "new-1"], 0, "the device has no replay marker: nothing to reset"),
            (["--device", "new-1", "--clears", "2099-01-01"], 2, "--clears: expected ISO 8601"),
        ]
        for args, code, message in cases:
            result = asd_train("reset", *common, *args)
            assert result.returncode == code, (args, result.stdout + result.stderr)
            assert message in result.stderr, (args, result.stderr)
        time.sleep(0.5)
        assert commands.messages == []
