"""Tests of events → alerts: the payload contract, ids, held end alerts and their clips."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.alerting import RATE, WALL, RecordingSink, filled_ring, info

from asd_edge.alerts import Alerts, finish_previous_run, interrupted_end, new_alert_id
from asd_edge.clips import CLIP_LOST, ClipRecorder, ClipStore, lost_clip
from asd_edge.config import ClipsConfig
from asd_edge.decision import Event
from asd_edge.jsonvalues import iso_utc


def event(phase: str, at_s: float, onset_s: float, last_s: float, score: float = 5.0) -> Event:
    return Event(
        phase=phase,  # type: ignore[arg-type]
        at_s=at_s,
        onset_s=onset_s,
        last_anomalous_s=last_s,
        peak_score=9.0,
        score=score,
        threshold=1.0,
    )


class TestIds:
    def test_alert_id_is_readable_time_ordered_and_unique(self) -> None:
        """Ids carry the UTC second and the monitor, and never repeat."""
        ids = {new_alert_id("pump", WALL) for _ in range(1000)}
        assert len(ids) == 1000
        assert all(re.fullmatch(r"20260921T\d{6}Z-pump-[0-9a-f]{8}", i) for i in ids)
        assert new_alert_id("a", WALL) < new_alert_id("a", WALL + 1)

    def test_iso_utc_has_milliseconds_and_z(self) -> None:
        """Timestamps are ISO 8601 UTC with milliseconds."""
        assert iso_utc(WALL + 0.25) == "2026-09-21T14:13:20.250Z"


class TestWithoutClips:
    def test_start_then_end_with_the_contract_fields(self) -> None:
        """A start alert, then an end alert with the same id, both published at once."""
        sink = RecordingSink()
        ring = filled_ring(10.0)
        alerts = Alerts(device_id="dev", sink=sink, recorder=None, wall_clock=lambda: WALL)
        alert_id = alerts.event(info(ring), event("start", 6.0, 5.5, 6.0))
        ended_id = alerts.event(info(ring), event("end", 8.0, 5.5, 7.0, score=0.2))
        assert alert_id == ended_id
        (_, _, p1, start, held1), (_, _, p2, end, held2) = sink.calls
        assert (p1, held1, p2, held2) == ("start", False, "end", False)
        assert start["id"] == end["id"] == alert_id
        assert start["device_id"] == "dev" and start["monitor"] == "pump"
        assert start["model"] == {"name": "m", "version": "v1", "sha256": "ab" * 32}
        assert start["score"] == 5.0 and start["threshold"] == 1.0 and start["clip"] is None
        # the anomaly's audio began one window before the onset: 10 - (5.5 - 1) s ago
        assert start["started_at"] == iso_utc(WALL - 5.5)
        assert end["started_at"] == start["started_at"]
        assert end["ended_at"] == iso_utc(WALL - 3.0)
        assert end["duration_s"] == 2.5 and end["score"] == 0.2 and end["peak_score"] == 9.0
        assert start["detected_at"] == end["detected_at"] == iso_utc(WALL)  # when decided

    def test_end_without_a_start_is_ignored(self) -> None:
        """An end the alerts never saw start (e.g. after a restart) publishes nothing."""
        sink = RecordingSink()
        alerts = Alerts(device_id="dev", sink=sink, recorder=None)
        assert alerts.event(info(filled_ring(5.0)), event("end", 4.0, 2.0, 3.0)) is None
        assert sink.calls == []

    def test_no_sink_still_logs(self) -> None:
        """Without MQTT the alerts are only logged, and nothing fails."""
        alerts = Alerts(device_id="dev", sink=None, recorder=None)
        ring = filled_ring(5.0)
        assert alerts.event(info(ring), event("start", 3.0, 2.5, 3.0))
        assert alerts.event(info(ring), event("end", 4.5, 2.5, 3.0))


class TestWithClips:
    @pytest.fixture
    def store(self, tmp_path: Path) -> Any:
        holder: list[Alerts] = []
        store = ClipStore(
            tmp_path / "clips",
            ClipsConfig(pre_s=1.0, post_s=1.0, max_clip_s=20.0, spectrogram=False),
            on_done=lambda result: holder[0].clip_done(result),
        )
        store.start()
        yield store, holder
        store.stop()

    def test_end_alert_is_held_until_the_clip_is_saved(self, store: Any) -> None:
        """The end alert is stored held and released with the saved clip's path, duration
        and sha256; the clip's bytes go to the sink too."""
        clip_store, holder = store
        sink = RecordingSink()
        recorder = ClipRecorder(clip_store, clip_store.config, device_id="dev")
        alerts = Alerts(device_id="dev", sink=sink, recorder=recorder, wall_clock=time.time)
        holder.append(alerts)
        ring = filled_ring(6.0)
        alert_id = alerts.event(info(ring), event("start", 6.0, 5.5, 6.0))
        start = sink.calls[0][3]
        assert start["clip"]["status"] == "recording" and start["clip"]["path"].endswith(".wav")
        alerts.event(info(ring), event("end", 7.5, 5.5, 6.5))
        assert sink.calls[1][2:] == ("end", sink.calls[1][3], True)  # held
        ring.write(np.full(2 * RATE, 0.1, np.float32))  # the post-roll arrives
        recorder.poll()
        assert sink.released.wait(10)
        kind, released_id, phase, payload, _ = sink.calls[2]
        assert (kind, released_id, phase) == ("release", alert_id, "end")
        clip = payload["clip"]
        assert clip["status"] == "saved" and clip["path"] == start["clip"]["path"]
        # from 1 s before the anomalous audio (onset 5.5 - window 1) to 1 s after the last
        # anomalous window (6.5): 3.5 .. 7.5 s
        assert clip["duration_s"] == pytest.approx(4.0, abs=0.01)
        assert len(clip["sha256"]) == 64
        assert sink.clip_published.wait(10) and sink.clips[0][0] == alert_id
        assert Path(clip["path"]).read_bytes() == sink.clips[0][1]

    def test_clip_finished_before_the_event_ends(self, store: Any) -> None:
        """A clip cut at its maximum length while the event goes on: the end alert carries
        its facts straight away, not held."""
        clip_store, holder = store
        sink = RecordingSink()
        config = ClipsConfig(pre_s=1.0, post_s=1.0, max_clip_s=3.0, spectrogram=False)
        recorder = ClipRecorder(clip_store, config, device_id="dev")
        alerts = Alerts(device_id="dev", sink=sink, recorder=recorder)
        holder.append(alerts)
        ring = filled_ring(6.0)
        alerts.event(info(ring), event("start", 6.0, 5.5, 6.0))
        ring.write(np.full(RATE * 3, 0.1, np.float32))
        recorder.poll()
        wait = time.monotonic() + 10
        while not clip_store.usage().saved and time.monotonic() < wait:
            time.sleep(0.01)
        alerts.event(info(ring), event("end", 9.0, 5.5, 8.5))
        _, _, phase, payload, held = sink.calls[-1]
        assert (phase, held) == ("end", False)
        assert payload["clip"]["status"] == "saved"

    def test_shutdown_closes_the_open_clip(self, store: Any) -> None:
        """flush() cuts an open clip at what the ring holds, so its end alert is released."""
        clip_store, holder = store
        sink = RecordingSink()
        recorder = ClipRecorder(clip_store, clip_store.config, device_id="dev")
        alerts = Alerts(device_id="dev", sink=sink, recorder=recorder)
        holder.append(alerts)
        ring = filled_ring(6.0)
        alerts.event(info(ring), event("start", 6.0, 5.5, 6.0))
        alerts.event(info(ring), event("end", 6.5, 5.5, 6.0))
        recorder.flush()
        assert sink.released.wait(10)
        assert sink.calls[-1][3]["clip"]["status"] == "saved"


def test_lost_clip_keeps_the_path_and_says_why() -> None:
    """A held end alert found after a crash is released with the reason its clip is missing."""
    payload = {"id": "x", "phase": "end", "clip": {"path": "/c/x.wav", "status": "recording"}}
    assert lost_clip(payload)["clip"] == {"path": "/c/x.wav", "status": "lost", "error": CLIP_LOST}
    assert lost_clip({"id": "x", "clip": None})["clip"]["path"] is None


class LeftoverLink(RecordingSink):
    """A link that a killed daemon left with held end alerts and alerts never ended."""

    def __init__(
        self, held: list[tuple[str, str, dict[str, Any]]], opened: list[tuple[str, dict[str, Any]]]
    ) -> None:
        super().__init__()
        self.held, self.opened = held, opened

    def held_alerts(self) -> list[tuple[str, str, dict[str, Any]]]:
        return self.held

    def open_alerts(self) -> list[tuple[str, dict[str, Any]]]:
        return self.opened


class TestInterrupted:
    """The end of an alert a killed daemon started and never ended."""

    def test_an_anomaly_ends_with_its_start_and_the_last_known_time(self) -> None:
        """The start's payload (id, monitor, scores, model, evidence) with phase end, status
        interrupted, ended_at at the start's detection (the last moment known), duration_s
        from started_at to then, detected_at the restart's; a clip never written is lost."""
        sink = RecordingSink()
        alerts = Alerts(device_id="dev", sink=sink, recorder=None, wall_clock=lambda: WALL)
        alerts.event(info(filled_ring(10.0)), event("start", 6.0, 5.5, 6.0))
        start = {**sink.calls[0][3], "clip": {"path": "/nowhere/x.wav", "status": "recording"}}
        end = interrupted_end(start, detected_at="2026-09-21T15:00:00.000Z")
        assert end == {
            **start,
            "detected_at": "2026-09-21T15:00:00.000Z",
            "phase": "end",
            "status": "interrupted",
            "ended_at": iso_utc(WALL),
            "duration_s": 5.5,  # the anomaly's audio began 5.5 s before the detection
            "clip": {"path": "/nowhere/x.wav", "status": "lost", "error": CLIP_LOST},
        }

    def test_input_and_machine_alerts_end_the_same_way_without_a_clip(self) -> None:
        """An input alert keeps its condition, channel and details; no clip key appears;
        a start without its times still ends, with no duration."""
        start = {
            "id": "i-1", "type": "input", "condition": "silence", "channel": 0,
            "phase": "start", "started_at": "2026-09-21T14:13:10.000Z",
            "detected_at": "2026-09-21T14:13:15.250Z", "details": {"level_dbfs": -200},
        }  # fmt: skip
        end = interrupted_end(start, detected_at="2026-09-21T15:00:00.000Z")
        assert end["phase"] == "end" and end["status"] == "interrupted"
        assert end["ended_at"] == "2026-09-21T14:13:15.250Z" and end["duration_s"] == 5.25
        assert end["details"] == {"level_dbfs": -200} and "clip" not in end
        bare = interrupted_end({"id": "m-1", "phase": "start"}, detected_at="t")
        assert bare["duration_s"] is None and bare["detected_at"] == "t"

    def test_at_start_held_ends_go_first_then_the_interrupted_ends(self) -> None:
        """The restart releases the held end alerts, then submits an interrupted end for
        each alert left open, in the order they started, under the same ids."""
        link = LeftoverLink(
            held=[("h-1", "end", {"id": "h-1", "clip": {"path": "/nowhere/h.wav"}})],
            opened=[
                ("o-1", {"id": "o-1", "type": "anomaly", "started_at": "x", "clip": None}),
                ("o-2", {"id": "o-2", "type": "machine", "detected_at": "y"}),
            ],
        )
        finish_previous_run(link)  # type: ignore[arg-type]
        got = [(kind, alert_id, phase) for kind, alert_id, phase, _, _ in link.calls]
        assert got == [
            ("release", "h-1", "end"),
            ("submit", "o-1", "end"),
            ("submit", "o-2", "end"),
        ]
        assert link.calls[0][3]["clip"]["status"] == "lost"
        assert [c[3]["status"] for c in link.calls[1:]] == ["interrupted", "interrupted"]
        assert link.calls[1][3]["clip"] is None and link.calls[2][3]["ended_at"] == "y"


class TestInputAlerts:
    def test_start_and_end_share_an_id_and_shutdown_ends_what_is_open(self) -> None:
        """An input problem's start and end carry one id, type input, the condition and
        the monitors it blinds; at shutdown every open one gets its end, with the reason."""
        sink = RecordingSink()
        now = [1_763_700_000.0]
        alerts = Alerts(device_id="dev", sink=sink, recorder=None, wall_clock=lambda: now[0])
        lost = alerts.input_problem(
            "input_lost", None, "start", since_s=now[0] - 0.5, monitors=["pump"],
            details={"reason": "stream_stalled"},
        )  # fmt: skip
        silent = alerts.input_problem(
            "silence", 0, "start", since_s=now[0], monitors=["pump"], details={"level_dbfs": -200}
        )
        now[0] += 3.0
        alerts.input_problem("input_lost", None, "end", since_s=now[0], monitors=[], details={})
        alerts.end_input_problems("daemon_stopped")
        alerts.end_input_problems("daemon_stopped")  # nothing open any more: nothing sent
        got = [(c[1], c[2], c[3]) for c in sink.calls]
        assert [(i, p) for i, p, _ in got] == [
            (lost, "start"),
            (silent, "start"),
            (lost, "end"),
            (silent, "end"),
        ]
        start, _, end, stopped = (payload for _, _, payload in got)
        assert start["type"] == "input" and start["condition"] == "input_lost"
        assert start["channel"] is None and start["monitors"] == ["pump"]
        assert end["duration_s"] == 3.5 and end["ended_at"] == iso_utc(now[0])
        assert stopped["details"] == {"reason": "daemon_stopped"}
        assert stopped["condition"] == "silence" and stopped["channel"] == 0
