"""What the clip tests share: exact int16 noise, small fast clip settings, a result collector."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from asd_edge.clips import ClipResult
from asd_edge.config import ClipsConfig

__all__ = ["MODEL", "RATE", "Results", "clips_config", "ints", "pcm", "sidecar"]

RATE = 8000
MODEL = {"name": "pump-a", "version": "v1", "sha256": "ab" * 32}


def pcm(n: int, seed: int = 0) -> np.ndarray:
    """Noise whose every sample is an exact int16 value, so a clip compares bit for bit."""
    ints = np.random.default_rng(seed).integers(-20000, 20000, n)
    return (ints / 32768.0).astype(np.float32)


def ints(samples: np.ndarray) -> np.ndarray:
    """The int16 values a 16-bit file holds for ``samples``."""
    return np.round(samples.astype(np.float64) * 32768.0).astype(np.int64)


def clips_config(**changes: Any) -> ClipsConfig:
    """Small, fast defaults: 2 s pre-roll, 1 s post-roll, 8 s at most, no pictures."""
    base = ClipsConfig(
        pre_s=2.0, post_s=1.0, max_clip_s=8.0, spectrogram=False, min_free_mb=0.0, max_age_days=None
    )
    return replace(base, **changes)


def sidecar(audio: Path) -> dict[str, Any]:
    return json.loads(audio.with_suffix(".json").read_text())  # type: ignore[no-any-return]


class Results:
    """Collects what ``on_done`` receives (from the worker thread, or the caller's)."""

    def __init__(self) -> None:
        self.items: list[ClipResult] = []
        self._lock = threading.Lock()

    def __call__(self, result: ClipResult) -> None:
        with self._lock:
            self.items.append(result)

    def by_id(self) -> dict[str, ClipResult]:
        return {r.alert_id: r for r in self.items}
