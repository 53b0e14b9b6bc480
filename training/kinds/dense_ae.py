"""The ``dense_ae`` kind: the DCASE 2020 task 2 baseline autoencoder on stacked log-mel frames.

Each window's log-mel frames are standardised with the training statistics, every
run of ``frames`` consecutive frames is stacked into one vector (5 x 128 = 640), and
a dense autoencoder 640-128-128-128-128-8-128-128-128-128-640 (BatchNorm + ReLU
after every hidden layer) reconstructs it. The score of a window is the mean
squared reconstruction error over all its stacked vectors; the training loss is
the same quantity, so what is minimised is what the daemon thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .base import Autoencoder, InputStats, KindInfo, ScoreModel

__all__ = ["INFO", "DenseAutoencoder", "build"]

DEFAULTS: dict[str, Any] = {"frames": 5, "hidden": 128, "bottleneck": 8, "layers": 4}
"""``frames`` stacked per vector; ``layers`` hidden layers of ``hidden`` units on each
side of the ``bottleneck`` (the DCASE baseline: 5, 128, 8, 4)."""


def _block(n_in: int, n_out: int) -> list[nn.Module]:
    return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU()]


class DenseAutoencoder(Autoencoder):
    """Log-mel window ``[batch, n_frames, n_mels]`` → mean squared reconstruction error."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        n_frames: int,
        n_mels: int,
        stats: InputStats,
        *,
        frames: int,
        hidden: int,
        bottleneck: int,
        layers: int,
    ) -> None:
        super().__init__()
        if not 1 <= frames <= n_frames:
            raise ValueError(f"frames must be 1..{n_frames} (frames per window), got {frames}")
        if hidden < 1 or bottleneck < 1 or layers < 1:
            raise ValueError("hidden, bottleneck and layers must be positive")
        self.n_frames, self.n_mels, self.frames = n_frames, n_mels, frames
        self.n_vectors = n_frames - frames + 1
        dim = frames * n_mels
        self.register_buffer("mean", torch.as_tensor(stats.mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(stats.std, dtype=torch.float32))
        enc: list[nn.Module] = []
        dec: list[nn.Module] = []
        width = dim
        for _ in range(layers):
            enc += _block(width, hidden)
            width = hidden
        enc += _block(hidden, bottleneck)
        width = bottleneck
        for _ in range(layers):
            dec += _block(width, hidden)
            width = hidden
        dec.append(nn.Linear(hidden, dim))
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def stack(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise and stack: ``[batch, n_frames, n_mels]`` → ``[batch, n_vectors, dim]``.

        Vector ``t`` is frames ``t .. t+frames-1`` one after the other (DCASE's order).
        """
        z = (x - self.mean) / self.std
        return torch.cat([z[:, i : i + self.n_vectors] for i in range(self.frames)], dim=-1)

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stacked vectors ``[batch, n_vectors, dim]`` and their reconstruction; the
        score is the mean squared error over all stacked vectors of each window."""
        v = self.stack(x)
        flat = v.reshape(-1, v.shape[-1])
        return v, self.decoder(self.encoder(flat)).reshape(v.shape)


def build(shape: tuple[int, ...], stats: InputStats, params: Mapping[str, Any]) -> ScoreModel:
    """An untrained autoencoder for log-mel windows of ``shape`` = (n_frames, n_mels)."""
    n_frames, n_mels = shape
    return DenseAutoencoder(
        n_frames,
        n_mels,
        stats,
        frames=int(params["frames"]),
        hidden=int(params["hidden"]),
        bottleneck=int(params["bottleneck"]),
        layers=int(params["layers"]),
    )


INFO = KindInfo(
    name="dense_ae",
    input="logmel",
    supervised=False,
    fit_method="gradient",
    description="DCASE 2020 task 2 baseline: dense autoencoder on 5 stacked log-mel frames, "
    "score = mean squared reconstruction error",
    defaults=DEFAULTS,
    build=build,
)
