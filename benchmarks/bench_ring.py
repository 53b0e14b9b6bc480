"""Cost of the sample ring on the audio path: one callback's write and a 1 s read.

    python benchmarks/bench_ring.py [--iterations N]

Measures, each call timed on its own with ``time.perf_counter_ns``:

- ``write`` of a 320-sample block (a 20 ms PortAudio block at 16 kHz), which the
  audio callback does once per block;
- ``latest(16000)`` (the last second at 16 kHz), allocating its result and with a
  preallocated ``out=`` buffer;
- an empty call, timed the same way: the floor (timer plus Python call) under
  every number above.

The ring holds 60 s at 16 kHz (the default ``input.ring_s``) and is full, so writes
and reads wrap around its end as in the daemon. The garbage collector stays on, as
in the daemon. Prints the machine and the date and appends one JSON line to
benchmarks/results/ring.jsonl. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import record, stats_us

from asd_edge.ring import RingBuffer

SAMPLE_RATE_HZ = 16_000
BLOCK_SAMPLES = 320  # 20 ms at 16 kHz
READ_SAMPLES = 16_000  # 1 s at 16 kHz
RING_S = 60
WARMUP = 1_000


def time_calls(call: Callable[[int], object], iterations: int) -> list[int]:
    """Run ``call(i)`` ``WARMUP`` times untimed, then ``iterations`` times, each timed."""
    for i in range(WARMUP):
        call(i)
    durations = []
    for i in range(iterations):
        t0 = time.perf_counter_ns()
        call(i)
        durations.append(time.perf_counter_ns() - t0)
    return durations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--iterations", type=int, default=20_000, help="timed calls per case (default 20000)"
    )
    args = parser.parse_args()

    ring = RingBuffer(RING_S * SAMPLE_RATE_HZ)
    rng = np.random.default_rng(0)
    blocks = (0.05 * rng.standard_normal((64, BLOCK_SAMPLES))).astype(np.float32)
    while ring.written < ring.capacity:  # start full, as after the first minute
        ring.write(blocks[(ring.written // BLOCK_SAMPLES) % len(blocks)])
    out = np.empty(READ_SAMPLES, dtype=np.float32)

    def empty_call(_: int) -> None:
        pass

    def write_block(i: int) -> None:
        ring.write(blocks[i % len(blocks)])

    def latest_second(_: int) -> None:
        ring.latest(READ_SAMPLES)

    def latest_second_into_out(_: int) -> None:
        ring.latest(READ_SAMPLES, out=out)

    results = {
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "ring_capacity_samples": ring.capacity,
        "iterations": args.iterations,
        "empty_call": stats_us(time_calls(empty_call, args.iterations)),
        f"write_{BLOCK_SAMPLES}": stats_us(time_calls(write_block, args.iterations)),
        f"latest_{READ_SAMPLES}": stats_us(time_calls(latest_second, args.iterations)),
        f"latest_{READ_SAMPLES}_out": stats_us(time_calls(latest_second_into_out, args.iterations)),
    }
    assert (ring.overruns, ring.lost_samples) == (0, 0), "the benchmark itself overran the ring"

    print(f"{'case':<24}{'median µs':>11}{'p95 µs':>10}{'p99 µs':>10}{'max µs':>10}")
    for case, value in results.items():
        if isinstance(value, dict):
            print(
                f"{case:<24}{value['median_us']:>11}{value['p95_us']:>10}"
                f"{value['p99_us']:>10}{value['max_us']:>10}"
            )
    path = record("ring", results)  # prints the machine, the date and the results
    print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
