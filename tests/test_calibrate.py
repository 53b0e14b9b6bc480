"""Thresholds from normal scores: the false-alarm rate lands where theory says."""

from __future__ import annotations

import math

import numpy as np
import pytest

from asd_edge.learning.calibration import (
    CalibrationConfig,
    ScoreSequence,
    calibrate,
    count_events,
    fit_tail,
    onset_rate,
    required_exceedance,
)

HOP_S = 0.5
WINDOWS_PER_DAY = int(86400 / HOP_S)


def stream(scores: np.ndarray, hop_s: float = HOP_S) -> ScoreSequence:
    """Scores of one recording, one window every hop (times are window ends)."""
    times = 1.0 + hop_s * np.arange(scores.size)
    return ScoreSequence(times, scores.astype(np.float64), float(times[-1]))


class TestTheory:
    def test_required_exceedance_solves_the_onset_rate(self) -> None:
        """p makes the 2-of-3 onset rate equal the target per day (and p^2 dominates)."""
        p = required_exceedance(1.0, HOP_S, 2, 3)
        assert onset_rate(p, 2, 3) * WINDOWS_PER_DAY == pytest.approx(1.0, rel=1e-9)
        assert p == pytest.approx(math.sqrt(1.0 / (2 * WINDOWS_PER_DAY)), rel=0.01)

    def test_onset_rate_matches_a_simulated_k_of_n_rule(self) -> None:
        """The formula counts the first window of each k-of-n set in an independent stream."""
        rng = np.random.default_rng(0)
        above = rng.random(400_000) < 0.05
        count = np.convolve(above, np.ones(3, dtype=int))[: above.size]
        prev = np.concatenate([[0], count[:-1]])
        onsets = np.sum((count >= 2) & (prev < 2))
        assert onsets / above.size == pytest.approx(onset_rate(0.05, 2, 3), rel=0.05)


class TestFaPerDay:
    def test_exponential_scores_land_on_the_analytic_quantile(self) -> None:
        """Exp(1) window scores: the threshold is -ln(p) for the required p (within 3 %)."""
        scores = np.random.default_rng(1).exponential(size=20_000)
        cal = calibrate([stream(scores)], CalibrationConfig())
        p = required_exceedance(1.0, HOP_S, 2, 3)
        assert cal.threshold == pytest.approx(-math.log(p), rel=0.03)
        meta = cal.metadata
        assert meta["method"] == "fa_per_day" and meta["target_fa_per_day"] == 1.0
        assert meta["held_out_windows"] == 20_000 and meta["empirical_events"] == 0
        assert meta["held_out_hours"] == pytest.approx(20_000 * HOP_S / 3600, rel=1e-3)
        assert meta["tail"]["family"] == "gpd" and abs(meta["tail"]["shape"]) < 0.1
        assert meta["raised_to_empirical_max"] is False

    def test_heavy_tail_is_extrapolated(self) -> None:
        """Pareto scores (GPD shape 0.25): the threshold follows the heavy tail (within 15 %)."""
        rng = np.random.default_rng(2)
        scores = rng.pareto(4.0, size=30_000)  # P(S > s) = (1 + s)^-4
        cal = calibrate([stream(scores)], CalibrationConfig())
        p = required_exceedance(1.0, HOP_S, 2, 3)
        assert cal.metadata["tail"]["shape"] == pytest.approx(0.25, abs=0.08)
        assert cal.threshold == pytest.approx(p**-0.25 - 1.0, rel=0.15)

    def test_decision_rule_false_alarms_over_days(self) -> None:
        """Over three simulated days of normal scores the daemon's rule raises about the
        target number of alarms, never more than the bound allows (hold and refractory
        time only remove onsets)."""
        rng = np.random.default_rng(3)
        target = 20.0
        cal = calibrate(
            [stream(rng.normal(size=20_000))],
            CalibrationConfig(target_fa_per_day=target, method="fa_per_day"),
        )
        days = 3
        live = stream(rng.normal(size=days * WINDOWS_PER_DAY))
        per_day = count_events([live], CalibrationConfig().policy(cal.threshold)) / days
        assert 0.5 * target <= per_day <= 1.25 * target

    def test_unexpected_events_raise_the_threshold_to_the_maximum(self) -> None:
        """When the tail model's threshold still alarms on held-out audio (a burst the
        independence assumption misses), the threshold becomes the largest held-out score."""
        rng = np.random.default_rng(4)
        scores = rng.normal(size=2_000)
        scores[1000:1004] = 3.2  # four loud windows in a row: correlated, not independent
        cal = calibrate([stream(scores)], CalibrationConfig(target_fa_per_day=1000.0))
        assert cal.metadata["tail_threshold"] < 3.2
        assert cal.threshold == pytest.approx(scores.max())
        assert cal.metadata["raised_to_empirical_max"] is True
        assert cal.metadata["empirical_events"] == 0


class TestOtherMethods:
    @pytest.fixture
    def sequences(self) -> list[ScoreSequence]:
        rng = np.random.default_rng(5)
        return [stream(rng.normal(10.0, 2.0, size=500)) for _ in range(3)]

    def test_quantile(self, sequences: list[ScoreSequence]) -> None:
        """The chosen quantile of all held-out window scores."""
        all_scores = np.concatenate([s.scores for s in sequences])
        cal = calibrate(sequences, CalibrationConfig(method="quantile", quantile=0.95))
        assert cal.threshold == pytest.approx(np.quantile(all_scores, 0.95))
        assert cal.metadata["held_out_files"] == 3

    def test_mean_std(self, sequences: list[ScoreSequence]) -> None:
        """Mean + k sigma (the seed's rule, k = 2 by default)."""
        all_scores = np.concatenate([s.scores for s in sequences])
        cal = calibrate(sequences, CalibrationConfig(method="mean_std"))
        assert cal.threshold == pytest.approx(all_scores.mean() + 2 * all_scores.std())
        assert cal.threshold == pytest.approx(14.0, abs=0.3)

    def test_fixed_still_reports_its_false_alarms(self, sequences: list[ScoreSequence]) -> None:
        """A fixed threshold is kept as given; the events it raises on held-out audio and
        the predicted rate per day are recorded."""
        cal = calibrate(sequences, CalibrationConfig(method="fixed", threshold=11.0))
        assert cal.threshold == 11.0
        assert cal.metadata["empirical_events"] > 0
        assert cal.metadata["predicted_fa_per_day"] > 1000

    def test_no_scores_is_an_error(self) -> None:
        """Methods that learn from data refuse to run without held-out scores."""
        with pytest.raises(ValueError, match="needs held-out normal window scores"):
            calibrate([], CalibrationConfig())

    def test_fixed_without_a_value_is_refused(self) -> None:
        """method 'fixed' needs the value."""
        with pytest.raises(ValueError, match="fixed"):
            CalibrationConfig(method="fixed")


def test_tail_of_constant_scores() -> None:
    """A constant score has no tail: the threshold is that value and nothing exceeds it."""
    tail = fit_tail(np.full(100, 4.0))
    assert tail.quantile(1e-6) == 4.0 and tail.exceedance(4.5) == 0.0
