"""End to end: a machine learned on the device, through the virtual microphone, a real
mosquitto and the daemon as a subprocess.

What a user sees: the daemon starts on the shipped level model; the machine's normal
sound plays and ``asd-edge learn --seconds 60`` (which sends ``cmd/learn`` and follows
``<prefix>/learn``) exits 0 once the learned model runs (``source: "learn"`` on the
model topic); then the same machine with faults plays and every fault is alerted, with
no false alarm. And the refusals and failures say why, while the old model keeps
running: an unknown monitor, a too-short request, a silent input, a cancel, a daemon
stopped while it listens, and one killed while it fits (no partial model left).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.audio import write_wav
from support.e2e import ALERT, PREFIX, RATE, daemon_config
from support.services import asd_edge_command, start_daemon, wait_until

from devkit.broker import Broker, Subscriber
from training.synth import Machine
from training.synth.machine import make_stream

pytestmark = [pytest.mark.realaudio, pytest.mark.slow]

LEVEL_MODEL = Path(__file__).resolve().parents[1] / "models" / "level.onnx"
LEARN = f"{PREFIX}/learn"
MODEL = f"{PREFIX}/model"
RESULT = f"{PREFIX}/cmd_result"
STATUS = f"{PREFIX}/status"
LEARN_S = 60.0
"""What the user asks the device to learn."""
FAULTS = [(90.0, 4.0, "bearing"), (102.0, 4.0, "shift"), (114.0, 4.0, "imbalance"),
          (126.0, 4.0, "squeal")]  # fmt: skip
"""The faults of the session: (start s, length s, kind), after 90 s of normal sound."""
SESSION_S = 138.0
TOLERANCE_S = 1.5
"""An alert counts for a fault when it starts within the fault or this long after it."""


def machine_sound(tmp_path: Path) -> Path:
    """One continuous session of a synthetic machine: 90 s of normal sound (learned
    during its first minute and more), then the faults, 8 s apart."""
    machine = Machine(machine_id=0, seed=3, sample_rate=RATE)
    stream = make_stream(SESSION_S, FAULTS, machine=machine, seed=1)
    return write_wav(tmp_path / "session.wav", stream, RATE)


def learn_states(sub: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in sub.on(LEARN)]


def last_model(sub: Subscriber) -> dict[str, Any]:
    return dict(json.loads(sub.on(MODEL)[-1].payload)["monitors"]["pump"])


def started(daemon: Any, sub: Subscriber) -> None:
    """The daemon runs and listens to its commands (its status is online)."""
    daemon.wait_for("daemon_started", 20)
    wait_until(
        lambda: any(json.loads(m.payload)["state"] == "online" for m in sub.on(STATUS)[-1:]),
        10, "status online",
    )  # fmt: skip


def command(broker: Broker, sub: Subscriber, body: dict[str, Any]) -> dict[str, Any]:
    """Send ``cmd/learn`` and return its answer on ``cmd_result``."""
    broker.publish(f"{PREFIX}/cmd/learn", json.dumps(body).encode(), qos=1)
    return dict(
        wait_until(
            lambda: next(
                (r for m in sub.on(RESULT) if (r := json.loads(m.payload))["id"] == body["id"]),
                None,
            ),
            10,
            f"the answer to {body['id']}",
        )
    )


def test_learn_in_one_step_then_faults_are_alerted_without_false_alarms(
    tmp_path: Path, virtual_mic: Any, mqtt_broker: Broker
) -> None:
    """``asd-edge learn --seconds 60`` on the running daemon, exit 0; the model topic and
    Home Assistant's discovery name the learned model; the faults played next are all
    alerted, nothing else is."""
    session = machine_sound(tmp_path)
    sub = mqtt_broker.subscriber(f"{PREFIX}/#", "homeassistant/#")
    config = daemon_config(tmp_path, mqtt_broker, LEVEL_MODEL, virtual_mic.device)
    daemon = start_daemon(config, virtual_mic.env)
    try:
        started(daemon, sub)
        wait_until(lambda: sub.on(MODEL), 10, "the model topic")
        assert last_model(sub)["source"] == "config"
        played_at = time.time()
        player = virtual_mic.play(session, wait=False)
        learn = subprocess.run(
            [*asd_edge_command(), "learn", "--config", str(config), "--seconds", str(LEARN_S)],
            capture_output=True, text=True, timeout=LEARN_S * 2 + 120,
        )  # fmt: skip
        assert learn.returncode == 0, learn.stderr
        learned = json.loads(learn.stdout)
        done = learn_states(sub)[-1]
        assert done["state"] == "done" and done["seconds_collected"] >= LEARN_S
        assert done["model"] == learned and done["skipped_s"] < 5.0
        swapped = wait_until(
            lambda: next((m.received_at for m in sub.on(MODEL)
                          if json.loads(m.payload)["monitors"]["pump"]["source"] == "learn"),
                         None), 10, "the learned model",
        ) - played_at  # fmt: skip
        assert swapped < FAULTS[0][0], "the learned model must run before the first fault"
        running = last_model(sub)
        assert running["version"] == learned["version"] and running["kind"] == "bandstat"
        assert running["previous"]["name"] == "level"
        assert (tmp_path / "state" / "models" / "pump" / "active.onnx").is_file()
        named = f"model='{learned['name']}'".encode()  # discovery is sent again on a swap
        wait_until(
            lambda: any(named in m.payload for m in sub.messages if m.topic.endswith("/config")),
            10, "discovery naming the learned model",
        )  # fmt: skip

        assert player.wait(timeout=SESSION_S + 30) == 0
        time.sleep(2.0)
    finally:
        assert daemon.stop() == 0
    starts = [  # the learned model's: normal sound from the swap on, then the faults
        (m.received_at - played_at, json.loads(m.payload))
        for m in sub.on(ALERT)
        if m.received_at - played_at > swapped
        and json.loads(m.payload).get("type") == "anomaly"
        and json.loads(m.payload)["phase"] == "start"
    ]
    shown = [(round(t, 1), a.get("score")) for t, a in starts]
    caught = [
        any(start <= t <= start + length + TOLERANCE_S for t, _ in starts)
        for start, length, _ in FAULTS
    ]
    false = [
        t for t, _ in starts
        if not any(start <= t <= start + length + TOLERANCE_S for start, length, _ in FAULTS)
    ]  # fmt: skip
    assert all(caught), f"faults {FAULTS} caught {caught}; alert starts (s, score) {shown}"
    assert not false, f"false alarms at {false} s; alert starts {shown}"


def test_learning_refused_failed_cancelled_and_interrupted_keeps_the_old_model(
    tmp_path: Path, virtual_mic: Any, mqtt_broker: Broker
) -> None:
    """Refusals name the reason; a silent input fails the learning; cancel works; a
    daemon stopped or killed while learning leaves the old model running and says the
    learning was interrupted; a kill during the fit leaves no model behind."""
    normal = machine_sound(tmp_path)
    sub = mqtt_broker.subscriber(f"{PREFIX}/#")
    config = daemon_config(tmp_path, mqtt_broker, LEVEL_MODEL, virtual_mic.device)
    store = tmp_path / "state" / "models" / "pump"
    daemon = start_daemon(config, virtual_mic.env)
    try:
        started(daemon, sub)
        unknown = command(mqtt_broker, sub, {"id": "u1", "monitor": "fan", "seconds": 60})
        assert not unknown["ok"] and "'fan' does not exist" in unknown["error"]
        short = command(mqtt_broker, sub, {"id": "s1", "seconds": 5})
        assert not short["ok"] and "at least 20 s" in short["error"]
        # nothing plays: the virtual microphone is digitally silent
        assert command(mqtt_broker, sub, {"id": "q1", "seconds": 20})["ok"]
        failed = wait_until(
            lambda: next((s for s in learn_states(sub) if s["id"] == "q1"
                          and s["state"] == "failed"), None), 30, "the silent learning fails",
        )  # fmt: skip
        assert "silence" in failed["error"] and "keeps running" in failed["error"]
        # cancel
        assert command(mqtt_broker, sub, {"id": "c1", "seconds": 60})["ok"]
        assert command(mqtt_broker, sub, {"id": "c2", "cancel": True})["ok"]
        wait_until(lambda: learn_states(sub)[-1]["state"] == "cancelled", 10, "cancelled")
        # stopped while listening
        player = virtual_mic.play(normal, wait=False)
        assert command(mqtt_broker, sub, {"id": "t1", "seconds": 60})["ok"]
        time.sleep(3.0)
    finally:
        assert daemon.stop() == 0
    stopped = learn_states(sub)[-1]
    assert stopped["id"] == "t1" and stopped["state"] == "failed"
    assert "interrupted" in stopped["error"]
    assert last_model(sub)["source"] == "config"

    # killed while it fits: no partial model, and the restart says it was interrupted
    daemon = start_daemon(config, virtual_mic.env)
    try:
        started(daemon, sub)
        assert command(mqtt_broker, sub, {"id": "k1", "seconds": 20})["ok"]
        wait_until(
            lambda: any(s["id"] == "k1" and s["state"] == "fitting" for s in learn_states(sub)),
            40, "the fit starts",
        )  # fmt: skip
    finally:  # the daemon alone: its fit must die with it (PR_SET_PDEATHSIG)
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.proc.wait()
    player.kill()
    time.sleep(1.0)
    jobs = subprocess.run(["pgrep", "-f", f"learning.job {tmp_path}"], capture_output=True)
    assert jobs.returncode == 1, "the fit outlived the daemon"
    with contextlib.suppress(ProcessLookupError):
        daemon.kill()
    assert not (store / "active.onnx").exists() and not list(store.glob("incoming*"))
    before = len(sub.on(LEARN))
    daemon = start_daemon(config, virtual_mic.env)
    try:
        daemon.wait_for("daemon_started", 20)
        said = wait_until(lambda: learn_states(sub)[before:], 10, "the interrupted learning")
        assert said[-1]["id"] == "k1" and said[-1]["state"] == "failed"
        assert "interrupted" in said[-1]["error"]
        assert not (store.parent.parent / "learn" / "pump" / "candidate.onnx").exists()
        wait_until(lambda: sub.on(MODEL), 10)
        assert last_model(sub)["source"] == "config"
    finally:
        assert daemon.stop() == 0


HARMLESS = [(80.0, 8.0), (112.0, 8.0)]
"""A new but harmless sound of the machine (a soft modulated tone): (start s, length s)."""
FAULT_AFTER = (126.0, 4.0, "bearing")
FEEDBACK_SESSION_S = 136.0


def feedback_session(tmp_path: Path) -> Path:
    """90 s of normal sound with the harmless pattern at 80 s, again at 112 s, and a
    fault at 126 s, in one continuous session of the synthetic machine."""
    machine = Machine(machine_id=0, seed=3, sample_rate=RATE)
    stream = make_stream(FEEDBACK_SESSION_S, [FAULT_AFTER], machine=machine, seed=1)
    rms = float(np.sqrt(np.mean(stream[: 60 * RATE] ** 2)))
    for start, length in HARMLESS:
        a, b = round(start * RATE), round((start + length) * RATE)
        t = np.arange(b - a) / RATE
        tone = np.sin(2 * np.pi * 1230.0 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
        stream[a:b] += (rms * 10 ** (-10 / 20) * tone).astype(np.float32)
    return write_wav(tmp_path / "feedback.wav", stream, RATE)


def test_a_false_alarm_fed_back_as_normal_does_not_come_back_and_faults_still_alert(
    tmp_path: Path, virtual_mic: Any, mqtt_broker: Broker
) -> None:
    """Learned for 60 s, the machine's new harmless sound raises a false alarm;
    ``asd-edge feedback ID --normal`` (exit 0) learns its clip as normal and says how it
    scores now; the same sound again raises no alert, and a fault still does."""
    session = feedback_session(tmp_path)
    sub = mqtt_broker.subscriber(f"{PREFIX}/#")
    config = daemon_config(tmp_path, mqtt_broker, LEVEL_MODEL, virtual_mic.device)
    daemon = start_daemon(config, virtual_mic.env)
    try:
        started(daemon, sub)
        played_at = time.time()
        player = virtual_mic.play(session, wait=False)
        assert command(mqtt_broker, sub, {"id": "l1", "seconds": LEARN_S})["ok"]
        wait_until(
            lambda: any(s["id"] == "l1" and s["state"] == "done" for s in learn_states(sub)),
            LEARN_S + 40, "the learning",
        )  # fmt: skip
        first = HARMLESS[0][0]

        def alarms(after: float) -> list[tuple[float, dict[str, Any]]]:
            return [
                (m.received_at - played_at, a)
                for m in sub.on(ALERT)
                if (a := json.loads(m.payload)).get("type") == "anomaly"
                and m.received_at - played_at > after
            ]

        end = wait_until(
            lambda: next((a for _, a in alarms(first) if a["phase"] == "end"), None),
            40, "the false alarm's end (its clip saved)",
        )  # fmt: skip
        fed = subprocess.run(
            [*asd_edge_command(), "feedback", end["id"], "--normal", "--config", str(config)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert fed.returncode == 0, fed.stderr
        answer = json.loads(fed.stdout)["feedback"]
        assert answer["alert_id"] == end["id"]
        assert answer["score_now"] <= answer["threshold_now"] < answer["alert_score"]
        assert "below the threshold" in fed.stderr
        done_at = time.time() - played_at
        assert done_at < HARMLESS[1][0], "the refitted model must run before the sound returns"
        assert player.wait(timeout=FEEDBACK_SESSION_S + 30) == 0
        time.sleep(2.0)
    finally:
        assert daemon.stop() == 0
    later = [(round(t, 1), a["score"]) for t, a in alarms(done_at) if a["phase"] == "start"]
    start, length, _ = FAULT_AFTER
    assert [t for t, _ in later if not start <= t <= start + length + TOLERANCE_S] == [], later
    assert any(start <= t <= start + length + TOLERANCE_S for t, _ in later), later
    model = last_model(sub)
    assert model["source"] == "learn"
