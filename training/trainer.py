"""A generic training loop: Adam, seeded mini-batches, early stopping, the best checkpoint kept.

It knows nothing about the model beyond ``model.loss(x, y)``: a kind's module
(``training.kinds.base.ScoreModel``) brings its own loss. The same seed, data and
thread count give identical weights.
"""

from __future__ import annotations

import copy
import io
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from asd_edge.durable import write_atomic

from .kinds import InputStats, ScoreModel, get_kind

__all__ = [
    "Augment",
    "TrainConfig",
    "TrainResult",
    "load_checkpoint",
    "restore_model",
    "save_checkpoint",
    "seed_everything",
    "train",
]

Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]
"""``(indices into x_train, the batch as stored, rng) -> model input of the batch``:
called for every training batch drawn (on-the-fly augmentation)."""

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training loop."""

    epochs: int = 50
    """Most passes over the training data."""
    batch_size: int = 64
    """Windows per mini-batch (the last batches are balanced; none has a single window)."""
    lr: float = 1e-3
    """Adam's learning rate."""
    weight_decay: float = 0.0
    """Adam's L2 penalty."""
    patience: int = 5
    """Stop after this many epochs without a better validation loss."""
    min_delta: float = 0.0
    """An improvement must lower the validation loss by more than this."""
    seed: int = 0
    """Seed of the weights' initialisation and of the batch order."""
    threads: int | None = None
    """torch intra-op threads (None: leave torch's default)."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("epochs, batch_size and patience must be at least 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass
class TrainResult:
    """What the loop produced: the model with the best weights loaded, and the history."""

    model: ScoreModel
    history: list[dict[str, float]] = field(default_factory=list)
    """One row per epoch: ``epoch``, ``train_loss``, ``valid_loss``, ``seconds``."""
    best_epoch: int = 0
    best_loss: float = math.inf
    epochs_run: int = 0
    stopped_early: bool = False


def seed_everything(seed: int, threads: int | None = None) -> np.random.Generator:
    """Seed torch, make its algorithms deterministic where it can; return a numpy Generator."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads is not None:
        torch.set_num_threads(threads)
    return np.random.default_rng(seed)


def _batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Indices of balanced mini-batches (shuffled when ``rng`` is given)."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    count = max(1, -(-n // batch_size))
    if count > 1 and n - (count - 1) * batch_size == 1:
        count -= 1  # never a lone window (BatchNorm cannot train on one)
    return [b for b in np.array_split(order, count) if b.size]


def _mean_loss(model: ScoreModel, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for idx in _batches(x.shape[0], batch_size, None):
            loss = model.loss(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]).float())
            total += float(loss) * idx.size
            n += idx.size
    return total / max(n, 1)


def train(
    model: ScoreModel,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    config: TrainConfig,
    *,
    augment: Augment | None = None,
    on_improve: Callable[[ScoreModel, int, list[dict[str, float]]], None] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Minimise ``model.loss`` with Adam; keep the weights of the best validation epoch.

    Without validation windows the training loss decides (and says so in the log).
    ``on_improve(model, epoch, history)`` runs after every new best (e.g. to write
    the checkpoint). The model comes back in eval mode with the best weights.
    """
    if x_train.shape[0] == 0:
        raise ValueError("no training windows")
    rng = seed_everything(config.seed, config.threads)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    have_valid = x_valid.shape[0] > 0
    if not have_valid and log is not None:
        log("no validation windows: early stopping on the training loss")
    result = TrainResult(model=model)
    best_state: dict[str, torch.Tensor] = copy.deepcopy(model.state_dict())
    since_best = 0
    bar = tqdm(
        range(1, config.epochs + 1),
        desc="train",
        unit="epoch",
        disable=not (progress and sys.stderr.isatty()),
        file=sys.stderr,
    )
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        total, n = 0.0, 0
        for idx in _batches(x_train.shape[0], config.batch_size, rng):
            xb = augment(idx, x_train[idx], rng) if augment is not None else x_train[idx]
            loss = model.loss(torch.from_numpy(np.ascontiguousarray(xb)), _target(y_train, idx))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * idx.size
            n += idx.size
        train_loss = total / n
        valid_loss = (
            _mean_loss(model, x_valid, y_valid, config.batch_size) if have_valid else train_loss
        )
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "valid_loss": valid_loss if have_valid else math.nan,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        result.history.append(row)
        result.epochs_run = epoch
        bar.set_postfix(train=f"{train_loss:.4g}", valid=f"{valid_loss:.4g}")
        if log is not None:
            log(f"epoch {epoch}: train_loss={train_loss:.6g} valid_loss={row['valid_loss']:.6g}")
        if not math.isfinite(valid_loss):
            if log is not None:
                log(f"epoch {epoch}: the loss is not finite; stopping")
            result.stopped_early = True
            break
        if valid_loss < result.best_loss - config.min_delta:
            result.best_loss, result.best_epoch, since_best = valid_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
            if on_improve is not None:
                on_improve(model, epoch, result.history)
        else:
            since_best += 1
            if since_best >= config.patience:
                result.stopped_early = True
                if log is not None:
                    log(f"early stop after epoch {epoch}: best epoch {result.best_epoch}")
                break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return result


def _target(y: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(y[idx], dtype=np.float32))


def save_checkpoint(
    path: str | os.PathLike[str],
    model: ScoreModel,
    *,
    kind: str,
    params: Mapping[str, Any],
    stats: InputStats,
    input_shape: tuple[int, ...],
    train_config: TrainConfig | None = None,
    epoch: int = 0,
    history: list[dict[str, float]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint that carries its own config (kind, params, stats, shape), atomically."""
    target = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "kind": kind,
        "params": dict(params),
        "input_shape": list(input_shape),
        "stats": {"mean": stats.mean.tolist(), "std": stats.std.tolist()},
        "train_config": asdict(train_config) if train_config is not None else None,
        "epoch": epoch,
        "history": list(history or []),
        "extra": dict(extra or {}),
        "state_dict": model.state_dict(),
    }
    data = io.BytesIO()
    torch.save(payload, data)
    target.parent.mkdir(parents=True, exist_ok=True)
    # 0600 as it has always been written (mkstemp's mode); the other records are 0644
    return write_atomic(target, data.getvalue(), mode=0o600)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's contents (tensors and plain data only; nothing is unpickled)."""
    payload: dict[str, Any] = torch.load(Path(path), map_location="cpu", weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an asd-train checkpoint (format {payload.get('format')!r})")
    return payload


def restore_model(checkpoint: Mapping[str, Any]) -> ScoreModel:
    """Rebuild a gradient kind's module from a checkpoint, weights loaded, in eval mode.

    Closed-form kinds (gmm, ocsvm) are fitted, not built: their checkpoint carries
    the fitted tensors for the record, and ``model.onnx`` is what is deployed.
    """
    info = get_kind(str(checkpoint["kind"]))
    if info.build is None:
        raise ValueError(f"kind {info.name!r} is fitted in closed form; use its model.onnx")
    stats = InputStats(
        mean=np.asarray(checkpoint["stats"]["mean"], dtype=np.float32),
        std=np.asarray(checkpoint["stats"]["std"], dtype=np.float32),
    )
    model = info.build(tuple(checkpoint["input_shape"]), stats, checkpoint["params"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
