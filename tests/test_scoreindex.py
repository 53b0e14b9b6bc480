"""The score index: one scale for every model's score (1 = threshold, 0 = typical normal)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from asd_edge.learning.calibration import CalibrationConfig, ScoreSequence, calibrate
from asd_edge.scoreindex import score_index, score_reference

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


class TestScoreIndex:
    @given(threshold=finite, reference=finite)
    def test_exactly_one_at_the_threshold(self, threshold: float, reference: float) -> None:
        """A score equal to the threshold in force reads 1.0, whatever the reference."""
        assert score_index(threshold, threshold, reference) == 1.0

    @given(threshold=finite, gap=st.floats(min_value=1e-3, max_value=1e6))
    def test_zero_at_the_reference(self, threshold: float, gap: float) -> None:
        """The model's typical normal score reads 0 (when it is below the threshold)."""
        reference = threshold - gap
        assert math.isclose(score_index(reference, threshold, reference), 0.0, abs_tol=1e-9)

    @given(a=finite, b=finite, threshold=finite, reference=finite)
    def test_monotone_in_the_score(
        self, a: float, b: float, threshold: float, reference: float
    ) -> None:
        """A higher score never reads a lower index."""
        lo, hi = sorted((a, b))
        assert score_index(lo, threshold, reference) <= score_index(hi, threshold, reference)

    def test_two_is_as_far_above_the_threshold_as_the_threshold_is_above_normal(self) -> None:
        """threshold 3, normal 1: a score of 5 reads 2, a score of 2 reads 0.5."""
        assert score_index(5.0, 3.0, 1.0) == 2.0
        assert score_index(2.0, 3.0, 1.0) == 0.5

    def test_a_reference_above_the_threshold_falls_back_to_the_threshold_scale(self) -> None:
        """threshold - reference <= 0 (an override below normal): the scale is |threshold|;
        a threshold of 0 uses 1.0."""
        assert score_index(-10.0, -20.0, -5.0) == 1.5
        assert score_index(0.5, 0.0, 2.0) == 1.5
        assert score_index(0.5, 0.0, math.nan) == 1.5

    def test_old_models_read_from_zero(self) -> None:
        """Without a reference (0.0), score 0 reads 0 for a positive threshold."""
        assert score_index(0.0, 4.0) == 0.0

    def test_non_finite_score_is_nan(self) -> None:
        """A NaN score has no index (null in the message)."""
        assert math.isnan(score_index(math.nan, 1.0, 0.0))


class TestScoreReference:
    def test_read_from_the_calibration(self) -> None:
        """calibration.score_median is the reference; missing or malformed: 0.0."""
        assert score_reference({"calibration": {"score_median": 1.25}}) == 1.25
        assert score_reference({"calibration": {"method": "fixed"}}) == 0.0
        assert score_reference({}) == 0.0
        assert score_reference({"calibration": {"score_median": "x"}}) == 0.0
        assert score_reference({"calibration": {"score_median": True}}) == 0.0

    def test_calibration_records_the_median_normal_score(self) -> None:
        """calibrate() writes score_median: the median of the held-out normal scores."""
        rng = np.random.default_rng(0)
        scores = rng.normal(2.0, 0.5, 5000)
        seq = ScoreSequence(np.arange(scores.size) * 0.5, scores, scores.size * 0.5)
        cal = calibrate([seq], CalibrationConfig(method="quantile", quantile=0.999))
        assert cal.metadata["score_median"] == float(np.median(scores))
        assert (
            score_index(
                cal.metadata["score_median"],
                cal.threshold,
                score_reference({"calibration": cal.metadata}),
            )
            == 0.0
        )
