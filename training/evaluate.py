"""``asd-train evaluate``: score a dataset split with an ONNX model exactly as the daemon does.

Every file goes through ``asd_edge.scoring`` (resampling, pre-filter, features,
onnxruntime, the monitor's hop grid and the decision rule), never through torch.
A file's score is the mean of its window scores (as DCASE ranks files) and also
the max; AUC and pAUC (FPR <= 0.1, ``roc_auc_score(max_fpr=0.1)`` as DCASE does)
are computed for both. A file is judged anomalous when the daemon's decision rule
raises at least one event on it; precision, recall, F1 and the confusion counts
follow from that, and the false alarms per hour from the events on normal files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from asd_edge.audiofile import read_audio, to_mono
from asd_edge.config import MonitorConfig
from asd_edge.detector import Detector
from asd_edge.errors import AudioDecodeError, ModelError
from asd_edge.learning.calibration import DEVICE_RULE
from asd_edge.learning.crossfit import MAX_FPR
from asd_edge.scoring import score_samples

from .errors import EXIT_DATA, EXIT_FAILED, EXIT_NOINPUT, EXIT_OK, DataError
from .plots import plot_roc, plot_score_hist
from .runs import RunDir
from .windows import LabelledFile

__all__ = [
    "MAX_FPR",
    "Evaluation",
    "compare_quantized",
    "configure",
    "evaluate_files",
    "evaluate_split",
    "run",
]

DECISION_RULE = (
    "a file is judged anomalous when the daemon's decision rule (threshold, onset_k of "
    "onset_n windows above it) raises at least one event on it"
)


@dataclass
class Evaluation:
    """What ``evaluate_files`` measured."""

    metrics: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    """One row per scored file (the CSV)."""
    skipped: list[str] = field(default_factory=list)
    """``path: reason`` of every file that could not be scored."""


def _auc(y: np.ndarray, s: np.ndarray, max_fpr: float | None = None) -> float | None:
    if y.size == 0 or y.min() == y.max():
        return None
    return float(roc_auc_score(y, s, max_fpr=max_fpr))


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def evaluate_files(
    model: str | os.PathLike[str],
    files: Sequence[LabelledFile],
    out_dir: str | os.PathLike[str],
    *,
    hop_s: float = DEVICE_RULE["hop_s"],
    copy_anomalies: str | os.PathLike[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    write_metrics: bool = True,
) -> Evaluation:
    """Score ``files`` with the model at ``model``; write the table, plots and metrics.json.

    Writes ``files.csv``, ``roc.png``, ``score_hist.png`` and (unless
    ``write_metrics`` is false) ``metrics.json`` into ``out_dir``. Raises
    ``ModelError`` when the model cannot be loaded; unreadable files are skipped
    and listed.
    """
    say = log or (lambda message: None)
    detector = Detector(model)
    spec = detector.spec
    settings = MonitorConfig(name="evaluate", model=detector.path, hop_s=hop_s)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    window_scores: dict[int, list[np.ndarray]] = {0: [], 1: []}
    enabled = progress and sys.stderr.isatty()
    for f in tqdm(files, desc="evaluate", unit="file", disable=not enabled, file=sys.stderr):
        label = {"normal": 0, "anomaly": 1}.get(str(f.label))
        if label is None:
            skipped.append(f"{f.path}: unknown label {f.label!r}")
            continue
        try:
            audio = read_audio(f.path)
        except AudioDecodeError as exc:
            skipped.append(f"{f.path}: {exc.problem}")
            say(f"skipped {f.path}: {exc.problem}")
            continue
        report = score_samples(
            to_mono(audio.samples, None), audio.sample_rate, detector, settings, hop_s=hop_s
        )
        scores = np.array([w["score"] for w in report["windows"]], dtype=np.float64)
        if scores.size == 0:
            reason = f"shorter than one window ({audio.duration_s:.3f} s < {spec.window_s} s)"
            skipped.append(f"{f.path}: {reason}")
            say(f"skipped {f.path}: {reason}")
            continue
        window_scores[label].append(scores)
        rows.append(
            {
                "file": str(f.path),
                "label": f.label,
                "duration_s": round(audio.duration_s, 4),
                "windows": int(scores.size),
                "mean_score": float(np.nanmean(scores)),
                "max_score": float(np.nanmax(scores)),
                "events": len(report["events"]),
                "judged_anomalous": bool(report["events"]),
            }
        )
    metrics = _metrics(rows, detector, hop_s, settings)
    metrics["skipped"] = skipped
    if copy_anomalies is not None:
        metrics["copied"] = _copy_judged(rows, Path(copy_anomalies))
    out = RunDir(out_dir, quiet=True)
    try:
        out.write_csv("files.csv", rows)
        y = np.array([r["label"] == "anomaly" for r in rows], dtype=np.int64)
        plot_roc(
            y,
            {
                "mean": np.array([r["mean_score"] for r in rows]),
                "max": np.array([r["max_score"] for r in rows]),
            },
            {"mean": metrics["auc"], "max": metrics["auc_max"]},
            out / "roc.png",
        )
        plot_score_hist(
            np.concatenate(window_scores[0]) if window_scores[0] else np.zeros(0),
            np.concatenate(window_scores[1]) if window_scores[1] else np.zeros(0),
            spec.threshold,
            out / "score_hist.png",
        )
        if write_metrics:
            out.write_json("metrics.json", metrics)
    finally:
        out.close()
    return Evaluation(metrics=metrics, rows=rows, skipped=skipped)


def evaluate_split(
    model: str | os.PathLike[str],
    files: Sequence[LabelledFile],
    run: RunDir,
    *,
    split: str,
    hop_s: float,
    progress: bool,
) -> Evaluation:
    """A fit's evaluation of one split: ``evaluate_files`` into the run directory (its
    metrics go into the fit's own metrics.json) and one summary line in its log."""
    ev = evaluate_files(
        model, files, run.path, hop_s=hop_s, progress=progress, log=run.log, write_metrics=False
    )
    m = ev.metrics
    run.log(
        f"{split}: {len(ev.rows)} files, auc={m['auc']} pauc={m['pauc']} "
        f"tp={m['tp']} fp={m['fp']} tn={m['tn']} fn={m['fn']}"
    )
    return ev


def _metrics(
    rows: list[dict[str, Any]], detector: Detector, hop_s: float, settings: MonitorConfig
) -> dict[str, Any]:
    y = np.array([r["label"] == "anomaly" for r in rows], dtype=np.int64)
    mean = np.array([r["mean_score"] for r in rows], dtype=np.float64)
    peak = np.array([r["max_score"] for r in rows], dtype=np.float64)
    fired = np.array([r["judged_anomalous"] for r in rows], dtype=bool)
    tp = int(np.sum(fired & (y == 1)))
    fp = int(np.sum(fired & (y == 0)))
    tn = int(np.sum(~fired & (y == 0)))
    fn = int(np.sum(~fired & (y == 1)))
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else None
    )
    normal = [r for r in rows if r["label"] == "normal"]
    normal_hours = sum(r["duration_s"] for r in normal) / 3600.0
    normal_events = sum(r["events"] for r in normal)
    spec = detector.spec
    return {
        "model": {
            "path": detector.path,
            "name": spec.name,
            "version": spec.version,
            "kind": spec.kind,
            "sha256": detector.sha256,
        },
        "files": {"normal": int(np.sum(y == 0)), "anomaly": int(np.sum(y == 1))},
        "hop_s": hop_s,
        "file_score": "mean of the file's window scores (DCASE); *_max: their max",
        "auc": _auc(y, mean),
        "pauc": _auc(y, mean, MAX_FPR),
        "auc_max": _auc(y, peak),
        "pauc_max": _auc(y, peak, MAX_FPR),
        "max_fpr": MAX_FPR,
        "decision": {
            "rule": DECISION_RULE,
            "threshold": spec.threshold,
            "onset_k": settings.onset_k,
            "onset_n": settings.onset_n,
            "hold_s": settings.hold_s,
            "refractory_s": settings.refractory_s,
        },
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "normal_hours": normal_hours,
        "false_alarms": normal_events,
        "false_alarms_per_hour": normal_events / normal_hours if normal_hours > 0 else None,
    }


def _copy_judged(rows: list[dict[str, Any]], folder: Path) -> list[str]:
    """Copy every file judged anomalous into ``folder`` (names kept; clashes numbered)."""
    folder.mkdir(parents=True, exist_ok=True)
    copied: list[str] = []
    for row in rows:
        if not row["judged_anomalous"]:
            continue
        src = Path(row["file"])
        dst = folder / src.name
        n = 1
        while dst.exists():
            dst = folder / f"{src.stem}.{n}{src.suffix}"
            n += 1
        shutil.copy2(src, dst)
        copied.append(str(dst))
    return copied


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``asd-train evaluate``."""
    parser.add_argument("--model", required=True, type=Path, help="the .onnx model to score with")
    parser.add_argument(
        "--data", required=True, type=Path, help="dataset folder (manifest.csv or DCASE layout)"
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for metrics and plots")
    parser.add_argument(
        "--split",
        default="test",
        choices=("train", "valid", "test"),
        help="which split to score (default: %(default)s)",
    )
    parser.add_argument(
        "--hop-s",
        type=float,
        default=DEVICE_RULE["hop_s"],
        help="seconds between scored windows, as the daemon's hop (default: %(default)s)",
    )
    parser.add_argument(
        "--copy-anomalies",
        type=Path,
        default=None,
        metavar="DIR",
        help="copy the files judged anomalous into DIR",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no summary")


def run(args: argparse.Namespace) -> int:
    """``asd-train evaluate``: returns 0, 1 (files skipped), 65 or 66."""
    from .dataset import load_dataset

    def say(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr)

    if not args.model.is_file():
        print(f"asd-train evaluate: {args.model}: no such model file", file=sys.stderr)
        return EXIT_NOINPUT
    if not args.data.exists():
        print(f"asd-train evaluate: {args.data}: no such dataset", file=sys.stderr)
        return EXIT_NOINPUT
    if not 0.05 <= args.hop_s <= 10.0:
        print(
            f"asd-train evaluate: --hop-s must be in [0.05, 10], got {args.hop_s}", file=sys.stderr
        )
        return EXIT_DATA
    try:
        dataset = load_dataset(args.data)
        files = dataset.split(args.split)
        if not files:
            raise DataError(f"{args.data}: the {args.split} split has no files")
        result = evaluate_files(
            args.model,
            files,
            args.out,
            hop_s=args.hop_s,
            copy_anomalies=args.copy_anomalies,
            progress=not args.quiet,
        )
    except DataError as exc:
        print(f"asd-train evaluate: {exc}", file=sys.stderr)
        return EXIT_DATA
    except ModelError as exc:
        print(f"asd-train evaluate: {exc}", file=sys.stderr)
        return EXIT_DATA
    m = result.metrics
    say(
        f"{len(result.rows)} files: auc={_fmt(m['auc'])} pauc={_fmt(m['pauc'])} "
        f"auc_max={_fmt(m['auc_max'])} tp={m['tp']} fp={m['fp']} tn={m['tn']} fn={m['fn']} "
        f"false_alarms_per_hour={_fmt(m['false_alarms_per_hour'])}"
    )
    say(f"wrote {args.out / 'metrics.json'}")
    for line in result.skipped:
        print(f"asd-train evaluate: skipped {line}", file=sys.stderr)
    return EXIT_FAILED if result.skipped else EXIT_OK


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def compare_quantized(
    base: Evaluation,
    int8_model: str | os.PathLike[str],
    files: Sequence[LabelledFile],
    out_dir: str | os.PathLike[str],
    *,
    hop_s: float = DEVICE_RULE["hop_s"],
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate an int8 copy like the float model was; report what quantisation changed."""
    ev = evaluate_files(int8_model, files, out_dir, hop_s=hop_s, progress=progress)
    float_means = {r["file"]: r["mean_score"] for r in base.rows}
    diffs = [
        abs(r["mean_score"] - float_means[r["file"]]) for r in ev.rows if r["file"] in float_means
    ]
    auc, base_auc = ev.metrics["auc"], base.metrics["auc"]
    return {
        "path": str(int8_model),
        "bytes": Path(int8_model).stat().st_size,
        "auc": auc,
        "pauc": ev.metrics["pauc"],
        "auc_change": None if auc is None or base_auc is None else auc - base_auc,
        "max_file_mean_score_change": max(diffs) if diffs else None,
        **{k: ev.metrics[k] for k in ("tp", "fp", "tn", "fn")},
    }
