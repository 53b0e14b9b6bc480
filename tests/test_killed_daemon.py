"""The daemon killed (SIGKILL: a power cut, an OOM kill) in the middle of its alerts, then
restarted: every alert it started gets its end, and the end says what became of the clip.

The daemon is a subprocess replaying a recording in real time (``file:`` input, no sound
hardware) to a real mosquitto, as a user's device would run it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.audio import write_wav
from support.e2e import ALERT, RATE, alerts, daemon_config, stream_with_bursts
from support.services import start_daemon, wait_until

from asd_edge.clips import CLIP_LOST
from devkit.broker import Broker, Subscriber
from devkit.daemonproc import DaemonProcess

pytestmark = pytest.mark.slow


def replay(
    tmp_path: Path, broker: Broker, model: Path, stream: np.ndarray, **sections: Any
) -> tuple[Path, Subscriber, DaemonProcess]:
    """The daemon replaying ``stream`` to ``broker``, started; a subscriber to its alerts;
    its configuration (``support.e2e.daemon_config`` with ``sections``), for the restart."""
    wav = write_wav(tmp_path / "stream.wav", stream, RATE)
    config = daemon_config(tmp_path, broker, model, f"file:{wav}", **sections)
    sub = broker.subscriber(ALERT)
    daemon = start_daemon(config)
    daemon.wait_for("daemon_started", 20)
    return config, sub, daemon


def killed(daemon: DaemonProcess) -> None:
    """SIGKILL the daemon (nothing of it runs after this returns)."""
    assert daemon.kill() == -9


def restarted_until(
    config: Path, condition: Callable[[], Any], what: str
) -> tuple[DaemonProcess, int]:
    """The daemon started again on ``config``, run until ``condition`` holds, then stopped
    (SIGTERM); the process (its log) and its exit code."""
    daemon = start_daemon(config)
    try:
        daemon.wait_for("daemon_started", 20)
        wait_until(condition, 20, what)
    finally:
        code = daemon.stop()
    return daemon, code


def one_alert(sub: Subscriber, alert_id: str, phase: str, kind: str = "anomaly") -> dict[str, Any]:
    """The first alert received with this id and phase."""
    return next(a for a in alerts(sub, kind) if (a["id"], a["phase"]) == (alert_id, phase))


def has_alert(sub: Subscriber, alert_id: str, phase: str, kind: str = "anomaly") -> bool:
    return any((a["id"], a["phase"]) == (alert_id, phase) for a in alerts(sub, kind))


def outbox_ids(state: Path, query: str) -> list[str]:
    """Alert ids from the daemon's outbox, read as a restart would (a separate connection)."""
    with sqlite3.connect(state / "outbox.sqlite") as db:
        return [r[0] for r in db.execute(query)]


HELD = "SELECT alert_id FROM outbox WHERE ready = 0"
"""The held rows: end alerts stored, not published until their clip is saved."""
OPEN = "SELECT alert_id FROM open_alerts"
"""The alerts started and not ended."""


class TestHeldEnd:
    def test_a_held_end_names_the_clip_a_restart_recovered(
        self, tmp_path: Path, level_model: Path, mqtt_broker: Broker
    ) -> None:
        """Killed after an event ended, while its clip's post-roll was being recorded (the
        end alert is held, unpublished): if the clip's WAV was written before the kill (put
        in place here, as if the kill came between the audio and its sidecar), the restart
        releases the end with the clip ``saved`` and ``recovered``, not ``lost``."""
        stream = stream_with_bursts(40.0, [(1.5, 1.0)])
        config, sub, daemon = replay(
            tmp_path, mqtt_broker, level_model, stream, clips={"post_s": 5.0}
        )
        alert_id = daemon.wait_for("anomaly_ended", 20)["alert_id"]
        state = tmp_path / "state"
        wait_until(lambda: outbox_ids(state, HELD) == [alert_id], 3, "the held end")
        killed(daemon)  # 5 s of post-roll to go: the clip is not written, its end is held
        assert not daemon.events("clip_saved")
        wait_until(lambda: has_alert(sub, alert_id, "start"), 10, "the start alert")
        assert not has_alert(sub, alert_id, "end")
        clip = Path(one_alert(sub, alert_id, "start")["clip"]["path"])
        assert not clip.exists()
        clip.parent.mkdir(parents=True, exist_ok=True)
        audio = write_wav(clip, stream[: 3 * RATE], RATE)  # the WAV, without its sidecar

        restarted, _ = restarted_until(
            config, lambda: has_alert(sub, alert_id, "end"), "the held end alert"
        )
        end = one_alert(sub, alert_id, "end")
        assert end["clip"]["path"] == str(audio)
        assert end["clip"]["status"] == "saved" and end["clip"]["recovered"] is True
        assert end["clip"]["duration_s"] == 3.0 and end["clip"]["sha256"]
        assert "status" not in end  # it did end before the kill: not interrupted
        assert restarted.events("clip_recovered")[0]["path"] == str(audio)


class TestInterrupted:
    def test_an_event_cut_by_a_kill_is_ended_before_any_new_alert(
        self, tmp_path: Path, level_model: Path, mqtt_broker: Broker
    ) -> None:
        """SIGKILL in the middle of an anomaly: its start was published, its end never was.
        The restart sends that end first (same id, the start's facts, ``status:
        interrupted``, ``ended_at`` the start's detection, the clip never written ``lost``),
        before the alerts of the replay's new event; a clean stop leaves nothing open."""
        stream = stream_with_bursts(40.0, [(1.5, 30.0)])
        config, sub, daemon = replay(tmp_path, mqtt_broker, level_model, stream)
        alert_id = daemon.wait_for("anomaly_started", 20)["alert_id"]
        wait_until(lambda: has_alert(sub, alert_id, "start"), 10, "the start alert")
        time.sleep(1.0)  # the event goes on
        killed(daemon)
        state = tmp_path / "state"
        assert outbox_ids(state, OPEN) == [alert_id]

        restarted, code = restarted_until(
            config, lambda: len(alerts(sub)) >= 3, "the end, then the new start"
        )
        assert code == 0
        got = [json.loads(m.payload) for m in sub.on(ALERT)]
        assert [(a["id"] == alert_id, a["phase"]) for a in got][:3] == [
            (True, "start"),
            (True, "end"),
            (False, "start"),
        ]
        start, end = got[0], got[1]
        assert end["status"] == "interrupted"
        assert end["ended_at"] == start["detected_at"] < end["detected_at"]  # the restart
        began = datetime.fromisoformat(start["started_at"])
        lasted_s = (datetime.fromisoformat(start["detected_at"]) - began).total_seconds()
        assert end["duration_s"] == pytest.approx(lasted_s, abs=1e-3)
        for key in ("type", "device_id", "monitor", "started_at", "score", "threshold", "model"):
            assert end[key] == start[key], key
        assert end["clip"] == {"path": start["clip"]["path"], "status": "lost", "error": CLIP_LOST}
        assert restarted.events("interrupted_alert_ended")[0]["alert_id"] == alert_id
        assert outbox_ids(state, OPEN) == []  # the clean stop ended the new event

    def test_the_clip_saved_before_the_kill_is_named_recovered(
        self, tmp_path: Path, level_model: Path, mqtt_broker: Broker
    ) -> None:
        """An event longer than clips.max_clip_s has its clip cut and written while it goes
        on; killed after the WAV was written but before its sidecar (removed here, as the
        kill would have left it), the interrupted end names the clip ``saved`` and
        ``recovered``, with its path, duration and sha256."""
        stream = stream_with_bursts(40.0, [(1.5, 30.0)])
        config, sub, daemon = replay(
            tmp_path, mqtt_broker, level_model, stream, clips={"max_clip_s": 3.0}
        )
        saved = daemon.wait_for("clip_saved", 20)
        killed(daemon)
        assert not daemon.events("anomaly_ended")
        audio = Path(saved["path"])
        for suffix in (".json", ".png"):
            audio.with_suffix(suffix).unlink()

        restarted_until(config, lambda: has_alert(sub, saved["alert_id"], "end"), "the end")
        end = one_alert(sub, saved["alert_id"], "end")
        assert end["status"] == "interrupted"
        assert end["clip"] == {
            "path": str(audio),
            "status": "saved",
            "duration_s": 3.0,
            "sha256": hashlib.sha256(audio.read_bytes()).hexdigest(),
            "bytes": audio.stat().st_size,
            "recovered": True,
        }

    def test_an_input_alert_cut_by_a_kill_is_ended_too(
        self, tmp_path: Path, level_model: Path, mqtt_broker: Broker
    ) -> None:
        """An input alert (digital silence) open at the kill gets its interrupted end at the
        restart, before the restarted daemon's own silence alert."""
        zeros = np.zeros(40 * RATE, np.float32)
        config, sub, daemon = replay(
            tmp_path, mqtt_broker, level_model, zeros, health={"hold_s": 1.0}
        )
        alert_id = daemon.wait_for("input_problem", 20)["alert_id"]
        wait_until(lambda: has_alert(sub, alert_id, "start", "input"), 10, "the input alert")
        killed(daemon)

        restarted_until(config, lambda: len(alerts(sub, "input")) >= 3, "the end, a new start")
        got = alerts(sub, "input")
        assert [(a["id"] == alert_id, a["phase"]) for a in got][:3] == [
            (True, "start"),
            (True, "end"),
            (False, "start"),
        ]
        start, end = got[0], got[1]
        assert end["status"] == "interrupted" and end["ended_at"] == start["detected_at"]
        assert (end["condition"], end["channel"]) == ("silence", start["channel"])
        assert "clip" not in end
