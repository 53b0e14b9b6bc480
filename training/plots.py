"""The run's pictures: learning curve, ROC, score histogram (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window (and no display needed)

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve

from asd_edge.durable import write_atomic

__all__ = ["plot_injected_recall", "plot_learning_curve", "plot_roc", "plot_score_hist"]

DPI = 100


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return write_atomic(target, png.getvalue())


def plot_learning_curve(
    history: Sequence[Mapping[str, float]], path: str | os.PathLike[str], *, best_epoch: int = 0
) -> Path:
    """Training and validation loss per epoch, the best epoch marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [row["epoch"] for row in history]
    ax.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    valid = [row["valid_loss"] for row in history]
    if any(np.isfinite(v) for v in valid):
        ax.plot(epochs, valid, marker="o", label="validation")
    if best_epoch:
        ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best (epoch {best_epoch})")
    if not history:
        ax.text(0.5, 0.5, "fitted in closed form: no epochs", ha="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("learning curve")
    ax.grid(alpha=0.3)
    if history:
        ax.legend()
    return _save(fig, path)


def plot_roc(
    labels: np.ndarray,
    scores: Mapping[str, np.ndarray],
    aucs: Mapping[str, float | None],
    path: str | os.PathLike[str],
) -> Path:
    """ROC curves of file scores (e.g. ``mean`` and ``max`` over windows)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    y = np.asarray(labels)
    if y.size and y.min() != y.max():
        for name, s in scores.items():
            fpr, tpr, _ = roc_curve(y, s)
            auc = aucs.get(name)
            label = f"{name} (AUC {auc:.3f})" if auc is not None else name
            ax.plot(fpr, tpr, label=label)
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "needs normal and anomalous files", ha="center", transform=ax.transAxes)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.axvspan(0, 0.1, color="orange", alpha=0.1, label="pAUC range")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (one score per file)")
    return _save(fig, path)


def plot_score_hist(
    normal: np.ndarray, anomaly: np.ndarray, threshold: float, path: str | os.PathLike[str]
) -> Path:
    """Histogram of window scores of normal and anomalous files, the threshold marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    both = np.concatenate([normal, anomaly, [threshold]])
    both = both[np.isfinite(both)]
    bins = np.linspace(both.min(), both.max(), 40) if both.size and np.ptp(both) > 0 else 10
    if normal.size:
        ax.hist(normal, bins=bins, alpha=0.6, label=f"normal ({normal.size} windows)")
    if anomaly.size:
        ax.hist(anomaly, bins=bins, alpha=0.6, label=f"anomaly ({anomaly.size} windows)")
    ax.axvline(threshold, color="red", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel("window score")
    ax.set_ylabel("windows")
    ax.set_title("window scores")
    ax.legend()
    return _save(fig, path)


def plot_injected_recall(
    candidates: Sequence[tuple[str, float, Mapping[str, Mapping[str, float]]]],
    chosen: str,
    path: str | os.PathLike[str],
) -> Path:
    """Bars per injected fault and severity: the share each candidate ``(name, threshold,
    recall[fault][severity])`` caught at its threshold; one panel per candidate."""
    faults = list(candidates[0][2]) if candidates else []
    fig, axes = plt.subplots(1, max(1, len(candidates)), figsize=(4.2 * len(candidates), 3.6),
                             sharey=True, squeeze=False)  # fmt: skip
    for ax, (name, threshold, recall) in zip(axes[0], candidates, strict=False):
        sevs = sorted({s for per in recall.values() for s in per}, key=float)
        width = 0.8 / max(1, len(sevs))
        for j, sev in enumerate(sevs):
            vals = [recall.get(f, {}).get(sev, 0.0) for f in faults]
            ax.bar(np.arange(len(faults)) + j * width, vals, width, label=f"severity {sev}")
        mark = " (chosen)" if name == chosen else ""
        ax.set_title(f"{name}{mark}\nthreshold {threshold:.3g}", fontsize=9)
        ax.set_xticks(np.arange(len(faults)) + 0.4 - width / 2, faults, rotation=30, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("injected fault")
    axes[0][0].set_ylabel("recordings caught at the threshold (share)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)
