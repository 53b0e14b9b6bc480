"""Evidence on events: which frequency bands of the peak window departed from normal."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from .modelspec import BandsSpec

__all__ = ["EVIDENCE_MAX_BANDS", "EVIDENCE_MIN_Z", "band_evidence"]

EVIDENCE_MIN_Z = 3.0
"""A band is evidence when its deviation is at least this many normal spreads
(``|delta_db / spread_db| >= 3``): rarer than about 1 window in 370 for a normal band."""
EVIDENCE_MAX_BANDS = 3
"""Most bands an event's evidence names (the strongest)."""


def band_evidence(spec: BandsSpec, deltas_db: npt.ArrayLike | None) -> list[dict[str, Any]]:
    """The evidence of one window's ``bands`` output: at most ``EVIDENCE_MAX_BANDS``
    ``{"band_hz": [lo, hi], "delta_db": d, "z": z}``, strongest ``|z|`` first, only
    bands with ``|z| >= EVIDENCE_MIN_Z`` (``z = delta_db / spread_db``; both rounded
    to 0.1). An empty list when no band qualifies or there is no vector.
    """
    if deltas_db is None:
        return []
    deltas = np.asarray(deltas_db, dtype=np.float64).reshape(-1)
    if deltas.shape[0] != spec.n_bands:
        raise ValueError(f"expected {spec.n_bands} band deviations, got {deltas.shape[0]}")
    z = deltas / np.asarray(spec.spread_db, dtype=np.float64)
    strength = np.where(np.isfinite(z), np.abs(z), 0.0)
    candidates = np.flatnonzero(strength >= EVIDENCE_MIN_Z)
    if candidates.size == 0:
        return []
    # stable: among equal strengths the lower band comes first
    order = candidates[np.argsort(-strength[candidates], kind="stable")][:EVIDENCE_MAX_BANDS]
    evidence = []
    for i in order.tolist():
        lo, hi = spec.edges_hz[i]
        evidence.append(
            {
                "band_hz": [lo, hi],
                "delta_db": _tenth(deltas[i]),
                "z": _tenth(z[i]),
            }
        )
    return evidence


def _tenth(value: float) -> float:
    rounded = round(float(value), 1)
    return 0.0 if rounded == 0 or not math.isfinite(rounded) else rounded
