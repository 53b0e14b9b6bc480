"""The threshold from normal audio: false alarms per day (default), quantile, mean+k·sigma, fixed.

``fa_per_day`` picks the threshold at which the daemon's own decision rule (an
event starts when ``onset_k`` of the last ``onset_n`` windows score above the
threshold, one window every ``hop_s``) raises at most ``target_fa_per_day`` false
alarms per day of normal sound. Held-out audio lasts minutes, so a day is never
observed; instead:

1. the held-out normal files are scored by the exported ONNX model through the
   daemon's pipeline (``asd_edge.scoring``) at the deployed hop;
2. a peaks-over-threshold tail is fitted to the window scores: above ``u`` (the
   ``1 - tail_fraction`` quantile), exceedances follow a generalised Pareto
   distribution (exponential when there are too few to fit its shape);
3. assuming windows exceed the threshold independently with probability ``p``, an
   event starts at a window when that window exceeds, exactly ``k - 1`` of the
   ``n - 1`` before it do, and the one that just left the k-of-n set did not:
   ``rate = C(n-1, k-1) p^k (1-p)^(n-k+1)`` per window. Hold and refractory time
   only remove onsets, so this bounds the rate from above. The ``p`` that gives
   ``target / windows_per_day`` is solved for and the tail is inverted at it.
   Overlapping windows make neighbouring scores correlated, which the
   independence assumption ignores: that is why step 4 exists;
4. the threshold is checked by running ``asd_edge.decision.Decision`` over every
   held-out score sequence: if it raises any event there, the threshold is raised
   to the largest held-out score (no window is then strictly above it).

All of it is recorded in the model's ``calibration`` metadata, with ``score_median``
(the median held-out normal score: the daemon's score index reads it as "typical
normal", ``asd_edge.scoreindex``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from asd_edge.config import MonitorConfig
from asd_edge.decision import Decision, DecisionPolicy
from asd_edge.detector import Detector
from asd_edge.errors import AudioDecodeError
from asd_edge.scoring import score_file

__all__ = [
    "DEVICE_RULE",
    "METHODS",
    "Calibration",
    "CalibrationConfig",
    "ScoreSequence",
    "TailModel",
    "calibrate",
    "calibrate_files",
    "count_events",
    "fit_tail",
    "onset_rate",
    "required_exceedance",
    "score_held_out",
]

Method = Literal["fa_per_day", "quantile", "mean_std", "fixed"]
METHODS: tuple[str, ...] = ("fa_per_day", "quantile", "mean_std", "fixed")
SECONDS_PER_DAY = 86400.0
MIN_GPD_EXCEEDANCES = 50
"""Fewer exceedances than this fit an exponential tail (the GPD's shape would be noise)."""
MAX_ABS_SHAPE = 0.5
"""The fitted GPD shape is clipped to [-0.5, 0.5]."""


@dataclass(frozen=True)
class ScoreSequence:
    """The window scores of one held-out recording, in order, as the daemon produced them."""

    times_s: np.ndarray
    """Stream time of each window's end, in seconds."""
    scores: np.ndarray
    """Each window's score."""
    duration_s: float
    """Length of the recording, in seconds."""
    source: str = ""
    """Where it came from (a file name)."""


DEVICE_RULE: dict[str, Any] = {f.name: f.default for f in fields(MonitorConfig)}
"""The defaults of a ``monitors[]`` entry: the decision rule a model meets on a device
unless its configuration says otherwise (one source, so they cannot drift apart)."""


@dataclass(frozen=True)
class CalibrationConfig:
    """How the threshold is chosen, and the decision rule it is chosen for."""

    method: Method = "fa_per_day"
    """``fa_per_day``, ``quantile``, ``mean_std`` or ``fixed``."""
    target_fa_per_day: float = 1.0
    """``fa_per_day``: false alarms per day of normal sound the threshold allows."""
    quantile: float = 0.99
    """``quantile``: this quantile of the held-out normal window scores."""
    k: float = 2.0
    """``mean_std``: mean + k standard deviations of the held-out normal window scores."""
    threshold: float | None = None
    """``fixed``: this value."""
    hop_s: float = DEVICE_RULE["hop_s"]
    """Seconds between scored windows on the device (the daemon's ``monitors[].hop_s``)."""
    onset_k: int = DEVICE_RULE["onset_k"]
    onset_n: int = DEVICE_RULE["onset_n"]
    hold_s: float = DEVICE_RULE["hold_s"]
    refractory_s: float = DEVICE_RULE["refractory_s"]
    tail_fraction: float = 0.1
    """Share of the highest held-out window scores the tail model is fitted to."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "fixed" and (self.threshold is None or not math.isfinite(self.threshold)):
            raise ValueError("method 'fixed' needs a finite threshold")
        if not self.target_fa_per_day > 0:
            raise ValueError(f"target_fa_per_day must be positive, got {self.target_fa_per_day}")
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {self.quantile}")
        if not 0.0 < self.tail_fraction < 1.0:
            raise ValueError(f"tail_fraction must be in (0, 1), got {self.tail_fraction}")
        if not self.hop_s > 0:
            raise ValueError(f"hop_s must be positive, got {self.hop_s}")

    @classmethod
    def for_monitor(cls, monitor: MonitorConfig, target_fa_per_day: float) -> CalibrationConfig:
        """False alarms per day under a monitor's own hop and decision rule."""
        return cls(
            target_fa_per_day=target_fa_per_day,
            hop_s=monitor.hop_s,
            onset_k=monitor.onset_k,
            onset_n=monitor.onset_n,
            hold_s=monitor.hold_s,
            refractory_s=monitor.refractory_s,
        )

    def policy(self, threshold: float) -> DecisionPolicy:
        """The daemon's decision rule at ``threshold``."""
        return DecisionPolicy(
            threshold=threshold,
            onset_k=self.onset_k,
            onset_n=self.onset_n,
            hold_s=self.hold_s,
            refractory_s=self.refractory_s,
        )


@dataclass(frozen=True)
class TailModel:
    """A peaks-over-threshold model of the upper tail of the window scores."""

    family: Literal["gpd", "exponential"]
    u: float
    """Scores above this are the tail."""
    zeta: float
    """P(score > u), the empirical share of windows above ``u``."""
    scale: float
    """Scale of the excesses ``score - u``."""
    shape: float
    """GPD shape xi (0 for the exponential)."""
    n_exceed: int
    """Windows above ``u``."""

    def exceedance(self, t: float) -> float:
        """P(score > t) for ``t >= u`` under the model."""
        if t <= self.u:
            return self.zeta
        if self.scale <= 0:
            return 0.0
        x = (t - self.u) / self.scale
        if self.shape == 0.0:
            return self.zeta * math.exp(-x)
        base = 1.0 + self.shape * x
        return 0.0 if base <= 0 else self.zeta * base ** (-1.0 / self.shape)

    def quantile(self, p: float) -> float:
        """The score exceeded with probability ``p`` (``p <= zeta``)."""
        if p >= self.zeta or self.scale <= 0:
            return self.u
        ratio = self.zeta / p
        if self.shape == 0.0:
            return self.u + self.scale * math.log(ratio)
        return float(self.u + self.scale / self.shape * (ratio**self.shape - 1.0))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description for the metadata."""
        return {
            "model": "peaks_over_threshold",
            "family": self.family,
            "u": self.u,
            "zeta": self.zeta,
            "scale": self.scale,
            "shape": self.shape,
            "n_exceed": self.n_exceed,
        }


def fit_tail(scores: np.ndarray, tail_fraction: float = 0.1) -> TailModel:
    """Fit a GPD (or, with few exceedances, an exponential) to the scores above a quantile."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size < 2:
        raise ValueError(f"need at least 2 finite scores to fit a tail, got {s.size}")
    u = float(np.quantile(s, 1.0 - tail_fraction))
    excess = s[s > u] - u
    zeta = excess.size / s.size
    if excess.size == 0:  # a flat top: nothing is above the quantile
        return TailModel("exponential", u, 1.0 / s.size, 0.0, 0.0, 0)
    if excess.size < MIN_GPD_EXCEEDANCES:
        return TailModel("exponential", u, zeta, float(excess.mean()), 0.0, int(excess.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        from scipy import stats  # heavy: loaded by the fit only

        shape, _, scale = stats.genpareto.fit(excess, floc=0.0)
    shape = float(np.clip(shape, -MAX_ABS_SHAPE, MAX_ABS_SHAPE))
    if not (math.isfinite(scale) and scale > 0):
        return TailModel("exponential", u, zeta, float(excess.mean()), 0.0, int(excess.size))
    return TailModel("gpd", u, zeta, float(scale), shape, int(excess.size))


def onset_rate(p: float, k: int, n: int) -> float:
    """Onsets per window of the k-of-n rule when windows exceed independently with prob. ``p``."""
    return math.comb(n - 1, k - 1) * p**k * (1.0 - p) ** (n - k + 1)


def required_exceedance(target_fa_per_day: float, hop_s: float, k: int, n: int) -> float:
    """The per-window exceedance probability at which ``onset_rate`` gives the target per day."""
    target = target_fa_per_day * hop_s / SECONDS_PER_DAY  # onsets per window
    lo, hi = 0.0, k / (n + 1.0)  # onset_rate rises on [0, k / (n + 1)]
    if onset_rate(hi, k, n) <= target:
        return hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if onset_rate(mid, k, n) > target:
            hi = mid
        else:
            lo = mid
    return lo


def count_events(sequences: Iterable[ScoreSequence], policy: DecisionPolicy) -> int:
    """Events the daemon's decision rule raises over the sequences (each a fresh stream)."""
    events = 0
    for seq in sequences:
        decision = Decision(policy)
        for t, s in zip(seq.times_s.tolist(), seq.scores.tolist(), strict=True):
            event = decision.update(s, t)
            if event is not None and event.phase == "start":
                events += 1
    return events


@dataclass(frozen=True)
class Calibration:
    """A threshold and the record of how it was chosen (the model's ``calibration``)."""

    threshold: float
    metadata: dict[str, Any]


def calibrate(sequences: Sequence[ScoreSequence], config: CalibrationConfig) -> Calibration:
    """Choose the threshold from held-out normal score sequences (pure; see the module doc)."""
    c = config
    finite = [s[np.isfinite(s)] for s in (q.scores for q in sequences)]
    scores = np.concatenate(finite) if finite else np.zeros(0)
    if c.method != "fixed" and scores.size < 2:
        raise ValueError(
            f"calibration '{c.method}' needs held-out normal window scores, got {scores.size}"
        )
    hours = sum(q.duration_s for q in sequences) / 3600.0
    meta: dict[str, Any] = {
        "method": c.method,
        "hop_s": c.hop_s,
        "onset_k": c.onset_k,
        "onset_n": c.onset_n,
        "hold_s": c.hold_s,
        "refractory_s": c.refractory_s,
        "held_out_files": len(sequences),
        "held_out_windows": int(scores.size),
        "held_out_hours": round(hours, 6),
    }
    if scores.size:  # the typical normal score: the score index's 0 (``scoreindex``)
        meta["score_median"] = float(np.median(scores))
    tail = fit_tail(scores, c.tail_fraction) if scores.size >= 2 else None
    if c.method == "fixed":
        assert c.threshold is not None
        threshold = float(c.threshold)
    elif c.method == "quantile":
        threshold = float(np.quantile(scores, c.quantile))
        meta["quantile"] = c.quantile
    elif c.method == "mean_std":
        threshold = float(scores.mean() + c.k * scores.std())
        meta["k"] = c.k
    else:
        assert tail is not None
        p = required_exceedance(c.target_fa_per_day, c.hop_s, c.onset_k, c.onset_n)
        threshold = tail.quantile(p)
        meta.update(
            target_fa_per_day=c.target_fa_per_day,
            window_exceedance=p,
            assumption="windows exceed the threshold independently; hold and refractory "
            "time ignored (they only remove onsets)",
        )
    events = count_events(sequences, c.policy(threshold))
    if c.method == "fa_per_day":
        meta["tail_threshold"] = threshold
        if events > 0:
            threshold = float(scores.max())
            meta["raised_to_empirical_max"] = True
            events = count_events(sequences, c.policy(threshold))
        else:
            meta["raised_to_empirical_max"] = False
    meta["empirical_events"] = events
    if tail is not None:
        meta["tail"] = tail.as_dict()
        per_window = onset_rate(tail.exceedance(threshold), c.onset_k, c.onset_n)
        meta["predicted_fa_per_day"] = per_window * SECONDS_PER_DAY / c.hop_s
    return Calibration(threshold=float(threshold), metadata=meta)


def score_held_out(
    model: str | os.PathLike[str] | Detector,
    paths: Iterable[str | os.PathLike[str]],
    hop_s: float,
    *,
    threshold: float | None = None,
) -> tuple[list[ScoreSequence], list[tuple[Path, str]]]:
    """Score files through the daemon's pipeline (resampling, filter, ONNX, monitor).

    Returns one sequence per readable file and ``(path, reason)`` for the others.
    """
    detector = model if isinstance(model, Detector) else Detector(model)
    settings = MonitorConfig(name="calibration", model=detector.path, hop_s=hop_s)
    sequences: list[ScoreSequence] = []
    skipped: list[tuple[Path, str]] = []
    for path in paths:
        try:
            report = score_file(str(path), detector, settings, threshold=threshold, hop_s=hop_s)
        except AudioDecodeError as exc:
            skipped.append((Path(path), exc.problem))
            continue
        windows = report["windows"]
        times = np.array([w["end_s"] for w in windows], dtype=np.float64)
        values = np.array([w["score"] for w in windows], dtype=np.float64)
        duration = float(times[-1]) if times.size else 0.0
        sequences.append(ScoreSequence(times, values, duration, str(path)))
    return sequences, skipped


def calibrate_files(
    model: str | os.PathLike[str],
    normal_files: Sequence[str | os.PathLike[str]],
    config: CalibrationConfig,
    *,
    log: Callable[[str], None] | None = None,
) -> Calibration:
    """Score held-out normal files with the exported model (the daemon's pipeline, at
    ``config.hop_s``) and choose the threshold; unreadable files are logged and skipped.

    Raises ValueError when no usable scores remain for a method that needs them.
    """
    sequences, skipped = score_held_out(model, normal_files, config.hop_s)
    for path, reason in skipped:
        if log is not None:
            log(f"calibration skipped {path}: {reason}")
    return calibrate(sequences, config)
