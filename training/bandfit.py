"""``asd-train fit`` for the numpy-fitted kind (``bandstat``, and ``auto``, the default).

Reads top to bottom: normal recordings → windows at the device's hop → candidates
cross-fitted by source recording (``training.crossfit``: calibration on held-out
normal windows, recall on faults injected into held-out real recordings) → the choice
→ the final fit on all normal audio → ONNX export with parity and the daemon's own
loader → evaluation on the test split → records. No torch; the evaluation uses
scikit-learn for its AUCs as every kind's evaluation does (workstation only).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asd_edge.errors import AudioDecodeError
from asd_edge.features import LogMelParams
from asd_edge.meters import window_level_dbfs

from . import bandstat
from .calibrate import CalibrationConfig, ScoreSequence, count_events
from .crossfit import (
    CANDIDATES,
    MAX_FOLDS,
    MIN_PIECE_S,
    Candidate,
    CandidateReport,
    Recording,
    audio_needed_s,
    choose,
    crossfit,
    source_groups,
)
from .errors import DataError, ExportError
from .export import (
    ATOL,
    RTOL,
    build_time,
    contract_metadata,
    make_version,
    save_checked,
    spread_windows,
)
from .runs import RunDir, Tracker, finish_run
from .windows import DEFAULT_FEATURES, WindowSpec, file_stream, stream_windows

if TYPE_CHECKING:
    from .dataset import DataFile
    from .fit import FitConfig

__all__ = [
    "AUTO",
    "NUMPY_KINDS",
    "BandFit",
    "candidates_for",
    "fit_bandstat",
    "model_card",
    "spec_for",
]

AUTO = "auto"
"""``--model auto``: choose among :data:`training.crossfit.CANDIDATES` by measurement."""
MIN_WINDOWS = 16
"""Normal windows ``fit`` needs: two folds of at least 8 (``bandstat.fit``'s minimum)."""
NUMPY_KINDS: tuple[str, ...] = (AUTO, "bandstat")
"""The kinds fitted here, with numpy alone."""


def spec_for(rate: int, window_s: float, hop_s: float, n_mels: int) -> WindowSpec:
    """The log-mel window spec of the kind: the contract's defaults with ``n_mels`` bands."""
    d = DEFAULT_FEATURES
    if round(window_s * rate) < int(d["n_fft"]):
        raise ValueError(f"a window of {window_s} s at {rate} Hz is shorter than n_fft")
    features = LogMelParams(
        sample_rate=rate,
        n_fft=int(d["n_fft"]),
        hop_length=int(d["hop_length"]),
        n_mels=n_mels,
        fmin=float(d["fmin"]),
        fmax=min(float(d["fmax"]), rate / 2.0),
        power=float(d["power"]),
    )
    return WindowSpec(
        input="logmel", sample_rate=rate, window_s=window_s, hop_s=hop_s, features=features
    )


class BandFit:
    """The stream → (model input, window end times) of one spec (``crossfit``'s featurize)."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec

    def _windows(self, stream: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        waves, starts = stream_windows(np.asarray(stream, dtype=np.float32), self.spec)
        ends = (starts + self.spec.window_samples) / self.spec.sample_rate
        return waves, ends.astype(np.float64)

    def __call__(self, stream: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        waves, ends = self._windows(stream)
        return self.spec.model_input(waves), ends

    def recording(self, source: str, stream: np.ndarray) -> Recording:
        """A stream cut into windows, with their levels."""
        waves, ends = self._windows(stream)
        logmel = self.spec.model_input(waves)
        return Recording(
            source=source,
            sample_rate=self.spec.sample_rate,
            stream=np.asarray(stream, dtype=np.float32),
            logmel=logmel,
            stats=bandstat.statistics(logmel) if logmel.shape[0] else np.zeros((0, 0)),
            end_s=ends,
            levels_dbfs=window_level_dbfs(waves).astype(np.float64),
        )


def _recordings(
    files: list[DataFile], fitter: BandFit, skipped: list[str]
) -> tuple[list[Recording], bool]:
    """The readable normal recordings; with a single source, cut into pieces that serve as
    sources for the folds (``True`` then)."""
    out = []
    for f in files:
        try:
            stream = file_stream(f.path, fitter.spec)
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
    count = int(np.clip(total // round(MIN_PIECE_S * fitter.spec.sample_rate), 2, MAX_FOLDS))
    piece = max(-(-total // count), fitter.spec.window_samples)
    pieces = []
    for r in out:
        for at in range(0, r.stream.shape[0], piece):
            part = r.stream[at : at + piece]
            if part.shape[0] >= fitter.spec.window_samples:
                pieces.append(fitter.recording(f"{r.source}#{len(pieces)}", part))
    return pieces, True


def _check_final(
    model: bandstat.BandStat,
    recordings: list[Recording],
    config: CalibrationConfig,
    threshold: float,
) -> tuple[float, dict[str, Any]]:
    """The final model on its own training audio at the cross-fitted threshold: the fold
    models' thresholds must hold for it too. If it raises an event there (it saw that
    audio: it should not), the threshold goes up to its highest score on it."""
    scores = [model.score_of(r.stats)[0] for r in recordings]
    seqs = [
        ScoreSequence(r.end_s, s, r.duration_s, r.source)
        for r, s in zip(recordings, scores, strict=True)
    ]
    events = count_events(seqs, config.policy(threshold))
    top = float(max(s.max() for s in scores))
    raised = events > 0
    return (max(threshold, top) if raised else threshold), {
        "events_at_crossfitted_threshold": events,
        "highest_training_score": round(top, 6),
        "raised_to_training_max": raised,
    }


def candidates_for(kind: str, params: Mapping[str, Any]) -> list[Candidate]:
    """What ``--model auto`` (all of :data:`CANDIDATES`) or ``bandstat`` (its scorer) fits;
    ValueError when the parameters contradict the kind."""
    extra = {k: v for k, v in params.items() if k != "n_mels"}
    if kind == AUTO:
        if "scorer" in extra:
            raise ValueError("--model auto chooses the scorer; use --model bandstat to fix it")
        return [Candidate(c.name, {**c.params, **extra}) for c in CANDIDATES]
    scorer = str(extra.get("scorer", bandstat.DEFAULTS["scorer"]))
    return [Candidate(f"bandstat/{scorer}", {**extra, "scorer": scorer})]


def _export(
    model: bandstat.BandStat, spec: WindowSpec, metadata: dict[str, Any], parity_x: np.ndarray,
    path: Path,
) -> dict[str, Any]:  # fmt: skip
    """Build the graph, hold it to numpy on real windows, save it once the daemon loads it."""
    import onnxruntime as ort

    assert spec.features is not None
    proto = bandstat.to_onnx(model, spec.features.n_frames(spec.window_samples), metadata)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(
        proto.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    x = spread_windows(parity_x)
    got_s, got_b = session.run(["score", "bands"], {"logmel": x.astype(np.float32)})
    ref_s, ref_b = model.score(x)
    report: dict[str, Any] = {"windows": int(x.shape[0]), "atol": ATOL, "rtol": RTOL}
    for name, got, ref in (("score", got_s, ref_s), ("bands", got_b, ref_b)):
        diff = np.abs(np.asarray(got, np.float64) - ref)
        report[f"max_abs_diff_{name}"] = float(diff.max())
        if not np.all(np.isfinite(got)) or np.any(diff > ATOL + RTOL * np.abs(ref)):
            raise ExportError(f"ONNX {name} disagrees with numpy (max |diff| {diff.max():.3g})")
    report["max_abs_diff"] = report["max_abs_diff_score"]
    report["sha256"] = save_checked(proto, path)
    return report


def fit_bandstat(
    c: FitConfig, run: RunDir, tracker: Tracker, started: float
) -> tuple[Path, dict[str, Any], bandstat.BandStat]:
    """Fit ``bandstat`` (or choose one with ``auto``) and write the run directory."""
    from .dataset import load_dataset

    params = dict(c.params)
    n_mels = int(params.get("n_mels", bandstat.DEFAULTS["n_mels"]))
    try:
        spec = spec_for(c.rate, c.window_s, c.deploy_hop_s, n_mels)
        candidates = candidates_for(c.kind, params)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    fitter = BandFit(spec)

    # 1. Data: every normal recording outside the test split (fit and calibration both).
    dataset = load_dataset(c.data, valid_fraction=c.valid_fraction, seed=c.seed)
    skipped = list(dataset.skipped)
    normal = dataset.split("train", "normal") + dataset.split("valid", "normal")
    recordings, pieces = _recordings(normal, fitter, skipped)
    for line in skipped:
        run.log(f"skipped {line}")
    windows = sum(r.logmel.shape[0] for r in recordings)
    seconds = sum(r.stream.shape[0] for r in recordings) / spec.sample_rate
    if windows < MIN_WINDOWS or len(recordings) < 2:
        need_s = (MIN_WINDOWS - 1) * c.deploy_hop_s + c.window_s
        raise DataError(
            f"{c.data}: {seconds:.0f} s of readable normal audio ({windows} windows of "
            f"{c.window_s} s at a {c.deploy_hop_s} s hop): bandstat needs at least "
            f"{MIN_WINDOWS} windows ({need_s:g} s), from 2 recordings or cut from one"
        )
    sources = len({r.source for r in recordings})
    run.log(
        f"data: {len(normal)} normal files, {sources} sources"
        f"{' (pieces of the one recording)' if pieces else ''}, {seconds / 60:.1f} min, "
        f"{windows} windows of {c.window_s} s at a {c.deploy_hop_s} s hop, {n_mels} mel bands"
    )

    # 2. Candidates, cross-fitted; 3. the choice.
    cal_config = c.calibration_config()
    t0 = time.perf_counter()
    try:
        reports = crossfit(
            recordings, candidates, cal_config, fitter, seed=c.seed, progress=not c.quiet,
            log=run.log,
        )  # fmt: skip
    except ValueError as exc:
        raise DataError(f"{c.data}: {exc}") from None
    chosen: CandidateReport = choose(reports)
    run.log(f"chose {chosen.name} ({time.perf_counter() - t0:.1f} s of cross-fitting)")

    # 4. The final model on all normal audio, with the cross-fitted threshold.
    levels = np.concatenate([r.levels_dbfs for r in recordings])
    model = bandstat.fit_statistics(
        np.concatenate([r.stats for r in recordings]), chosen.params, c.seed,
        groups=source_groups(recordings),
    ).with_taus(*chosen.taus)  # fmt: skip
    threshold, final_check = _check_final(model, recordings, cal_config, chosen.threshold)
    if final_check["raised_to_training_max"]:
        run.log(
            f"the final model raised {final_check['events_at_crossfitted_threshold']} events "
            f"on its own training audio at {chosen.threshold:.4g}: threshold raised to "
            f"{threshold:.4g}"
        )
    needed_s = audio_needed_s(cal_config)
    held_s = sum(q.duration_s for q in chosen.held_out)
    calibration = {
        **chosen.calibration,
        "cross_fitted": {
            "folds": min(MAX_FOLDS, sources),
            "sources": sources,
            "pieces_of_one_recording": pieces,
        },
        "final_model": final_check,
        "injected_recall_mean": round(chosen.recall_mean, 4),
        "injected_recall": chosen.recall,
        "audio_needed_s": round(needed_s, 1),
    }
    if held_s < needed_s:
        warning = (
            f"only {held_s / 60:.1f} min of normal audio: the threshold for "
            f"{c.target_fa_per_day:g} false alarm(s)/day is extrapolated from the score "
            f"tail; record about {(needed_s - held_s) / 60:.0f} min more normal sound to "
            "observe it directly"
        )
        calibration["warning"] = warning
        run.log(f"warning: {warning}")
    created = build_time()
    final_params = {**chosen.params, "n_mels": n_mels}
    name = c.name or f"{dataset.root.name}-bandstat"
    assert spec.features is not None
    metadata = contract_metadata(
        name=name,
        version=make_version(created, dataset.sha256, "bandstat", final_params, c.seed),
        kind="bandstat",
        spec_fields=spec.metadata(),
        threshold=threshold,
        calibration=calibration,
        training={
            "data_sha256": dataset.sha256,
            "files": len(normal),
            "sources": sources,
            "windows": windows,
            "seconds": round(seconds, 1),
            "created": created.isoformat().replace("+00:00", "Z"),
            "seed": c.seed,
            "params": final_params,
            "chosen_from": [r.name for r in reports],
            "hop_s": c.deploy_hop_s,
        },
    )
    nearest = chosen.params.get("scorer") in ("knn", "knn_topk")
    metadata["bands"] = {
        "unit": "dB",
        "measure": "window mean level of the mel band minus "
        + ("that of the nearest normal window" if nearest else "its normal median"),
        "edges_hz": bandstat.band_edges_hz(
            spec.sample_rate, n_mels, spec.features.fmin, spec.features.fmax_hz
        ),
        "spread_db": [round(float(v), 4) for v in model.band_spread_db],
    }
    metadata["level"] = bandstat.level_stats(levels)
    model_path = run / "model.onnx"
    parity_x = np.concatenate([r.logmel for r in recordings])
    parity = _export(model, spec, metadata, parity_x, model_path)
    run.log(
        f"exported: ONNX vs numpy on {parity['windows']} windows, max |diff| "
        f"{parity['max_abs_diff']:.3g}; threshold {threshold:.4g}, predicted "
        f"{calibration.get('predicted_fa_per_day', float('nan')):.3g} false alarms/day"
    )

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
