"""The ``ocsvm`` kind: a one-class SVM on per-window band statistics (Tokyo Gas study).

Features of a window (``BandStats``, the same as the ``gmm`` kind's): each mel band
standardised with the training statistics, then its mean and standard deviation
over the window's frames (``2 * n_mels`` values). scikit-learn fits a
``StandardScaler``, an optional ``PCA`` and an RBF ``OneClassSVM`` on them (at most
``max_windows`` training windows, a seeded random subset when there are more); the
fitted numbers then become buffers of a torch module (``OcsvmScore``) that computes
``-decision_function``: ``rho - sum_i dual_i * exp(-gamma * |x - sv_i|^2)``, higher =
more anomalous, and is what gets exported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM
from threadpoolctl import threadpool_limits
from torch import nn

from ..errors import DataError
from .base import InputStats, KindInfo, ScoreModel, Standardize, read_params, require_positive

__all__ = ["INFO", "BandStats", "OcsvmScore", "band_features", "fit", "fit_pipeline"]

DEFAULTS: dict[str, Any] = {
    "nu": 0.1,
    "gamma": "scale",
    "pca_components": 32,
    "max_windows": 10000,
}
"""``nu``: upper bound on the fraction of training windows outside the boundary (0-1];
``gamma``: RBF width, ``scale`` (1 / (dims x variance of the SVM's input), as
scikit-learn) or a number; ``pca_components``: PCA dimensions before the SVM, 0 = no
PCA; ``max_windows``: training windows used at most, a seeded subset beyond that (the
SVM's fit time grows faster than their number: 0.3 s for 2000 windows, 1.3 s for
10000, which keep about ``nu`` x as many support vectors)."""


class BandStats(nn.Module):
    """``[batch, n_frames, n_mels]`` → ``[batch, 2 * n_mels]``: mean then standard
    deviation over frames of each mel band standardised with the training stats."""

    def __init__(self, stats: InputStats) -> None:
        super().__init__()
        self.standardize = Standardize(stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Band means and (population) standard deviations, concatenated."""
        z = self.standardize(x)
        mean = z.mean(dim=1)
        std = torch.sqrt(((z - mean.unsqueeze(1)) ** 2).mean(dim=1))
        return torch.cat([mean, std], dim=1)


def band_features(x: np.ndarray, stats: InputStats) -> np.ndarray:
    """``BandStats`` of log-mel windows ``[N, n_frames, n_mels]`` as float64 ``[N, 2 * n_mels]``
    (computed by the very module the exported graph contains)."""
    if x.ndim != 3:
        raise ValueError(f"ocsvm needs log-mel windows [N, n_frames, n_mels], got shape {x.shape}")
    with torch.no_grad():
        feats = BandStats(stats)(torch.as_tensor(x, dtype=torch.float32))
    return np.asarray(feats.numpy(), dtype=np.float64)


def _gamma(value: Any, z: np.ndarray) -> float:
    if value == "scale":
        variance = float(z.var())
        return 1.0 / (z.shape[1] * variance) if variance > 0 else 1.0
    try:
        gamma = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"parameter gamma: expected 'scale' or a number, got {value!r}") from None
    if not gamma > 0:
        raise ValueError(f"parameter gamma: expected a positive number, got {value!r}")
    return gamma


def fit_pipeline(features: np.ndarray, params: Mapping[str, Any], seed: int) -> Pipeline:
    """Scaler (+ PCA) + one-class SVM fitted on ``features`` ``[N, dims]`` (at most
    ``max_windows`` rows of them, drawn with ``seed``)."""
    p = read_params(DEFAULTS, params)
    require_positive(p, "max_windows")
    if not 0.0 < p["nu"] <= 1.0:
        raise ValueError(f"parameter nu: expected a number in (0, 1], got {p['nu']!r}")
    if p["pca_components"] < 0:
        raise ValueError(f"parameter pca_components: expected >= 0, got {p['pca_components']}")
    if len(features) < 2:
        raise DataError(f"ocsvm needs at least 2 training windows, got {len(features)}")
    if len(features) > p["max_windows"]:
        rng = np.random.default_rng(seed)
        features = features[np.sort(rng.choice(len(features), p["max_windows"], replace=False))]
    steps: list[tuple[str, Any]] = [("scaler", StandardScaler())]
    if p["pca_components"] > 0:
        k = min(p["pca_components"], features.shape[1], len(features))
        steps.append(("pca", PCA(n_components=k, svd_solver="full", random_state=seed)))
    with threadpool_limits(limits=1):  # small matrices: BLAS threads only contend
        z = Pipeline(steps).fit_transform(features)
        svm = OneClassSVM(kernel="rbf", nu=p["nu"], gamma=_gamma(p["gamma"], z))
        svm.fit(z)
    steps.append(("svm", svm))
    return Pipeline(steps)


def _f32(a: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


class OcsvmScore(ScoreModel):
    """``-decision_function`` of a fitted scaler (+ PCA) + RBF one-class SVM pipeline,
    on the ``BandStats`` of log-mel windows; every fitted number is a buffer."""

    shift: torch.Tensor
    project: torch.Tensor
    support: torch.Tensor
    support_sq: torch.Tensor
    dual: torch.Tensor
    gamma: torch.Tensor
    rho: torch.Tensor

    def __init__(self, stats: InputStats, pipeline: Pipeline) -> None:
        super().__init__()
        self.features = BandStats(stats)
        scaler: StandardScaler = pipeline.named_steps["scaler"]
        svm: OneClassSVM = pipeline.named_steps["svm"]
        # scaler then PCA as one affine map: (f - shift) @ project
        mean, scale = scaler.mean_, scaler.scale_
        project = np.diag(1.0 / scale)
        if "pca" in pipeline.named_steps:
            pca: PCA = pipeline.named_steps["pca"]
            project = project @ pca.components_.T
            mean = mean + scale * pca.mean_
        support = np.asarray(svm.support_vectors_, dtype=np.float64)
        self.register_buffer("shift", _f32(mean))
        self.register_buffer("project", _f32(project))
        self.register_buffer("support", _f32(support))
        self.register_buffer("support_sq", _f32((support**2).sum(axis=1)))
        self.register_buffer("dual", _f32(svm.dual_coef_[0]))
        self.register_buffer("gamma", _f32(svm.gamma))
        self.register_buffer("rho", _f32(-svm.intercept_[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score ``[batch]``: ``rho - sum_i dual_i * exp(-gamma * |z - sv_i|^2)``."""
        z = (self.features(x) - self.shift) @ self.project
        sq = (z**2).sum(dim=1, keepdim=True) - 2.0 * z @ self.support.T + self.support_sq
        kernel = torch.exp(-self.gamma * torch.clamp(sq, min=0.0))
        return self.rho - kernel @ self.dual


def fit(x_train: np.ndarray, stats: InputStats, params: Mapping[str, Any], seed: int) -> ScoreModel:
    """A one-class SVM fitted on normal log-mel windows ``x_train`` ``[N, n_frames, n_mels]``."""
    pipeline = fit_pipeline(band_features(x_train, stats), params, seed)
    return OcsvmScore(stats, pipeline).eval()


INFO = KindInfo(
    name="ocsvm",
    input="logmel",
    supervised=False,
    fit_method="closed_form",
    description="one-class SVM (RBF) on per-band mean and std of the log-mel window, "
    "after a scaler and PCA; score = -decision_function",
    defaults=DEFAULTS,
    fit=fit,
)
