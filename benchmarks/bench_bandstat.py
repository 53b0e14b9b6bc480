"""The bandstat kind's cost: fit time per minute of normal audio, scoring time per window.

    python benchmarks/bench_bandstat.py [--minutes 1 10 60] [--windows 1000]

Normal audio of the synthetic machine (``training.synth``, 10 s files). Two fit times:
``fit_s``, the fit of ``asd-train fit --model auto`` in this process (every scorer
cross-fitted, the choice, the final fit, export with parity; one thread, no test split);
``command_s``, the command as a user runs it, ``asd-train fit --data D --out R`` in a new
process with an empty HOME: its imports (torch, scikit-learn, matplotlib and the font
cache matplotlib builds on its first run), the same fit on all cores, then the evaluation
of a test split (2 normal and 2 anomalous files) with its plots. Then every scorer's model
is timed through the daemon's ``Detector.score`` on one 1 s window at a time (log-mel +
ONNX, one thread), and the ONNX graph alone. Appends to ``results/bandstat.jsonl``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asd_edge.runtime import pin_math_threads

pin_math_threads()

import numpy as np  # noqa: E402
from common import record, stats_us  # noqa: E402

from asd_edge.detector import Detector  # noqa: E402
from training.fit import FitConfig, fit  # noqa: E402
from training.synth import write_labelled_dataset  # noqa: E402


def fit_time(minutes: float, root: Path, params: dict[str, str] | None = None) -> dict:
    files = max(2, round(minutes * 6))
    data = write_labelled_dataset(root / f"d{minutes}", [("train", "normal", files)],
                                  duration_s=10.0, seed=1)  # fmt: skip
    t0 = time.perf_counter()
    result = fit(FitConfig(data=data, out=root / f"r{minutes}", kind="auto", quiet=True,
                           threads=1, params=params or {}))  # fmt: skip
    seconds = time.perf_counter() - t0
    return {
        "minutes": minutes,
        "fit_s": round(seconds, 2),
        "fit_s_per_minute": round(seconds / minutes, 2),
        "chosen": result.metrics["chosen"],
        "bytes": result.model_path.stat().st_size,
        "model": str(result.model_path),
    }


def command_time(minutes: float, root: Path) -> dict:
    """``asd-train fit`` on ``minutes`` of normal audio and a small test split, timed from
    the shell: a new process with an empty HOME, as on a fresh machine."""
    files = max(2, round(minutes * 6))
    plan = [("train", "normal", files), ("test", "normal", 2), ("test", "anomaly", 2)]
    data = write_labelled_dataset(root / f"c{minutes}", plan, duration_s=10.0, seed=1)
    home = root / f"home{minutes}"
    home.mkdir()
    command = [str(Path(sys.executable).with_name("asd-train")), "fit", "--data", str(data),
               "--out", str(root / f"cr{minutes}"), "--quiet"]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "HOME": str(home)})
    return {"minutes": minutes, "command_s": round(time.perf_counter() - t0, 2)}


def score_time(model: Path, n: int) -> dict:
    det = Detector(model, threads=1)
    rng = np.random.default_rng(0)
    window = (0.05 * rng.standard_normal(det.spec.window_samples)).astype(np.float32)
    x = det.model_input(window[None, :])
    for _ in range(50):
        det.score(window[None, :])
    full, graph = [], []
    session = det._session  # the graph alone: the same session the daemon runs
    for _ in range(n):
        t0 = time.perf_counter_ns()
        det.score(window[None, :])
        full.append(time.perf_counter_ns() - t0)
        t0 = time.perf_counter_ns()
        session.run(["score", "bands"], {"logmel": x})
        graph.append(time.perf_counter_ns() - t0)
    return {"detector_score": stats_us(full), "graph_only": stats_us(graph)}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", nargs="+", type=float, default=[1.0, 10.0, 60.0])
    parser.add_argument("--windows", type=int, default=1000, help="timed windows per model")
    args = parser.parse_args()
    results: dict = {"fit": [], "command": [], "score": {}}
    with tempfile.TemporaryDirectory(prefix="asd-bandstat-") as tmp:
        root = Path(tmp)
        for minutes in args.minutes:
            row = fit_time(minutes, root)
            print(f"fit auto on {minutes:g} min: {row['fit_s']} s ({row['chosen']}, "
                  f"{row['bytes'] / 1000:.0f} kB)", flush=True)  # fmt: skip
            row.pop("model")
            results["fit"].append(row)
        for minutes in args.minutes:
            row = command_time(minutes, root)
            print(f"asd-train fit on {minutes:g} min: {row['command_s']} s", flush=True)
            results["command"].append(row)
        for scorer in ("topk", "knn", "knn_topk", "maha"):
            data = write_labelled_dataset(root / f"s{scorer}", [("train", "normal", 60)],
                                          duration_s=10.0, seed=2)  # fmt: skip
            out = root / f"m{scorer}"
            fit(FitConfig(data=data, out=out, kind="bandstat", quiet=True, threads=1,
                          params={"scorer": scorer}))  # fmt: skip
            timing = score_time(out / "model.onnx", args.windows)
            timing["bytes"] = (out / "model.onnx").stat().st_size
            results["score"][scorer] = timing
            d, g = timing["detector_score"], timing["graph_only"]
            print(f"{scorer:9s} Detector.score median {d['median_us']:.0f} us, p99 "
                  f"{d['p99_us']:.0f} us; graph alone median {g['median_us']:.0f} us; "
                  f"{timing['bytes'] / 1000:.0f} kB", flush=True)  # fmt: skip
    record("bandstat", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
