"""Per-window scoring time of every detector kind, exported and run by the daemon's Detector.

    python benchmarks/bench_kinds.py [--windows N] [--kinds dense_ae gmm ...] [--int8]

For each kind whose module exists, trains a small model on synthetic machine sound
with ``asd-train``'s own ``fit`` (a few epochs: the weights' values do not change
the cost), then times ``Detector.score`` on one 1 s window (features + onnxruntime,
one thread, as the daemon runs it) and the onnxruntime session alone. Appends to
benchmarks/results/kinds.jsonl. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asd_edge.runtime import pin_math_threads

pin_math_threads()  # as the asd-edge command does, before numpy loads

import numpy as np  # noqa: E402
from common import record, stats_us  # noqa: E402

from asd_edge.detector import Detector  # noqa: E402
from training.fit import FitConfig, fit  # noqa: E402
from training.kinds import KIND_NAMES, get_kind  # noqa: E402
from training.synth import write_labelled_dataset  # noqa: E402


def labelled_data(root: Path) -> Path:
    """A small manifest dataset with labelled anomalies in every split (any kind trains)."""
    plan = [
        (split, label, n)
        for split, n in (("train", 6), ("valid", 2), ("test", 2))
        for label in ("normal", "anomaly")
    ]
    return write_labelled_dataset(root, plan)


def time_detector(path: Path, n: int) -> dict[str, object]:
    detector = Detector(path, threads=1)
    rng = np.random.default_rng(0)
    windows = (0.05 * rng.standard_normal((8, detector.spec.window_samples))).astype(np.float32)
    inputs = detector.model_input(windows)
    session = detector._session
    name = session.get_inputs()[0].name
    for i in range(50):  # warm-up
        detector.score(windows[i % 8 : i % 8 + 1])
    full, onnx_only = [], []
    for i in range(n):
        w = windows[i % 8 : i % 8 + 1]
        t0 = time.perf_counter_ns()
        detector.score(w)
        t1 = time.perf_counter_ns()
        session.run(["score"], {name: inputs[i % 8 : i % 8 + 1]})
        t2 = time.perf_counter_ns()
        full.append(t1 - t0)
        onnx_only.append(t2 - t1)
    return {
        "bytes": path.stat().st_size,
        "input": detector.spec.input,
        "detector_score_features_and_onnx": stats_us(full),
        "onnx_only": stats_us(onnx_only),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=2000, help="timed windows per kind")
    parser.add_argument("--kinds", nargs="*", default=list(KIND_NAMES), help="kinds to time")
    parser.add_argument("--int8", action="store_true", help="also time model.int8.onnx")
    args = parser.parse_args()
    results: dict[str, object] = {"window_s": 1.0, "sample_rate": 16000, "threads": 1}
    with tempfile.TemporaryDirectory() as tmp:
        data = labelled_data(Path(tmp))
        for kind in args.kinds:
            if importlib.util.find_spec(f"training.kinds.{kind}") is None:
                print(f"{kind}: not implemented, skipped", file=sys.stderr)
                continue
            run = Path(tmp) / f"run_{kind}"
            fit(
                FitConfig(
                    data=data / "manifest.csv", out=run, kind=kind, epochs=2, quiet=True,
                    threads=1, quantize=args.int8, calibration="quantile",
                )
            )  # fmt: skip
            results[kind] = {"description": get_kind(kind).description}
            results[kind] |= time_detector(run / "model.onnx", args.windows)  # type: ignore[operator]
            if args.int8 and (run / "model.int8.onnx").exists():
                results[f"{kind}_int8"] = time_detector(run / "model.int8.onnx", args.windows)
    record("kinds", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
