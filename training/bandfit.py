"""``asd-train fit`` for the numpy-fitted kind (``bandstat``, and ``auto``, the default).

Reads top to bottom: normal recordings → windows at the device's hop → candidates
cross-fitted by source recording (``asd_edge.learning.crossfit``: calibration on held-out
normal windows, recall on faults injected into held-out real recordings) → the choice
→ the final fit on all normal audio → ONNX export with parity and the daemon's own
loader → evaluation on the test split → records. No torch; the evaluation uses
scikit-learn for its AUCs as every kind's evaluation does (workstation only).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asd_edge.errors import AudioDecodeError, LearnError
from asd_edge.learning import bandstat
from asd_edge.learning.crossfit import MAX_FOLDS
from asd_edge.learning.fitting import AUTO, KIND, candidates_for, fit_recordings
from asd_edge.learning.recording import MIN_PIECE_S, Recording
from asd_edge.learning.windows import Featurizer, features_for

from .errors import DataError, ExportError
from .export import save_checked
from .runs import RunDir, Tracker, finish_run
from .windows import WindowSpec, file_stream

if TYPE_CHECKING:
    from .dataset import DataFile
    from .fit import FitConfig

__all__ = [
    "AUTO",
    "NUMPY_KINDS",
    "fit_bandstat",
    "model_card",
    "spec_for",
]

NUMPY_KINDS: tuple[str, ...] = (AUTO, KIND)
"""The kinds fitted here, with numpy alone."""


def spec_for(rate: int, window_s: float, hop_s: float, n_mels: int) -> WindowSpec:
    """The log-mel window spec of the kind: the contract's defaults with ``n_mels`` bands."""
    try:
        features = features_for(rate, window_s, n_mels)
    except LearnError as exc:
        raise ValueError(str(exc)) from None
    return WindowSpec(
        input="logmel", sample_rate=rate, window_s=window_s, hop_s=hop_s, features=features
    )


def _featurizer(spec: WindowSpec) -> Featurizer:
    assert spec.features is not None
    return Featurizer(spec.features, spec.window_s, spec.hop_s)


def _recordings(
    files: list[DataFile], spec: WindowSpec, skipped: list[str]
) -> tuple[list[Recording], bool]:
    """The readable normal recordings; with a single source, cut into pieces that serve as
    sources for the folds (``True`` then)."""
    fitter = _featurizer(spec)
    out = []
    for f in files:
        try:
            stream = file_stream(f.path, spec)
        except AudioDecodeError as exc:
            skipped.append(f"{f.path}: {exc.problem}")
            continue
        rec = fitter.recording(f.source, stream)
        if rec.logmel.shape[0] == 0:
            skipped.append(f"{f.path}: shorter than one window")
            continue
        out.append(rec)
    if len({r.source for r in out}) != 1:
        return out, False
    # One source (one long recording, or its segments): pieces of about total / folds
    # (at least one window), numbered across its files in their order.
    total = sum(r.stream.shape[0] for r in out)
    count = int(np.clip(total // round(MIN_PIECE_S * fitter.sample_rate), 2, MAX_FOLDS))
    piece = max(-(-total // count), fitter.window_samples)
    pieces = []
    for r in out:
        for at in range(0, r.stream.shape[0], piece):
            part = r.stream[at : at + piece]
            if part.shape[0] >= fitter.window_samples:
                pieces.append(fitter.recording(f"{r.source}#{len(pieces)}", part))
    return pieces, True


def fit_bandstat(
    c: FitConfig, run: RunDir, tracker: Tracker, started: float
) -> tuple[Path, dict[str, Any], bandstat.BandStat]:
    """Fit ``bandstat`` (or choose one with ``auto``) and write the run directory."""
    from .dataset import load_dataset

    params = dict(c.params)
    n_mels = int(params.get("n_mels", bandstat.DEFAULTS["n_mels"]))
    try:
        spec = spec_for(c.rate, c.window_s, c.deploy_hop_s, n_mels)
        candidates_for(c.kind, params)
    except (ValueError, LearnError) as exc:
        raise DataError(str(exc)) from None
    assert spec.features is not None

    # 1. Data: every normal recording outside the test split (fit and calibration both).
    dataset = load_dataset(c.data, valid_fraction=c.valid_fraction, seed=c.seed)
    skipped = list(dataset.skipped)
    normal = dataset.split("train", "normal") + dataset.split("valid", "normal")
    recordings, pieces = _recordings(normal, spec, skipped)
    for line in skipped:
        run.log(f"skipped {line}")
    windows = sum(r.stats.shape[0] for r in recordings)
    seconds = sum(r.stream.shape[0] for r in recordings) / spec.sample_rate
    sources = len({r.source for r in recordings})
    run.log(
        f"data: {len(normal)} normal files, {sources} sources"
        f"{' (pieces of the one recording)' if pieces else ''}, {seconds / 60:.1f} min, "
        f"{windows} windows of {c.window_s} s at a {c.deploy_hop_s} s hop, {n_mels} mel bands"
    )

    # 2.-4. Candidates cross-fitted, the choice, the final fit, calibration and export:
    # the implementation the device's ``asd-edge learn`` runs too.
    with _progress(not c.quiet) as progress:
        try:
            learned = fit_recordings(
                recordings,
                kind=c.kind,
                params=params,
                features=spec.features,
                window_s=c.window_s,
                config=c.calibration_config(),
                name=c.name or f"{dataset.root.name}-bandstat",
                data_sha256=dataset.sha256,
                training={"files": len(normal)},
                pieces=pieces,
                seed=c.seed,
                progress=progress,
                log=run.log,
            )
        except LearnError as exc:
            message = str(exc)
            if message.startswith("ONNX "):
                raise ExportError(message) from None
            raise DataError(f"{c.data}: {message}") from None
    model, metadata, calibration = learned.model, learned.metadata, learned.calibration
    chosen, reports, threshold = learned.chosen, learned.reports, learned.threshold
    model_path = run / "model.onnx"
    parity = {**learned.parity, "sha256": save_checked(learned.onnx, model_path)}
    final_params = metadata["training"]["params"]
    name = metadata["name"]

    # 5. Evaluation through the daemon's pipeline (test split), and the records.
    metrics: dict[str, Any] = {
        "kind": "bandstat",
        "chosen": chosen.name,
        "name": name,
        "version": metadata["version"],
        "params": final_params,
        "model": model.describe(),
        "windows": {"fit": windows},
        "parity": parity,
        "threshold": threshold,
        "calibration": calibration,
        "candidates": [r.summary() for r in reports],
        "skipped": skipped,
    }
    files = dataset.split("test")
    metrics["evaluated_split"] = "test" if files else None
    if files:
        from .evaluate import evaluate_split  # scikit-learn's AUCs: the workstation's

        ev = evaluate_split(
            model_path, files, run, split="test", hop_s=c.deploy_hop_s, progress=not c.quiet
        )
        metrics["test"] = ev.metrics
    try:  # the workstation's plotting stack (matplotlib, scikit-learn): optional here
        from .plots import plot_injected_recall
    except ImportError:
        pass
    else:
        plot_injected_recall(
            [(r.name, r.threshold, r.recall) for r in reports], chosen.name,
            run / "injected_recall.png",
        )  # fmt: skip
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    (run / "model_card.md").write_text(model_card(metrics, metadata), encoding="utf-8")
    finish_run(run, tracker, metrics, ("config.json", "metrics.json", "model_card.md",
               "injected_recall.png", "roc.png", "score_hist.png", "model.onnx"))  # fmt: skip
    return model_path, metrics, model


def model_card(metrics: Mapping[str, Any], metadata: Mapping[str, Any]) -> str:
    """A short Markdown card: what the model is, its threshold and what it catches."""
    cal = metrics["calibration"]
    lines = [
        f"# Model card: `{metrics['name']}` ({metrics['version']})",
        "",
        "| | |",
        "|---|---|",
        f"| kind | `bandstat`, scorer `{metrics['model']['scorer']}` "
        f"(chosen: {metrics['chosen']}) |",
        f"| input | log-mel, {metadata['sample_rate']} Hz, {metadata['window_s']} s window, "
        f"{metadata['features']['n_mels']} mels |",
        f"| trained on | {metadata['training']['seconds']} s of normal audio, "
        f"{metadata['training']['sources']} sources |",
        f"| threshold | {metrics['threshold']:.4g} (cross-fitted, target "
        f"{cal.get('target_fa_per_day')} false alarm/day at hop {cal.get('hop_s')} s, "
        f"{cal.get('onset_k')}-of-{cal.get('onset_n')}) |",
        f"| predicted false alarms/day | {cal.get('predicted_fa_per_day', float('nan')):.3g} |",
        f"| injected-fault recall | {cal['injected_recall_mean']:.2f} (mean over faults and "
        "severities) |",
        f"| machine stopped below | {metadata['level']['stopped_below_dbfs']} dBFS "
        f"(normal p01 {metadata['level']['p01']} dBFS) |",
        "",
    ]
    if "warning" in cal:
        lines += [f"**Warning:** {cal['warning']}.", ""]
    lines += ["## Candidates", "", "| candidate | threshold | recall | window pAUC |",
              "|---|---|---|---|"]  # fmt: skip
    for cand in metrics["candidates"]:
        lines.append(
            f"| {cand['name']} | {cand['threshold']:.4g} | {cand['injected_recall_mean']:.2f} "
            f"| {cand['window_pauc']} |"
        )
    lines += ["", "## Injected-fault recall of the chosen model", "",
              "| fault | " + " | ".join(f"severity {s}" for s in ("0.5", "1.0", "2.0")) + " |",
              "|---|---|---|---|"]  # fmt: skip
    for fault, per in cal["injected_recall"].items():
        cells = " | ".join(str(per.get(s, "")) for s in ("0.5", "1.0", "2.0"))
        lines.append(f"| {fault} | {cells} |")
    if metrics.get("test"):
        t = metrics["test"]
        lines += ["", f"Test split: AUC {t.get('auc')}, pAUC {t.get('pauc')}.", ""]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _progress(show: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A tqdm bar for the cross-fitting jobs on a terminal (none otherwise)."""
    if not (show and sys.stderr.isatty()):
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(desc="cross-fit", unit="fit", file=sys.stderr, leave=False)

    def step(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield step
    finally:
        bar.close()
