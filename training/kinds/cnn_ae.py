"""The ``cnn_ae`` kind: a convolutional autoencoder over the log-mel window (Tokyo Gas study).

The window's ``[n_frames, n_mels]`` patch, standardised per mel band, is one image:
a strided conv encoder halves both axes ``depth`` times down to a narrow bottleneck,
a transposed-conv decoder rebuilds it, and the score is the mean squared
reconstruction error of the window (the training loss is the same). The patch is
zero-padded inside the graph to a multiple of ``2**depth`` on both axes and the
reconstruction cropped back, so any frame and band count works (30 x 128 with the
defaults).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import (
    Autoencoder,
    InputStats,
    KindInfo,
    ScoreModel,
    Standardize,
    read_params,
    require_positive,
)

__all__ = ["INFO", "CnnAutoencoder", "build"]


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()
    )


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class CnnAutoencoder(Autoencoder):
    """Conv encoder / transposed-conv decoder over ``[n_frames, n_mels]``; score = MSE."""

    def __init__(
        self, shape: tuple[int, ...], stats: InputStats, channels: int, depth: int, bottleneck: int
    ) -> None:
        super().__init__()
        if len(shape) != 2:
            raise ValueError(f"cnn_ae needs log-mel input [n_frames, n_mels], got shape {shape}")
        self.n_frames, self.n_mels = int(shape[0]), int(shape[1])
        step = 2**depth
        self.pad_frames = -self.n_frames % step
        self.pad_mels = -self.n_mels % step
        widths = [channels * 2**i for i in range(depth)]
        self.standardize = Standardize(stats)
        self.encoder = nn.Sequential(
            *(_down(c_in, c_out) for c_in, c_out in zip([1, *widths[:-1]], widths, strict=True)),
            nn.Conv2d(widths[-1], bottleneck, 1),
        )
        ups = list(reversed(widths))
        self.decoder = nn.Sequential(
            nn.Conv2d(bottleneck, ups[0], 1),
            nn.BatchNorm2d(ups[0]),
            nn.ReLU(),
            *(_up(c_in, c_out) for c_in, c_out in pairwise(ups)),
            nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1),
        )

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The standardised window ``[batch, n_frames, n_mels]`` and its reconstruction."""
        z = self.standardize(x)
        image = F.pad(z.unsqueeze(1), (0, self.pad_mels, 0, self.pad_frames))
        out = self.decoder(self.encoder(image))
        return z, out[:, 0, : self.n_frames, : self.n_mels]


DEFAULTS: dict[str, Any] = {"channels": 16, "depth": 3, "bottleneck": 2}
"""``channels``: width of the first conv layer, doubled at each of the ``depth`` strided
layers; ``bottleneck``: channels of the code (the code has
``bottleneck * ceil(n_frames / 2**depth) * ceil(n_mels / 2**depth)`` values: 128 for 30 x 128,
a 30th of the window). A wider code reconstructs anomalies too: on the MIMII pump clips
(every other normal clip for training), window AUC 0.68 with 8 code channels, 0.82 with 2."""


def build(shape: tuple[int, ...], stats: InputStats, params: Mapping[str, Any]) -> ScoreModel:
    """An untrained convolutional autoencoder for windows of ``shape``."""
    p = read_params(DEFAULTS, params)
    require_positive(p, "channels", "depth", "bottleneck")
    return CnnAutoencoder(shape, stats, p["channels"], p["depth"], p["bottleneck"])


INFO = KindInfo(
    name="cnn_ae",
    input="logmel",
    supervised=False,
    fit_method="gradient",
    description="convolutional autoencoder on the log-mel window; score = reconstruction MSE",
    defaults=DEFAULTS,
    build=build,
)
