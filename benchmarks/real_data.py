"""Detection on real recordings: file AUC, a stream test and injected-fault recall, per kind.

    python benchmarks/real_data.py [--seeds 0 1 2] [--machines pump toycar toyconveyor]
        [--kinds auto device dense_ae cnn_ae] [--stream-minutes 10] [--no-per-id] [--out DIR]

Data: ``../shared/data/machines/<machine>/{normal,anomaly}/*.wav`` (MIMII pump, ToyADMOS
toy car and toy conveyor; recordings of other people, never copied). Two protocols:

**Mixed** (as ``eval_shared_data.py``, same seeded splits by file): a machine folder
mixes several physical machines and recording set-ups. Normal files: 25 % test, the rest
train (+ valid, which ``auto`` also fits on: a user gives all the normal audio they
have). Every anomalous file is in test. Per kind and split:

- **file AUC / pAUC** (file score = mean window score, pAUC at FPR <= 0.1), and the
  **loudness reference** ``|clip RMS dB - mean training RMS dB|`` on the same files;
- **stream test**: the test split's normal recordings, in a seeded order and cycled, make
  a ``--stream-minutes`` stream; 3 s excerpts of the test anomalies (random file and
  offset, 50 ms cross-fades) replace the stream at gaps of 30-90 s. It is scored through
  the daemon's pipeline offline (``asd_edge.scoring.score_samples``, as ``asd-edge score``)
  with the threshold the model calibrated itself (the normal recordings are joined with
  the same cross-fades). A fault is *detected* when an event's alert falls in ``[fault
  start, fault end + window + hop]``; every other event is a *false alarm*, per day of the
  normal audio in the stream; latency = alert - fault start;
- **injected recall**: each fault of ``asd_edge.learning.inject`` at each severity, added to each
  test normal recording that raises no event as it is, scored the same way: the share on
  which an event is raised (``_clean.alarmed`` counts the recordings left out). ``auto``
  chose its scorer on the same kinds of faults (injected into its training recordings).

**Per machine id** (``--no-per-id`` skips it, ``--only-per-id`` runs it alone): one
physical machine at a time, as a user would have it (MIMII/ToyADMOS ids with at least 2
normal files and an anomaly). Leave one
normal file out: fit on the id's other normal files, score the held-out normal file and
the id's anomalies; the AUC is the share of anomalies scored above the held-out normal
file, averaged over the held-out files (with ``auto`` and the loudness reference); and a
stream test of ``auto`` on the held-out normal file cycled, with the id's anomalies spliced
in (only 10 s of distinct normal audio per stream: its false alarms are a hint, not a rate).

Appends one line to ``benchmarks/results/real_data.jsonl`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asd_edge.runtime import pin_math_threads

pin_math_threads()  # the daemon's one BLAS thread, before numpy loads (fits raise it)

import numpy as np  # noqa: E402
from bench_kinds import time_detector  # noqa: E402
from common import record  # noqa: E402
from eval_shared_data import (  # noqa: E402
    MACHINES,
    SEEDS,
    SHARED_MACHINES,
    recordings,
    report_failures,
    split_files,
    write_split,
)
from tqdm import tqdm  # noqa: E402

from asd_edge.audiofile import read_audio, to_mono  # noqa: E402
from asd_edge.config import MonitorConfig  # noqa: E402
from asd_edge.detector import Detector  # noqa: E402
from asd_edge.errors import LearnError  # noqa: E402
from asd_edge.learning.crossfit import auc, pauc  # noqa: E402
from asd_edge.learning.inject import FAULTS, SEVERITIES, inject  # noqa: E402
from asd_edge.meters import dbfs  # noqa: E402
from asd_edge.scoring import score_samples  # noqa: E402
from training.dataset import file_sha256  # noqa: E402
from training.errors import DataError, ExportError  # noqa: E402
from training.fit import FitConfig, fit  # noqa: E402

RATE = 16000
FAULT_S = 3.0
GAP_S = (30.0, 90.0)
FADE_S = 0.05
LOUDNESS = "loudness reference"


def _mono(path: Path) -> np.ndarray:
    audio = read_audio(path)
    if audio.sample_rate != RATE:
        raise DataError(f"{path}: expected {RATE} Hz, got {audio.sample_rate}")
    return to_mono(audio.samples, None).astype(np.float32)


def rms_db(x: np.ndarray) -> float:
    """A clip's RMS level in dB (full-scale square = 0), as the daemon measures levels."""
    return dbfs(float(np.mean(np.square(x, dtype=np.float64))))


def loudness_auc(train: Sequence[Path], normal: Sequence[Path], anomaly: Sequence[Path]) -> dict:
    """The reference: ``|clip RMS dB - mean training RMS dB|`` ranks the test files."""
    ref = float(np.mean([rms_db(_mono(p)) for p in train]))
    neg = [abs(rms_db(_mono(p)) - ref) for p in normal]
    pos = [abs(rms_db(_mono(p)) - ref) for p in anomaly]
    return {"auc": auc(neg, pos), "pauc": pauc(neg, pos)}


def make_stream(
    normal: Sequence[Path], anomaly: Sequence[Path], minutes: float, seed: int
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Normal test recordings cycled to ``minutes``, with 3 s anomaly excerpts spliced in."""
    rng = np.random.default_rng([seed, 0x57EA])
    total = round(minutes * 60 * RATE)
    clips = [_mono(p).astype(np.float64) for p in normal]
    n_fault, n_fade = round(FAULT_S * RATE), round(FADE_S * RATE)
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(n_fade) + 0.5) / n_fade)
    stream = np.zeros(0)
    while stream.shape[0] < total:  # recordings joined with the same cross-fade
        for i in rng.permutation(len(clips)):
            nxt = clips[i]
            if stream.shape[0] < n_fade:
                stream = np.concatenate([stream, nxt])
                continue
            joined = stream[-n_fade:] * ramp[::-1] + nxt[:n_fade] * ramp
            stream = np.concatenate([stream[:-n_fade], joined, nxt[n_fade:]])
    stream = stream[:total].astype(np.float32)
    bad = [_mono(p) for p in anomaly]
    spans, at = [], rng.uniform(*GAP_S)
    while (at + FAULT_S + 5.0) * RATE < total:
        src = bad[int(rng.integers(len(bad)))]
        off = int(rng.integers(0, max(1, src.shape[0] - n_fault)))
        piece = src[off : off + n_fault].astype(np.float64)
        start = round(at * RATE)
        w = np.ones(piece.shape[0])
        w[:n_fade], w[-n_fade:] = ramp, ramp[::-1]
        seg = stream[start : start + piece.shape[0]].astype(np.float64)
        stream[start : start + piece.shape[0]] = (seg * (1 - w) + piece * w).astype(np.float32)
        spans.append((at, at + FAULT_S))
        at += FAULT_S + rng.uniform(*GAP_S)
    return stream, spans


def stream_test(model: Path, stream: np.ndarray, spans: list[tuple[float, float]]) -> dict:
    """Events of the daemon's pipeline on the stream: detected faults, false alarms, latency."""
    detector = Detector(model)
    settings = MonitorConfig(name="stream", model=str(model))
    report = score_samples(stream, RATE, detector, settings)
    # the last window that overlaps a fault ends window_s after it; its alert comes within
    # one hop of that (hold_s only delays an event's end)
    late_s = detector.spec.window_s + settings.hop_s
    detected, latency, false = set(), [], 0
    for event in report["events"]:
        hit = [i for i, (a, b) in enumerate(spans) if a <= event["alert_s"] <= b + late_s]
        if hit:
            if hit[0] not in detected:
                latency.append(event["alert_s"] - spans[hit[0]][0])
            detected.add(hit[0])
        else:
            false += 1
    normal_s = max(0.0, stream.shape[0] / RATE - len(spans) * (FAULT_S + late_s))
    return {
        "faults": len(spans),
        "detected": len(detected),
        "recall": len(detected) / len(spans) if spans else None,
        "false_alarms": false,
        "normal_hours": round(normal_s / 3600, 4),
        "fa_per_day": round(false / normal_s * 86400, 1) if normal_s > 0 else None,
        "latency_median_s": round(float(np.median(latency)), 2) if latency else None,
        "latency_max_s": round(float(np.max(latency)), 2) if latency else None,
    }


def injected_recall(model: Path, normal: Sequence[Path], seed: int) -> dict[str, dict[str, float]]:
    """Per fault and severity, the share of test normal recordings with an injected fault on
    which the daemon's pipeline raises an event at the model's threshold."""
    detector = Detector(model)
    settings = MonitorConfig(name="inject", model=str(model))
    clean = [_mono(p) for p in normal]
    # a recording that raises an event as it is cannot show a caught fault: left out
    quiet = [x for x in clean if not score_samples(x, RATE, detector, settings)["events"]]
    out: dict[str, dict[str, float]] = {"_clean": {"alarmed": len(clean) - len(quiet)}}
    for fault in FAULTS:
        out[fault] = {}
        for sev in SEVERITIES:
            hits = 0
            for i, x in enumerate(quiet):
                y = inject(x, RATE, fault, sev, seed=seed * 1000 + i)
                hits += bool(score_samples(y, RATE, detector, settings)["events"])
            out[fault][str(sev)] = round(hits / len(quiet), 3) if quiet else float("nan")
    return out


def fit_kind(data: Path, out: Path, kind: str, seed: int, args: argparse.Namespace) -> dict:
    config = FitConfig(
        data=data, out=out, kind=kind, epochs=args.epochs, patience=args.patience, seed=seed,
        threads=args.threads, quiet=True, name=f"{data.name}-{kind}",
    )  # fmt: skip
    t0 = time.perf_counter()
    result = fit(config)
    m = result.metrics
    test = m.get("test") or {}
    return {
        "model": result.model_path,
        "fit_s": round(time.perf_counter() - t0, 2),
        "auc": test.get("auc"),
        "pauc": test.get("pauc"),
        "threshold": m["threshold"],
        "chosen": m.get("chosen"),
        "predicted_fa_per_day": m["calibration"].get("predicted_fa_per_day"),
        "bytes": result.model_path.stat().st_size,
    }


DEVICE = "device"
"""``--kinds device``: the kind learned on the device (``asd-edge learn``): the training
normal files heard one after another as one live stream, cut into pieces for the
cross-fitting, fitted by the daemon's own code (the workstation's ``auto`` treats each file
as a source instead)."""


def learn_device(
    train: Sequence[Path], normal: Sequence[Path], anomaly: Sequence[Path], out: Path, seed: int
) -> dict:
    """Learn as the device does, then score the test files: file score = mean window score."""
    from asd_edge.learning.calibration import CalibrationConfig
    from asd_edge.learning.fitting import fit_recordings
    from asd_edge.learning.recording import MIN_PIECE_S
    from asd_edge.learning.session import PIECES
    from asd_edge.learning.windows import Collector, features_for

    t0 = time.perf_counter()
    stream = np.concatenate([_mono(p) for p in train])
    features = features_for(RATE, 1.0, 64)
    c = Collector(features, 1.0, 0.5, piece_s=max(MIN_PIECE_S, stream.shape[0] / RATE / PIECES))
    c.begin("live")
    for at in range(0, stream.shape[0], RATE // 2):
        c.feed(stream[at : at + RATE // 2])
    learned = fit_recordings(
        c.recordings(), kind="auto", params={"n_mels": 64}, features=features, window_s=1.0,
        config=CalibrationConfig(hop_s=0.5), name="device", data_sha256="0" * 64,
        training={"source": "learn"}, pieces=True, seed=seed,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    model = out / "model.onnx"
    model.write_bytes(learned.onnx)
    detector = Detector(model)
    settings = MonitorConfig(name="device", model=str(model))

    def file_score(path: Path) -> float:
        windows = score_samples(_mono(path), RATE, detector, settings)["windows"]
        return float(np.mean([w["score"] for w in windows]))

    neg, pos = [file_score(p) for p in normal], [file_score(p) for p in anomaly]
    return {
        "model": model,
        "fit_s": round(time.perf_counter() - t0, 2),
        "auc": auc(neg, pos),
        "pauc": pauc(neg, pos),
        "threshold": learned.threshold,
        "chosen": learned.chosen.name,
        "predicted_fa_per_day": learned.calibration.get("predicted_fa_per_day"),
        "bytes": len(learned.onnx),
    }


def mixed(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    jobs = [(m, s) for m in args.machines for s in args.seeds]
    bar = tqdm(jobs, unit="split", file=sys.stderr, disable=args.quiet or not sys.stderr.isatty())
    for machine, seed in bar:
        normal, anomaly = recordings(args.data, machine)
        sha = {p: file_sha256(p) for p in (*normal, *anomaly)}
        assignment = split_files(normal, anomaly, machine, seed, supervised=False)
        folder = out / machine / f"split{seed}"
        write_split(folder, assignment, sha)
        test_n = [p for p, lab in assignment["test"] if lab == "normal"]
        test_a = [p for p, lab in assignment["test"] if lab == "anomaly"]
        train = [p for sp in ("train", "valid") for p, _ in assignment[sp]]
        base = {"machine": machine, "seed": seed}
        rows.append({**base, "kind": LOUDNESS, **loudness_auc(train, test_n, test_a)})
        stream, spans = make_stream(test_n, test_a, args.stream_minutes, seed)
        for kind in args.kinds:
            bar.set_description(f"{machine} split {seed} {kind}")
            try:
                run = out / machine / f"run{seed}_{kind}"
                if kind == DEVICE:
                    row = learn_device(train, test_n, test_a, run, seed)
                else:
                    row = fit_kind(folder, run, kind, seed, args)
            except (DataError, ExportError, ValueError, LearnError) as exc:
                rows.append({**base, "kind": kind, "error": str(exc)})
                continue
            model = row.pop("model")
            row["stream"] = stream_test(model, stream, spans)
            row["injected"] = injected_recall(model, test_n, seed)
            timing = time_detector(model, 300)["detector_score_features_and_onnx"]
            row["window_median_us"] = timing["median_us"]  # type: ignore[index]
            rows.append({**base, "kind": kind, **row})
    return rows


def _ids(files: Sequence[Path]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for p in files:
        m = re.search(r"id_(\d+)_", p.name)
        if m:
            out.setdefault(m.group(1), []).append(p)
    return out


def per_id(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    rows = []
    for machine in args.machines:
        normal, anomaly = recordings(args.data, machine)
        sha = {p: file_sha256(p) for p in (*normal, *anomaly)}
        by_n, by_a = _ids(normal), _ids(anomaly)
        for mid, files in sorted(by_n.items()):
            bad = by_a.get(mid, [])
            if len(files) < 2 or not bad:
                continue
            aucs: dict[str, list[float]] = {"auto": [], LOUDNESS: []}
            streams: list[dict[str, Any]] = []
            for hold in files:
                train = [p for p in files if p != hold]
                folder = out / "per_id" / machine / mid / hold.stem
                assignment = {
                    "train": [(p, "normal") for p in train],
                    "test": [(hold, "normal")] + [(p, "anomaly") for p in bad],
                }
                write_split(folder, assignment, sha)
                try:
                    row = fit_kind(folder, folder / "run", "auto", 0, args)
                except (DataError, ExportError, ValueError) as exc:
                    print(f"{machine} id {mid} {hold.name}: {exc}", file=sys.stderr)
                    continue
                aucs["auto"].append(float(row["auc"]))  # paired: the same held-out files
                aucs[LOUDNESS].append(float(loudness_auc(train, [hold], bad)["auc"]))
                seed = zlib.crc32(f"{machine}{mid}{hold.name}".encode())
                stream, spans = make_stream([hold], bad, args.stream_minutes, seed)
                streams.append(stream_test(row["model"], stream, spans))
            rows.append(
                {
                    "machine": machine, "id": mid, "normal": len(files), "anomaly": len(bad),
                    **{k: round(float(np.mean(v)), 3) if v else None for k, v in aucs.items()},
                    "stream": {
                        k: sum(st[k] for st in streams)
                        for k in ("faults", "detected", "false_alarms", "normal_hours")
                    },
                }
            )  # fmt: skip
    return rows


def _ms(values: list[float]) -> str:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return "n/a"
    return f"{v.mean():.3f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.3f}"


def tables(
    rows: list[dict[str, Any]], id_rows: list[dict[str, Any]], machines: Sequence[str]
) -> str:
    ok = [r for r in rows if "error" not in r]
    kinds = list(dict.fromkeys(r["kind"] for r in ok))
    out = ["File AUC / pAUC (mean ± std over splits):", ""]
    head = ["kind"] + [f"{m} AUC | {m} pAUC" for m in machines]
    out += ["| " + " | ".join(head) + " |", "|---" * (1 + 2 * len(machines)) + "|"]
    for kind in kinds:
        cells = [kind]
        for m in machines:
            mine = [r for r in ok if r["kind"] == kind and r["machine"] == m]
            cells.append(f"{_ms([r['auc'] for r in mine])} | {_ms([r['pauc'] for r in mine])}")
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Stream test (the model's own threshold; sums over splits):", "",
            "| kind | machine | faults detected | false alarms | normal audio h | FA/day | "
            "latency median s | latency max s |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind in kinds:
        for m in machines:
            mine = [
                r["stream"] for r in ok if r["kind"] == kind and r["machine"] == m and "stream" in r
            ]
            if not mine:
                continue
            f, d = sum(s["faults"] for s in mine), sum(s["detected"] for s in mine)
            fa, h = sum(s["false_alarms"] for s in mine), sum(s["normal_hours"] for s in mine)
            lat = [s["latency_median_s"] for s in mine if s["latency_median_s"] is not None]
            mx = [s["latency_max_s"] for s in mine if s["latency_max_s"] is not None]
            share = f"{d / f:.0%}" if f else "n/a"
            rate = f"{fa / h * 24:.0f}" if h > 0 else "n/a"
            out.append(
                f"| {kind} | {m} | {d}/{f} ({share}) | {fa} | {h:.2f} | {rate} | "
                f"{np.median(lat) if lat else 'n/a'} | {max(mx) if mx else 'n/a'} |"
            )
    out += ["", "Injected-fault recall on test normal recordings (mean over machines and splits):",
            "", "| kind | " + " | ".join(f"{f} {s}" for f in FAULTS for s in ("0.5", "1", "2"))
            + " | recordings left out (alarm as they are) |",
            "|---" * (2 + 3 * len(FAULTS)) + "|"]  # fmt: skip
    for kind in kinds:
        mine = [r["injected"] for r in ok if r["kind"] == kind and "injected" in r]
        if not mine:
            continue
        cells = [
            f"{np.nanmean([x[f][str(s)] for x in mine]):.2f}" for f in FAULTS for s in SEVERITIES
        ]
        cells.append(str(sum(x["_clean"]["alarmed"] for x in mine)))
        out.append(f"| {kind} | " + " | ".join(cells) + " |")
    if id_rows:
        out += ["", "Per machine id, leave one normal file out (AUC; stream test of auto on "
                "the held-out normal file cycled, with the id's anomalies):", "",
                "| machine | id | normal files | anomalies | auto AUC | loudness reference AUC "
                "| faults detected | false alarms | normal audio h |",
                "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in id_rows:
            st = r["stream"]
            out.append(
                f"| {r['machine']} | {r['id']} | {r['normal']} | {r['anomaly']} | "
                f"{r['auto']} | {r[LOUDNESS]} | {st['detected']}/{st['faults']} | "
                f"{st['false_alarms']} | {st['normal_hours']:.2f} |"
            )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_MACHINES, help="machines folder")
    parser.add_argument("--machines", nargs="+", default=list(MACHINES), help="machines")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), help="split seeds")
    parser.add_argument("--kinds", nargs="+", default=["auto", "dense_ae", "cnn_ae"],
                        help="kinds to fit (default: auto dense_ae cnn_ae; device: learned "
                             "as the device learns, from a live stream)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=50, help="most epochs (torch kinds)")
    parser.add_argument("--patience", type=int, default=8, help="early stopping (torch kinds)")
    parser.add_argument("--threads", type=int, default=2, help="torch/BLAS threads of a fit")
    parser.add_argument("--stream-minutes", type=float, default=10.0, help="stream length")
    parser.add_argument("--no-per-id", action="store_true", help="skip the per-id protocol")
    parser.add_argument("--only-per-id", action="store_true", help="only the per-id protocol")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"{args.data}: no such folder (the real recordings are not here)", file=sys.stderr)
        return 66
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="asd-real-") as tmp:
        out = args.out or Path(tmp)
        rows = [] if args.only_per_id else mixed(args, out)
        id_rows = [] if args.no_per_id else per_id(args, out)
    total_s = time.perf_counter() - started
    clean = [{k: v for k, v in r.items() if k != "model"} for r in rows]
    record(
        "real_data",
        {
            "data": str(args.data),
            "seeds": args.seeds,
            "kinds": args.kinds,
            "stream": {"minutes": args.stream_minutes, "fault_s": FAULT_S, "gap_s": GAP_S},
            "runs": clean,
            "per_id": id_rows,
            "total_s": round(total_s, 1),
        },
    )
    print()
    print(tables(rows, id_rows, args.machines))
    return report_failures(rows, total_s)


if __name__ == "__main__":
    sys.exit(main())
