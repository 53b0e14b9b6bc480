"""The web dashboard's cost: the web process's RSS and CPU with no page and with one
device page open in a real browser, the daemon's CPU meanwhile, and the latency from a
live frame leaving the daemon to the page having it.

    python benchmarks/bench_web.py [--segment-s 60]

``asd-edge run`` on the virtual microphone (16 kHz, the level model, a private
mosquitto) hears machine-like hum with a loud burst every 12 s (alerts, clips); ``asd-edge
web`` runs beside it. Three segments of ``--segment-s`` each: no page open, the device
page open in Debian's chromium (headless, through Selenium; it receives the live frames,
renews the ``cmd/live`` lease, draws the waterfall and the chart), and no page again
(the lease runs out). CPU is utime + stime from /proc/<pid>/stat over each segment, in
percent of one core; RSS is VmRSS sampled each second. Latency: the page's clock when a
frame arrives minus the frame's ``t`` (the daemon's wall clock when it built it), from
``window.ASD_STATS``: both clocks are this machine's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

from bench_alerts import DEVICE, RATE, proc_figures, start_daemon  # noqa: E402
from common import record  # noqa: E402
from support.browser import WebProcess, chromium  # noqa: E402

from asd_edge.audiofile import write_wav  # noqa: E402
from devkit.broker import Broker, free_port, wait_until  # noqa: E402
from devkit.vmic import virtual_mic  # noqa: E402


def machine_sound(seconds: float, seed: int = 0) -> np.ndarray:
    """Hum with harmonics and noise, a 1 s burst every 12 s."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    audio = 0.02 * np.sin(2 * np.pi * 120 * t) + 0.01 * np.sin(2 * np.pi * 240 * t)
    audio += 0.003 * rng.standard_normal(t.size)
    for start in np.arange(6.0, seconds - 2, 12.0):
        a, b = round(start * RATE), round((start + 1.0) * RATE)
        audio[a:b] += 0.4 * np.sin(2 * np.pi * 1500 * t[a:b])
    return audio.astype(np.float32)


def segment(pids: dict[str, int], seconds: float) -> dict[str, Any]:
    """CPU percent and RSS of each process over ``seconds``."""
    first = {name: proc_figures(pid) for name, pid in pids.items()}
    rss: dict[str, list[float]] = {name: [] for name in pids}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(1.0)
        for name, pid in pids.items():
            rss[name].append(proc_figures(pid)["rss_mb"])
    out: dict[str, Any] = {}
    for name, pid in pids.items():
        last = proc_figures(pid)
        wall = last["at"] - first[name]["at"]
        out[name] = {
            "cpu_percent": round(100 * (last["cpu_s"] - first[name]["cpu_s"]) / wall, 2),
            "rss_mb_median": round(float(np.median(rss[name])), 1),
            "rss_mb_max": round(max(rss[name]), 1),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segment-s", type=float, default=60.0, help="seconds per segment")
    args = parser.parse_args()
    results: dict[str, Any] = {"segment_s": args.segment_s}
    with tempfile.TemporaryDirectory() as tmp, virtual_mic() as mic:
        root = Path(tmp)
        broker = Broker(root / "broker")
        broker.start()
        total_s = 3 * args.segment_s + 30
        wav = root / "machine.wav"
        write_wav(wav, machine_sound(total_s), RATE)
        daemon = start_daemon(root, broker, mic)
        web = None
        try:
            daemon.wait_for("daemon_started", 30)
            player = mic.play(wav, wait=False)
            config = root / "asd-edge.yaml"
            web = WebProcess(config, free_port())
            time.sleep(5)
            pids = {"daemon": daemon.pid, "web": web.proc.pid}
            results["no_page"] = segment(pids, args.segment_s)
            with chromium() as browser:
                browser.get(f"{web.url}/device/{DEVICE}")
                wait_until(
                    lambda: browser.execute_script("return (window.ASD_STATS||{}).frames") or 0,
                    20,
                    "live frames",
                )
                frames_before = browser.execute_script("return window.ASD_STATS.frames")
                results["one_page"] = segment(pids, args.segment_s)
                stats = browser.execute_script("return window.ASD_STATS")
                frames = stats["frames"] - frames_before
                latency = np.asarray(stats["latency_ms"], dtype=np.float64)
                results["one_page"]["frames_per_s"] = round(frames / args.segment_s, 2)
                results["live_latency_ms"] = {
                    "n": int(latency.size),
                    "median": round(float(np.median(latency)), 1),
                    "p95": round(float(np.percentile(latency, 95)), 1),
                    "max": round(float(latency.max()), 1),
                }
            time.sleep(25)  # the lease (20 s) runs out
            results["page_closed"] = segment(pids, args.segment_s)
            player.terminate()
        finally:
            if web is not None:
                web.stop()
            daemon.stop()
            broker.close()
    record("web", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
