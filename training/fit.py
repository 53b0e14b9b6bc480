"""``asd-train fit``: data → windows → model → training → export → calibration → evaluation.

:func:`fit` runs the stages top to bottom; each stage's work lives in its own
module (windows, trainer, export, calibrate, evaluate, runs). The run directory
(``--out``) ends up with ``config.json``, ``metrics.json``, ``history.csv``,
``learning_curve.png``, ``roc.png``, ``score_hist.png``, ``model.onnx``,
``checkpoint.pt`` and ``train.log``. The command line is :mod:`training.fit_cli`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from asd_edge.learning.bandstat import DEFAULTS as BANDSTAT_DEFAULTS
from asd_edge.learning.calibration import DEVICE_RULE, CalibrationConfig, calibrate_files
from asd_edge.learning.contract import build_time, contract_metadata, make_version

from .bandfit import NUMPY_KINDS, fit_bandstat
from .errors import DataError
from .evaluate import compare_quantized, evaluate_split
from .export import export_model, quantize_model, read_metadata, update_metadata
from .kinds import DEFAULT_KIND, InputStats, KindInfo, ScoreModel, get_kind
from .plots import plot_learning_curve
from .runs import RunDir, Tracker, finish_run, make_tracker
from .trainer import TrainConfig, save_checkpoint, seed_everything, train
from .windows import Windows, WindowSpec, augmenting, load_windows

__all__ = ["FitConfig", "FitResult", "fit"]

STAGING = ".model.uncalibrated.onnx"
"""The exported model before calibration; renamed to ``model.onnx`` once calibrated."""


@dataclass(frozen=True)
class FitConfig:
    """Everything ``asd-train fit`` was asked to do (written to ``config.json``)."""

    data: Path
    out: Path
    kind: str = DEFAULT_KIND
    params: Mapping[str, Any] = field(default_factory=dict)
    """Overrides of the kind's hyper-parameters."""
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    patience: int = 5
    seed: int = 0
    threads: int | None = None
    """torch and BLAS threads. None: one for the numpy kinds (``auto``, ``bandstat``: their
    small matrix products gain nothing from more threads, and lose several times over on a
    machine whose other core is busy, benchmarks/bench_bandstat.py), the libraries'
    defaults for the torch kinds."""
    rate: int = 16000
    window_s: float = 1.0
    hop_s: float = 0.5
    """Hop of the training windows."""
    deploy_hop_s: float = DEVICE_RULE["hop_s"]
    """The daemon's hop: calibration and evaluation score at it."""
    valid_fraction: float = 0.15
    calibration: str = "fa_per_day"
    target_fa_per_day: float = 1.0
    quantile: float = 0.99
    k: float = 2.0
    threshold: float | None = None
    augment: Mapping[str, Any] | None = None
    """``training.augment.AugmentConfig`` fields; None trains on the windows as they are."""
    name: str | None = None
    quantize: bool = False
    tracker: str = "none"
    quiet: bool = False

    def calibration_config(self) -> CalibrationConfig:
        """The calibration this config asks for (ValueError when inconsistent)."""
        return CalibrationConfig(
            method=self.calibration,  # type: ignore[arg-type]
            target_fa_per_day=self.target_fa_per_day,
            quantile=self.quantile,
            k=self.k,
            threshold=self.threshold,
            hop_s=self.deploy_hop_s,
        )

    def train_config(self) -> TrainConfig:
        """The training loop's settings (ValueError when out of range)."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            patience=self.patience,
            seed=self.seed,
            threads=self.threads,
        )


@dataclass
class FitResult:
    """Where the run went and what it measured."""

    run_dir: Path
    model_path: Path
    metrics: dict[str, Any]
    model: Any
    """The fitted model: a torch ``ScoreModel``, or a ``asd_edge.learning.bandstat.BandStat``."""


def fit(config: FitConfig, *, tracker: Tracker | None = None) -> FitResult:
    """Train, export, calibrate and evaluate one model; write the run directory.

    Raises DataError (the data cannot make a model), ExportError (the ONNX graph
    disagrees with torch or the daemon would refuse it) and TrackerUnavailable.
    """
    started = time.perf_counter()
    info = None if config.kind in NUMPY_KINDS else get_kind(config.kind)
    params = {**(BANDSTAT_DEFAULTS if info is None else info.defaults), **config.params}
    owned = tracker is None  # a tracker passed in is closed by whoever made it
    if tracker is None:
        tracker = make_tracker(config.tracker, project="asd-edge", task=config.name or "fit")
    run = RunDir(config.out, quiet=config.quiet)
    threads = 1 if config.threads is None and info is None else config.threads
    try:
        with threadpool_limits(limits=threads):
            effective = {**asdict(config), "kind": config.kind, "params": params}
            effective["threads"] = threads
            run.write_json("config.json", effective)
            tracker.log_config(effective)
            if info is None:  # numpy-fitted: cross-fitted calibration, choice by measurement
                path, metrics, model = fit_bandstat(config, run, tracker, started)
                return FitResult(run.path, path, metrics, model)
            return _stages(config, info, params, run, tracker, started)
    finally:
        run.close()
        (run / STAGING).unlink(missing_ok=True)
        if owned:
            tracker.close()


def _stages(
    c: FitConfig,
    info: KindInfo,
    params: dict[str, Any],
    run: RunDir,
    tracker: Tracker,
    started: float,
) -> FitResult:
    from .dataset import load_dataset

    # 1. Data: the files of each split, cut into windows as the daemon cuts them.
    dataset = load_dataset(c.data, valid_fraction=c.valid_fraction, seed=c.seed)
    skipped = list(dataset.skipped)
    if info.supervised and not dataset.split("train", "anomaly"):
        raise DataError(
            f"{c.data}: {info.name} is supervised: it needs anomalous files in the train "
            "split, found none (label some recordings as anomaly, e.g. with a manifest)"
        )
    spec = WindowSpec.for_kind(info, sample_rate=c.rate, window_s=c.window_s, hop_s=c.hop_s)
    label = None if info.supervised else "normal"  # unsupervised kinds learn normal sound only
    train_w, bad = load_windows(
        dataset.split("train", label), spec, keep_streams=bool(c.augment), progress=not c.quiet
    )
    valid_w, bad_v = load_windows(
        dataset.split("valid", label), spec, progress=not c.quiet, desc="valid"
    )
    skipped += [str(s) for s in bad + bad_v]
    for line in skipped:
        run.log(f"skipped {line}")
    if len(train_w) == 0:
        raise DataError(f"{c.data}: no training windows of {c.window_s} s could be read")
    run.log(
        f"data: {len(train_w.files)} train files ({len(train_w)} windows), "
        f"{len(valid_w.files)} valid files ({len(valid_w)} windows), "
        f"{spec.input} input {list(spec.input_shape)}"
    )

    # 2. Model and training (the best epoch's weights are kept and checkpointed).
    model, summary, history = _train(c, info, params, spec, train_w, valid_w, run, tracker)

    # 3. Export and parity on real held-out windows, then calibrate the exported model.
    created = build_time()  # SOURCE_DATE_EPOCH when set: reproducible builds
    name = c.name or f"{dataset.root.name}-{info.name}"
    metadata = contract_metadata(
        name=name,
        version=make_version(created, dataset.sha256, info.name, params, c.seed),
        kind=info.name,
        spec_fields=spec.metadata(frames=int(params.get("frames", 1))),
        threshold=0.0,  # provisional: replaced by the calibrated one below
        calibration={"method": "pending"},
        training={
            "data_sha256": dataset.sha256,
            "files": len(train_w.files),
            "windows": len(train_w),
            "valid_files": len(valid_w.files),
            "created": created.isoformat().replace("+00:00", "Z"),
            "seed": c.seed,
            "params": params,
            "epochs_run": summary["epochs_run"],
            "hop_s": c.hop_s,
        },
    )
    staging = run / STAGING
    parity_x = valid_w.x if len(valid_w) else train_w.x
    report = export_model(model, staging, metadata=metadata, parity_inputs=parity_x)
    run.log(
        f"exported: ONNX vs torch on {report.parity['windows']} held-out windows, "
        f"max |diff| {report.parity['max_abs_diff']:.3g}"
    )
    held_out, source = dataset.split("valid", "normal"), "valid"
    if not held_out:
        held_out, source = dataset.split("train", "normal"), "train"
        run.log("no held-out normal files: calibrating on the training files (optimistic)")
    try:
        cal = calibrate_files(
            staging, [f.path for f in held_out], c.calibration_config(), log=run.log
        )
    except ValueError as exc:
        raise DataError(f"{c.data}: cannot calibrate: {exc}") from None
    cal.metadata["held_out_source"] = source
    run.log(
        f"threshold {cal.threshold:.6g} ({c.calibration}; {cal.metadata['held_out_windows']} "
        f"held-out windows, {cal.metadata['empirical_events']} events on them)"
    )
    model_path = run / "model.onnx"
    update_metadata(staging, {"threshold": cal.threshold, "calibration": cal.metadata})
    os.replace(staging, model_path)

    # 4. Evaluation through the daemon's pipeline (test split, else valid).
    metrics: dict[str, Any] = {
        "kind": info.name,
        "name": name,
        "version": metadata["version"],
        "params": params,
        "windows": {"train": len(train_w), "valid": len(valid_w)},
        "training": summary,
        "parity": report.parity,
        "threshold": cal.threshold,
        "calibration": cal.metadata,
        "skipped": skipped,
    }
    split = "test" if dataset.split("test") else "valid"
    files = dataset.split(split)
    metrics["evaluated_split"] = split if files else None
    if files:
        ev = evaluate_split(
            model_path, files, run, split=split, hop_s=c.deploy_hop_s, progress=not c.quiet
        )
        metrics["test"] = ev.metrics
        if c.quantize:
            int8 = run / "model.int8.onnx"
            quantize_model(model_path, int8, read_metadata(model_path))
            metrics["int8"] = compare_quantized(
                ev, int8, files, run / "int8", hop_s=c.deploy_hop_s, progress=not c.quiet
            )
            metrics["int8"]["float_bytes"] = model_path.stat().st_size
            run.log(f"int8: {metrics['int8']}")
    else:
        run.log("no test or valid files: nothing to evaluate")

    # 5. Records.
    empty = {"epoch": 0, "train_loss": None, "valid_loss": None, "seconds": None}
    run.write_csv("history.csv", history or [empty])
    plot_learning_curve(history, run / "learning_curve.png", best_epoch=summary["best_epoch"])
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    finish_run(run, tracker, metrics, ("config.json", "metrics.json", "history.csv",
               "learning_curve.png", "roc.png", "score_hist.png", "model.onnx"))  # fmt: skip
    return FitResult(run.path, model_path, metrics, model)


def _train(
    c: FitConfig,
    info: KindInfo,
    params: dict[str, Any],
    spec: WindowSpec,
    train_w: Windows,
    valid_w: Windows,
    run: RunDir,
    tracker: Tracker,
) -> tuple[ScoreModel, dict[str, Any], list[dict[str, float]]]:
    """Build and train (gradient kinds) or fit (closed-form kinds); write checkpoint.pt."""
    stats = InputStats.of(train_w.x)
    train_config = c.train_config()
    ckpt: dict[str, Any] = {
        "kind": info.name,
        "params": params,
        "stats": stats,
        "input_shape": spec.input_shape,
        "train_config": train_config,
    }
    history: list[dict[str, float]] = []
    if info.fit_method == "gradient":
        assert info.build is not None
        seed_everything(c.seed, c.threads)  # the initial weights depend on the seed
        result = train(
            info.build(spec.input_shape, stats, params),
            train_w.x,
            train_w.label,
            valid_w.x,
            valid_w.label,
            train_config,
            augment=augmenting(train_w, c.augment, c.seed) if c.augment else None,
            on_improve=lambda m, epoch, hist: save_checkpoint(
                run / "checkpoint.pt", m, **ckpt, epoch=epoch, history=hist
            ),
            progress=not c.quiet,
            log=run.log,
        )
        model, history = result.model, result.history
        summary: dict[str, Any] = {
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "best_valid_loss": result.best_loss,
            "stopped_early": result.stopped_early,
        }
        for row in history:
            tracker.log_scalar("loss", "train", row["train_loss"], int(row["epoch"]))
            tracker.log_scalar("loss", "valid", row["valid_loss"], int(row["epoch"]))
    else:
        assert info.fit is not None
        seed_everything(c.seed, c.threads)
        model = info.fit(train_w.x, stats, params, c.seed)
        summary = {"epochs_run": 0, "best_epoch": 0, "fit": "closed_form"}
        run.log(f"fitted {info.name} in closed form on {len(train_w)} windows")
    save_checkpoint(
        run / "checkpoint.pt", model, **ckpt, epoch=summary["best_epoch"], history=history
    )
    return model, summary, history
