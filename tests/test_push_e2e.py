"""Signed model push, end to end: ``asd-train keygen`` and ``asd-train push``/``rollback``
on the workstation side, the daemon as a subprocess on the virtual microphone, a real
mosquitto in between.

A good signed model is live within seconds and the next alert carries its version; a
tampered, unsigned, truncated, wrong-rate or non-ONNX push is refused with its reason
while detection goes on with the running model; the pushed model survives a restart;
rollback returns to the previous one.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.audio import write_wav
from support.e2e import ALERT, DEVICE, PREFIX, RATE, alerts, daemon_config, stream_with_bursts
from support.services import asd_train, start_daemon, wait_until

from asd_edge.modelstore import keyfiles, signing
from devkit.broker import Broker, Subscriber

pytestmark = [pytest.mark.realaudio, pytest.mark.slow]

MODEL_TOPIC = f"{PREFIX}/model"


def level_model(
    path: Path, *, version: str, rate: int = RATE, threshold: float = -30.0, name: str = "level"
) -> Path:
    from training.level import build_level_model, save_model

    model = build_level_model(
        sample_rate=rate, threshold_dbfs=threshold, version=version, name=name
    )
    return save_model(model, path)


def model_state(sub: Subscriber, version: str | None = None) -> dict[str, Any]:
    """The latest ``<prefix>/model`` message, once one runs ``version`` (if given)."""

    def latest() -> dict[str, Any] | None:
        got = sub.on(MODEL_TOPIC)
        if not got:
            return None
        state: dict[str, Any] = json.loads(got[-1].payload)
        if version is not None and state["monitors"]["pump"]["version"] != version:
            return None
        return state

    found: dict[str, Any] = wait_until(latest, 10, f"model {version}")
    return found


def answer(sub: Subscriber, request_id: str, timeout_s: float = 15) -> dict[str, Any]:
    """The device's answer to a request: ``last_push`` on the model topic."""

    def find() -> dict[str, Any] | None:
        for message in reversed(sub.on(MODEL_TOPIC)):
            last = json.loads(message.payload).get("last_push") or {}
            if last.get("id") == request_id:
                return dict(last)
        return None

    found: dict[str, Any] = wait_until(find, timeout_s, f"the answer to {request_id}")
    return found


def publish(broker: Broker, topic: str, payload: dict[str, Any]) -> None:
    client = broker.client()
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, json.dumps(payload).encode(), qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def burst_alert(sub: Subscriber, mic: Any, wav: Path) -> dict[str, Any]:
    """Play one burst; the start alert it raises."""
    before = len(alerts(sub))
    mic.play(wav, wait=True)
    wait_until(lambda: len(alerts(sub)) >= before + 2, 15, "an anomaly's start and end")
    return alerts(sub)[before]


def test_signed_push_refusals_restart_and_rollback(
    tmp_path: Path, virtual_mic: Any, mqtt_broker: Broker
) -> None:
    keys = tmp_path / "keys"
    made = asd_train("keygen", "--out", str(keys))
    assert made.returncode == 0, made.stderr
    original = level_model(tmp_path / "v1.onnx", version="v1")
    pushed = level_model(tmp_path / "v2.onnx", version="v2", threshold=-28.0, name="pushed")
    wrong_rate = level_model(tmp_path / "v48k.onnx", version="v48k", rate=48000)
    burst = write_wav(tmp_path / "burst.wav", stream_with_bursts(4.0, [(1.0, 1.0)]), RATE)
    config = daemon_config(
        tmp_path,
        mqtt_broker,
        original,
        virtual_mic.device,
        push={"key_file": str(keys / "device.key")},
    )
    broker_arg = f"{mqtt_broker.host}:{mqtt_broker.port}"
    sub = mqtt_broker.subscriber(f"{PREFIX}/#", "homeassistant/#")
    daemon = start_daemon(config, virtual_mic.env)
    try:
        daemon.wait_for("daemon_started", 20)
        wait_until(lambda: sub.on(MODEL_TOPIC), 10, "the model topic")
        assert model_state(sub)["monitors"]["pump"]["version"] == "v1"

        # a good signed push: live within seconds, and the next alert carries it
        asked = time.monotonic()
        done = asd_train(
            "push", str(pushed), "--broker", broker_arg, "--device", DEVICE,
            "--key", str(keys / "push.key"), "--timeout", "20",
        )  # fmt: skip
        live_s = time.monotonic() - asked
        assert done.returncode == 0, done.stdout + done.stderr
        assert "v2" in done.stdout
        state = model_state(sub, "v2")["monitors"]["pump"]
        assert (state["version"], state["source"]) == ("v2", "push")
        assert state["previous"]["version"] == "v1" and state["threshold"] == -28.0
        assert burst_alert(sub, virtual_mic, burst)["model"]["version"] == "v2"
        # Home Assistant learns the new model's name too (discovery is sent again)
        wait_until(
            lambda: any(
                b"model='pushed'" in m.payload for m in sub.messages if "config" in m.topic
            ),
            10,
            "discovery naming the pushed model",
        )

        # refusals, each with its reason; detection goes on with v2
        key = keyfiles.load_private_key(keys / "push.key")
        good = pushed.read_bytes()

        def message(model: bytes, **change: Any) -> dict[str, Any]:
            msg = signing.push_message(
                model,
                request_id=f"t-{uuid.uuid4().hex[:8]}",
                target=DEVICE,
                monitor="pump",
                private_key=key,
            )
            return {**msg, **change}

        tampered = message(good)
        raw = bytearray(base64.b64decode(tampered["model"]))
        raw[len(raw) // 2] ^= 0xFF
        tampered["model"] = base64.b64encode(bytes(raw)).decode()
        truncated = message(good)
        truncated["model"] = base64.b64encode(good[: len(good) // 2]).decode()
        not_onnx = message(b"this is not an ONNX model at all" * 100)
        unsigned = {k: v for k, v in message(good).items() if k not in ("signature", "key_id")}
        cases = {
            "tampered": (tampered, "sha256"),
            "truncated": (truncated, "truncated"),
            "non-onnx": (not_onnx, "onnx"),
            "unsigned": (unsigned, "unsigned"),
        }
        for what, (payload, reason) in cases.items():
            publish(mqtt_broker, f"{PREFIX}/cmd/model", payload)
            got = answer(sub, payload["id"])
            assert got["ok"] is False, (what, got)
            assert reason in got["error"].lower(), (what, got["error"])
        refused = asd_train(
            "push", str(wrong_rate), "--broker", broker_arg, "--device", DEVICE,
            "--key", str(keys / "push.key"), "--timeout", "20",
        )  # fmt: skip
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "48000" in refused.stdout + refused.stderr
        wait_until(lambda: model_state(sub)["monitors"]["pump"]["last_error"], 10, "last_error")
        state = model_state(sub)["monitors"]["pump"]
        assert state["version"] == "v2" and "48000" in state["last_error"]
        assert burst_alert(sub, virtual_mic, burst)["model"]["version"] == "v2"
    finally:
        assert daemon.stop() == 0

    # the pushed model survives a restart, with its predecessor kept for rollback
    sub.clear()
    daemon = start_daemon(config, virtual_mic.env)
    try:
        daemon.wait_for("daemon_started", 20)
        wait_until(lambda: [m for m in sub.on(MODEL_TOPIC) if b'"v2"' in m.payload], 10, "model v2")
        state = model_state(sub)["monitors"]["pump"]
        assert (state["version"], state["source"]) == ("v2", "push")
        back = asd_train(
            "rollback", "--broker", broker_arg, "--device", DEVICE,
            "--key", str(keys / "push.key"), "--timeout", "20",
        )  # fmt: skip
        assert back.returncode == 0, back.stdout + back.stderr
        state = model_state(sub, "v1")["monitors"]["pump"]
        assert (state["version"], state["source"]) == ("v1", "rollback")
        assert state["previous"]["version"] == "v2"
        assert burst_alert(sub, virtual_mic, burst)["model"]["version"] == "v1"
    finally:
        assert daemon.stop() == 0
    print(f"signed push live {live_s:.2f} s after asd-train push started")
    assert [a for a in alerts(sub) if a["phase"] == "start"]
    assert not [m for m in sub.on(ALERT) if json.loads(m.payload).get("type") == "input"]
