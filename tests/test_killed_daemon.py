"""The daemon killed (SIGKILL: a power cut, an OOM kill) in the middle of its alerts, then
restarted: every alert it started gets its end, and the end says what became of the clip.

The daemon is a subprocess replaying a recording in real time (``file:`` input, no sound
hardware) to a real mosquitto, as a user's device would run it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from support.audio import write_wav
from support.e2e import ALERT, RATE, alerts, daemon_config, stream_with_bursts
from support.services import start_daemon, wait_until

from devkit.broker import Broker
from devkit.daemonproc import DaemonProcess

pytestmark = pytest.mark.slow


def killed(daemon: DaemonProcess) -> None:
    """SIGKILL the daemon (nothing of it runs after this returns)."""
    assert daemon.kill() == -9


def one_alert(sub: Any, alert_id: str, phase: str, kind: str = "anomaly") -> dict[str, Any]:
    """The first alert received with this id and phase."""
    return next(a for a in alerts(sub, kind) if (a["id"], a["phase"]) == (alert_id, phase))


def held_in_outbox(state: Path) -> list[str]:
    """Ids of the held (stored, unpublished) rows in the daemon's outbox, read as a restart
    would (a separate connection)."""
    with sqlite3.connect(state / "outbox.sqlite") as db:
        return [r[0] for r in db.execute("SELECT alert_id FROM outbox WHERE ready = 0")]


def has_alert(sub: Any, alert_id: str, phase: str, kind: str = "anomaly") -> bool:
    return any((a["id"], a["phase"]) == (alert_id, phase) for a in alerts(sub, kind))


class TestHeldEnd:
    def test_a_held_end_names_the_clip_a_restart_recovered(
        self, tmp_path: Path, level_model: Path, mqtt_broker: Broker
    ) -> None:
        """Killed after an event ended, while its clip's post-roll was being recorded (the
        end alert is held, unpublished): if the clip's WAV was written before the kill (put
        in place here, as if the kill came between the audio and its sidecar), the restart
        releases the end with the clip ``saved`` and ``recovered``, not ``lost``."""
        stream = stream_with_bursts(40.0, [(1.5, 1.0)])
        wav = write_wav(tmp_path / "stream.wav", stream, RATE)
        config = daemon_config(
            tmp_path, mqtt_broker, level_model, f"file:{wav}", clips={"post_s": 5.0}
        )
        sub = mqtt_broker.subscriber(ALERT)
        daemon = start_daemon(config)
        daemon.wait_for("daemon_started", 20)
        alert_id = daemon.wait_for("anomaly_ended", 20)["alert_id"]
        wait_until(lambda: held_in_outbox(tmp_path / "state") == [alert_id], 3, "the held end")
        killed(daemon)  # 5 s of post-roll to go: the clip is not written, its end is held
        assert not daemon.events("clip_saved")
        wait_until(lambda: has_alert(sub, alert_id, "start"), 10, "the start alert")
        assert not has_alert(sub, alert_id, "end")
        clip = Path(one_alert(sub, alert_id, "start")["clip"]["path"])
        assert not clip.exists()
        clip.parent.mkdir(parents=True, exist_ok=True)
        audio = write_wav(clip, stream[: 3 * RATE], RATE)  # the WAV, without its sidecar

        restarted = start_daemon(config)
        try:
            restarted.wait_for("daemon_started", 20)
            wait_until(lambda: has_alert(sub, alert_id, "end"), 10, "the held end alert")
        finally:
            restarted.stop()
        end = one_alert(sub, alert_id, "end")
        assert end["clip"]["path"] == str(audio)
        assert end["clip"]["status"] == "saved" and end["clip"]["recovered"] is True
        assert end["clip"]["duration_s"] == 3.0 and end["clip"]["sha256"]
        assert "status" not in end  # it did end before the kill: not interrupted
        assert restarted.events("clip_recovered")[0]["path"] == str(audio)
