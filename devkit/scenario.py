"""The demo's scenario: a synthetic machine stream (``training.synth.Stream``) with
anomalies spaced so none merge."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from asd_edge.config import MonitorConfig
from asd_edge.detector import Detector
from asd_edge.scoring import score_samples
from training.synth import ANOMALY_KINDS, Anomaly, Stream

__all__ = ["lead_in_threshold", "plan"]

SAMPLE_RATE_HZ = 16000
LEAD_S = 8.0
"""Normal sound before the first anomaly: the daemon starts while it plays (a few
seconds at most) and its first windows are all normal."""
ANOMALY_S = 4.0
GAP_S = 10.0
"""Normal sound after each anomaly. An event ends about window (1 s) + hold (1 s) after
its sound; then come the clip post-roll (2 s) and the refractory period (5 s): 10 s
keep the events, their clips and their alerts apart with 3 s to spare."""
TAIL_S = 8.0
"""Normal sound after the last anomaly: its end alert (after window, hold and the clip's
post-roll, about 4.5 s) comes within it, and the daemon is stopped before it ends."""


def plan(
    anomalies: int = len(ANOMALY_KINDS),
    *,
    kinds: Sequence[str] = ANOMALY_KINDS,
    seed: int = 0,
) -> Stream:
    """The demo's stream: ``anomalies`` of ``kinds`` (cycled), ``ANOMALY_S`` long, one every
    ``ANOMALY_S + GAP_S`` seconds after a ``LEAD_S`` lead-in; ``TAIL_S`` after the last.

    The machine's voice is fixed (the one models/demo.onnx learnt: machine 0, seed 0);
    ``seed`` varies only the stream's own randomness."""
    if anomalies < 1:
        raise ValueError(f"anomalies: expected at least 1, got {anomalies}")
    if not kinds:
        raise ValueError("kinds: expected at least one anomaly kind")
    unknown = [k for k in kinds if k not in ANOMALY_KINDS]
    if unknown:
        raise ValueError(
            f"kinds: unknown {', '.join(unknown)}; expected some of {', '.join(ANOMALY_KINDS)}"
        )
    period_s = ANOMALY_S + GAP_S
    planned = tuple(
        Anomaly(kinds[i % len(kinds)], LEAD_S + i * period_s, ANOMALY_S) for i in range(anomalies)
    )
    return Stream(
        duration_s=planned[-1].end_s + TAIL_S,
        anomalies=planned,
        machine_id=0,
        machine_seed=0,
        seed=seed,
        sample_rate=SAMPLE_RATE_HZ,
    )


def lead_in_threshold(
    detector: Detector,
    samples: npt.NDArray[np.float32],
    sample_rate: int,
    lead_s: float,
    margin: float,
) -> float:
    """The loudest score of the stream's normal lead-in, plus ``margin``.

    For a model that learned nothing (``level``): its threshold is set once, from the
    sound this machine makes when it is normal, before the daemon starts."""
    lead = samples[: round(lead_s * sample_rate)]
    settings = MonitorConfig(name="lead-in", model=detector.path)
    scored = score_samples(lead, sample_rate, detector, settings)
    scores = [w["score"] for w in scored["windows"]]
    if not scores:
        raise ValueError(f"a lead-in of {lead_s} s is shorter than one window")
    return float(max(scores) + margin)
