"""Clock-safe pushes end to end: the daemon as a subprocess (replaying a recording, no
sound hardware), a real mosquitto, and ``asd-train push``/``rollback``/``reset`` as a
user runs them.

A push dated ahead of the device's clock is refused; once one was accepted anyway
(here: under a push.max_clock_skew_s of a day, as a device with a wrong clock or an
asd-edge without the check would have), every push and rollback is a "replay" until a
signed reset from the key holder replaces the marker; the reset cannot be replayed,
forged or sent unsigned. The replay state lives in ``state_dir`` and outlives a
reinstall, a new configuration and a damaged state.json.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.audio import write_wav
from support.e2e import DEVICE, PREFIX, RATE, daemon_config
from support.services import asd_train, start_daemon, wait_until

from asd_edge.modelstore import keyfiles, signing
from devkit.broker import Broker, Subscriber
from devkit.daemonproc import DaemonProcess

pytestmark = pytest.mark.slow

MODEL_TOPIC = f"{PREFIX}/model"
DAY_S = 86400


def level_model(path: Path, version: str, threshold: float) -> Path:
    from training.level import build_level_model, save_model

    return save_model(build_level_model(threshold_dbfs=threshold, version=version), path)


def issued_at(offset_s: float) -> str:
    """issued_at ``offset_s`` seconds from now."""
    return signing.format_issued_at(datetime.fromtimestamp(time.time() + offset_s, UTC))


def running(config: Path, sub: Subscriber) -> DaemonProcess:
    """The daemon on ``config``, once it published its model topic (it is subscribed)."""
    sub.clear()
    daemon = start_daemon(config)
    daemon.wait_for("daemon_started", 20)
    wait_until(lambda: sub.on(MODEL_TOPIC), 10, "the model topic")
    return daemon


def model_state(sub: Subscriber) -> dict[str, Any]:
    """The latest ``<prefix>/model`` message."""
    state: dict[str, Any] = json.loads(sub.on(MODEL_TOPIC)[-1].payload)
    return state


def answer(sub: Subscriber, request_id: str, since: int = 0) -> dict[str, Any]:
    """The device's answer to a request: ``last_push`` on the model topic (in its
    ``since``-th message or a later one)."""

    def find() -> dict[str, Any] | None:
        for message in reversed(sub.on(MODEL_TOPIC)[since:]):
            last = json.loads(message.payload).get("last_push") or {}
            if last.get("id") == request_id:
                return dict(last)
        return None

    found: dict[str, Any] = wait_until(find, 15, f"the answer to {request_id}")
    return found


def publish(broker: Broker, topic: str, payload: bytes) -> None:
    client = broker.client()
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def sent(sub: Subscriber, command: str) -> bytes:
    """The last command ``asd-train`` published on ``<prefix>/cmd/<command>`` (anyone on
    the broker who may read it could keep it and send it again)."""
    payload: bytes = sub.on(f"{PREFIX}/cmd/{command}")[-1].payload
    return payload


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def test_a_wedged_device_recovers_with_a_signed_reset_and_replays_stay_refused(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    keys, stranger = tmp_path / "keys", tmp_path / "stranger"
    for folder in (keys, stranger):
        made = asd_train("keygen", "--out", str(folder))
        assert made.returncode == 0, made.stderr
    original = level_model(tmp_path / "v1.onnx", "v1", -30.0)
    v2 = level_model(tmp_path / "v2.onnx", "v2", -28.0)
    v3 = level_model(tmp_path / "v3.onnx", "v3", -26.0)
    quiet = np.random.default_rng(0).standard_normal(60 * RATE).astype(np.float32) * 0.003
    wav = write_wav(tmp_path / "quiet.wav", quiet, RATE)
    push_section = {"key_file": str(keys / "device.key")}
    lenient = daemon_config(
        tmp_path,
        mqtt_broker,
        original,
        f"file:{wav}",
        push={**push_section, "max_clock_skew_s": DAY_S},
    )
    sub = mqtt_broker.subscriber(f"{PREFIX}/#")
    key = keyfiles.load_private_key(keys / "push.key")
    common = ["--broker", f"{mqtt_broker.host}:{mqtt_broker.port}", "--device", DEVICE]
    signed = [*common, "--key", str(keys / "push.key"), "--timeout", "15"]

    # A push dated 20 hours ahead, accepted only because this device allows a day of skew.
    ahead = issued_at(20 * 3600)
    wedging = signing.push_message(
        v2.read_bytes(), request_id="wedge", target=DEVICE, monitor=None, private_key=key,
        issued_at=ahead,
    )  # fmt: skip
    daemon = running(lenient, sub)
    try:
        publish(mqtt_broker, f"{PREFIX}/cmd/model", json.dumps(wedging).encode())
        assert answer(sub, "wedge")["ok"] is True
    finally:
        assert daemon.stop() == 0

    # Back to the default skew: a push dated a year ahead is refused with the reason, and
    # every push and rollback of today is a replay.
    config = daemon_config(tmp_path, mqtt_broker, original, f"file:{wav}", push=push_section)
    daemon = running(config, sub)
    try:
        state = model_state(sub)
        assert state["replay_floor"] == ahead == state["monitors"]["pump"]["replay_marker"]
        year = signing.push_message(
            v3.read_bytes(), request_id="year", target=DEVICE, monitor=None, private_key=key,
            issued_at=issued_at(365 * DAY_S),
        )  # fmt: skip
        publish(mqtt_broker, f"{PREFIX}/cmd/model", json.dumps(year).encode())
        assert "ahead of this device's clock" in answer(sub, "year")["error"]
        pushed = asd_train("push", str(v3), *signed)
        assert pushed.returncode == 1 and "a replay is refused" in pushed.stdout, output(pushed)
        back = asd_train("rollback", *signed)
        assert back.returncode == 1 and "a replay is refused" in back.stdout, output(back)

        # Resets that must not work: the wrong marker, another key, unsigned.
        wrong = asd_train("reset", *signed, "--clears", "2099-01-01T00:00:00.000Z")
        assert wrong.returncode == 1, output(wrong)
        assert "refused: clears: 2099-01-01T00:00:00.000Z is not the replay marker" in wrong.stdout
        forged = asd_train("reset", *common, "--key", str(stranger / "push.key"))
        assert forged.returncode == 1 and "refused: bad signature" in forged.stdout, output(forged)
        unsigned = signing.reset_message(
            request_id="unsigned", target=DEVICE, monitor=None, clears=ahead, private_key=None
        )
        publish(mqtt_broker, f"{PREFIX}/cmd/model/reset", json.dumps(unsigned).encode())
        assert answer(sub, "unsigned")["error"].startswith("unsigned reset refused")
        assert model_state(sub)["replay_floor"] == ahead

        # The key holder's reset, reading the marker from the model topic, recovers it.
        reset = asd_train("reset", *signed)
        assert reset.returncode == 0, output(reset)
        assert f"replacing the replay marker {ahead} of the device" in reset.stderr
        assert f"accepted: the device's replay markers are reset ({ahead} -> " in reset.stdout
        reset_message = sent(sub, "model/reset")
        state = model_state(sub)
        assert state["replay_floor"] == state["monitors"]["pump"]["replay_marker"] < ahead
        assert state["monitors"]["pump"]["version"] == "v2"  # no model changed
        first = asd_train("push", str(v3), *signed)
        assert first.returncode == 0 and "now runs level v3" in first.stdout, output(first)
        older = sent(sub, "model")
        second = asd_train("push", str(v2), *signed)
        assert second.returncode == 0, output(second)

        # The same reset, sent again by someone who kept it, is refused.
        since = len(sub.on(MODEL_TOPIC))
        publish(mqtt_broker, f"{PREFIX}/cmd/model/reset", reset_message)
        replayed = answer(sub, json.loads(reset_message)["id"], since)
        assert replayed["ok"] is False and replayed["error"].startswith("clears: ")
    finally:
        assert daemon.stop() == 0

    # A reinstall that keeps state_dir: a new configuration (its model installed elsewhere),
    # a new process. The older signed push, sent again, is refused; and again with the
    # monitor's state.json damaged (the device-wide floor holds it).
    reinstalled = tmp_path / "reinstalled"
    reinstalled.mkdir()
    shipped = reinstalled / "level.onnx"
    shipped.write_bytes(original.read_bytes())
    fresh = daemon_config(
        reinstalled, mqtt_broker, shipped, f"file:{wav}", push=push_section,
        state_dir=str(tmp_path / "state"),
    )  # fmt: skip
    older_id = json.loads(older)["id"]
    for damage in ("none", "state.json damaged"):
        if damage != "none":
            (tmp_path / "state" / "models" / "pump" / "state.json").write_text("{\x00")
        daemon = running(fresh, sub)
        try:
            publish(mqtt_broker, f"{PREFIX}/cmd/model", older)
            refused = answer(sub, older_id)
            assert refused["ok"] is False and "a replay is refused" in refused["error"], damage
            assert model_state(sub)["monitors"]["pump"]["version"] != "v3", damage
        finally:
            assert daemon.stop() == 0
    assert "replay floor" in refused["error"]
