"""The ``cnn_attention`` kind: SoundDitect's supervised 1D-CNN + attention on raw waveforms.

The daemon band-passes the stream (Butterworth order 4, 20-8000 Hz: at 16 kHz the
upper edge is at Nyquist and is dropped, leaving a 20 Hz high-pass, as the seed
intends at lower rates) and z-scores each window. Z-score rather than peak
normalisation: the peak of a window is one sample, so a single click or impact
rescales everything else in the window and the scale jumps from window to window;
the standard deviation is a statistic of the whole window, which gives the conv
layers inputs of a steady scale. (Either way the absolute level is gone: a detector
that must notice a machine getting louder should be a log-mel kind.)

In the graph: standardise with the training statistics, four strided conv blocks
(Conv1d, BatchNorm, GELU, max-pool; 256x down in time, about 62 steps for 1 s at
16 kHz), multi-head self-attention with a residual connection and LayerNorm, mean
and max pooling over time, and a dense head giving one logit. The score is
``sigmoid(logit)``, the probability of an anomaly; the loss is
``BCEWithLogitsLoss`` with ``pos_weight`` on the anomalous class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from asd_edge.features import PrefilterSpec

from .base import InputStats, KindInfo, ScoreModel, Standardize, read_params, require_positive

__all__ = ["INFO", "CnnAttention", "WarmBatchNorm1d", "build"]

BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (31, 4, 2, 1),
    (9, 2, 2, 2),
    (9, 2, 2, 4),
    (5, 1, 2, 4),
)
"""Conv blocks as (kernel, stride, max-pool, width in units of ``channels``): 256x down."""

DOWNSAMPLING = 256
"""Input samples per output step of the conv stack (product of strides and pools)."""


WARM_MOMENTUM = 0.1
"""BatchNorm's running-statistics momentum once past the first ``1 / WARM_MOMENTUM`` batches."""


class WarmBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose running statistics are the plain average of the first batches,
    then an exponential average with momentum ``WARM_MOMENTUM`` (as torch's default).

    Plain BatchNorm starts its running statistics at mean 0 / variance 1 and moves
    them 10 % per batch, so after a short training (the 9 batches of 3 epochs of 42
    windows) the eval-mode model still normalises with mostly made-up statistics:
    the validation loss rose (0.69 → 0.77) while the training loss fell, and early
    stopping kept an untrained model. Averaging the first batches removes that start.
    In eval mode and in the exported graph it is an ordinary BatchNormalization.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Batch normalisation; in training, the momentum is ``max(0.1, 1 / batch number)``."""
        if self.training and self.num_batches_tracked is not None:
            self.momentum = max(WARM_MOMENTUM, 1.0 / (int(self.num_batches_tracked) + 1))
        out: torch.Tensor = super().forward(x)
        return out


def _block(c_in: int, c_out: int, kernel: int, stride: int, pool: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2),
        WarmBatchNorm1d(c_out),
        nn.GELU(),
        nn.MaxPool1d(pool),
    )


class CnnAttention(ScoreModel):
    """Waveform ``[batch, samples]`` → probability of an anomaly ``[batch]``."""

    pos_weight: torch.Tensor

    def __init__(
        self,
        shape: tuple[int, ...],
        stats: InputStats,
        *,
        channels: int,
        heads: int,
        dropout: float,
        pos_weight: float,
    ) -> None:
        super().__init__()
        if len(shape) != 1:
            raise ValueError(f"cnn_attention needs waveform input [samples], got shape {shape}")
        if shape[0] < 4 * DOWNSAMPLING:
            raise ValueError(
                f"cnn_attention needs windows of at least {4 * DOWNSAMPLING} samples, "
                f"got {shape[0]}"
            )
        width = channels * BLOCKS[-1][3]
        if width % heads:
            raise ValueError(
                f"parameter heads: must divide the attention width {width} (4 x channels), "
                f"got {heads}"
            )
        self.standardize = Standardize(stats)
        layers: list[nn.Module] = []
        c_in = 1
        for kernel, stride, pool, mult in BLOCKS:
            layers.append(_block(c_in, channels * mult, kernel, stride, pool))
            c_in = channels * mult
        self.conv = nn.Sequential(*layers)
        self.attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Sequential(
            nn.Linear(2 * width, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, 1)
        )
        self.register_buffer("pos_weight", torch.tensor([pos_weight], dtype=torch.float32))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """One logit per window, ``[batch]`` (positive: anomaly more likely than not)."""
        steps = self.conv(self.standardize(x).unsqueeze(1)).transpose(1, 2)
        attended, _ = self.attention(steps, steps, steps, need_weights=False)
        h = self.norm(steps + attended)
        pooled = torch.cat([h.mean(dim=1), h.amax(dim=1)], dim=1)
        out: torch.Tensor = self.head(pooled)
        return out[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probability of an anomaly per window, ``[batch]``."""
        return torch.sigmoid(self.logits(x))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of the logits against ``y`` (1 = anomaly), anomalies
        weighted by ``pos_weight``."""
        return nn.functional.binary_cross_entropy_with_logits(
            self.logits(x), y.to(torch.float32), pos_weight=self.pos_weight
        )


DEFAULTS: dict[str, Any] = {"channels": 16, "heads": 4, "dropout": 0.1, "pos_weight": 1.0}
"""``channels``: width of the first conv block (the others: 2, 4, 4 times it; the
attention works on 4 x channels); ``heads``: attention heads (must divide 4 x channels);
``dropout``: in the attention and the head; ``pos_weight``: weight of the anomalous
class in the loss (about normal/anomalous window counts for imbalanced data)."""


def build(shape: tuple[int, ...], stats: InputStats, params: Mapping[str, Any]) -> ScoreModel:
    """An untrained classifier for waveform windows of ``shape`` = (samples,)."""
    p = read_params(DEFAULTS, params)
    require_positive(p, "channels", "heads", "pos_weight")
    if not 0.0 <= p["dropout"] < 1.0:
        raise ValueError(f"parameter dropout: expected a number in [0, 1), got {p['dropout']!r}")
    return CnnAttention(
        shape,
        stats,
        channels=p["channels"],
        heads=p["heads"],
        dropout=p["dropout"],
        pos_weight=p["pos_weight"],
    )


INFO = KindInfo(
    name="cnn_attention",
    input="waveform",
    supervised=True,
    fit_method="gradient",
    description="SoundDitect's supervised 1D-CNN + multi-head attention on the band-passed, "
    "z-scored waveform; score = probability of an anomaly",
    defaults=DEFAULTS,
    build=build,
    prefilter=PrefilterSpec("butter_bandpass", order=4, low_hz=20.0, high_hz=8000.0),
    normalize="zscore",
)
