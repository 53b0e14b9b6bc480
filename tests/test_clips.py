"""Tests of the clip recorder: exactly the audio around each event, cut at the right time."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile
from support.clips import MODEL, RATE, Results, clips_config, ints, pcm, sidecar

from asd_edge.clips import ClipRecorder, ClipResult, ClipStore
from asd_edge.config import ClipsConfig
from asd_edge.decision import Event
from asd_edge.ring import RingBuffer

WALL = 1_800_000_000.0
"""The injected wall clock (2027-01-15T08:00:00Z) at which recorders open clips."""


def start_event(onset_s: float, at_s: float, peak: float = 5.0) -> Event:
    return Event("start", at_s, onset_s, at_s, peak, peak, 1.0)


def end_event(onset_s: float, last_s: float, at_s: float, peak: float = 5.0) -> Event:
    return Event("end", at_s, onset_s, last_s, peak, 0.5, 1.0)


def read_ints(path: Path) -> np.ndarray:
    rate, data = wavfile.read(path)
    assert rate == RATE and data.dtype == np.int16
    return data.astype(np.int64)


class Rig:
    """A real ring fed with known audio, a real store in a temporary directory, a recorder."""

    def __init__(self, directory: Path, config: ClipsConfig, ring_s: float = 20.0) -> None:
        self.audio = pcm(60 * RATE)
        self.ring = RingBuffer(round(ring_s * RATE))
        self.results = Results()
        self.store = ClipStore(directory, config, on_done=self.results)
        self.recorder = ClipRecorder(self.store, config, device_id="dev1", wall_clock=lambda: WALL)
        self.store.start()

    def feed(self, until_s: float) -> None:
        """Capture up to ``until_s`` in 20 ms blocks, as the PortAudio callback would."""
        end = round(until_s * RATE)
        while self.ring.written < end:
            start = self.ring.written
            self.ring.write(self.audio[start : min(end, start + 160)])

    def open(self, alert_id: str, onset_s: float, at_s: float) -> Path | None:
        return self.recorder.start(
            alert_id=alert_id,
            monitor="pump",
            event=start_event(onset_s, at_s),
            ring=self.ring,
            sample_rate=RATE,
            window_s=1.0,
            model=MODEL,
        )

    def finish(self) -> dict[str, ClipResult]:
        self.store.stop()
        return self.results.by_id()

    def expected(self, start_s: float, stop_s: float) -> np.ndarray:
        return ints(self.audio[round(start_s * RATE) : round(stop_s * RATE)])


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "clips", clips_config())
    yield r
    r.store.stop()


class TestRecorder:
    """The clip holds exactly the audio around the event, cut at the right time."""

    def test_clip_is_pre_roll_event_and_post_roll(self, rig: Rig) -> None:
        """From onset - window - pre_s to last anomalous + post_s, sample for sample, and only
        once that post-roll has been captured."""
        rig.feed(6.5)
        path = rig.open("a1", onset_s=6.0, at_s=6.5)
        assert path == rig.store.directory / "pump" / "20270115T075956Z_a1.wav"
        rig.recorder.score("pump", 6.5, 3.0)
        rig.feed(8.0)
        rig.recorder.end(monitor="pump", event=end_event(6.0, last_s=7.5, at_s=8.0))
        assert rig.recorder.poll() == []  # the post-roll (until 8.5 s) is not captured yet
        rig.feed(8.49)
        assert rig.recorder.poll() == []
        rig.feed(9.0)
        assert rig.recorder.poll() == ["a1"]
        assert rig.recorder.poll() == []
        result = rig.finish()["a1"]
        assert result.error is None and result.path == path
        np.testing.assert_array_equal(read_ints(path), rig.expected(3.0, 8.5))
        assert result.duration_s == pytest.approx(5.5)
        assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert result.bytes == path.stat().st_size

    def test_sidecar(self, rig: Rig) -> None:
        """The sidecar names the alert, event, model, file facts and the score timeline as
        offsets into the clip; wall time is the capture time of the first sample."""
        rig.feed(6.5)
        path = rig.open("a1", onset_s=6.0, at_s=6.5)
        assert path is not None
        for at_s, score in ((6.5, 3.0), (7.0, 7.0), (7.5, 2.0), (8.0, 0.1), (9.0, 0.2)):
            rig.feed(at_s)
            rig.recorder.score("pump", at_s, score)
        rig.recorder.end(monitor="pump", event=end_event(6.0, last_s=7.5, at_s=8.0, peak=7.0))
        rig.recorder.poll()
        rig.finish()
        doc = sidecar(path)
        assert doc["alert_id"] == "a1" and doc["device_id"] == "dev1" and doc["monitor"] == "pump"
        assert doc["model"] == MODEL
        clip = doc["clip"]
        assert clip["file"] == path.name and clip["format"] == "wav"
        assert clip["sample_rate"] == RATE and clip["duration_s"] == pytest.approx(5.5)
        assert clip["pre_s"] == pytest.approx(2.0)
        assert clip["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert clip["bytes"] == path.stat().st_size
        # 3.5 s of audio (3.0 .. 6.5 s) had been captured when the clip opened at WALL.
        assert datetime.fromisoformat(clip["started_at"]) == datetime.fromtimestamp(
            WALL - 3.5, tz=UTC
        )
        event = doc["event"]
        assert event["anomaly_start_offset_s"] == pytest.approx(2.0)
        assert event["anomaly_end_offset_s"] == pytest.approx(4.5)
        assert event["peak_score"] == 7.0 and event["threshold"] == 1.0
        assert event["truncated"] is False and event["cut"] == "end"
        # Windows ending inside the clip (3.0 .. 8.5 s); the one at 9.0 s is after it.
        assert [(s["offset_s"], s["score"]) for s in doc["scores"]] == [
            (3.5, 3.0),
            (4.0, 7.0),
            (4.5, 2.0),
            (5.0, 0.1),
        ]

    def test_scores_before_the_start_are_in_the_timeline(self, rig: Rig) -> None:
        """Windows scored before the event started (the onset evidence) are in the sidecar."""
        rig.feed(6.5)
        rig.recorder.score("pump", 2.5, 0.1)  # ends before the clip: left out
        rig.recorder.score("pump", 6.0, 4.0)
        path = rig.open("a1", onset_s=6.0, at_s=6.5)
        rig.recorder.score("pump", 6.5, 4.5)
        rig.recorder.score("other", 6.5, 9.9)  # another monitor's window
        rig.recorder.end(monitor="pump", event=end_event(6.0, last_s=6.5, at_s=7.5))
        rig.feed(8.0)
        rig.recorder.poll()
        rig.finish()
        assert path is not None
        assert [s["offset_s"] for s in sidecar(path)["scores"]] == [3.0, 3.5]

    def test_pre_roll_clamped_at_the_stream_start(self, rig: Rig) -> None:
        """An event in the first seconds gets the pre-roll there is, and says so."""
        rig.feed(2.0)
        path = rig.open("early", onset_s=1.5, at_s=2.0)
        rig.recorder.end(monitor="pump", event=end_event(1.5, last_s=2.0, at_s=3.0))
        rig.feed(3.0)
        assert rig.recorder.poll() == ["early"]
        rig.finish()
        assert path is not None
        np.testing.assert_array_equal(read_ints(path), rig.expected(0.0, 3.0))
        assert sidecar(path)["clip"]["pre_s"] == pytest.approx(0.5)

    def test_stalled_tick_leaves_silence_not_a_shift(self, tmp_path: Path) -> None:
        """If the tick stalls longer than the ring holds, the overwritten stretch is silence
        and counted; the audio around it keeps its place in time."""
        rig = Rig(tmp_path / "clips", clips_config(), ring_s=4.0)
        rig.feed(6.5)
        path = rig.open("a1", onset_s=6.0, at_s=6.5)  # the pre-roll is copied right away
        rig.recorder.end(monitor="pump", event=end_event(6.0, last_s=7.5, at_s=8.0))
        rig.feed(11.0)  # no poll meanwhile: the ring now starts at 7.0 s
        assert rig.recorder.poll() == ["a1"]
        rig.finish()
        assert path is not None
        silence = np.zeros(RATE // 2, dtype=np.int64)
        expected = np.concatenate([rig.expected(3.0, 6.5), silence, rig.expected(7.0, 8.5)])
        np.testing.assert_array_equal(read_ints(path), expected)
        assert sidecar(path)["event"]["lost_samples"] == RATE // 2

    def test_truncated_at_max_clip_s_and_no_second_clip(self, tmp_path: Path) -> None:
        """A long event is cut at max_clip_s (pre-roll included), marked truncated; its end
        later starts no second clip."""
        rig = Rig(tmp_path / "clips", clips_config(max_clip_s=4.0))
        rig.feed(6.5)
        path = rig.open("long", onset_s=6.0, at_s=6.5)
        rig.feed(6.99)
        assert rig.recorder.poll() == []
        rig.feed(7.0)
        assert rig.recorder.poll() == ["long"]
        rig.feed(12.0)
        rig.recorder.end(monitor="pump", event=end_event(6.0, last_s=11.0, at_s=12.0))
        rig.feed(13.0)
        assert rig.recorder.poll() == [] and rig.recorder.flush() == []
        results = rig.finish()
        assert list(results) == ["long"] and path is not None
        np.testing.assert_array_equal(read_ints(path), rig.expected(3.0, 7.0))
        event = sidecar(path)["event"]
        assert event["truncated"] is True and event["cut"] == "max_clip_s"
        assert event["anomaly_end_offset_s"] is None
        assert sorted(p.name for p in path.parent.iterdir()) == [
            "20270115T075956Z_long.json",
            path.name,
        ]

    def test_flush_at_shutdown(self, rig: Rig) -> None:
        """Shutdown submits open clips with what the ring holds: an event still running,
        and an ended one whose post-roll never came."""
        rig.feed(6.5)
        running = rig.open("running", onset_s=6.0, at_s=6.5)
        rig.recorder.start(
            alert_id="ended",
            monitor="fan",
            event=start_event(6.0, 6.5),
            ring=rig.ring,
            sample_rate=RATE,
            window_s=1.0,
            model=MODEL,
        )
        rig.feed(7.0)
        rig.recorder.end(monitor="fan", event=end_event(6.0, last_s=7.0, at_s=7.0))
        rig.feed(7.2)
        assert rig.recorder.poll() == []
        assert sorted(rig.recorder.flush()) == ["ended", "running"]
        assert rig.recorder.flush() == [] and rig.recorder.poll() == []
        results = rig.finish()
        assert running is not None and results["ended"].path is not None
        for path in (running, results["ended"].path):
            np.testing.assert_array_equal(read_ints(path), rig.expected(3.0, 7.2))
            assert sidecar(path)["event"]["cut"] == "shutdown"

    def test_disabled(self, tmp_path: Path) -> None:
        """clips.enabled false: no path in the alert, nothing written."""
        rig = Rig(tmp_path / "clips", clips_config(enabled=False))
        rig.feed(6.5)
        assert rig.open("a1", onset_s=6.0, at_s=6.5) is None
        rig.recorder.end(monitor="pump", event=end_event(6.0, last_s=6.5, at_s=7.0))
        rig.feed(10.0)
        assert rig.recorder.poll() == [] and rig.recorder.flush() == []
        assert rig.finish() == {}
        assert list((tmp_path / "clips").rglob("*.wav")) == []
