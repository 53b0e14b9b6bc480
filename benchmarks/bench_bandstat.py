"""The bandstat kind's cost: fit time per minute of normal audio, scoring time per window.

    python benchmarks/bench_bandstat.py [--minutes 1 10 60] [--windows 1000]

Normal audio of the synthetic machine (``training.synth``, 10 s files); ``asd-train fit
--model auto`` (every scorer cross-fitted, the choice, the final fit, export with parity)
timed end to end, without evaluation (no test split). Then every scorer's model is timed
through the daemon's ``Detector.score`` on one 1 s window at a time (log-mel + ONNX, one
thread), and the ONNX graph alone. Appends to ``results/bandstat.jsonl``.
"""

from __future__ import annotations

import argparse
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
    results: dict = {"fit": [], "score": {}}
    with tempfile.TemporaryDirectory(prefix="asd-bandstat-") as tmp:
        root = Path(tmp)
        for minutes in args.minutes:
            row = fit_time(minutes, root)
            print(f"fit auto on {minutes:g} min: {row['fit_s']} s ({row['chosen']}, "
                  f"{row['bytes'] / 1000:.0f} kB)", flush=True)  # fmt: skip
            row.pop("model")
            results["fit"].append(row)
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
