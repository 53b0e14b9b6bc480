"""Tests of a monitor: capture ring → resample → pre-filter → windows → model → decision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.audio import tone_burst

from asd_edge.decision import DecisionPolicy
from asd_edge.detector import Detector
from asd_edge.monitor import Monitor
from asd_edge.ring import RingBuffer


def feed(monitor: Monitor, ring: RingBuffer, x: np.ndarray, sizes: list[int]) -> tuple[list, list]:
    """Write x into the ring in blocks of the given sizes (cycled), ticking after each."""
    scores, events = [], []
    i = 0
    k = 0
    while i < x.shape[0]:
        n = sizes[k % len(sizes)]
        ring.write(x[i : i + n])
        i += n
        k += 1
        result = monitor.tick(catch_up=True, final=i >= x.shape[0])
        scores.extend(result.scores)
        events.extend(result.events)
    return scores, events


def make(
    detector: Detector, rate: int, hop_s: float = 0.5, capacity_s: float = 20.0, **policy: float
) -> tuple[Monitor, RingBuffer]:
    ring = RingBuffer(round(capacity_s * rate))
    settings = {"onset_k": 2, "onset_n": 3, "hold_s": 1.0, "refractory_s": 5.0, **policy}
    decision = DecisionPolicy(threshold=detector.threshold, **settings)  # type: ignore[arg-type]
    return Monitor("m", detector, decision, ring, rate, hop_s, start_index=0), ring


class TestMonitor:
    def test_finds_the_burst(self, level_model: Path) -> None:
        """One event, starting and ending around the loud second, with windows every hop."""
        det = Detector(level_model)
        monitor, ring = make(det, 16000)
        scores, events = feed(monitor, ring, tone_burst(16000, 10.0, (4.0, 5.0)), [8000])
        assert [w.end_s for w in scores[:3]] == [1.0, 1.5, 2.0]
        assert len(scores) == 19
        assert [e.phase for e in events] == ["start", "end"]
        start, end = events
        assert 4.0 < start.onset_s <= 4.5
        assert 4.5 <= start.at_s <= 5.0
        assert 5.0 <= end.last_anomalous_s <= 6.0
        assert end.peak_score == pytest.approx(-6.0, abs=0.5)
        quiet = [w.score for w in scores if w.end_s < 4.0]
        assert max(quiet) < -35.0

    def test_block_sizes_do_not_matter(self, level_model: Path) -> None:
        """Blocks of 20 ms, odd sizes or whole hops give the very same window scores."""
        det = Detector(level_model)
        x = tone_burst(16000, 6.0, (4.0, 5.0))
        results = []
        for sizes in ([8000], [320], [317, 5000, 1]):
            monitor, ring = make(det, 16000)
            scores, _ = feed(monitor, ring, x, sizes)
            results.append([(w.end_s, w.score) for w in scores])
        assert results[0] == results[1] == results[2]

    @pytest.mark.parametrize("rate", [44100, 48000, 8000])
    def test_other_capture_rates_are_resampled(self, level_model: Path, rate: int) -> None:
        """Capture at 44.1/48/8 kHz gives the same windows and nearly the same scores as 16 kHz."""
        det = Detector(level_model)
        ref_monitor, ref_ring = make(det, 16000)
        base, _ = feed(ref_monitor, ref_ring, tone_burst(16000, 10.0, (4.0, 5.0)), [8000])
        monitor, ring = make(det, rate)
        other, events = feed(monitor, ring, tone_burst(rate, 10.0, (4.0, 5.0)), [rate // 50])
        assert [round(w.end_s, 6) for w in other] == [round(w.end_s, 6) for w in base]
        loud = [(a.score, b.score) for a, b in zip(base, other, strict=True) if a.score > -30]
        assert loud and all(abs(a - b) < 1.0 for a, b in loud)
        assert [e.phase for e in events] == ["start", "end"]

    def test_late_tick_scores_only_the_latest_window(self, level_model: Path) -> None:
        """Three hops arriving at once: one window scored, two counted as skipped."""
        det = Detector(level_model)
        monitor, ring = make(det, 16000)
        ring.write(np.zeros(16000, np.float32))
        assert len(monitor.tick().scores) == 1
        ring.write(np.zeros(3 * 8000, np.float32))
        result = monitor.tick()
        assert len(result.scores) == 1 and result.skipped_windows == 2
        assert result.scores[0].end_s == 2.5

    def test_overrun_is_reported_and_survived(self, level_model: Path) -> None:
        """If the capture ring laps the monitor, the loss is reported and scoring resumes."""
        det = Detector(level_model)
        monitor, ring = make(det, 16000, capacity_s=5.0)
        ring.write(np.zeros(16000, np.float32))
        monitor.tick()
        ring.write(np.zeros(16000 * 6, np.float32))
        result = monitor.tick()
        assert result.lost_samples == 16000
        ring.write(np.zeros(16000, np.float32))
        later = monitor.tick()
        assert later.scores and later.scores[-1].end_s == pytest.approx(8.0)

    def test_prefilter_is_applied(self, waveform_model: Path) -> None:
        """The model's band-pass removes a DC offset before scoring (otherwise -6 dBFS)."""
        det = Detector(waveform_model)
        monitor, ring = make(det, 16000)
        x = np.full(16000 * 3, 0.5, np.float32) + 0.001 * np.random.default_rng(0).standard_normal(
            16000 * 3
        ).astype(np.float32)
        scores, events = feed(monitor, ring, x, [800])
        assert scores[-1].score < -40.0
        assert events == []

    def test_reopened_stream_is_not_stitched(self, level_model: Path) -> None:
        """After the capture marks a gap (stream reopened), no window spans it: the next
        window ends one full window after the gap, and loud audio before it is not scored
        together with quiet audio after it."""
        det = Detector(level_model)
        monitor, ring = make(det, 16000)
        ring.write(tone_burst(16000, 1.2, (0.7, 1.2)))  # loud at the end
        first = monitor.tick()
        assert [w.end_s for w in first.scores] == [1.0]
        ring.mark_gap()
        ring.write(np.zeros(16000, np.float32))
        result = monitor.tick()
        assert result.gap
        assert [w.end_s for w in result.scores] == [2.2]
        assert result.scores[0].score < -90.0  # only the silence after the gap

    def test_nonfinite_input_is_replaced_and_counted(self, waveform_model: Path) -> None:
        """One NaN sample does not blind the monitor for good (it would poison the
        pre-filter state): it is counted, replaced by silence, and a later burst is found."""
        det = Detector(waveform_model)
        monitor, ring = make(det, 16000, onset_k=1, onset_n=1)
        x = tone_burst(16000, 4.0, (3.0, 4.0))
        x[8000] = np.nan
        x[8001] = np.inf
        scores, events = feed(monitor, ring, x, [8000])
        assert all(np.isfinite(w.score) for w in scores)
        assert [e.phase for e in events][:1] == ["start"]
        assert events[0].onset_s > 3.0

    def test_nonfinite_counters(self, level_model: Path) -> None:
        """The tick reports how many samples were not finite."""
        det = Detector(level_model)
        monitor, ring = make(det, 16000)
        x = np.zeros(16000, np.float32)
        x[:3] = np.nan
        ring.write(x)
        assert monitor.tick().nonfinite_samples == 3
