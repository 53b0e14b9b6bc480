"""Tests of evidence: which bands an event names, and that alerts, sidecars and pictures
carry it, on a real bands model and real clip files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.alerting import RecordingSink
from support.bands import RATE, BandsModel, boost_band, calibrated_bands_model

from asd_edge.alerts import Alerts, MonitorInfo
from asd_edge.audiofile import read_audio
from asd_edge.clips import ClipRecorder, ClipStore
from asd_edge.clips.picture import BAND_RGB, draw_picture
from asd_edge.config import ClipsConfig, MonitorConfig
from asd_edge.detector import Detector
from asd_edge.modelspec import EVIDENCE_MAX_BANDS, EVIDENCE_MIN_Z, BandsSpec, band_evidence
from asd_edge.monitor import Monitor
from asd_edge.ring import RingBuffer
from asd_edge.scoring import score_samples
from training.synth import Machine, make_stream

SPEC = BandsSpec(
    edges_hz=((0.0, 100.0), (100.0, 200.0), (200.0, 400.0), (400.0, 800.0), (800.0, 1600.0)),
    spread_db=(1.0, 2.0, 0.5, 1.0, 4.0),
)
FAULT_BAND = 5
"""The band the +6 dB fault raises (2.4-3.8 kHz)."""


class TestBandEvidence:
    def test_strongest_first_either_sign(self) -> None:
        """Bands are ordered by |z|, a drop as much as a rise; z = delta / spread."""
        evidence = band_evidence(SPEC, [3.5, -12.0, 2.5, 0.0, 16.0])
        assert evidence == [
            {"band_hz": [100.0, 200.0], "delta_db": -12.0, "z": -6.0},
            {"band_hz": [200.0, 400.0], "delta_db": 2.5, "z": 5.0},
            {"band_hz": [800.0, 1600.0], "delta_db": 16.0, "z": 4.0},
        ]

    def test_only_bands_at_least_three_spreads_off(self) -> None:
        """|z| = 3 counts, just under it does not; nothing off gives an empty list."""
        assert EVIDENCE_MIN_Z == 3.0
        evidence = band_evidence(SPEC, [3.0, 5.99, -1.49, 0.0, 0.0])
        assert [e["band_hz"] for e in evidence] == [[0.0, 100.0]]
        assert band_evidence(SPEC, [0.5, -1.0, 1.0, 2.0, -8.0]) == []
        assert band_evidence(SPEC, None) == []

    def test_at_most_three_rounded_to_a_tenth(self) -> None:
        """Five bands far off: the three strongest, values rounded to 0.1."""
        evidence = band_evidence(SPEC, [10.04, 30.0, 9.04, -20.0, 100.0])
        assert len(evidence) == EVIDENCE_MAX_BANDS
        assert [(e["delta_db"], e["z"]) for e in evidence] == [
            (100.0, 25.0),
            (-20.0, -20.0),
            (9.0, 18.1),
        ]

    def test_non_finite_bands_are_no_evidence(self) -> None:
        """A NaN or infinite deviation is passed over, not reported."""
        evidence = band_evidence(SPEC, [np.nan, np.inf, 0.0, 4.0, 0.0])
        assert evidence == [{"band_hz": [400.0, 800.0], "delta_db": 4.0, "z": 4.0}]

    def test_wrong_length_is_an_error(self) -> None:
        """A vector that does not match the bands is a programming error, said loudly."""
        with pytest.raises(ValueError, match="expected 5"):
            band_evidence(SPEC, [1.0, 2.0])


@pytest.fixture(scope="module")
def bands_model(tmp_path_factory: pytest.TempPathFactory) -> BandsModel:
    """A bands model calibrated on 30 s of a synthetic machine (seed 3): spreads of 1 dB,
    anomalous beyond 3 spreads (the normal stream scores below 0.5)."""
    normal = make_stream(30.0, [], machine=Machine(0, 0), seed=3)
    return calibrated_bands_model(
        tmp_path_factory.mktemp("bands") / "bands.onnx", normal, threshold=3.0, min_spread_db=1.0
    )


def faulty_stream(model: BandsModel) -> np.ndarray:
    """12 s of the same machine with the fault band raised by 6 dB from 5 to 8 s."""
    normal = make_stream(12.0, [], machine=Machine(0, 0), seed=3)
    return boost_band(normal, model.core_hz(FAULT_BAND), 6.0, (5.0, 8.0))


class TestEventsCarryEvidence:
    def test_score_reports_the_raised_band(self, bands_model: BandsModel) -> None:
        """``asd-edge score``'s pipeline: one event, its evidence names the raised band."""
        report = score_samples(
            faulty_stream(bands_model),
            RATE,
            Detector(bands_model.path),
            MonitorConfig(name="t", model="m.onnx"),
        )
        (event,) = report["events"]
        assert 4.0 <= event["start_s"] <= 6.0 and 7.0 <= event["end_s"] <= 9.0
        strongest = event["evidence"][0]
        assert strongest["band_hz"] == bands_model.edges_hz[FAULT_BAND]
        assert 3.0 <= strongest["delta_db"] <= 6.5 and strongest["z"] >= EVIDENCE_MIN_Z
        assert "machine" not in report  # this model has no level metadata

    def test_alerts_sidecar_and_picture(self, tmp_path: Path, bands_model: BandsModel) -> None:
        """The daemon's own parts (ring, monitor, alerts, clip recorder and store) on the
        faulty stream: the start and end alerts carry evidence naming the raised band, the
        clip's sidecar repeats the end's, and the spectrogram brackets that band."""
        detector = Detector(bands_model.path)
        sink = RecordingSink()
        holder: list[Alerts] = []
        clips = ClipsConfig(pre_s=1.0, post_s=1.0, max_clip_s=20.0)
        store = ClipStore(tmp_path / "clips", clips, on_done=lambda r: holder[0].clip_done(r))
        store.start()
        recorder = ClipRecorder(store, clips, device_id="dev")
        alerts = Alerts(device_id="dev", sink=sink, recorder=recorder)
        holder.append(alerts)
        ring = RingBuffer(RATE * 60)
        monitor = Monitor.from_config(
            MonitorConfig(name="pump", model="m.onnx"), detector, ring, RATE, start_index=0
        )
        info = MonitorInfo(
            name="pump",
            model={"name": "bands-test", "version": "1", "sha256": detector.sha256},
            window_s=1.0,
            ring=ring,
            sample_rate=RATE,
            bands=detector.spec.bands,
        )
        audio = faulty_stream(bands_model)
        try:
            for begin in range(0, audio.size, RATE // 10):
                ring.write(audio[begin : begin + RATE // 10])
                result = monitor.tick()
                for window in result.scores:
                    recorder.score("pump", window.end_s, window.score)
                for event in result.events:
                    alerts.event(info, event)
                recorder.poll()
            assert sink.released.wait(10), "the end alert was not released with its clip"
        finally:
            store.stop()
        start = next(c[3] for c in sink.calls if c[2] == "start")
        end = next(c[3] for c in sink.calls if c[0] == "release")
        band = bands_model.edges_hz[FAULT_BAND]
        assert start["evidence"][0]["band_hz"] == band
        assert end["evidence"][0]["band_hz"] == band
        assert end["evidence"][0]["z"] >= start["evidence"][0]["z"] > 0  # the peak window's
        sidecar = json.loads(Path(end["clip"]["path"]).with_suffix(".json").read_text())
        assert sidecar["event"]["evidence"] == end["evidence"]
        # the picture brackets the band: bars at both sides over its rows
        clip = Path(end["clip"]["path"])
        rows, expected = bracketed_rows(clip, band)
        assert rows == expected

    def test_a_model_without_bands_has_no_evidence_key(self, level_model: Path) -> None:
        """Existing models: no ``evidence`` anywhere (the key is left out, not empty)."""
        sink = RecordingSink()
        alerts = Alerts(device_id="dev", sink=sink, recorder=None)
        ring = RingBuffer(RATE * 20)
        detector = Detector(level_model)
        monitor = Monitor.from_config(
            MonitorConfig(name="pump", model="m.onnx"), detector, ring, RATE, start_index=0
        )
        info = MonitorInfo("pump", {"name": "level"}, 1.0, ring, RATE, bands=detector.spec.bands)
        t = np.arange(4 * RATE) / RATE
        ring.write((0.5 * np.sin(2 * np.pi * 1000 * t) * (t > 1.5)).astype(np.float32))
        for event in [*monitor.tick(catch_up=True).events, monitor.close(monitor.now_s())]:
            assert event is not None
            alerts.event(info, event)
        assert [c[2] for c in sink.calls] == ["start", "end"]
        assert all("evidence" not in c[3] for c in sink.calls)


def bracketed_rows(clip: Path, band_hz: list[float]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The rows where the left bracket bar of a clip's picture is drawn, and the rows of
    ``band_hz`` on the frequency axis of that picture (its layout drawn again from the clip)."""
    from PIL import Image

    with Image.open(clip.with_suffix(".png")) as img:
        rgb = np.asarray(img.convert("RGB"))
    audio = read_audio(clip)
    layout = draw_picture(audio.samples[:, 0], audio.sample_rate).layout
    left, top, _, bottom = layout.plot
    marked = np.all(rgb[top:bottom, left] == BAND_RGB, axis=1)
    rows = np.flatnonzero(marked) + top
    assert rows.size and (np.diff(rows) == 1).all(), "one contiguous bracket"
    return (int(rows[0]), int(rows[-1])), (layout.y(band_hz[1]), layout.y(band_hz[0]))
