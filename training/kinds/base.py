"""What every detector kind gives the trainer, the calibration and the export.

A kind turns a batch of the contract's model input (``logmel``: float32[batch,
n_frames, n_mels]; ``waveform``: float32[batch, window_samples], already pre-filtered
and normalised as the kind's ``prefilter``/``normalize`` say) into one score per
window, higher = more anomalous. That mapping is a ``torch.nn.Module`` (a
``ScoreModel``) and it is exactly what gets exported to ONNX, so the graph the daemon
runs is the graph that was validated.

Two ways to get a ScoreModel:

- ``fit_method == "gradient"``: ``build(shape, stats, params)`` returns an untrained
  module; the generic trainer (``training.trainer``) minimises ``module.loss(x, y)``
  with Adam, early stopping on the validation loss and the best checkpoint kept.
- ``fit_method == "closed_form"``: ``fit(x_train, stats, params, seed)`` fits (e.g.
  with scikit-learn) and returns a module whose buffers hold the fitted parameters.

The kinds also share ``read_params`` (hyper-parameters with their types),
``require_positive`` and ``Standardize`` (the in-graph standardisation), all here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from asd_edge.features import NormalizeMethod, PrefilterSpec

__all__ = [
    "Autoencoder",
    "InputStats",
    "KindInfo",
    "ScoreModel",
    "Standardize",
    "read_params",
    "require_positive",
]


@dataclass(frozen=True)
class InputStats:
    """Per-feature statistics of the training inputs, for standardisation in the graph.

    For log-mel input: ``mean``/``std`` have shape ``[n_mels]`` (over all frames of all
    training windows). For waveform input: shape ``[1]``.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> InputStats:
        """Statistics over every axis but the last (log-mel) or all axes (waveform)."""
        flat = x.reshape(-1, x.shape[-1]) if x.ndim == 3 else x.reshape(-1, 1)
        std = flat.std(axis=0)
        return cls(
            mean=flat.mean(axis=0).astype(np.float32),
            std=np.maximum(std, 1e-3).astype(np.float32),
        )


class ScoreModel(nn.Module):
    """Maps a batch of contract inputs to scores ``[batch]`` (the exported graph)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training loss of a batch (mean over it). ``y`` is 0 normal / 1 anomaly;
        unsupervised kinds ignore it. Only gradient kinds need this."""
        raise NotImplementedError


class Autoencoder(ScoreModel):
    """A reconstruction model: the score of a window is its mean squared reconstruction
    error, and training minimises the mean score of normal windows."""

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(target, reconstruction)`` of a batch, same shape, batch first."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error per window, ``[batch]``."""
        target, recon = self.reconstruct(x)
        return ((recon - target) ** 2).flatten(1).mean(dim=1)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean of the scores (``y`` is ignored: normal-only training)."""
        return self.forward(x).mean()


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def read_params(defaults: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` overridden by ``params``, each value converted to its default's type.

    ``--param key=value`` values arrive as strings. ValueError names an unknown key
    (listing the known ones) or a value that does not convert.
    """
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r}; expected one of {', '.join(sorted(defaults))}"
        )
    out = dict(defaults)
    for key, value in params.items():
        default = defaults[key]
        try:
            if isinstance(default, bool):
                text = str(value).strip().lower()
                if text not in _TRUE + _FALSE:
                    raise ValueError(text)
                out[key] = text in _TRUE
            elif isinstance(default, int):
                number = float(value)
                if not number.is_integer():
                    raise ValueError(value)
                out[key] = int(number)
            elif isinstance(default, float):
                out[key] = float(value)
            else:
                out[key] = value
        except (TypeError, ValueError):
            kind = type(default).__name__
            raise ValueError(f"parameter {key}: expected {kind}, got {value!r}") from None
    return out


def require_positive(p: Mapping[str, Any], *keys: str) -> None:
    """ValueError naming the first of ``keys`` whose value in ``p`` is not positive."""
    for key in keys:
        if p[key] <= 0:
            raise ValueError(f"parameter {key}: expected a positive number, got {p[key]!r}")


class Standardize(nn.Module):
    """``(x - mean) / std`` with the training statistics held as buffers (broadcast on
    the last axis: per mel band for log-mel input, one pair for a waveform)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, stats: InputStats) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(stats.mean, dtype=torch.float32).clone())
        self.register_buffer("std", torch.as_tensor(stats.std, dtype=torch.float32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised ``x``, same shape."""
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class KindInfo:
    """A detector kind, as the registry in ``training.kinds`` lists it."""

    name: str
    """``dense_ae``, ``cnn_ae``, ``lstm_ae``, ``gmm``, ``ocsvm``, ``cnn_attention``."""
    input: Literal["logmel", "waveform"]
    supervised: bool
    """True if it needs labelled anomalies in the training data."""
    fit_method: Literal["gradient", "closed_form"]
    description: str
    defaults: Mapping[str, Any]
    """Hyper-parameters and their defaults (``--param key=value`` overrides them)."""
    build: Callable[[tuple[int, ...], InputStats, Mapping[str, Any]], ScoreModel] | None = None
    """gradient kinds: shape of ONE input (no batch axis), stats, params → module."""
    fit: Callable[[np.ndarray, InputStats, Mapping[str, Any], int], ScoreModel] | None = None
    """closed-form kinds: training inputs [N, ...], stats, params, seed → fitted module."""
    prefilter: PrefilterSpec | None = None
    """waveform kinds: the pre-filter the daemon applies (stored in the metadata)."""
    normalize: NormalizeMethod = "none"
    """waveform kinds: the per-window normalisation (stored in the metadata)."""
