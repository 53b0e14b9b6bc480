"""Cross-fitted calibration and choice by measurement for the numpy-fitted kinds.

All normal audio a user has serves both fitting and calibration:

1. the normal recordings are split into folds **by source recording** (at most
   :data:`MAX_FOLDS`; with a single source, its stream is cut into pieces of at least
   :data:`MIN_PIECE_S` that serve as sources, which is said in the report);
2. for every fold, each candidate is fitted on the other folds and scores the fold's
   windows at the device's hop: these held-out score sequences are what the threshold
   is calibrated on (``asd_edge.learning.calibration.calibrate``, the daemon's decision rule);
3. faults (``asd_edge.learning.inject``) are injected into the fold's *real* recordings and
   scored the same way; at the calibrated threshold, a faulty recording counts as
   caught when the daemon's decision rule raises an event on it. That recall, per fault
   and severity, is how candidates are compared (ties within :data:`RECALL_TIE` by the
   window-level pAUC of normal against injected windows);
   Each candidate has two channels (``asd_edge.learning.bandstat``): its distance to normal and
   the loudness deviation. Each is calibrated on the held-out sequences at half the
   false-alarm budget, the score becomes the larger of the two ratios to their
   thresholds, and that fused score is calibrated at the full budget;
4. the chosen candidate is fitted on everything and keeps the cross-fitted thresholds
   (fold models saw less data, so their held-out scores err on the high side: the
   threshold is conservative).

numpy and scipy only, so that a device can run it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from . import bandstat
from .calibration import (
    Calibration,
    CalibrationConfig,
    ScoreSequence,
    calibrate,
    count_events,
    required_exceedance,
)
from .inject import FAULTS, SEVERITIES, inject
from .recording import MAX_INJECTED_S, Recording

__all__ = [
    "CANDIDATES",
    "MAX_FOLDS",
    "Candidate",
    "CandidateReport",
    "auc",
    "audio_needed_s",
    "choose",
    "crossfit",
    "folds",
    "pauc",
    "source_groups",
]

MAX_FOLDS = 5
MAX_INJECTED_RECORDINGS = 24
"""At most this many held-out recordings (spread over the folds) get injected faults."""
RECALL_TIE = 0.01
"""Mean recalls closer than this are a tie, broken by the window pAUC."""
MAX_FPR = 0.1
"""pAUC range, as DCASE 2020 task 2 (``roc_auc_score(y, s, max_fpr=0.1)``); the evaluation
uses it too."""
EXCEEDANCES_WANTED = 10
"""Held-out windows above the threshold one would want to observe to trust it directly."""

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Candidate:
    """A detector to try: a name and the ``bandstat`` parameters."""

    name: str
    params: Mapping[str, Any]


CANDIDATES: tuple[Candidate, ...] = (
    Candidate("bandstat/topk", {"scorer": "topk"}),
    Candidate("bandstat/knn", {"scorer": "knn"}),
    Candidate("bandstat/knn_topk", {"scorer": "knn_topk"}),
    Candidate("bandstat/maha", {"scorer": "maha"}),
)
"""What ``asd-train fit --model auto`` compares."""


@dataclass
class CandidateReport:
    """How one candidate did, cross-fitted over the folds."""

    name: str
    params: dict[str, Any]
    threshold: float
    calibration: dict[str, Any]
    recall: dict[str, dict[str, float]]
    """``recall[fault][severity]``: share of injected recordings caught at the threshold."""
    recall_mean: float
    window_auc: float | None
    window_pauc: float | None
    taus: tuple[float, float] = (1.0, 1.0)
    """Thresholds of the distance and of the loudness deviation (each at half the budget)."""
    held_out: list[ScoreSequence] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures (``metrics.json``, the model card)."""
        return {
            "name": self.name,
            "params": self.params,
            "threshold": self.threshold,
            "predicted_fa_per_day": self.calibration.get("predicted_fa_per_day"),
            "held_out_events": self.calibration.get("empirical_events"),
            "injected_recall_mean": round(self.recall_mean, 4),
            "injected_recall": self.recall,
            "window_auc": self.window_auc,
            "window_pauc": self.window_pauc,
        }


def auc(negatives: npt.ArrayLike, positives: npt.ArrayLike) -> float | None:
    """ROC AUC of positives over negatives (ties count half); None if either is empty."""
    neg = np.sort(np.asarray(negatives, dtype=np.float64))
    pos = np.asarray(positives, dtype=np.float64)
    if neg.size == 0 or pos.size == 0:
        return None
    below = np.searchsorted(neg, pos, side="left")
    equal = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * equal).sum() / (neg.size * pos.size))


def pauc(
    negatives: npt.ArrayLike, positives: npt.ArrayLike, max_fpr: float = MAX_FPR
) -> float | None:
    """Standardised partial AUC over FPR <= ``max_fpr`` (McClish; as scikit-learn's
    ``roc_auc_score(max_fpr=...)``, which DCASE uses); None if either set is empty."""
    neg = np.asarray(negatives, dtype=np.float64)
    pos = np.asarray(positives, dtype=np.float64)
    if neg.size == 0 or pos.size == 0:
        return None
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tpr = np.r_[0.0, np.cumsum(y)[distinct] / pos.size]
    fpr = np.r_[0.0, np.cumsum(1 - y)[distinct] / neg.size]
    stop = int(np.searchsorted(fpr, max_fpr, side="right"))
    x = np.r_[fpr[:stop], max_fpr]
    t = np.r_[tpr[:stop], np.interp(max_fpr, fpr, tpr)]
    area = float(np.trapezoid(t, x))
    lo, hi = 0.5 * max_fpr**2, max_fpr
    return 0.5 * (1.0 + (area - lo) / (hi - lo))


def audio_needed_s(config: CalibrationConfig) -> float:
    """Normal audio (s) in which the calibrated threshold would be exceeded by
    :data:`EXCEEDANCES_WANTED` windows: enough to see the target, not extrapolate it."""
    p = required_exceedance(config.target_fa_per_day, config.hop_s, config.onset_k, config.onset_n)
    return EXCEEDANCES_WANTED / max(p, 1e-12) * config.hop_s


def folds(recordings: Sequence[Recording], seed: int) -> list[list[int]]:
    """Recording indices per fold: sources in a seeded order, dealt round-robin."""
    sources = sorted({r.source for r in recordings})
    order = [sources[i] for i in np.random.default_rng(seed).permutation(len(sources))]
    count = min(MAX_FOLDS, len(order))
    fold_of = {src: i % count for i, src in enumerate(order)}
    out: list[list[int]] = [[] for _ in range(count)]
    for i, rec in enumerate(recordings):
        out[fold_of[rec.source]].append(i)
    return out


def source_groups(recordings: Sequence[Recording]) -> np.ndarray:
    """Each window's source, as an integer (``bandstat.fit``'s ``groups``)."""
    ids = {src: i for i, src in enumerate(sorted({r.source for r in recordings}))}
    return np.concatenate([np.full(r.stats.shape[0], ids[r.source]) for r in recordings])


def crossfit(
    recordings: Sequence[Recording],
    candidates: Sequence[Candidate],
    config: CalibrationConfig,
    featurize: Callable[[FloatArray], tuple[FloatArray, np.ndarray]],
    *,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[CandidateReport]:
    """Cross-fit every candidate (see the module doc); ``featurize(stream)`` gives the
    model input and window end times of a stream at the device's hop; ``progress(done,
    total)`` is called after each fold fit."""
    fold_idx = folds(recordings, seed)
    if len(fold_idx) < 2:
        raise ValueError("cross-fitting needs normal audio from at least 2 sources")
    inject_set = _injection_choice(fold_idx, seed)
    # Statistics, not log-mel frames, are kept for the injected faults: 193 numbers a
    # window instead of 1920.
    injected: dict[int, dict[tuple[str, float], tuple[np.ndarray, np.ndarray]]] = {}
    jobs = [(c, f) for c in candidates for f in range(len(fold_idx))]
    held: dict[str, list[_Channels]] = {c.name: [] for c in candidates}
    faulty: dict[str, list[tuple[str, float, _Channels]]] = {c.name: [] for c in candidates}
    for done, (cand, f) in enumerate(jobs):
        kept = [recordings[i] for g, idx in enumerate(fold_idx) if g != f for i in idx]
        model = bandstat.fit_statistics(
            np.concatenate([r.stats for r in kept]), cand.params, seed,
            groups=source_groups(kept),
        )  # fmt: skip
        for i in fold_idx[f]:
            rec = recordings[i]
            held[cand.name].append(_Channels.of(model, rec.stats, rec.end_s, rec.source))
            if i not in inject_set:
                continue
            if i not in injected:
                injected[i] = _inject_all(rec, featurize, seed + i)
            for (fault, sev), (s, ends) in injected[i].items():
                faulty[cand.name].append((fault, sev, _Channels.of(model, s, ends, rec.source)))
        if progress is not None:
            progress(done + 1, len(jobs))
    reports = []
    for cand in candidates:
        reports.append(_report(cand, held[cand.name], faulty[cand.name], config))
        if log is not None:
            r = reports[-1]
            log(
                f"candidate {r.name}: injected-fault recall {r.recall_mean:.3f} at threshold "
                f"{r.threshold:.4g} (predicted {r.calibration.get('predicted_fa_per_day', 0):.3g} "
                f"false alarms/day), window AUC {r.window_auc}, pAUC {r.window_pauc}"
            )
    return reports


def choose(reports: Sequence[CandidateReport]) -> CandidateReport:
    """The best recall at the false-alarm budget; within :data:`RECALL_TIE`, the best pAUC."""
    best_recall = max(r.recall_mean for r in reports)
    tied = [r for r in reports if r.recall_mean >= best_recall - RECALL_TIE]
    return max(tied, key=lambda r: (r.window_pauc or 0.0, r.recall_mean))


def _injection_choice(fold_idx: list[list[int]], seed: int) -> set[int]:
    """Held-out recordings that get injected faults, spread evenly over the folds."""
    rng = np.random.default_rng([seed, 0x1A])
    per_fold = max(1, MAX_INJECTED_RECORDINGS // len(fold_idx))
    chosen: set[int] = set()
    for idx in fold_idx:
        pick = rng.permutation(len(idx))[:per_fold]
        chosen.update(idx[j] for j in pick)
    return chosen


def _inject_all(
    rec: Recording, featurize: Callable[[FloatArray], tuple[FloatArray, np.ndarray]], seed: int
) -> dict[tuple[str, float], tuple[np.ndarray, np.ndarray]]:
    """Every fault at every severity injected into (the start of) ``rec``: the windows'
    statistics and end times."""
    clean = rec.stream[: round(MAX_INJECTED_S * rec.sample_rate)]
    out = {}
    for fault in FAULTS:
        for sev in SEVERITIES:
            x, ends = featurize(inject(clean, rec.sample_rate, fault, sev, seed=seed))
            out[(fault, sev)] = (bandstat.statistics(x), ends)
    return out


@dataclass(frozen=True)
class _Channels:
    """One scored recording: the distance and the loudness deviation of each window."""

    end_s: np.ndarray
    distance: np.ndarray
    loudness: np.ndarray
    source: str

    @classmethod
    def of(
        cls, model: bandstat.BandStat, stats: np.ndarray, end_s: np.ndarray, source: str
    ) -> _Channels:
        distance, loudness, _ = model.components_of(stats)
        return cls(end_s, distance, loudness, source)

    def sequence(self, scores: np.ndarray) -> ScoreSequence:
        duration = float(self.end_s[-1]) if self.end_s.size else 0.0
        return ScoreSequence(self.end_s, scores.astype(np.float64), duration, self.source)

    def fused(self, taus: tuple[float, float]) -> ScoreSequence:
        return self.sequence(bandstat.fuse(self.distance, self.loudness, taus))


def _report(
    cand: Candidate,
    held: list[_Channels],
    faulty: list[tuple[str, float, _Channels]],
    config: CalibrationConfig,
) -> CandidateReport:
    """Thresholds of the two channels at half the budget each, then of their fusion."""
    half = replace(config, target_fa_per_day=config.target_fa_per_day / 2.0)
    taus = (
        calibrate([h.sequence(h.distance) for h in held], half).threshold,
        calibrate([h.sequence(h.loudness) for h in held], half).threshold,
    )
    taus = (max(taus[0], 1e-6), max(taus[1], 1e-6))
    fused = [h.fused(taus) for h in held]
    cal: Calibration = calibrate(fused, config)
    recall: dict[str, dict[str, float]] = {}
    for fault in FAULTS:
        recall[fault] = {}
        for sev in SEVERITIES:
            seqs = [c.fused(taus) for f, v, c in faulty if f == fault and v == sev]
            if seqs:
                policy = config.policy(cal.threshold)
                hits = sum(count_events([q], policy) > 0 for q in seqs)
                recall[fault][str(sev)] = round(hits / len(seqs), 4)
    values = [v for per in recall.values() for v in per.values()]
    normal = np.concatenate([q.scores for q in fused]) if fused else np.zeros(0)
    bad = [c.fused(taus).scores for _, _, c in faulty]
    bad_all = np.concatenate(bad) if bad else np.zeros(0)
    a, pa = auc(normal, bad_all), pauc(normal, bad_all)
    return CandidateReport(
        name=cand.name,
        params=dict(cand.params),
        threshold=cal.threshold,
        calibration={**cal.metadata, "distance_threshold": taus[0], "loudness_threshold": taus[1]},
        recall=recall,
        recall_mean=float(np.mean(values)) if values else 0.0,
        window_auc=None if a is None else round(a, 4),
        window_pauc=None if pa is None else round(pa, 4),
        taus=taus,
        held_out=fused,
    )
