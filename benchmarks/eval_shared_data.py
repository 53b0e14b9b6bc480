"""Every detector kind on the real machine recordings in ../shared/data: AUC, pAUC and cost.

    python benchmarks/eval_shared_data.py [--seeds 0 1 2] [--machines pump toycar toyconveyor]
        [--kinds dense_ae gmm ...] [--epochs 50] [--patience 8] [--out DIR] [--quiet]

Data: ``../shared/data/machines/<machine>/{normal,anomaly}/*.wav`` (MIMII pump, ToyADMOS
toy car and toy conveyor clips of 10-11 s, 16 kHz, published by other people). Nothing is
copied: each split gets a folder (under ``--out``, a temporary folder by default) holding
symbolic links ``normal/<name>`` and ``anomaly/<name>`` to the recordings and a
``manifest.csv`` that names them, which ``asd-train fit`` reads like any prepared dataset.

How the files are split (always by file, so the windows of one recording never land in two
splits; the same ``(seed, machine)`` gives the same split on every run):

- The normal files of a machine are sorted by name and permuted with
  ``numpy.random.default_rng([seed, crc32(machine)])``; the first
  ``max(2, round(0.25 n))`` go to test, the next ``max(1, round(0.15 n))`` to valid (early
  stopping and the threshold's calibration), the rest to train. With 13 / 8 / 6 normal
  files (pump / toycar / toyconveyor) that is train 8 / 5 / 3, valid 2 / 1 / 1 and test
  3 / 2 / 2 files.
- Unsupervised kinds (dense_ae, cnn_ae, lstm_ae, gmm, ocsvm): every anomalous file is in
  test (18 / 8 / 6), none is seen in training.
- The supervised kind (cnn_attention) needs anomalies to learn from: with the same normal
  split, the anomalous files, sorted and permuted with ``default_rng([seed,
  crc32(machine), 1])``, go ``round(n / 3)`` to train, 1 to valid (so that the validation
  loss of early stopping sees both classes) and the rest to test (train 6 / 3 / 2, valid
  1 / 1 / 1, test 11 / 4 / 3). Its numbers are reported apart: it has seen a third of the
  anomalies (often from the same machine and fault) and is tested on fewer of them, so it
  is not comparable with the unsupervised kinds.
- Seeds 0, 1 and 2 give three splits; each table cell is mean ± sample std over them.
  ``fit`` is run with the same seed as the split.

Per run: ``training.fit.fit`` with the kind's default hyper-parameters (``--epochs``,
``--patience`` early stopping on the valid loss; closed-form kinds ignore both), torch
and BLAS limited to ``--threads`` (2), one fit at a time. From its ``metrics.json``: AUC
and pAUC (DCASE: ``max_fpr`` 0.1) of the file score = mean of the window scores (and of
the max), scored through the daemon's pipeline at a 0.5 s hop. Also: the wall time of the
whole ``fit`` (windows, training, export with parity check, calibration, evaluation), the
ONNX file's size and the daemon's per-window scoring time of the exported model
(``bench_kinds.time_detector``: ``Detector.score`` on one 1 s window, one thread).

With 2-3 normal test files the pAUC is coarse (at FPR <= 0.1 only the top normal file
counts) and a single split moves AUC by tenths: read the std. The AUCs are seeded and
reproduce run to run; the times do not (shared machine). Appends one line to
``benchmarks/results/shared_data.jsonl`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
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
from tqdm import tqdm  # noqa: E402

from training.dataset import file_sha256, write_manifest  # noqa: E402
from training.errors import DataError, ExportError  # noqa: E402
from training.fit import FitConfig, fit  # noqa: E402
from training.kinds import KIND_NAMES, get_kind  # noqa: E402

SHARED_MACHINES = Path(__file__).resolve().parents[2] / "shared" / "data" / "machines"
MACHINES = ("pump", "toycar", "toyconveyor")
SEEDS = (0, 1, 2)
TEST_FRACTION = 0.25
"""Share of a machine's normal files held out for test (at least 2)."""
VALID_FRACTION = 0.15
"""Share of a machine's normal files for early stopping and calibration (at least 1)."""
SUPERVISED_TRAIN_ANOMALY_FRACTION = 1 / 3
"""Share of the anomalous files a supervised kind trains on (one more goes to valid)."""

LABELS = ("normal", "anomaly")
Assignment = dict[str, list[tuple[Path, str]]]
"""split -> [(recording, label)]"""


def recordings(root: Path, machine: str) -> tuple[list[Path], list[Path]]:
    """The normal and anomalous WAV files of ``machine``, sorted by name."""
    folder = root / machine
    normal = sorted((folder / "normal").glob("*.wav"))
    anomaly = sorted((folder / "anomaly").glob("*.wav"))
    if not normal or not anomaly:
        raise DataError(f"{folder}: expected normal/*.wav and anomaly/*.wav, found none")
    return normal, anomaly


def split_files(
    normal: Sequence[Path], anomaly: Sequence[Path], machine: str, seed: int, supervised: bool
) -> Assignment:
    """The files of each split, as this module's docstring describes."""
    key = zlib.crc32(machine.encode("utf-8"))
    order = np.random.default_rng([seed, key]).permutation(len(normal))
    shuffled = [normal[int(i)] for i in order]
    n_test = max(2, round(TEST_FRACTION * len(normal)))
    n_valid = max(1, round(VALID_FRACTION * len(normal)))
    if len(normal) < n_test + n_valid + 1:
        raise DataError(f"{machine}: {len(normal)} normal files cannot fill three splits")
    out: Assignment = {
        "test": [(p, "normal") for p in shuffled[:n_test]],
        "valid": [(p, "normal") for p in shuffled[n_test : n_test + n_valid]],
        "train": [(p, "normal") for p in shuffled[n_test + n_valid :]],
    }
    if not supervised:
        out["test"] += [(p, "anomaly") for p in anomaly]
        return out
    order = np.random.default_rng([seed, key, 1]).permutation(len(anomaly))
    bad = [anomaly[int(i)] for i in order]
    n_train = max(1, round(SUPERVISED_TRAIN_ANOMALY_FRACTION * len(bad)))
    out["train"] += [(p, "anomaly") for p in bad[:n_train]]
    out["valid"] += [(p, "anomaly") for p in bad[n_train : n_train + 1]]
    out["test"] += [(p, "anomaly") for p in bad[n_train + 1 :]]
    return out


def write_split(folder: Path, assignment: Assignment, sha: dict[Path, str]) -> Path:
    """A prepared dataset in ``folder``: symlinks to the recordings and a manifest."""
    rows = []
    for split, files in assignment.items():
        for path, label in files:
            rel = Path(label) / path.name
            link = folder / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
            rows.append([rel.as_posix(), label, split, path.name, sha[path]])
    return write_manifest(folder, rows)


def counts(assignment: Assignment) -> dict[str, dict[str, int]]:
    """Files per split and label."""
    return {
        split: {
            label: sum(1 for _, lab in files if lab == label) for label in ("normal", "anomaly")
        }
        for split, files in assignment.items()
    }


def run_one(
    data: Path, out: Path, kind: str, machine: str, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Fit one kind on one split, time the exported model; the table's row."""
    config = FitConfig(
        data=data, out=out, kind=kind, epochs=args.epochs, patience=args.patience, seed=seed,
        threads=args.threads, quiet=True, name=f"{machine}-{kind}-split{seed}",
    )  # fmt: skip
    t0 = time.perf_counter()
    try:
        result = fit(config)
    except (DataError, ExportError, ValueError) as exc:
        print(f"{machine} {kind} seed {seed}: fit failed: {exc}", file=sys.stderr)
        return {"machine": machine, "kind": kind, "seed": seed, "error": str(exc)}
    fit_s = time.perf_counter() - t0
    m = result.metrics
    test = m.get("test") or {}
    timing = time_detector(result.model_path, args.windows)
    per_window: dict[str, float] = timing["detector_score_features_and_onnx"]  # type: ignore[assignment]
    return {
        "machine": machine,
        "kind": kind,
        "seed": seed,
        "supervised": get_kind(kind).supervised,
        **{k: test.get(k) for k in ("auc", "pauc", "auc_max", "pauc_max")},
        **{k: test.get(k) for k in ("tp", "fp", "tn", "fn")},
        "test_files": test.get("files"),
        "threshold": m["threshold"],
        "fit_s": round(fit_s, 2),
        "epochs_run": m["training"]["epochs_run"],
        "best_epoch": m["training"]["best_epoch"],
        "train_windows": m["windows"]["train"],
        "bytes": result.model_path.stat().st_size,
        "window_median_us": per_window["median_us"],
        "window_p95_us": per_window["p95_us"],
    }


def _mean_std(values: list[float | None]) -> tuple[float, float] | None:
    got = np.array([v for v in values if v is not None], dtype=np.float64)
    if got.size == 0:
        return None
    return float(got.mean()), float(got.std(ddof=1)) if got.size > 1 else 0.0


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over the splits per kind and machine; per kind: cost and the mean AUC."""
    ok = [r for r in rows if "error" not in r]
    summary: dict[str, Any] = {}
    for kind in dict.fromkeys(r["kind"] for r in ok):
        mine = [r for r in ok if r["kind"] == kind]
        per_machine: dict[str, Any] = {}
        for machine in dict.fromkeys(r["machine"] for r in mine):
            cell = [r for r in mine if r["machine"] == machine]
            per_machine[machine] = {
                k: _mean_std([r[k] for r in cell]) for k in ("auc", "pauc", "auc_max", "pauc_max")
            } | {"splits": len(cell)}
        means = {
            k: float(np.mean([c[k][0] for c in per_machine.values() if c[k] is not None]))
            for k in ("auc", "pauc", "auc_max", "pauc_max")
        }
        summary[kind] = {
            "supervised": mine[0]["supervised"],
            "machines": per_machine,
            "mean_over_machines": means,
            "fit_s_mean": round(float(np.mean([r["fit_s"] for r in mine])), 2),
            "bytes_max": int(max(r["bytes"] for r in mine)),
            "window_median_us": round(float(np.median([r["window_median_us"] for r in mine])), 1),
        }
    return summary


def _cell(value: tuple[float, float] | None) -> str:
    return "n/a" if value is None else f"{value[0]:.3f} ± {value[1]:.3f}"


def markdown(summary: dict[str, Any], machines: Sequence[str], score: str = "") -> str:
    """One table: kind x machine AUC and pAUC (mean ± std), then cost columns."""
    head = ["kind"]
    for machine in machines:
        head += [f"{machine} AUC{score}", f"{machine} pAUC{score}"]
    head += ["mean AUC", "mean pAUC", "fit s", "size kB", "ms/window"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind, s in summary.items():
        name = f"{kind} (supervised, sees 1/3 of anomalies)" if s["supervised"] else kind
        row = [name]
        for machine in machines:
            c = s["machines"].get(machine, {})
            row += [_cell(c.get(f"auc{score}")), _cell(c.get(f"pauc{score}"))]
        means = s["mean_over_machines"]
        row += [
            f"{means['auc' + score]:.3f}",
            f"{means['pauc' + score]:.3f}",
            f"{s['fit_s_mean']:.1f}",
            f"{s['bytes_max'] / 1000:.0f}",
            f"{s['window_median_us'] / 1000:.2f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_MACHINES, help="machines folder")
    parser.add_argument("--machines", nargs="+", default=list(MACHINES), help="machines to use")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), help="split seeds")
    parser.add_argument("--kinds", nargs="+", default=list(KIND_NAMES), help="kinds to fit")
    parser.add_argument("--epochs", type=int, default=50, help="most epochs (default: 50)")
    parser.add_argument("--patience", type=int, default=8, help="early stopping (default: 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch/BLAS threads of a fit")
    parser.add_argument("--windows", type=int, default=500, help="timed windows per model")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args()
    for kind in args.kinds:
        get_kind(kind)  # ValueError naming an unknown kind before anything runs
    if not args.data.is_dir():
        print(f"{args.data}: no such folder (the real recordings are not here)", file=sys.stderr)
        return 66
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="asd-shared-eval-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        files = {m: recordings(args.data, m) for m in args.machines}
        sha = {p: file_sha256(p) for n, a in files.values() for p in (*n, *a)}
        jobs = [(m, s, k) for m in args.machines for s in args.seeds for k in args.kinds]
        splits: dict[str, Any] = {}
        rows: list[dict[str, Any]] = []
        bar = tqdm(jobs, unit="fit", file=sys.stderr, disable=args.quiet or not sys.stderr.isatty())
        for machine, seed, kind in bar:
            bar.set_description(f"{machine} {kind} split {seed}")
            supervised = get_kind(kind).supervised
            variant = "supervised" if supervised else "unsupervised"
            folder = out / machine / f"split{seed}_{variant}"
            assignment = split_files(*files[machine], machine, seed, supervised)
            if not (folder / "manifest.csv").exists():
                write_split(folder, assignment, sha)
            entry = splits.setdefault(machine, {}).setdefault(variant, {})
            entry[str(seed)] = {
                "counts": counts(assignment),
                "files": {sp: sorted(p.name for p, _ in fs) for sp, fs in assignment.items()},
            }
            rows.append(
                run_one(folder, out / machine / f"run{seed}_{kind}", kind, machine, seed, args)
            )
        total_s = time.perf_counter() - started
    summary = summarise(rows)
    results = {
        "data": str(args.data),
        "split": "by file; see the docstring of benchmarks/eval_shared_data.py",
        "fractions": {
            "test": TEST_FRACTION,
            "valid": VALID_FRACTION,
            "supervised_train_anomaly": SUPERVISED_TRAIN_ANOMALY_FRACTION,
        },
        "settings": {
            "epochs": args.epochs,
            "patience": args.patience,
            "threads": args.threads,
            "timed_windows": args.windows,
            "hop_s": 0.5,
            "window_s": 1.0,
            "max_fpr": 0.1,
        },
        "seeds": args.seeds,
        "splits": splits,
        "runs": rows,
        "summary": summary,
        "total_s": round(total_s, 1),
    }
    record("shared_data", results)
    print()
    print("File score = mean of the window scores (DCASE); mean ± std over the splits:\n")
    print(markdown(summary, args.machines))
    print("\nFile score = max of the window scores:\n")
    print(markdown(summary, args.machines, score="_max"))
    print("\nFiles per split (normal/anomaly), every seed:")
    for machine, variants in splits.items():
        for variant, by_seed in variants.items():
            c = next(iter(by_seed.values()))["counts"]
            text = ", ".join(f"{sp} {c[sp]['normal']}/{c[sp]['anomaly']}" for sp in c)
            print(f"- {machine} ({variant}): {text}")
    return report_failures(rows, total_s)


def report_failures(rows: list[dict[str, Any]], total_s: float) -> int:
    """Print the runs that failed and the total time; the exit code (1 if any failed)."""
    failed = [r for r in rows if "error" in r]
    for r in failed:
        print(f"FAILED {r['machine']} {r['kind']} split {r['seed']}: {r['error']}")
    print(f"\ntotal {total_s / 60:.1f} min")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
