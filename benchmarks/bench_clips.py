"""Cost of clips: the worker's write, the tick's cut, and the tick while a clip is written.

    python benchmarks/bench_clips.py [--dir DIR] [--repeat N] [--ticks N]

Measures, on real files in ``--dir`` (default: a temporary directory under /var/tmp,
a disk rather than tmpfs):

- ``write``: submit to ``on_done`` of one clip (16-bit encode, SHA-256, spectrogram
  PNG, sidecar, three fsynced renames, retention) by the worker, for short and
  longest clips at 16 and 48 kHz, WAV and FLAC, with and without the picture;
- ``cut``: the recorder's share of the tick for 58 s clips at 48 kHz: ``start``
  (copies the pre-roll out of the ring), ``poll`` each 0.5 s hop while the clip is
  open (copies that hop), and the ``poll`` that cuts the clip and queues it;
- ``tick``: ``Monitor.tick`` (48 kHz capture, shipped level model, one hop of new
  audio, 5 ms pause between ticks) idle, and while the worker writes 58 s 48 kHz
  clips with pictures back to back: the worker shares the GIL and the CPU with
  the tick (it runs niced, ``clipstore.WORKER_NICE``).

Appends one JSON line to benchmarks/results/clips.jsonl. Run it on an otherwise
idle machine.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from asd_edge.runtime import pin_math_threads

pin_math_threads()  # as the asd-edge command does, before numpy loads

import numpy as np  # noqa: E402
import structlog  # noqa: E402
from common import record, stats_us  # noqa: E402

from asd_edge.clips import (  # noqa: E402
    ClipRecorder,
    ClipRequest,
    ClipResult,
    ClipStore,
)
from asd_edge.config import ClipsConfig  # noqa: E402
from asd_edge.decision import DecisionPolicy, Event  # noqa: E402
from asd_edge.detector import Detector  # noqa: E402
from asd_edge.monitor import Monitor  # noqa: E402
from asd_edge.ring import RingBuffer  # noqa: E402

MODEL = Path(__file__).resolve().parent.parent / "models" / "level.onnx"
BASE = ClipsConfig(max_clip_s=58.0, max_total_mb=2000.0, min_free_mb=0.0, max_age_days=None)


def noise(seconds: float, rate: int) -> np.ndarray:
    return (0.05 * np.random.default_rng(0).standard_normal(round(seconds * rate))).astype(
        np.float32
    )


def request(store: ClipStore, alert_id: str, samples: np.ndarray, rate: int) -> ClipRequest:
    started = datetime.now(UTC)
    duration_s = samples.shape[0] / rate
    return ClipRequest(
        alert_id=alert_id,
        monitor="bench",
        device_id="bench",
        samples=samples,
        sample_rate=rate,
        started_at=started,
        stream_start_s=0.0,
        pre_s=5.0,
        event={},
        model={},
        scores=[(t, 1.0) for t in np.arange(1.0, duration_s, 0.5)],
        path=store.planned_path("bench", alert_id, started),
        markers_s=(5.0, duration_s - 5.0),
    )


class Waiter:
    """on_done that lets the benchmark wait for each clip."""

    def __init__(self) -> None:
        self.done = threading.Semaphore(0)
        self.errors: list[str] = []

    def __call__(self, result: ClipResult) -> None:
        if result.error:
            self.errors.append(result.error)
        self.done.release()


def bench_write(directory: Path, repeat: int) -> dict[str, dict[str, float]]:
    results = {}
    cases = [
        (16000, 10.0, "wav", True),
        (16000, 58.0, "wav", True),
        (48000, 10.0, "wav", True),
        (48000, 58.0, "wav", True),
        (48000, 58.0, "wav", False),
        (48000, 58.0, "flac", True),
    ]
    for rate, seconds, fmt, picture in cases:
        waiter = Waiter()
        cfg = replace(BASE, format=fmt, spectrogram=picture)  # type: ignore[arg-type]
        store = ClipStore(directory / f"{rate}_{seconds}_{fmt}_{picture}", cfg, on_done=waiter)
        store.start()
        samples = noise(seconds, rate)
        durations = []
        for i in range(repeat):
            t0 = time.perf_counter_ns()
            store.submit(request(store, f"w{i}", samples, rate))
            waiter.done.acquire()
            durations.append(time.perf_counter_ns() - t0)
        store.stop()
        assert not waiter.errors, waiter.errors
        name = f"{rate // 1000}k_{seconds:g}s_{fmt}{'_png' if picture else ''}"
        results[name] = {k: round(v / 1000, 1) for k, v in stats_us(durations).items()} | {
            "n": repeat
        }
        results[name] = {k.replace("_us", "_ms"): v for k, v in results[name].items()}
    return results


def bench_cut(directory: Path, repeat: int) -> dict[str, dict[str, float]]:
    """The recorder's share of the tick for 58 s clips at 48 kHz: ``start`` (copies the
    pre-roll), ``poll`` every 0.5 s hop while a clip is open (copies the new hop), and
    the ``poll`` that cuts the clip and queues it."""
    rate, hop = 48000, 24000
    ring = RingBuffer(60 * rate)
    block = noise(0.5, rate)
    for _ in range(20):
        ring.write(block)
    # The store is not started, so only the tick side is timed; its queue of one refuses
    # all clips but the first, which frees their memory as the worker's writes would.
    store = ClipStore(directory / "cut", replace(BASE, queue=1), on_done=lambda _r: None)
    recorder = ClipRecorder(store, BASE, device_id="bench")
    starts, polls, cuts = [], [], []
    for i in range(repeat):
        now_s = ring.written / rate
        event = Event("start", now_s, now_s - 0.5, now_s, 2.0, 2.0, 1.0)
        t0 = time.perf_counter_ns()
        recorder.start(
            alert_id=f"c{i}",
            monitor="bench",
            event=event,
            ring=ring,
            sample_rate=rate,
            window_s=1.0,
            model={},
        )
        starts.append(time.perf_counter_ns() - t0)
        while True:  # the event goes on: the clip is cut at max_clip_s
            ring.write(block)
            t0 = time.perf_counter_ns()
            recorder.poll()
            elapsed = time.perf_counter_ns() - t0
            if recorder.pending == 0:
                cuts.append(elapsed)
                break
            polls.append(elapsed)
    assert ring.written > hop
    return {"start": stats_us(starts), "poll_open": stats_us(polls), "poll_cut": stats_us(cuts)}


def tick_durations(monitor: Monitor, ring: RingBuffer, audio: np.ndarray, ticks: int) -> list[int]:
    hop = ring.capacity // 120  # 0.5 s of a 60 s ring
    durations = []
    for i in range(ticks):
        ring.write(audio[(i % 8) * hop : (i % 8 + 1) * hop])
        t0 = time.perf_counter_ns()
        monitor.tick()
        durations.append(time.perf_counter_ns() - t0)
        time.sleep(0.005)  # leave the worker room to run between ticks, as the daemon does
    return durations


def bench_tick_during_write(directory: Path, ticks: int) -> dict[str, object]:
    rate = 48000
    detector = Detector(MODEL, threads=1)
    ring = RingBuffer(60 * rate)
    monitor = Monitor("bench", detector, DecisionPolicy(detector.threshold), ring, rate, 0.5)
    audio = noise(4.0, rate)
    tick_durations(monitor, ring, audio, 20)  # warm up
    idle = tick_durations(monitor, ring, audio, ticks)

    waiter = Waiter()
    store = ClipStore(directory / "busy", BASE, on_done=waiter)
    store.start()
    samples = noise(58.0, rate)
    stop = threading.Event()
    written = [0]

    def feeder() -> None:
        i = 0
        while not stop.is_set():
            store.submit(request(store, f"b{i}", samples, rate))
            waiter.done.acquire()
            written[0] += 1
            i += 1

    thread = threading.Thread(target=feeder)
    thread.start()
    busy = tick_durations(monitor, ring, audio, ticks)
    stop.set()
    thread.join()
    store.stop()
    return {"idle": stats_us(idle), "while_writing": stats_us(busy), "clips_written": written[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: /var/tmp)")
    parser.add_argument("--repeat", type=int, default=5, help="clips per write case (default 5)")
    parser.add_argument(
        "--ticks", type=int, default=1000, help="ticks per tick case (default 1000)"
    )
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    with tempfile.TemporaryDirectory(dir=args.dir or "/var/tmp", prefix="bench-clips-") as tmp:
        directory = Path(tmp)
        results = {
            "write_ms": bench_write(directory, args.repeat),
            "cut_48k_58s": bench_cut(directory, 20),
            "tick_48k": bench_tick_during_write(directory, args.ticks),
        }
    path = record("clips", results)
    print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
