"""Per-tick cost of one monitor: resampling, features, ONNX detector and decision.

    python benchmarks/bench_tick.py [--ticks N]

Measures ``Monitor.tick`` with one hop (0.5 s) of new audio and a 1 s window, as
the daemon runs it (one BLAS thread, as ``asd-edge`` pins it), for the shipped
level model at 16 kHz, and with 48 kHz capture (the resampling path); also the
features and the detector alone. Appends to benchmarks/results/tick.jsonl. Run it
on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asd_edge.runtime import pin_math_threads

pin_math_threads()  # as the asd-edge command does, before numpy loads

import numpy as np  # noqa: E402
from common import record, stats_us  # noqa: E402

from asd_edge.decision import DecisionPolicy  # noqa: E402
from asd_edge.detector import Detector  # noqa: E402
from asd_edge.features import LogMel  # noqa: E402
from asd_edge.monitor import Monitor  # noqa: E402
from asd_edge.ring import RingBuffer  # noqa: E402

MODEL = Path(__file__).resolve().parent.parent / "models" / "level.onnx"


def bench_monitor(detector: Detector, capture_rate: int, ticks: int) -> dict[str, float]:
    ring = RingBuffer(60 * capture_rate)
    monitor = Monitor(
        "bench", detector, DecisionPolicy(detector.threshold), ring, capture_rate, 0.5
    )
    hop = capture_rate // 2
    audio = (0.05 * np.random.default_rng(0).standard_normal(hop * 8)).astype(np.float32)
    for i in range(4):  # fill the first window
        ring.write(audio[i * hop : (i + 1) * hop])
        monitor.tick()
    durations = []
    for i in range(ticks):
        ring.write(audio[(i % 8) * hop : (i % 8 + 1) * hop])
        t0 = time.perf_counter_ns()
        result = monitor.tick()
        durations.append(time.perf_counter_ns() - t0)
        assert len(result.scores) == 1
    return stats_us(durations)


def bench_parts(detector: Detector, n: int) -> dict[str, dict[str, float]]:
    spec = detector.spec
    assert spec.features is not None
    logmel = LogMel(spec.features)
    window = (0.05 * np.random.default_rng(1).standard_normal((1, spec.window_samples))).astype(
        np.float32
    )
    feats, full = [], []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        logmel(window)
        t1 = time.perf_counter_ns()
        detector.score(window)
        t2 = time.perf_counter_ns()
        feats.append(t1 - t0)
        full.append(t2 - t1)
    return {"features_only": stats_us(feats), "detector_score_features_and_onnx": stats_us(full)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=3000, help="ticks per case (default 3000)")
    parser.add_argument("--model", type=Path, default=MODEL, help="model (default: level.onnx)")
    args = parser.parse_args()
    detector = Detector(args.model, threads=1)
    results = {
        "model": str(args.model.name),
        "window_s": detector.spec.window_s,
        "hop_s": 0.5,
        "threads": 1,
        **bench_parts(detector, args.ticks),
        "monitor_tick_16k_capture": bench_monitor(detector, 16000, args.ticks),
        "monitor_tick_48k_capture": bench_monitor(detector, 48000, args.ticks),
    }
    record("tick", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
