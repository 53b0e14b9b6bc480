"""End to end: a machine that stops and starts again, heard by the daemon (a subprocess)
through the virtual microphone, with a real mosquitto.

What a user sees: while the machine is stopped (room tone 20 dB under its running
level) there is no anomaly, the retained monitor topic and the health report say
``machine: stopped`` (and, with ``stopped: alert``, a machine alert starts and ends);
once it runs again, a fault is alerted with evidence naming the band it raised.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.audio import write_wav
from support.e2e import ALERT, PREFIX, RATE, daemon_config, request_health
from support.machine import FAULT, FAULT_BAND, SECONDS, STOP, level_bands_model, machine_session
from support.services import start_daemon, wait_until

from devkit.broker import Broker

pytestmark = [pytest.mark.realaudio, pytest.mark.slow]

MONITOR = f"{PREFIX}/monitor/pump"


def payloads(messages: list[Any], kind: str | None = None) -> list[tuple[float, dict[str, Any]]]:
    """(arrival time, payload) of messages, of alert type ``kind`` if given."""
    out = [(m.received_at, json.loads(m.payload)) for m in messages]
    return [(t, p) for t, p in out if kind is None or p.get("type") == kind]


@dataclass
class Session:
    """What a played session left: the subscriber, when playback began, the retained
    monitor state read 4 s into the stop, and the health report asked for then."""

    sub: Any
    played_at: float
    retained: Any
    health: dict[str, Any]


def play_session(
    tmp_path: Path, broker: Broker, mic: Any, model: Path, monitor: dict[str, Any], wav: Path
) -> Session:
    """Run the daemon on ``model`` while ``wav`` (the stop-restart-fault session) plays;
    read the retained monitor state and the health report well inside the stop (the hold
    of 2 s has passed, the restart is 4 s away); return once the fault's start and end
    alerts arrived and a second more passed, with the daemon stopped (exit 0)."""
    sub = broker.subscriber(f"{PREFIX}/#")
    config = daemon_config(tmp_path, broker, model, mic.device, monitors=[monitor])
    daemon = start_daemon(config, mic.env)
    try:
        daemon.wait_for("daemon_started", 20)
        wait_until(lambda: sub.on(f"{PREFIX}/status"), 10, "status online")
        played_at = time.time()
        player = mic.play(wav, wait=False)
        time.sleep(max(0.0, played_at + STOP[0] + 4.0 - time.time()))
        late = broker.subscriber(MONITOR)
        retained = late.wait_for(MONITOR, 1, 5)[0]
        late.close()
        health = request_health(broker, sub)
        assert player.wait(timeout=SECONDS + 30) == 0
        wait_until(
            lambda: [p["phase"] for _, p in payloads(sub.on(ALERT), "anomaly")] == ["start", "end"],
            15,
            "the fault's start and end; anomaly alerts (s from playback, phase, score): "
            + repr([(round(t - played_at, 1), p["phase"], p.get("score"))
                    for t, p in payloads(sub.on(ALERT), "anomaly")]),
        )  # fmt: skip
        time.sleep(1.0)  # nothing more should come
    finally:
        code = daemon.stop()
    assert code == 0
    return Session(sub, played_at, retained, health)


def test_stopped_machine_is_no_anomaly_and_a_fault_after_restart_is_alerted(
    tmp_path: Path, virtual_mic: Any, mqtt_broker: Broker
) -> None:
    """The stop-restart-fault session played in real time: the only anomaly is the fault
    (after the restart, with evidence naming its band); during the stop a new subscriber
    gets ``machine: stopped`` retained, the health report says so, and the machine alert
    (``stopped: alert``) starts and ends with one id."""
    model = level_bands_model(tmp_path / "machine.onnx")
    wav = write_wav(tmp_path / "session.wav", machine_session(model), RATE)
    monitor = {"name": "pump", "model": str(model.path), "refractory_s": 1.0, "stopped": "alert"}
    session = play_session(tmp_path, mqtt_broker, virtual_mic, model.path, monitor, wav)
    sub, played_at, retained, health = (
        session.sub,
        session.played_at,
        session.retained,
        session.health,
    )
    # the retained monitor state during the stop
    assert retained.retain, "the monitor state is retained"
    state = json.loads(retained.payload)
    assert state["machine"] == "stopped" and state["anomaly"] is False
    assert state["window_level_dbfs"] < -38.0
    (pump,) = health["monitors"]
    assert pump["machine"] == "stopped"
    # exactly one anomaly: the fault, detected after the restart
    start, end = (p for _, p in payloads(sub.on(ALERT), "anomaly"))
    detected = next(t for t, p in payloads(sub.on(ALERT), "anomaly") if p["phase"] == "start")
    assert played_at + FAULT[0] <= detected <= played_at + FAULT[1] + 1.0
    assert start["id"] == end["id"]
    band = model.edges_hz[FAULT_BAND]
    assert start["evidence"][0]["band_hz"] == band and end["evidence"][0]["band_hz"] == band
    # the machine went stopped then running on the live monitor topic, before the fault
    states = [(t, p["machine"]) for t, p in payloads(sub.on(MONITOR))]
    stopped_at = next(t for t, m in states if m == "stopped" and t >= played_at + STOP[0])
    running_at = next(t for t, m in states if m == "running" and t > stopped_at)
    assert stopped_at <= played_at + STOP[0] + 4.5
    assert played_at + STOP[1] <= running_at <= played_at + STOP[1] + 4.0 < detected
    # the machine alert of the stop (the microphone's silence before and after the
    # session may add one of its own): one id, from about the stop to about the restart
    machine = payloads(sub.on(ALERT), "machine")
    starts = [p for t, p in machine if p["phase"] == "start" and abs(t - stopped_at) < 1.0]
    assert len(starts) == 1 and starts[0]["condition"] == "stopped"
    ends = [p for _, p in machine if p["phase"] == "end" and p["id"] == starts[0]["id"]]
    assert len(ends) == 1 and ends[0]["details"]["reason"] == "running"
    assert STOP[1] - STOP[0] - 2.0 <= ends[0]["duration_s"] <= STOP[1] - STOP[0] + 4.0


def test_the_default_kind_stopped_and_faulty_on_the_virtual_microphone(
    tmp_path: Path, virtual_mic: Any, mqtt_broker: Broker
) -> None:
    """The same session with the model ``asd-train fit`` makes by default (``auto``, fitted
    on 60 s of the machine's normal sound): no anomaly while the machine is stopped (room
    tone 20 dB under), ``machine: stopped`` retained, and after the restart a +12 dB change
    in 2.0-2.6 kHz is alerted with evidence naming a band inside it."""
    from support.bands import boost_band, room_tone

    from training.dataset import file_sha256, write_manifest
    from training.fit import FitConfig, fit
    from training.synth import Machine, make_stream

    machine = make_stream(SECONDS, [], machine=Machine(0, 0), seed=3)
    room_rms = float(np.sqrt(np.mean(machine.astype(np.float64) ** 2))) / 10.0  # -20 dB
    # The normal recordings: the running machine in the same room (six 10 s files).
    data, rows = tmp_path / "data", []
    (data / "normal").mkdir(parents=True)
    for i in range(6):
        rel = Path("normal") / f"n{i}.wav"
        running = Machine(0, 0).normal(10.0, np.random.default_rng([7, i]))
        write_wav(data / rel, running + room_tone(10.0, room_rms, seed=10 + i), RATE)
        rows.append([rel.as_posix(), "normal", "train", rel.name, file_sha256(data / rel)])
    write_manifest(data, rows)
    result = fit(FitConfig(data=data, out=tmp_path / "run", kind="auto", quiet=True))
    gate = np.ones(machine.size)
    gate[round(STOP[0] * RATE) : round(STOP[1] * RATE)] = 0.0
    audio = machine * gate + room_tone(SECONDS, room_rms)
    audio = boost_band(audio.astype(np.float32), (2000.0, 2600.0), 12.0, FAULT)
    wav = write_wav(tmp_path / "session.wav", audio, RATE)
    monitor = {"name": "pump", "model": str(result.model_path), "refractory_s": 1.0}
    session = play_session(tmp_path, mqtt_broker, virtual_mic, result.model_path, monitor, wav)
    sub, played_at = session.sub, session.played_at
    retained = json.loads(session.retained.payload)
    assert session.health["monitors"][0]["machine"] == "stopped"
    assert retained["machine"] == "stopped" and retained["anomaly"] is False
    start, end = (p for _, p in payloads(sub.on(ALERT), "anomaly"))
    assert start["id"] == end["id"]
    detected = next(t for t, p in payloads(sub.on(ALERT), "anomaly") if p["phase"] == "start")
    assert played_at + FAULT[0] <= detected <= played_at + FAULT[1] + 1.0
    lo, hi = end["evidence"][0]["band_hz"]
    assert 1900.0 <= (lo + hi) / 2 <= 2700.0, end["evidence"]
