"""End-to-end figures of the daemon on the virtual microphone with a real broker.

    python benchmarks/bench_alerts.py latency --events 24
    python benchmarks/bench_alerts.py idle --minutes 10

``latency``: loud bursts at random phases of the hop grid are played into the
virtual microphone; for each, the time from the burst's first sample reaching the
microphone (paplay start + offset) to (a) the alert arriving at a subscriber and
(b) the daemon logging the broker's PUBACK (``alert_acknowledged``).

``idle``: quiet machine-like noise with no anomaly for N minutes: bytes the daemon
wrote to disk (``/proc/<pid>/io`` write_bytes), its CPU share and RSS over time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import record  # noqa: E402

from asd_edge.audiofile import write_wav  # noqa: E402
from devkit.broker import Broker, wait_until  # noqa: E402
from devkit.daemonproc import DaemonProcess  # noqa: E402
from devkit.vmic import virtual_mic  # noqa: E402

RATE = 16000
DEVICE = "bench"


def config(root: Path, broker: Broker, model: Path, device: str) -> Path:
    path = root / "asd-edge.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "device_id": DEVICE,
                "state_dir": str(root / "state"),
                "input": {"device": device, "sample_rate": RATE},
                "monitors": [{"name": "main", "model": str(model)}],
                "mqtt": {"host": broker.host, "port": broker.port},
                "clips": {"pre_s": 2.0, "post_s": 2.0},
                "logging": {"format": "json", "level": "info"},
            }
        )
    )
    return path


def level_model(root: Path) -> Path:
    out = root / "level.onnx"
    subprocess.run(
        [sys.executable, "-m", "training.level", "--out", str(out), "--threshold-dbfs", "-30"],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    return out


def start_daemon(root: Path, broker: Broker, mic: Any) -> DaemonProcess:
    return DaemonProcess(
        config(root, broker, level_model(root), mic.device),
        env={**os.environ, **mic.env},
        log_path=root / "daemon.log",
    )


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def percentiles(values: list[float]) -> dict[str, float]:
    v = np.asarray(values)
    return {
        "n": int(v.size),
        "p50_s": round(float(np.percentile(v, 50)), 3),
        "p95_s": round(float(np.percentile(v, 95)), 3),
        "max_s": round(float(v.max()), 3),
    }


def latency(events: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    spacing_s = 9.0  # past the hold (1 s), refractory (5 s) and the clip post-roll
    offsets = [2.0 + i * spacing_s + float(rng.uniform(0, 0.5)) for i in range(events)]
    total_s = offsets[-1] + spacing_s
    audio = (0.003 * rng.standard_normal(round(total_s * RATE))).astype(np.float32)
    t = np.arange(RATE) / RATE
    for start in offsets:
        a = round(start * RATE)
        audio[a : a + RATE] += (0.5 * np.sin(2 * np.pi * 900 * t)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="asd-bench-") as tmp, virtual_mic() as mic:
        root = Path(tmp)
        broker = Broker(root / "broker")
        broker.start()
        try:
            sub = broker.subscriber(f"asd/{DEVICE}/alert")
            wav = root / "stream.wav"
            write_wav(wav, audio, RATE)
            daemon = start_daemon(root, broker, mic)
            try:
                daemon.wait_for("daemon_started", 30)
                wait_until(lambda: daemon.events("mqtt_connected"), 10, "connected")
                time.sleep(1.0)
                played = time.time()
                mic.play(wav, wait=True)
                wait_until(lambda: len(daemon.events("anomaly_ended")) >= events, 30, "every event")
                time.sleep(3.0)
            finally:
                daemon.stop()
            starts = [(m.received_at, json.loads(m.payload)) for m in sub.on(f"asd/{DEVICE}/alert")]
            starts = [(at, p) for at, p in starts if p["phase"] == "start"]
            acked: dict[str, float] = {}
            for r in daemon.events("alert_acknowledged"):  # the first is the start phase
                acked.setdefault(r["alert_id"], epoch(r["timestamp"]))
        finally:
            broker.close()
    onsets = [played + o for o in offsets]
    received, acknowledged, unmatched = [], [], 0
    for at, payload in starts:
        before = [o for o in onsets if o <= at]
        if not before or at - before[-1] > 3.0:
            unmatched += 1
            continue
        received.append(at - before[-1])
        if payload["id"] in acked:
            acknowledged.append(acked[payload["id"]] - before[-1])
    return {
        "events_played": events,
        "alerts_started": len(starts),
        "false_or_unmatched": unmatched,
        "onset_to_received": percentiles(received),
        "onset_to_acknowledged_log": percentiles(acknowledged) if acknowledged else None,
        "note": "onset = paplay start + burst offset; includes paplay start-up",
    }


def hum(seconds: float, seed: int) -> np.ndarray:
    """Mains hum (50 and 150 Hz) over faint noise: a quiet machine with no anomaly."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    tone = 0.02 * np.sin(2 * np.pi * 50 * t) + 0.01 * np.sin(2 * np.pi * 150 * t)
    return (tone + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def idle(minutes: float, seed: int) -> dict[str, Any]:
    audio = hum(minutes * 60.0 + 20.0, seed)
    with tempfile.TemporaryDirectory(prefix="asd-bench-") as tmp, virtual_mic() as mic:
        root = Path(tmp)
        broker = Broker(root / "broker")
        broker.start()
        try:
            wav = root / "idle.wav"
            write_wav(wav, audio, RATE)
            daemon = start_daemon(root, broker, mic)
            samples = []
            try:
                daemon.wait_for("daemon_started", 30)
                wait_until(lambda: daemon.events("mqtt_connected"), 10, "connected")
                player = mic.play(wav, wait=False)
                time.sleep(10.0)  # start-up writes (outbox creation) are not steady state
                first = proc_figures(daemon.pid)
                end = time.monotonic() + minutes * 60.0
                while time.monotonic() < end:
                    time.sleep(min(60.0, max(0.0, end - time.monotonic())))
                    samples.append(proc_figures(daemon.pid))
                player.kill()
            finally:
                daemon.stop()
            anomalies = len(daemon.events("anomaly_started"))
        finally:
            broker.close()
    last = samples[-1]
    elapsed = last["at"] - first["at"]
    return {
        "minutes": round(elapsed / 60.0, 2),
        "anomalies": anomalies,
        "write_bytes": last["write_bytes"] - first["write_bytes"],
        "cpu_percent": round(100.0 * (last["cpu_s"] - first["cpu_s"]) / elapsed, 3),
        "rss_mb_start": first["rss_mb"],
        "rss_mb_end": last["rss_mb"],
        "rss_mb_max": max(s["rss_mb"] for s in samples),
    }


def proc_figures(pid: int) -> dict[str, float]:
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = 100.0  # os.sysconf("SC_CLK_TCK") on Linux
    rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return {
        "at": time.monotonic(),
        "write_bytes": float(io["write_bytes"]),
        "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,
        "rss_mb": round(rss_pages * 4096 / 1e6, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what")
    lat = sub.add_parser("latency", help="onset to alert latency over many events")
    lat.add_argument("--events", type=int, default=24)
    lat.add_argument("--seed", type=int, default=0)
    idl = sub.add_parser("idle", help="disk writes, CPU and RSS with no anomaly")
    idl.add_argument("--minutes", type=float, default=10.0)
    idl.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.what is None:  # `make bench`: the latency figure
        args = parser.parse_args(["latency"])
    if args.what == "latency":
        record("alert_latency", latency(args.events, args.seed))
    else:
        record("idle", idle(args.minutes, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
