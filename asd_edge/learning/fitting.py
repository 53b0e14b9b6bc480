"""Normal recordings to a calibrated, exported ``bandstat`` model: the one implementation
that ``asd-train fit`` (on a workstation) and ``asd-edge learn`` (on the device) share.

Reads top to bottom: candidates cross-fitted by source recording (``crossfit``:
calibration on held-out normal windows, recall on faults injected into held-out real
recordings) → the choice → the final fit on all normal audio, checked against its own
training audio at the cross-fitted threshold → the contract's metadata → the ONNX graph,
held to numpy on real windows. numpy, scipy and onnx (the graph builder) only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from ..errors import LearnError
from ..features import LogMelParams
from . import bandstat
from .calibration import CalibrationConfig, ScoreSequence, count_events
from .contract import ATOL, RTOL, build_time, contract_metadata, make_version, spread_windows
from .crossfit import (
    CANDIDATES,
    MAX_FOLDS,
    Candidate,
    CandidateReport,
    audio_needed_s,
    choose,
    crossfit,
    source_groups,
)
from .recording import Recording
from .windows import Featurizer, features_for

__all__ = [
    "AUTO",
    "KIND",
    "MIN_WINDOWS",
    "Learned",
    "candidates_for",
    "export_checked",
    "features_for",
    "fit_recordings",
    "marked_radius",
    "min_seconds",
]

KIND = "bandstat"
MARKED_MARGIN = 1.5
"""The marked radius is this many times the distance that separates normal windows of
different recordings from their nearest neighbour (or marked windows from each other)."""
RADIUS_SAMPLE = 1000
"""Windows per side the marked radius is measured on (the cost grows with their product)."""
AUTO = "auto"
"""``auto``: choose among :data:`asd_edge.learning.crossfit.CANDIDATES` by measurement."""
MIN_WINDOWS = 16
"""Normal windows a fit needs: two folds of at least 8 (``bandstat.fit``'s minimum)."""
Progress = Callable[[int, int], None]
"""``progress(done, total)`` after each cross-fitting job."""


def min_seconds(window_s: float, hop_s: float) -> float:
    """The least normal audio a fit can use: :data:`MIN_WINDOWS` windows at the hop."""
    return (MIN_WINDOWS - 1) * hop_s + window_s


def candidates_for(kind: str, params: Mapping[str, Any]) -> list[Candidate]:
    """What ``auto`` (all of :data:`CANDIDATES`) or ``bandstat`` (its scorer) fits;
    LearnError when the parameters contradict the kind."""
    extra = {k: v for k, v in params.items() if k != "n_mels"}
    if kind == AUTO:
        if "scorer" in extra:
            raise LearnError("auto chooses the scorer; use the bandstat kind to fix it")
        return [Candidate(c.name, {**c.params, **extra}) for c in CANDIDATES]
    if kind != KIND:
        raise LearnError(f"kind {kind!r} is not fitted with numpy (auto or bandstat)")
    scorer = str(extra.get("scorer", bandstat.DEFAULTS["scorer"]))
    return [Candidate(f"bandstat/{scorer}", {**extra, "scorer": scorer})]


@dataclass
class Learned:
    """A fitted, calibrated and exported model, and how it was chosen."""

    model: bandstat.BandStat
    onnx: bytes
    """The contract ONNX file, parity-checked against ``model``."""
    metadata: dict[str, Any]
    """Its ``asd_edge`` metadata."""
    chosen: CandidateReport
    reports: list[CandidateReport]
    threshold: float
    calibration: dict[str, Any]
    parity: dict[str, Any]
    windows: int
    seconds: float
    sources: int
    warning: str | None
    fit_s: float


def _check_final(
    model: bandstat.BandStat,
    recordings: Sequence[Recording],
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


def export_checked(
    model: bandstat.BandStat, n_frames: int, metadata: Mapping[str, Any], parity_x: np.ndarray
) -> tuple[bytes, dict[str, Any]]:
    """The contract graph, held to numpy on real windows; LearnError when they disagree."""
    import onnx

    from ..onnxrt import ort

    proto = bandstat.to_onnx(model, n_frames, metadata)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise LearnError(f"ONNX checker rejects the model: {exc}") from None
    blob: bytes = proto.SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(blob, sess_options=options, providers=["CPUExecutionProvider"])
    x = spread_windows(parity_x)
    got_s, got_b = session.run(["score", "bands"], {"logmel": x.astype(np.float32)})
    ref_s, ref_b = model.score(x)
    report: dict[str, Any] = {"windows": int(x.shape[0]), "atol": ATOL, "rtol": RTOL}
    for name, got, ref in (("score", got_s, ref_s), ("bands", got_b, ref_b)):
        diff = np.abs(np.asarray(got, np.float64) - ref)
        report[f"max_abs_diff_{name}"] = float(diff.max())
        if not np.all(np.isfinite(got)) or np.any(diff > ATOL + RTOL * np.abs(ref)):
            raise LearnError(f"ONNX {name} disagrees with numpy (max |diff| {diff.max():.3g})")
    report["max_abs_diff"] = report["max_abs_diff_score"]
    return blob, report


def fit_recordings(
    recordings: Sequence[Recording],
    *,
    kind: str,
    params: Mapping[str, Any],
    features: LogMelParams,
    window_s: float,
    config: CalibrationConfig,
    name: str,
    data_sha256: str,
    training: Mapping[str, Any],
    pieces: bool,
    seed: int = 0,
    created: datetime | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    marked: Sequence[Recording] = (),
) -> Learned:
    """Cross-fit the candidates of ``kind`` on ``recordings``, fit the chosen one on all
    of them, calibrate and export it. ``training``: extra fields for the metadata's
    ``training`` object; ``pieces``: the sources are pieces of one recording (said in
    the calibration). ``marked``: false alarms an operator marked normal: the model is
    fitted and calibrated on ``recordings`` alone, then a window close to a marked one
    scores below the threshold (:func:`marked_radius`), so that one clip teaches a
    pattern without lifting the threshold for everything else.
    LearnError when there is too little audio or the export fails."""
    started = time.perf_counter()
    say = log or (lambda _line: None)
    candidates = candidates_for(kind, params)
    windows = sum(r.stats.shape[0] for r in recordings)
    seconds = float(sum(r.duration_s for r in recordings))
    sources = len({r.source for r in recordings})
    if windows < MIN_WINDOWS or sources < 2:
        need_s = min_seconds(window_s, config.hop_s)
        raise LearnError(
            f"{seconds:.0f} s of usable normal audio ({windows} windows of {window_s:g} s at "
            f"a {config.hop_s:g} s hop, {sources} source(s)): bandstat needs at least "
            f"{MIN_WINDOWS} windows ({need_s:g} s), from 2 recordings or cut from one"
        )
    try:
        reports = crossfit(
            recordings, candidates, config, Featurizer(features, window_s, config.hop_s),
            seed=seed, progress=progress, log=log,
        )  # fmt: skip
    except ValueError as exc:
        raise LearnError(str(exc)) from None
    chosen = choose(reports)
    say(f"chose {chosen.name} ({time.perf_counter() - started:.1f} s of cross-fitting)")

    levels = np.concatenate([r.levels_dbfs for r in recordings])
    model = bandstat.fit_statistics(
        np.concatenate([r.stats for r in recordings]), chosen.params, seed,
        groups=source_groups(recordings),
    ).with_taus(*chosen.taus)  # fmt: skip
    threshold, final_check = _check_final(model, recordings, config, chosen.threshold)
    marked_info: dict[str, Any] = {}
    if marked:
        radius = marked_radius(model, recordings, marked)
        model = model.with_marked(np.concatenate([r.stats for r in marked]), radius, threshold)
        marked_info = {
            "sources": [r.source for r in marked],
            "windows": int(sum(r.stats.shape[0] for r in marked)),
            "radius": round(radius, 4),
        }
        say(f"{marked_info['windows']} windows marked normal, radius {radius:.3g} spreads")
    if final_check["raised_to_training_max"]:
        say(
            f"the final model raised {final_check['events_at_crossfitted_threshold']} events "
            f"on its own training audio at {chosen.threshold:.4g}: threshold raised to "
            f"{threshold:.4g}"
        )
    needed_s = audio_needed_s(config)
    held_s = sum(q.duration_s for q in chosen.held_out)
    calibration: dict[str, Any] = {
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
    warning = None
    if held_s < needed_s:
        warning = (
            f"only {held_s / 60:.1f} min of normal audio: the threshold for "
            f"{config.target_fa_per_day:g} false alarm(s)/day is extrapolated from the score "
            f"tail; record about {(needed_s - held_s) / 60:.0f} min more normal sound to "
            "observe it directly"
        )
        calibration["warning"] = warning
        say(f"warning: {warning}")
    created = build_time(created)
    final_params = {**chosen.params, "n_mels": features.n_mels}
    metadata = contract_metadata(
        name=name,
        version=make_version(created, data_sha256, KIND, final_params, seed),
        kind=KIND,
        spec_fields=_spec_fields(features, window_s),
        threshold=threshold,
        calibration=calibration,
        training={
            "data_sha256": data_sha256,
            **dict(training),
            "sources": sources,
            "windows": windows,
            "seconds": round(seconds, 1),
            "created": created.isoformat().replace("+00:00", "Z"),
            "seed": seed,
            "params": final_params,
            "chosen_from": [r.name for r in reports],
            "hop_s": config.hop_s,
            **({"marked_normal": marked_info} if marked_info else {}),
        },
    )
    nearest = chosen.params.get("scorer") in ("knn", "knn_topk")
    metadata["bands"] = {
        "unit": "dB",
        "measure": "window mean level of the mel band minus "
        + ("that of the nearest normal window" if nearest else "its normal median"),
        "edges_hz": bandstat.band_edges_hz(
            features.sample_rate, features.n_mels, features.fmin, features.fmax_hz
        ),
        "spread_db": [round(float(v), 4) for v in model.band_spread_db],
    }
    metadata["level"] = bandstat.level_stats(levels)
    parity_x = np.concatenate([r.logmel for r in [*recordings, *marked]])
    blob, parity = export_checked(
        model, features.n_frames(round(window_s * features.sample_rate)), metadata, parity_x
    )
    say(
        f"exported: ONNX vs numpy on {parity['windows']} windows, max |diff| "
        f"{parity['max_abs_diff']:.3g}; threshold {threshold:.4g}, predicted "
        f"{calibration.get('predicted_fa_per_day', float('nan')):.3g} false alarms/day"
    )
    return Learned(
        model=model,
        onnx=blob,
        metadata=metadata,
        chosen=chosen,
        reports=list(reports),
        threshold=threshold,
        calibration=calibration,
        parity=parity,
        windows=windows,
        seconds=seconds,
        sources=sources,
        warning=warning,
        fit_s=time.perf_counter() - started,
    )


def marked_radius(
    model: bandstat.BandStat, recordings: Sequence[Recording], marked: Sequence[Recording]
) -> float:
    """How close to a marked-normal window a window must be to count as that pattern:
    :data:`MARKED_MARGIN` times the larger of the 95th percentiles of (a) each normal
    window's distance to the nearest normal window of another recording and (b) each
    marked window's distance to the nearest other marked window. A window of the marked
    pattern over another stretch of normal sound lies about (a) away; a fault, many
    times that (measured on the synthetic machine: 0.37 against 1.2-6 spreads)."""
    rng = np.random.default_rng(0)

    def sample(z: np.ndarray) -> np.ndarray:
        if z.shape[0] <= RADIUS_SAMPLE:
            return z
        return z[np.sort(rng.choice(z.shape[0], RADIUS_SAMPLE, replace=False))]

    def z_of(rs: Sequence[Recording]) -> np.ndarray:
        return (np.concatenate([r.stats for r in rs]) - model.center) / model.scale

    def nearest(a: np.ndarray, b: np.ndarray, same: bool = False) -> np.ndarray:
        d2 = np.stack([((b - row) ** 2).sum(axis=1) for row in a])
        if same:
            np.fill_diagonal(d2, np.inf)
        return np.asarray(np.sqrt(d2.min(axis=1) / model.dims))

    spans = []
    sources = sorted({r.source for r in recordings})
    for src in sources:
        own = [r for r in recordings if r.source == src]
        others = [r for r in recordings if r.source != src]
        if others:
            spans.append(nearest(sample(z_of(own)), sample(z_of(others))))
    normal = float(np.quantile(np.concatenate(spans), 0.95)) if spans else 0.0
    zm = sample(z_of(marked))
    within = float(np.quantile(nearest(zm, zm, same=True), 0.95)) if zm.shape[0] > 1 else 0.0
    radius = MARKED_MARGIN * max(normal, within)
    if not radius > 0:
        raise LearnError("the marked windows cannot be told apart from normal sound")
    return radius


def _spec_fields(features: LogMelParams, window_s: float) -> dict[str, Any]:
    """The contract's input fields of a log-mel model (one frame per context)."""
    return {
        "sample_rate": features.sample_rate,
        "window_s": window_s,
        "input": "logmel",
        "features": {
            "n_fft": features.n_fft,
            "hop_length": features.hop_length,
            "n_mels": features.n_mels,
            "fmin": features.fmin,
            "fmax": features.fmax_hz,
            "power": features.power,
            "log": features.log,
            "frames": 1,
        },
    }
