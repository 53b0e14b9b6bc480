"""The checks a candidate model passes, beside the running one, before it may replace it."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from ..config import MonitorConfig
from ..detector import Detector
from ..errors import Unfit
from ..monitor import Monitor
from ..ring import RingBuffer

__all__ = [
    "NOISE_RMS",
    "RING_MARGIN_S",
    "CaptureFacts",
    "check_fit",
    "check_noise",
    "validate_candidate",
]

RING_MARGIN_S: Final = 2.0
"""A model's window must leave this much of the input ring free (as clips.pre_s does)."""
NOISE_RMS: Final = 0.1
"""Level of the noise a candidate must score finitely (about -20 dBFS)."""
_NOISE_SEED: Final = 0


@dataclass(frozen=True, slots=True)
class CaptureFacts:
    """What the open audio input offers a model."""

    sample_rate: int
    """Capture rate in Hz."""
    ring_s: float
    """Seconds of audio the input's ring holds per channel."""


def validate_candidate(
    path: str | os.PathLike[str],
    cfg: MonitorConfig,
    *,
    threads: int = 1,
    capture: CaptureFacts | None = None,
) -> Detector:
    """Load a candidate for monitor ``cfg`` and check that it can serve the input.

    Besides the Detector's own checks (metadata, shapes, a test inference on
    silence): its rate must not exceed the capture rate (the daemon resamples down,
    never up), its window must fit in the ring with ``RING_MARGIN_S`` to spare, and a
    window of noise run through the very pipeline a monitor runs (resampler,
    pre-filter, features, model, decision) must give a finite score. Raises
    ModelError (file and field) or Unfit. ``capture`` None: the model's own rate.
    """
    detector = Detector(path, threads=threads)
    check_fit(detector, cfg, capture)
    return detector


def check_noise(samples: int) -> npt.NDArray[np.float32]:
    """``samples`` of white Gaussian noise at ``NOISE_RMS``, the same on every call.

    Drawn from the standard library's generator (Box-Muller over its bytes) rather
    than ``np.random``: the daemon would otherwise import ``numpy.random`` for this
    alone at every model load, 2.5 MB of RSS it keeps for months
    (benchmarks/bench_cost.py)."""
    pairs = (samples + 1) // 2
    raw = np.frombuffer(random.Random(_NOISE_SEED).randbytes(16 * pairs), dtype=np.uint64)
    uniform = (raw >> np.uint64(11)).astype(np.float64)
    uniform *= 2.0**-53  # [0, 1), 53 bits
    radius = np.sqrt(-2.0 * np.log1p(-uniform[0::2]))  # log(1 - u): u < 1, never log(0)
    radius *= NOISE_RMS
    angle = uniform[1::2] * (2.0 * np.pi)
    noise = np.empty(2 * pairs, dtype=np.float32)
    noise[:pairs] = radius * np.cos(angle)
    noise[pairs:] = radius * np.sin(angle)
    return noise[:samples]


def check_fit(detector: Detector, cfg: MonitorConfig, capture: CaptureFacts | None) -> None:
    """Raise Unfit unless the loaded ``detector`` can serve monitor ``cfg`` on
    ``capture`` (rate, window in the ring, a finite score on noise; see
    ``validate_candidate``). ``capture`` None: the model's own rate."""
    spec = detector.spec
    rate = spec.sample_rate
    if capture is not None:
        if spec.sample_rate > capture.sample_rate:
            raise Unfit(
                f"sample_rate: the model needs {spec.sample_rate} Hz but the input captures "
                f"at {capture.sample_rate} Hz"
            )
        room_s = capture.ring_s - RING_MARGIN_S
        if spec.window_s > room_s:
            raise Unfit(
                f"window_s: the model's {spec.window_s:g} s window does not fit the input "
                f"ring (input.ring_s - {RING_MARGIN_S:g} = {room_s:g} s)"
            )
        rate = capture.sample_rate
    samples = round((spec.window_s + cfg.hop_s + 0.5) * rate)
    ring = RingBuffer(samples)
    monitor = Monitor.from_config(cfg, detector, ring, rate, start_index=0)
    ring.write(check_noise(samples))
    result = monitor.tick(final=True)
    if not result.scores or result.nonfinite_scores:
        raise Unfit("score: the model gives no finite score on a window of noise")
