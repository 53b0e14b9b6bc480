"""The generic training loop: reproducible, early stopping, best weights kept, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.kinds import InputStats, ScoreModel, get_kind
from training.trainer import TrainConfig, load_checkpoint, restore_model, save_checkpoint, train


def windows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bands = -60.0 + 20.0 * np.cos(np.linspace(0, 6, 128))
    return (bands + 2.0 * rng.standard_normal((n, 30, 128))).astype(np.float32)


def dense_ae(x: np.ndarray) -> ScoreModel:
    info = get_kind("dense_ae")
    params = {**info.defaults, "hidden": 32}
    return info.build((30, 128), InputStats.of(x), params)


class Pull(ScoreModel):
    """One weight w; the loss of a batch is mean((w - x)^2): it drifts towards the data."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.w - x) ** 2).reshape(x.shape[0], -1).mean(dim=1)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.forward(x).mean()


class TestDeterminism:
    def test_same_seed_same_weights(self) -> None:
        """Same seed and data give bit-identical weights; another seed does not."""
        x, xv = windows(48, 0), windows(8, 1)
        y, yv = np.zeros(48), np.zeros(8)
        config = TrainConfig(epochs=3, batch_size=16, seed=7, threads=1)
        states = []
        for seed in (7, 7, 8):
            torch.manual_seed(123)  # whatever came before must not matter
            model = dense_ae(x)
            cfg = TrainConfig(**{**config.__dict__, "seed": seed})
            result = train(model, x, y, xv, yv, cfg, progress=False)
            states.append(result.model.state_dict())
        for key in states[0]:
            assert torch.equal(states[0][key], states[1][key]), key
        assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0])


class TestEarlyStopping:
    def test_stops_and_keeps_the_best_epoch(self) -> None:
        """Validation loss that only rises stops training after `patience` epochs; the
        returned weights are those of the best (first) epoch, not the last."""
        x_train = np.ones((32, 4), dtype=np.float32)
        x_valid = -np.ones((8, 4), dtype=np.float32)
        model = Pull()
        weights: list[float] = []
        result = train(
            model,
            x_train,
            np.zeros(32),
            x_valid,
            np.zeros(8),
            TrainConfig(epochs=50, batch_size=8, lr=0.05, patience=3, threads=1),
            on_improve=lambda m, epoch, hist: weights.append(float(m.w.detach())),
            progress=False,
        )
        assert result.stopped_early and result.epochs_run == 4 and result.best_epoch == 1
        assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]
        valid = [row["valid_loss"] for row in result.history]
        assert valid == sorted(valid)
        assert float(result.model.w.detach()) == weights[-1] and len(weights) == 1

    def test_without_validation_the_training_loss_decides(self) -> None:
        """No validation windows: training runs on the training loss and says so."""
        lines: list[str] = []
        x = np.ones((16, 4), dtype=np.float32)
        result = train(
            Pull(),
            x,
            np.zeros(16),
            x[:0],
            np.zeros(0),
            TrainConfig(epochs=3, batch_size=4, lr=0.05, threads=1),
            progress=False,
            log=lines.append,
        )
        assert result.epochs_run == 3 and result.best_epoch == 3
        assert any("no validation windows" in line for line in lines)

    def test_augmentation_hook_feeds_the_batches(self) -> None:
        """The hook's output is what the model trains on (here: data moved to 3)."""
        x = np.ones((16, 4), dtype=np.float32)
        seen: list[int] = []

        def shift(idx: np.ndarray, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            seen.extend(idx.tolist())
            return batch + 2.0

        result = train(
            Pull(),
            x,
            np.zeros(16),
            x[:0],
            np.zeros(0),
            TrainConfig(epochs=40, batch_size=4, lr=0.2, patience=40, threads=1),
            augment=shift,
            progress=False,
        )
        assert abs(float(result.model.w.detach()) - 3.0) < 0.1
        assert sorted(seen[:16]) == list(range(16))  # one epoch visits every window once


class TestCheckpoint:
    def test_round_trip(self, tmp_path: Path) -> None:
        """A checkpoint carries kind, params and stats, and rebuilds the same scorer."""
        x = windows(24, 2)
        model = dense_ae(x)
        result = train(
            model,
            x,
            np.zeros(24),
            x[:0],
            np.zeros(0),
            TrainConfig(epochs=1, threads=1),
            progress=False,
        )
        path = save_checkpoint(
            tmp_path / "checkpoint.pt",
            result.model,
            kind="dense_ae",
            params={**get_kind("dense_ae").defaults, "hidden": 32},
            stats=InputStats.of(x),
            input_shape=(30, 128),
            epoch=1,
            history=result.history,
        )
        ckpt = load_checkpoint(path)
        assert ckpt["kind"] == "dense_ae" and ckpt["params"]["hidden"] == 32
        assert ckpt["history"][0]["epoch"] == 1
        rebuilt = restore_model(ckpt)
        probe = torch.from_numpy(windows(5, 3))
        with torch.no_grad():
            assert torch.equal(rebuilt(probe), result.model(probe))
