"""The cost of the live feed (``cmd/live``): the daemon's CPU with and without a watcher,
and the cost of one frame.

    python benchmarks/bench_live.py daemon --rounds 3 --segment-s 60
    python benchmarks/bench_live.py frame --n 5000

``daemon``: ``asd-edge run`` on the virtual microphone (16 kHz, the level model, a real
broker) hearing machine-like hum; CPU time from /proc/<pid>/stat (percent of one core)
over alternating segments without and with a watcher, which renews a 30 s lease every
10 s as the dashboard does and counts the frames (budget: watched adds at most 0.5 %).

``frame``: ``LiveFeed.frame`` (ring read, 64-band spectrum of 0.25 s, payload) plus its
JSON encoding, at 16 and 48 kHz: median, p95, p99 in microseconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_alerts import DEVICE, RATE, hum, proc_figures, start_daemon  # noqa: E402
from common import record, stats_us  # noqa: E402

from asd_edge.audiofile import write_wav  # noqa: E402
from asd_edge.live import LiveFeed  # noqa: E402
from asd_edge.mqtt import encode_json  # noqa: E402
from asd_edge.ring import RingBuffer  # noqa: E402
from asd_edge.telemetry import MonitorState  # noqa: E402
from devkit.broker import Broker, wait_until  # noqa: E402
from devkit.vmic import virtual_mic  # noqa: E402

PREFIX = f"asd/{DEVICE}"
RENEW_S = 10.0
"""How often the watcher renews its lease (the dashboard's rhythm)."""


def cpu_percent(pid: int, seconds: float) -> float:
    first = proc_figures(pid)
    time.sleep(seconds)
    last = proc_figures(pid)
    return 100.0 * (last["cpu_s"] - first["cpu_s"]) / (last["at"] - first["at"])


def daemon(rounds: int, segment_s: float, seed: int) -> dict[str, Any]:
    seconds = rounds * 2 * segment_s + 40.0
    with tempfile.TemporaryDirectory(prefix="asd-bench-") as tmp, virtual_mic() as mic:
        root = Path(tmp)
        broker = Broker(root / "broker")
        broker.start()
        try:
            wav = root / "hum.wav"
            write_wav(wav, hum(seconds, seed), RATE)
            sub = broker.subscriber(f"{PREFIX}/live/#")
            proc = start_daemon(root, broker, mic)
            idle: list[float] = []
            watched: list[float] = []
            frames = 0
            try:
                proc.wait_for("daemon_started", 30)
                wait_until(lambda: proc.events("mqtt_connected"), 10, "connected")
                player = mic.play(wav, wait=False)
                time.sleep(10.0)  # start-up is not steady state
                for _ in range(rounds):
                    idle.append(cpu_percent(proc.pid, segment_s))
                    stop = threading.Event()
                    watcher = threading.Thread(target=watch, args=(broker, stop), daemon=True)
                    before = len(sub.on(f"{PREFIX}/live/main"))
                    watcher.start()
                    time.sleep(1.0)  # the lease has started
                    watched.append(cpu_percent(proc.pid, segment_s))
                    frames += len(sub.on(f"{PREFIX}/live/main")) - before
                    stop.set()
                    watcher.join()
                    time.sleep(31.0)  # the last lease runs out
                player.kill()
            finally:
                proc.stop()
        finally:
            broker.close()
    return {
        "rate_hz": RATE,
        "segment_s": segment_s,
        "rounds": rounds,
        "idle_cpu_percent": [round(v, 3) for v in idle],
        "watched_cpu_percent": [round(v, 3) for v in watched],
        "idle_cpu_percent_mean": round(float(np.mean(idle)), 3),
        "watched_cpu_percent_mean": round(float(np.mean(watched)), 3),
        "added_cpu_percent": round(float(np.mean(watched) - np.mean(idle)), 3),
        "frames_per_s": round(frames / (rounds * (segment_s + 1.0)), 2),
    }


def watch(broker: Broker, stop: threading.Event) -> None:
    """The dashboard's side: a 30 s lease renewed every RENEW_S while the page is open."""
    while not stop.is_set():
        broker.publish(f"{PREFIX}/cmd/live", json.dumps({"seconds": 30}))
        stop.wait(RENEW_S)


class Source:
    def __init__(self, rate: int) -> None:
        self.sample_rate = rate
        self._ring = RingBuffer(rate * 10)
        self._ring.write(np.random.default_rng(0).standard_normal(rate * 10).astype(np.float32))

    def ring(self, channel: int) -> RingBuffer:
        return self._ring


def frame(n: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for rate in (16000, 48000):
        source = Source(rate)
        state = MonitorState(name="main", channel=0, model={}, threshold=3.0, reference=1.0)
        state.scored(2.5)
        live = LiveFeed()
        live.frame(state, source, time.time())  # the band matrix, once per rate
        durations = []
        for _ in range(n):
            start = time.perf_counter_ns()
            encode_json(live.frame(state, source, time.time()))
            durations.append(time.perf_counter_ns() - start)
        body = encode_json(live.frame(state, source, time.time()))
        results[f"rate_{rate}"] = {**stats_us(durations), "bytes": len(body)}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    d = sub.add_parser("daemon", help="the daemon's CPU with and without a watcher")
    d.add_argument("--rounds", type=int, default=3)
    d.add_argument("--segment-s", type=float, default=60.0)
    d.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("frame", help="the cost of one frame")
    f.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    if args.what == "daemon":
        record("live_daemon", daemon(args.rounds, args.segment_s, args.seed))
    else:
        record("live_frame", frame(args.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
