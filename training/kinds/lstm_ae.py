"""The ``lstm_ae`` kind: an LSTM sequence autoencoder over the log-mel frames (Tokyo Gas study).

An encoder LSTM reads the window's frames (standardised per mel band); its last
hidden state goes through a linear layer to a small latent vector; the latent,
repeated once per frame, drives a decoder LSTM whose outputs a linear layer maps
back to mel bands. The score is the mean squared reconstruction error of the
window, and the training loss is the same.

The LSTMs get no initial state, so the exported ONNX ``LSTM`` nodes start from
zeros at whatever batch size the daemon feeds (the tests run batch 1 and 7).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
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

__all__ = ["INFO", "LstmAutoencoder", "build"]


class LstmAutoencoder(Autoencoder):
    """Encoder LSTM → latent → repeated → decoder LSTM → frames; score = MSE."""

    def __init__(
        self, shape: tuple[int, ...], stats: InputStats, hidden: int, latent: int, layers: int
    ) -> None:
        super().__init__()
        if len(shape) != 2:
            raise ValueError(f"lstm_ae needs log-mel input [n_frames, n_mels], got shape {shape}")
        self.n_frames, n_mels = int(shape[0]), int(shape[1])
        self.standardize = Standardize(stats)
        self.encoder = nn.LSTM(n_mels, hidden, num_layers=layers, batch_first=True)
        self.to_latent = nn.Linear(hidden, latent)
        self.decoder = nn.LSTM(latent, hidden, num_layers=layers, batch_first=True)
        self.to_frames = nn.Linear(hidden, n_mels)

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The standardised window ``[batch, n_frames, n_mels]`` and its reconstruction."""
        z = self.standardize(x)
        _, (h_n, _) = self.encoder(z)
        code = torch.tanh(self.to_latent(h_n[-1]))
        # repeat (ONNX Tile with constant repeats), not expand: no batch size is baked in
        steps = code.unsqueeze(1).repeat(1, self.n_frames, 1)
        out, _ = self.decoder(steps)
        return z, self.to_frames(out)


DEFAULTS: dict[str, Any] = {"hidden": 64, "latent": 16, "layers": 1}
"""``hidden``: LSTM state size (encoder and decoder); ``latent``: size of the code the
whole window is squeezed into; ``layers``: stacked LSTM layers on each side."""


def build(shape: tuple[int, ...], stats: InputStats, params: Mapping[str, Any]) -> ScoreModel:
    """An untrained LSTM autoencoder for windows of ``shape``."""
    p = read_params(DEFAULTS, params)
    require_positive(p, *DEFAULTS)
    return LstmAutoencoder(shape, stats, p["hidden"], p["latent"], p["layers"])


INFO = KindInfo(
    name="lstm_ae",
    input="logmel",
    supervised=False,
    fit_method="gradient",
    description="LSTM sequence autoencoder on the log-mel frames; score = reconstruction MSE",
    defaults=DEFAULTS,
    build=build,
)
