"""The bandstat detector in numpy: window statistics, the fit, the fitted model and its scoring."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULTS",
    "LN10",
    "OPSET",
    "SCORERS",
    "STOPPED_MARGIN_DB",
    "BandStat",
    "band_edges_hz",
    "fit",
    "fit_statistics",
    "fuse",
    "level_stats",
    "statistics",
]

Scorer = Literal["topk", "knn", "knn_topk", "maha"]
SCORERS: tuple[str, ...] = ("topk", "knn", "knn_topk", "maha")

DEFAULTS: dict[str, Any] = {
    "scorer": "topk",
    "k": 3,
    "floor_db": 1.0,
    "coreset": 256,
    "n_mels": 64,
}
"""Hyper-parameters and their defaults (``--param key=value``)."""

OPSET = 17
LN10 = math.log(10.0)
MAD_TO_STD = 1.4826
_CHUNK = 256
"""Windows per block where a computation would otherwise grow with (windows x windows)."""
_PAIR_ELEMENTS = 1 << 20
"""Differences held at once by :func:`_nearest` (8 MB of float64; a block of 256 windows
against a 256-window coreset held 100 MB, the fit's peak for an hour of audio)."""
STOPPED_MARGIN_DB = 12.0
"""A window this far below the 1st percentile of normal window levels means the machine
stopped. Measured on ../shared/data: real MIMII pump faults that make the pump quieter
lie up to 4.4 dB below the normal 1st percentile, so the margin leaves them 7.6 dB of room
while room tone 20 dB under the running level falls 8 dB past it (see benchmarks/)."""


def statistics(logmel: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The ``3 * n_mels + 1`` statistics of windows ``[batch, n_frames, n_mels]`` (float64)."""
    x = np.asarray(logmel, dtype=np.float64)
    if x.ndim != 3 or x.shape[1] < 2:
        raise ValueError(f"expected log-mel windows [batch, frames>=2, mels], got {x.shape}")
    mean = x.mean(axis=1)
    spread = np.sqrt(((x - mean[:, None, :]) ** 2).mean(axis=1))
    flux = np.abs(np.diff(x, axis=1)).mean(axis=1)
    power = np.exp(x * (LN10 / 10.0)).sum(axis=2).mean(axis=1)
    level = 10.0 / LN10 * np.log(power)
    return np.concatenate([mean, spread, flux, level[:, None]], axis=1)


def band_edges_hz(sample_rate: int, n_mels: int, fmin: float, fmax: float) -> list[list[float]]:
    """Each mel band's edges in Hz (where its triangle starts and ends; Slaney scale)."""
    from asd_edge.features import hz_to_mel, mel_to_hz

    points = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    return [[round(float(points[i]), 1), round(float(points[i + 2]), 1)] for i in range(n_mels)]


def level_stats(levels_dbfs: npt.ArrayLike) -> dict[str, Any]:
    """The model's ``level`` metadata from the normal windows' levels (dBFS, mean square)."""
    lv = np.asarray(levels_dbfs, dtype=np.float64)
    lv = lv[np.isfinite(lv)]
    if lv.size == 0:
        raise ValueError("no finite window levels to describe the running machine")
    p01, p50, p99 = (float(v) for v in np.percentile(lv, [1, 50, 99]))
    return {
        "unit": "dBFS",
        "measure": "window_mean_square",
        "p01": round(p01, 2),
        "p50": round(p50, 2),
        "p99": round(p99, 2),
        "stopped_below_dbfs": round(p01 - STOPPED_MARGIN_DB, 2),
        "margin_db": STOPPED_MARGIN_DB,
    }


@dataclass(frozen=True)
class BandStat:
    """A fitted detector: the normal statistics and one scorer's parameters."""

    scorer: Scorer
    n_mels: int
    center: npt.NDArray[np.float64]
    """Median of each statistic over the normal windows, ``[d]``."""
    scale: npt.NDArray[np.float64]
    """Robust spread of each statistic (floored), ``[d]``."""
    k: int = 3
    coreset: npt.NDArray[np.float64] | None = None
    """``knn``: standardised statistics of the kept normal windows ``[c, d]``."""
    local_scale: npt.NDArray[np.float64] | None = None
    """``knn_topk``: robust spread (dB, floored) of each statistic's deviation from the
    nearest normal window of another recording ``[d]``."""
    whitener: npt.NDArray[np.float64] | None = None
    """``maha``: ``L`` with ``L @ L.T`` the inverse shrunk covariance ``[d, d]``."""
    shrinkage: float | None = None
    """``maha``: the Ledoit-Wolf shrinkage intensity used."""
    taus: tuple[float, float] | None = None
    """The thresholds of the distance and of the loudness deviation when they are fused
    (set by the cross-fitted calibration); None scores the distance alone."""
    marked: npt.NDArray[np.float64] | None = None
    """Standardised statistics of windows an operator marked normal (false alarms fed
    back) ``[m, d]``: a window this close to one of them is not anomalous."""
    marked_gain: float = 0.0
    """A window at RMS distance ``r`` from the nearest marked window scores at most
    ``marked_gain * r`` (the threshold at the marked radius, see :meth:`with_marked`)."""

    @property
    def dims(self) -> int:
        """Statistics per window."""
        return int(self.center.shape[0])

    @property
    def band_spread_db(self) -> npt.NDArray[np.float64]:
        """The normal spread of each band's mean level, dB (``bands`` metadata)."""
        return self.scale[: self.n_mels]

    def score(self, logmel: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """``(score [batch], bands [batch, n_mels])`` of log-mel windows, float64.

        Without ``taus`` the score is the scorer's distance; with them it is the larger of
        the distance and the loudness deviation, each divided by its own threshold."""
        return self.score_of(statistics(logmel))

    def score_of(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`score` of windows already turned into :func:`statistics`."""
        shape, level, bands = self.components_of(s)
        score = shape if self.taus is None else fuse(shape, level, self.taus)
        if self.marked is not None:
            score = np.minimum(score, self.marked_gain * self.marked_distance(s))
        return score, bands

    def marked_distance(self, s: np.ndarray) -> np.ndarray:
        """RMS distance (in spreads, per statistic) of windows' statistics to the nearest
        marked-normal window; ``inf`` without any."""
        if self.marked is None:
            return np.full(s.shape[0], np.inf)
        z = (s - self.center) / self.scale
        d2, _ = _nearest(z, self.marked)
        return np.asarray(np.sqrt(np.maximum(d2, 0.0) / self.dims))

    def with_marked(self, s: np.ndarray, radius: float, threshold: float) -> BandStat:
        """This model with windows ``s`` (statistics) marked normal: a window within
        ``radius`` of one of them scores below ``threshold``, in proportion to its
        distance (the cap reaches the threshold at ``radius``)."""
        if not (radius > 0 and threshold > 0) or s.shape[0] == 0:
            raise ValueError(f"marked windows need a positive radius and threshold, got {radius}")
        z = (np.asarray(s, np.float64) - self.center) / self.scale
        return replace(self, marked=z, marked_gain=float(threshold / radius))

    def with_taus(self, shape_tau: float, level_tau: float) -> BandStat:
        """This model with the two channels fused at these thresholds (see the module doc)."""
        if not (shape_tau > 0 and level_tau > 0):
            raise ValueError(f"thresholds must be positive, got {shape_tau}, {level_tau}")
        return replace(self, taus=(float(shape_tau), float(level_tau)))

    def components(self, logmel: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(distance [batch], loudness deviation [batch], bands [batch, n_mels])``: the
        scorer's distance to normal, ``|z|`` of the broadband level, the band deviations."""
        return self.components_of(statistics(logmel))

    def components_of(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`components` of windows already turned into :func:`statistics`."""
        z = (s - self.center) / self.scale
        d = self.dims
        if self.scorer == "topk":
            score = np.sort(np.abs(z), axis=1)[:, -self.k :].mean(axis=1)
            bands = s[:, : self.n_mels] - self.center[: self.n_mels]
        elif self.scorer in ("knn", "knn_topk"):
            assert self.coreset is not None
            nearest_d2, nearest = _nearest(z, self.coreset)
            if self.scorer == "knn":
                score = np.sqrt(np.maximum(nearest_d2, 0.0) / d)
            else:
                assert self.local_scale is not None
                r = np.abs(z - self.coreset[nearest]) * (self.scale / self.local_scale)
                score = np.sort(r, axis=1)[:, -self.k :].mean(axis=1)
            ref = self.coreset[nearest, : self.n_mels] * self.scale[: self.n_mels]
            bands = (z[:, : self.n_mels] * self.scale[: self.n_mels]) - ref
        else:
            assert self.whitener is not None
            w = z @ self.whitener
            score = np.sqrt((w * w).sum(axis=1) / d)
            bands = s[:, : self.n_mels] - self.center[: self.n_mels]
        return score, np.abs(z[:, -1]), bands

    def describe(self) -> dict[str, Any]:
        """What was fitted, for ``metrics.json``."""
        out: dict[str, Any] = {"scorer": self.scorer, "statistics": self.dims}
        if self.scorer == "topk":
            out["k"] = self.k
        if self.coreset is not None:
            out["coreset"] = int(self.coreset.shape[0])
        if self.shrinkage is not None:
            out["shrinkage"] = round(self.shrinkage, 4)
        if self.taus is not None:
            out["distance_threshold"], out["loudness_threshold"] = self.taus
        return out


def fuse(distance: np.ndarray, loudness: np.ndarray, taus: tuple[float, float]) -> np.ndarray:
    """The fused score: ``max(distance / taus[0], loudness / taus[1])``."""
    return np.maximum(distance / taus[0], loudness / taus[1])


def _nearest(z: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The squared distance of each row of ``z`` to its nearest row of ``ref`` (summed
    squared differences, as the graph computes them) and that row's index, in blocks of
    at most :data:`_PAIR_ELEMENTS` differences: memory stays bounded for hours of audio."""
    rows = max(1, _PAIR_ELEMENTS // max(1, ref.shape[0] * ref.shape[1]))
    best, index = [], []
    for at in range(0, z.shape[0], rows):
        d2 = ((z[at : at + rows, None, :] - ref[None, :, :]) ** 2).sum(axis=2)
        index.append(d2.argmin(axis=1))
        best.append(d2.min(axis=1))
    if not best:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(best), np.concatenate(index)


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``[len(a), len(b)]`` as |a|^2 + |b|^2 - 2 a.b (fast in
    float64 for fitting; the graph sums squared differences instead, see ``to_onnx``)."""
    return np.asarray((a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * a @ b.T)


def _coreset(z: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-centre selection: at most ``size`` rows of ``z`` that cover the rest."""
    n = z.shape[0]
    if n <= size:
        return z.copy()
    chosen = [int(rng.integers(n))]
    dist = _sq_distances(z, z[chosen[0] : chosen[0] + 1])[:, 0]
    for _ in range(size - 1):
        i = int(dist.argmax())
        chosen.append(i)
        dist = np.minimum(dist, _sq_distances(z, z[i : i + 1])[:, 0])
    return np.asarray(z[np.sort(chosen)])


def _ledoit_wolf(z: np.ndarray) -> tuple[np.ndarray, float]:
    """The Ledoit-Wolf (2004) shrunk covariance of rows ``z`` towards ``mu * I``."""
    n, d = z.shape
    x = z - z.mean(axis=0)
    s = x.T @ x / n
    mu = float(np.trace(s)) / d
    delta = float(((s - mu * np.eye(d)) ** 2).sum()) / d
    x2 = x * x
    beta_bar = float((x2.T @ x2).sum() / n - (s * s).sum()) / (d * n)
    beta = min(beta_bar, delta)
    shrink = 1.0 if delta == 0 else beta / delta
    return (1.0 - shrink) * s + shrink * mu * np.eye(d), shrink


LOCAL_QUERIES = 2048
"""``knn_topk``: at most this many windows (seeded) measure the local spread."""


def _local_scale(
    z: np.ndarray,
    scale: np.ndarray,
    groups: np.ndarray | None,
    floor: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Robust spread (dB, at least ``floor``) of each statistic's deviation from the nearest
    window of another recording (with one recording: of another window), ``z`` being the
    statistics in units of ``scale``. At most :data:`LOCAL_QUERIES` windows are measured,
    in chunks, so memory stays bounded for hours of audio."""
    n = z.shape[0]
    queries = np.sort(rng.permutation(n)[:LOCAL_QUERIES])
    by_group = groups is not None and np.unique(groups).size > 1
    resid = []
    for at in range(0, queries.size, _CHUNK):
        q = queries[at : at + _CHUNK]
        dist2 = _sq_distances(z[q], z)
        if by_group:
            assert groups is not None
            dist2[groups[q][:, None] == groups[None, :]] = np.inf
        else:
            dist2[np.arange(q.size), q] = np.inf
        resid.append(np.abs(z[q] - z[dist2.argmin(axis=1)]) * scale)
    return np.asarray(np.maximum(MAD_TO_STD * np.median(np.concatenate(resid), axis=0), floor))


def fit(
    logmel: npt.ArrayLike,
    params: Mapping[str, Any],
    seed: int = 0,
    groups: npt.ArrayLike | None = None,
) -> BandStat:
    """Fit on normal log-mel windows ``[n, n_frames, n_mels]``; ``groups`` names each
    window's source recording (``knn_topk`` measures its local spread across them).
    ValueError on bad input."""
    return fit_statistics(statistics(logmel), params, seed, groups)


def fit_statistics(
    s: np.ndarray,
    params: Mapping[str, Any],
    seed: int = 0,
    groups: npt.ArrayLike | None = None,
) -> BandStat:
    """:func:`fit` on windows already turned into :func:`statistics` ``[n, 3 n_mels + 1]``."""
    p = {**DEFAULTS, **params}
    unknown = sorted(set(p) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"bandstat has no parameter {unknown[0]!r} (known: {sorted(DEFAULTS)})")
    scorer = str(p["scorer"])
    if scorer not in SCORERS:
        raise ValueError(f"bandstat scorer must be one of {', '.join(SCORERS)}, got {scorer!r}")
    n, d = s.shape
    n_mels = (d - 1) // 3
    if n < 8:
        raise ValueError(f"bandstat needs at least 8 normal windows, got {n}")
    k = int(p["k"])
    if not 1 <= k <= d:
        raise ValueError(f"k must be in [1, {d}], got {k}")
    floor = float(p["floor_db"])
    if not floor > 0:
        raise ValueError(f"floor_db must be positive, got {floor}")
    center = np.median(s, axis=0)
    scale = np.maximum(MAD_TO_STD * np.median(np.abs(s - center), axis=0), floor)
    z = (s - center) / scale
    if scorer in ("knn", "knn_topk"):
        size = int(p["coreset"])
        if size < 1:
            raise ValueError(f"coreset must be at least 1, got {size}")
        core = _coreset(z, size, np.random.default_rng(seed))
        if scorer == "knn":
            return BandStat("knn", n_mels, center, scale, k, coreset=core)
        g = None if groups is None else np.asarray(groups)
        local = _local_scale(z, scale, g, floor, np.random.default_rng([seed, 1]))
        return BandStat("knn_topk", n_mels, center, scale, k, coreset=core, local_scale=local)
    if scorer == "maha":
        cov, shrink = _ledoit_wolf(z)
        whitener = np.linalg.cholesky(np.linalg.inv(cov))
        return BandStat("maha", n_mels, center, scale, k, whitener=whitener, shrinkage=shrink)
    return BandStat("topk", n_mels, center, scale, k)
