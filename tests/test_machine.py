"""Tests of the machine state: the level rule (hold, hysteresis, no flapping), a monitor that
does not call a stopped machine an anomaly, and the machine alerts and log lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs
from support.alerting import WALL, RecordingSink, filled_ring, info
from support.bands import (
    RATE,
    BandsModel,
    boost_band,
    room_tone,
)
from support.machine import (
    FAULT,
    FAULT_BAND,
    ROOM_RMS,
    STOP,
    level_bands_model,
    machine_session,
)

from asd_edge.alerts import Alerts
from asd_edge.config import MonitorConfig
from asd_edge.detector import Detector
from asd_edge.jsonvalues import iso_utc
from asd_edge.machine import RUNNING_MARGIN_DB, MachineChange, MachineState
from asd_edge.monitor import Monitor
from asd_edge.ring import RingBuffer
from asd_edge.scoring import score_samples
from training.level import save_model
from training.synth import Machine, make_stream

STOPPED_BELOW = -50.0


def feed(
    state: MachineState, levels: list[float], start_s: float = 0.5, hop_s: float = 0.5
) -> list[MachineChange]:
    """Feed one level per window (ends every ``hop_s``); the changes decided."""
    changes = []
    for i, level in enumerate(levels):
        change = state.update(level, start_s + i * hop_s)
        if change is not None:
            changes.append(change)
    return changes


class TestMachineState:
    def test_starts_running_and_stops_after_the_hold(self) -> None:
        """Running at first; quiet windows for 2 s (five ends, 0.5 s apart) make it stopped,
        once, with the time the quiet run began."""
        state = MachineState(STOPPED_BELOW, hold_s=2.0)
        assert state.state == "running" and not state.stopped
        changes = feed(state, [-30.0, -30.0] + [-60.0] * 8)
        assert [(c.state, c.since_s, c.at_s) for c in changes] == [("stopped", 1.5, 3.5)]
        assert changes[0].level_dbfs == -60.0 and changes[0].limit_dbfs == STOPPED_BELOW
        assert state.stopped

    def test_a_loud_window_restarts_the_count(self) -> None:
        """Quiet, quiet, loud, quiet...: no window run lasts the hold, so no change."""
        state = MachineState(STOPPED_BELOW, hold_s=2.0)
        assert feed(state, [-60.0, -60.0, -60.0, -30.0] * 5) == []
        assert state.state == "running"

    def test_hysteresis_needs_three_db_more_to_run_again(self) -> None:
        """A stopped machine whose level hovers just above the stopped level stays stopped;
        at stopped level + 3 dB for the hold it runs again."""
        state = MachineState(STOPPED_BELOW, hold_s=1.0, stopped=True)
        hovering = STOPPED_BELOW + RUNNING_MARGIN_DB - 0.1
        assert feed(state, [hovering, STOPPED_BELOW + 0.5] * 10) == []
        assert state.stopped
        changes = feed(state, [STOPPED_BELOW + RUNNING_MARGIN_DB] * 3, start_s=20.0)
        assert [(c.state, c.since_s, c.at_s) for c in changes] == [("running", 20.0, 21.0)]
        assert changes[0].limit_dbfs == STOPPED_BELOW + RUNNING_MARGIN_DB

    def test_no_flapping_at_the_boundary(self) -> None:
        """A level alternating around the stopped level gives at most one change: once
        stopped, dipping windows above the stopped level do not restart it."""
        state = MachineState(STOPPED_BELOW, hold_s=1.0)
        rng = np.random.default_rng(0)
        levels = list(STOPPED_BELOW - 1.0 + rng.uniform(-0.9, 2.9, 400))
        changes = feed(state, [-60.0] * 3 + levels)
        assert [c.state for c in changes] == ["stopped"]

    def test_hold_zero_changes_at_once(self) -> None:
        """With no hold, the first window past the level decides."""
        state = MachineState(STOPPED_BELOW, hold_s=0.0)
        assert [c.state for c in feed(state, [-60.0, -40.0])] == ["stopped", "running"]

    def test_suppression(self) -> None:
        """A quiet window is never anomalous, even before the hold; while stopped, none is."""
        state = MachineState(STOPPED_BELOW, hold_s=2.0)
        assert state.suppresses(-55.0) and not state.suppresses(-45.0)
        feed(state, [-60.0] * 5)
        assert state.stopped and state.suppresses(-20.0)

    def test_a_stop_in_progress_is_no_anomaly(self) -> None:
        """With the normal range known (p01 -30 dBFS): a window below it and 3 dB or more
        under the one before is a stop in progress (suppressed); the same quiet level held
        steady is not (a fault that makes the machine quieter still counts)."""
        state = MachineState(STOPPED_BELOW, hold_s=2.0, quiet_below_dbfs=-30.0)
        levels = [-28.0, -28.0, -34.0, -34.0, -34.0, -36.0]
        suppressed = []
        for i, level in enumerate(levels):
            state.update(level, 0.5 * (i + 1))
            suppressed.append(state.suppresses(level))
        assert suppressed == [False, False, True, False, False, False]
        plain = MachineState(STOPPED_BELOW, hold_s=2.0)  # no normal range: the rule is off
        plain.update(-28.0, 0.5)
        plain.update(-34.0, 1.0)
        assert not plain.suppresses(-34.0)

    def test_negative_hold_is_refused(self) -> None:
        """A negative hold is a programming error."""
        with pytest.raises(ValueError, match="hold_s"):
            MachineState(STOPPED_BELOW, hold_s=-1.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[BandsModel, BandsModel]:
    """The model with ``level`` and the same model without it."""
    root = tmp_path_factory.mktemp("machine")
    return level_bands_model(root / "level.onnx"), level_bands_model(
        root / "plain.onnx", with_level=False
    )


class TestMonitorWithLevel:
    """``asd-edge score``'s pipeline (the daemon's monitor) on the stop-restart-fault session."""

    def test_a_stopped_machine_is_no_anomaly_and_the_fault_after_restart_is(
        self, models: tuple[BandsModel, BandsModel]
    ) -> None:
        """With ``level``: the stop is reported as machine state changes, only the fault is
        an event, and the quiet windows carry their level."""
        with_level, _ = models
        audio = machine_session(with_level)
        report = score_samples(
            audio, RATE, Detector(with_level.path), MonitorConfig(name="m", model="m.onnx")
        )
        (event,) = report["events"]
        assert FAULT[0] - 1.0 <= event["start_s"] <= FAULT[0] + 1.0
        assert event["evidence"][0]["band_hz"] == with_level.edges_hz[FAULT_BAND]
        stopped, running = report["machine"]
        assert stopped["state"] == "stopped" and running["state"] == "running"
        # the first fully quiet window ends a second after the stop, the hold is 2 s
        assert STOP[0] + 1.0 <= stopped["since_s"] <= STOP[0] + 1.5
        assert stopped["at_s"] - stopped["since_s"] >= 2.0
        assert STOP[1] <= running["since_s"] <= STOP[1] + 1.0
        quiet = [w for w in report["windows"] if STOP[0] + 1 <= w["start_s"] < STOP[1] - 1]
        assert all(-44.0 < w["level_dbfs"] < -40.0 for w in quiet)
        # the model scores the stopped machine far beyond its threshold: only the state
        # kept it from being an anomaly
        assert min(w["score"] for w in quiet) > 2 * report["threshold"]

    def test_the_same_model_without_level_calls_the_stop_an_anomaly(
        self, models: tuple[BandsModel, BandsModel]
    ) -> None:
        """The control: without ``level`` the stop itself is an event (so the test above
        can fail), and there is no ``machine`` in the report."""
        with_level, plain = models
        audio = machine_session(with_level)
        report = score_samples(
            audio, RATE, Detector(plain.path), MonitorConfig(name="m", model="m.onnx")
        )
        starts = [e["start_s"] for e in report["events"]]
        assert any(STOP[0] - 1.0 <= s <= STOP[1] for s in starts), starts
        assert "machine" not in report and "level_dbfs" not in report["windows"][0]

    def test_a_stop_ends_the_event_in_progress(self, models: tuple[BandsModel, BandsModel]) -> None:
        """A fault that runs into the stop: with an hour of decision hold, the event still
        ends when the machine is judged stopped, not at the end of the input."""
        with_level, _ = models
        machine = make_stream(16.0, [], machine=Machine(0, 0), seed=3)
        machine[round(10.0 * RATE) :] = 0.0
        audio = machine + room_tone(16.0, ROOM_RMS)
        audio = boost_band(audio, with_level.core_hz(FAULT_BAND), 15.0, (6.0, 10.0))
        ring = RingBuffer(RATE * 20)
        monitor = Monitor.from_config(
            MonitorConfig(name="m", model="m.onnx", hold_s=3600.0),
            Detector(with_level.path),
            ring,
            RATE,
            start_index=0,
        )
        events, changes = [], []
        for begin in range(0, audio.size, RATE // 2):
            ring.write(audio[begin : begin + RATE // 2])
            result = monitor.tick()
            events += result.events
            changes += result.machine
        start, end = events
        (stopped,) = changes
        assert start.phase == "start" and 5.5 <= start.onset_s <= 7.5
        assert end.phase == "end" and end.at_s == stopped.at_s < 16.0
        assert not monitor.decision.active


def change(state: str, at_s: float, since_s: float) -> MachineChange:
    return MachineChange(
        state=state,  # type: ignore[arg-type]
        at_s=at_s,
        since_s=since_s,
        level_dbfs=-61.234 if state == "stopped" else -22.0,
        limit_dbfs=-50.0 if state == "stopped" else -47.0,
    )


class TestMachineAlerts:
    def test_alert_mode_start_and_end_share_an_id(self) -> None:
        """``stopped: alert``: a stop starts a ``type: machine`` alert (started when the quiet
        run began), running again ends it with the same id; each change is logged once."""
        sink = RecordingSink()
        ring = filled_ring(10.0)
        alerts = Alerts(device_id="dev", sink=sink, recorder=None, wall_clock=lambda: WALL)
        with capture_logs() as logs:
            first = alerts.machine(info(ring), change("stopped", 9.0, 7.0), alert=True)
            again = alerts.machine(info(ring), change("stopped", 9.5, 7.5), alert=True)
            ended = alerts.machine(info(ring), change("running", 10.0, 9.0), alert=True)
        assert first is not None and again is None and ended == first
        (_, _, p1, start, _), (_, _, p2, end, _) = sink.calls
        assert (p1, p2) == ("start", "end")
        assert start["id"] == end["id"] == first and first.startswith("20260921T")
        assert start["type"] == end["type"] == "machine"
        assert start["condition"] == "stopped" and start["monitor"] == "pump"
        assert start["started_at"] == iso_utc(WALL - 3.0)  # quiet since 7 s, ring at 10 s
        assert start["details"] == {"level_dbfs": -61.2, "stopped_below_dbfs": -50.0}
        assert start["model"]["name"] == "m"
        assert end["ended_at"] == iso_utc(WALL) and end["details"]["reason"] == "running"
        assert end["detected_at"] == iso_utc(WALL)
        assert [e["event"] for e in logs] == [
            "machine_stopped",
            "machine_stopped",
            "machine_running",
        ]
        assert logs[0]["monitor"] == "pump" and logs[0]["level_dbfs"] == -61.2
        assert all(e["log_level"] == "info" for e in logs)

    def test_state_mode_logs_but_does_not_alert(self) -> None:
        """``stopped: state``: log lines only."""
        sink = RecordingSink()
        ring = filled_ring(10.0)
        alerts = Alerts(device_id="dev", sink=sink, recorder=None)
        with capture_logs() as logs:
            assert alerts.machine(info(ring), change("stopped", 9.0, 7.0), alert=False) is None
            assert alerts.machine(info(ring), change("running", 10.0, 9.0), alert=False) is None
        assert sink.calls == []
        assert [e["event"] for e in logs] == ["machine_stopped", "machine_running"]

    def test_shutdown_ends_an_open_machine_alert(self) -> None:
        """At shutdown (``end_machine(None, ...)``) an open machine alert gets its end."""
        sink = RecordingSink()
        alerts = Alerts(device_id="dev", sink=sink, recorder=None, wall_clock=lambda: WALL)
        alerts.machine(info(filled_ring(10.0)), change("stopped", 9.0, 7.0), alert=True)
        alerts.end_machine(None, {"reason": "daemon_stopped"})
        alerts.end_machine(None, {"reason": "daemon_stopped"})  # nothing left: no-op
        assert [(c[2], c[3]["details"].get("reason")) for c in sink.calls] == [
            ("start", None),
            ("end", "daemon_stopped"),
        ]


def test_level_metadata_from_training_level_model(tmp_path: Path) -> None:
    """``training.level`` models take ``level`` through their metadata overrides, and the
    monitor judges the machine from it (a tone at -23 dBFS runs, silence stops)."""
    from training.level import build_level_model

    level: dict[str, Any] = {"stopped_below_dbfs": -50.0}
    path = save_model(build_level_model(metadata_overrides={"level": level}), tmp_path / "lv.onnx")
    t = np.arange(6 * RATE) / RATE
    audio = (0.1 * np.sin(2 * np.pi * 500 * t) * (t < 2.0)).astype(np.float32)
    report = score_samples(audio, RATE, Detector(path), MonitorConfig(name="m", model="m.onnx"))
    assert [c["state"] for c in report["machine"]] == ["stopped"]
    assert report["windows"][0]["level_dbfs"] == pytest.approx(-23.0, abs=0.1)
