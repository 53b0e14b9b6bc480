"""The daemon's standing cost over a day's worth of things happening, in one run:
idle CPU and RSS, and the RSS after events, after signed pushes and after a learning.

    python benchmarks/bench_cost.py [--rev REV ...] [--idle-s 60] [--alsa-pulse-only]

One ``asd-edge run`` on the virtual microphone (PortAudio through PulseAudio's ALSA
plugin, 16 kHz), a private mosquitto, the level model (-30 dBFS) and a push key, goes
through these phases while quiet machine hum plays:

1. ``idle``: ``--idle-s`` seconds of hum after a 10 s settling: CPU (utime + stime of
   every thread, as a share of one core) and RSS (VmRSS) at the end;
2. ``events``: five 1 s 900 Hz bursts 10 s apart, each an event with a clip (and its
   picture): RSS after the last clip is saved;
3. ``pushes``: five signed pushes alternating two models (``signing.push_message``, as
   ``asd-train push`` sends them), each answered: RSS after;
4. ``learning``: ``cmd/learn`` of 20 s, collected and fitted in the learning child, the
   model adopted: RSS after;
5. ``idle_after``: ``--idle-s`` seconds again: CPU and RSS. The budget: CPU <= 1 % of a
   core idle, RSS <= 100 MB throughout.

``--rev REV`` (repeatable) runs the same scenario with the daemon's code from a git
revision as well (a temporary worktree on ``PYTHONPATH``; the harness is this tree's),
so that before and after are measured on the same machine in one run. ``--alsa-pulse-only``
also runs each with ``ALSA_CONFIG_PATH`` naming a copy of alsa.conf that loads only the
PulseAudio PCMs: what the RSS is without the other plugins of ``libasound2-plugins``
(a52, lavrate, jack, ... which PortAudio opens while it lists the devices at start;
a device capturing from its ALSA hardware has none of them). One JSON line per run in
``results/cost.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_service import level_model, push_and_wait  # noqa: E402
from common import record  # noqa: E402

from asd_edge.audiofile import write_wav  # noqa: E402
from asd_edge.modelstore import keyfiles  # noqa: E402
from devkit.broker import Broker, Subscriber, wait_until  # noqa: E402
from devkit.daemonproc import DaemonProcess  # noqa: E402
from devkit.vmic import virtual_mic  # noqa: E402

RATE = 16000
DEVICE = "cost"
PREFIX = f"asd/{DEVICE}"
SETTLE_S = 10.0
BURSTS = 5
BURST_EVERY_S = 10.0
PUSHES = 5
LEARN_S = 20


def proc_figures(pid: int) -> tuple[float, float]:
    """(CPU seconds of the whole process, VmRSS in MB)."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_s = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return cpu_s, round(rss / 1e6, 1)


def idle_phase(pid: int, seconds: float) -> dict[str, float]:
    """The daemon's CPU share of one core over ``seconds`` of waiting, and its RSS after."""
    cpu0, _ = proc_figures(pid)
    t0 = time.monotonic()
    time.sleep(seconds)
    cpu1, rss = proc_figures(pid)
    return {"cpu_percent": round(100 * (cpu1 - cpu0) / (time.monotonic() - t0), 3), "rss_mb": rss}


def hum(seconds: float, seed: int) -> np.ndarray:
    """Mains hum (50 and 150 Hz) over faint noise: a quiet machine with no anomaly."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    tone = 0.02 * np.sin(2 * np.pi * 50 * t) + 0.01 * np.sin(2 * np.pi * 150 * t)
    return (tone + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def add_bursts(audio: np.ndarray, starts_s: list[float]) -> None:
    t = np.arange(RATE) / RATE
    for start in starts_s:
        a = round(start * RATE)
        audio[a : a + RATE] += (0.5 * np.sin(2 * np.pi * 900 * t)).astype(np.float32)


@contextmanager
def worktree(rev: str | None) -> Iterator[Path | None]:
    """A detached worktree of ``rev`` (None: this tree), removed afterwards."""
    if rev is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="asd-cost-rev-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(path), rev],
            check=True,
        )
        try:
            yield path
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False
            )


def pulse_only_alsa_conf(directory: Path) -> Path:
    """A copy of alsa.conf whose conf.d hooks load only the PulseAudio PCM definitions."""
    confd = directory / "conf.d"
    confd.mkdir(parents=True)
    for name in ("50-pulseaudio.conf", "99-pulse.conf", "pulse.conf"):
        for where in (Path("/etc/alsa/conf.d"), Path("/usr/share/alsa/alsa.conf.d")):
            if (where / name).is_file() and not (confd / name).exists():
                (confd / name).write_bytes((where / name).read_bytes())
    text = Path("/usr/share/alsa/alsa.conf").read_text()
    for original in ('"/etc/alsa/conf.d"', '"/usr/share/alsa/alsa.conf.d"'):
        text = text.replace(original, f'"{confd}"')
    path = directory / "alsa.conf"
    path.write_text(text)
    return path


def learned(sub: Subscriber) -> str | None:
    for m in sub.on(f"{PREFIX}/learn"):
        state = json.loads(m.payload).get("state")
        if state in ("done", "failed", "cancelled"):
            return str(state)
    return None


def run(rev: str | None, idle_s: float, pulse_only: bool, seed: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"rev": rev or "HEAD", "alsa": "pulse only" if pulse_only else "all"}
    events_at = SETTLE_S + idle_s + 5.0
    bursts = [events_at + i * BURST_EVERY_S for i in range(BURSTS)]
    total_s = bursts[-1] + 60.0 + 2 * LEARN_S + idle_s + 120.0
    with (
        worktree(rev) as tree,
        tempfile.TemporaryDirectory(prefix="asd-cost-") as tmp,
        virtual_mic() as mic,
    ):
        root = Path(tmp)
        audio = hum(total_s, seed)
        add_bursts(audio, bursts)
        wav = root / "hum.wav"
        write_wav(wav, audio, RATE)
        push_key, device_key = keyfiles.generate_keys(root / "keys")
        key = keyfiles.load_private_key(push_key)
        models = [level_model(root / f"m{i}.onnx", f"v{i}", -30.0).read_bytes() for i in (0, 1)]
        env = dict(mic.env)
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        if pulse_only:
            env["ALSA_CONFIG_PATH"] = str(pulse_only_alsa_conf(root / "alsa"))
        broker = Broker(root / "broker")
        broker.start()
        try:
            config = root / "asd-edge.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "device_id": DEVICE,
                        "state_dir": str(root / "state"),
                        "input": {"device": mic.device, "sample_rate": RATE},
                        "monitors": [{"name": "main", "model": str(root / "m0.onnx")}],
                        "mqtt": {"host": broker.host, "port": broker.port},
                        "push": {"key_file": str(device_key)},
                        "clips": {"pre_s": 2.0, "post_s": 2.0},
                        "logging": {"format": "json", "level": "info"},
                    }
                )
            )
            models_sub = broker.subscriber(f"{PREFIX}/model")
            learn_sub = broker.subscriber(f"{PREFIX}/learn")
            daemon = DaemonProcess(config, env=env, log_path=root / "daemon.log")
            try:
                daemon.wait_for("daemon_started", 60)
                wait_until(lambda: daemon.events("mqtt_connected"), 20, "connected")
                player = mic.play(wav, wait=False)
                played = time.monotonic()
                time.sleep(SETTLE_S)
                figures["idle"] = idle_phase(daemon.pid, idle_s)
                wait_until(
                    lambda: len(daemon.events("clip_saved")) >= BURSTS,
                    bursts[-1] - (time.monotonic() - played) + 30.0,
                    "every clip saved",
                )
                time.sleep(2.0)
                figures["events"] = {
                    "events": len(daemon.events("anomaly_started")),
                    "clips": len(daemon.events("clip_saved")),
                    "rss_mb": proc_figures(daemon.pid)[1],
                }
                client = broker.client()
                client.connect(broker.host, broker.port)
                client.loop_start()
                for i in range(PUSHES):
                    push_and_wait(client, models_sub, models[(i + 1) % 2], key, DEVICE)
                time.sleep(2.0)
                figures["pushes"] = {"pushes": PUSHES, "rss_mb": proc_figures(daemon.pid)[1]}
                client.publish(
                    f"{PREFIX}/cmd/learn", json.dumps({"id": "c-learn", "seconds": LEARN_S}), qos=1
                )
                wait_until(lambda: learned(learn_sub) is not None, LEARN_S + 120, "learning")
                client.loop_stop()
                client.disconnect()
                time.sleep(3.0)
                figures["learning"] = {
                    "state": learned(learn_sub),
                    "rss_mb": proc_figures(daemon.pid)[1],
                }
                figures["idle_after"] = idle_phase(daemon.pid, idle_s)
                player.kill()
            finally:
                code = daemon.stop()
            if code != 0:
                raise RuntimeError(f"exit {code}:\n{daemon.log_tail()}")
        finally:
            broker.close()
    figures["rss_max_mb"] = max(v["rss_mb"] for v in figures.values() if isinstance(v, dict))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rev", action="append", default=[], help="also measure this git revision (repeatable)"
    )
    parser.add_argument("--idle-s", type=float, default=60.0, help="seconds of each idle phase")
    parser.add_argument(
        "--alsa-pulse-only",
        action="store_true",
        help="also run each with only the PulseAudio ALSA plugin configured",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    for rev in [*args.rev, None]:
        for pulse_only in (False, True) if args.alsa_pulse_only else (False,):
            result = run(rev, args.idle_s, pulse_only, args.seed)
            print(json.dumps(result), file=sys.stderr)
            runs.append(result)
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    record("cost", {"head": head, "idle_s": args.idle_s, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
