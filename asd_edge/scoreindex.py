"""The score index: a window's score on one scale for every model (1 = the threshold)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["score_index", "score_reference"]


def score_index(score: float, threshold: float, reference: float = 0.0) -> float:
    """``1 + (score - threshold) / (threshold - reference)``: 1 at the threshold, 0 at the
    model's typical normal score ``reference``, 2 as far above the threshold as the
    threshold is above normal. Monotone increasing in ``score``.

    When ``threshold - reference`` is not a positive finite number (a model calibrated
    oddly, a threshold a config override set below normal), the scale is
    ``abs(threshold)``, or 1.0 for a threshold of 0. A non-finite score gives NaN
    (``null`` in a message)."""
    if not math.isfinite(score) or not math.isfinite(threshold):
        return math.nan
    scale = threshold - reference if math.isfinite(reference) else math.nan
    if not (math.isfinite(scale) and scale > 0.0):
        scale = abs(threshold) if threshold != 0.0 else 1.0
    return 1.0 + (score - threshold) / scale


def score_reference(metadata: Mapping[str, Any]) -> float:
    """A model's typical normal score: ``calibration.score_median`` of its metadata (the
    median of the held-out normal window scores its calibration saw), else 0.0 (models
    calibrated before it was recorded, or with a fixed threshold)."""
    calibration = metadata.get("calibration")
    if not isinstance(calibration, Mapping):
        return 0.0
    median = calibration.get("score_median")
    if isinstance(median, bool) or not isinstance(median, int | float):
        return 0.0
    return float(median) if math.isfinite(median) else 0.0
