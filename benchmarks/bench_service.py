"""The daemon as systemd sees it, on the virtual microphone with a real broker.

    python benchmarks/bench_service.py ready --runs 10
    python benchmarks/bench_service.py push --pushes 10

``ready``: ``asd-edge run`` started N times with a NOTIFY_SOCKET: time from the
process start to READY=1 (budget: 3 s), from SIGTERM to STOPPING=1 and to the exit,
and the RSS at READY.

``push``: a signed push of alternating models, the level model and models/demo.onnx
(``asd_edge.modelstore.signing``, as ``asd-train push`` sends it): time from the publish to the
device's answer on ``<prefix>/model``
(model validated, swapped between two ticks, stored), and the daemon's RSS before
the first push and after the last (since 2026-12-07 the signature is checked in a child
process, ``modelstore.devicekey``, so ``cryptography`` no longer loads into the daemon).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import record  # noqa: E402

from asd_edge.modelstore import keyfiles, signing  # noqa: E402
from devkit.broker import Broker, Subscriber, wait_until  # noqa: E402
from devkit.daemonproc import DaemonProcess  # noqa: E402
from devkit.notify import NotifyListener  # noqa: E402
from devkit.vmic import virtual_mic  # noqa: E402

DEVICE = "bench"
PREFIX = f"asd/{DEVICE}"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def write_config(root: Path, broker: Broker, model: Path, device: str, **extra: Any) -> Path:
    data: dict[str, Any] = {
        "device_id": DEVICE,
        "state_dir": str(root / "state"),
        "input": {"device": device, "sample_rate": 16000},
        "monitors": [{"name": "main", "model": str(model)}],
        "mqtt": {"host": broker.host, "port": broker.port},
        "logging": {"format": "json", "level": "info"},
        **extra,
    }
    path = root / "asd-edge.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {
        "n": int(a.size),
        "median_s": round(float(np.median(a)), 4),
        "p95_s": round(float(np.percentile(a, 95)), 4),
        "max_s": round(float(a.max()), 4),
    }


def level_model(path: Path, version: str, threshold: float) -> Path:
    from training.level import build_level_model, save_model

    return save_model(build_level_model(threshold_dbfs=threshold, version=version), path)


def bench_ready(runs: int) -> dict[str, Any]:
    ready_s: list[float] = []
    stopping_s: list[float] = []
    exit_s: list[float] = []
    rss: list[float] = []
    with tempfile.TemporaryDirectory(prefix="asd-bench-") as tmp, virtual_mic() as mic:
        root = Path(tmp)
        broker = Broker(root / "broker")
        broker.start()
        try:
            model = level_model(root / "level.onnx", "1", -30.0)
            config = write_config(root, broker, model, mic.device)
            for i in range(runs):
                with NotifyListener() as notify:
                    started = time.monotonic()
                    daemon = DaemonProcess(
                        config,
                        env={**mic.env, "NOTIFY_SOCKET": notify.address},
                        log_path=root / f"daemon{i}.log",
                    )
                    ready_s.append(notify.wait("READY", "1", 30)[0] - started)
                    rss.append(rss_mb(daemon.pid))
                    time.sleep(1.0)
                    asked = time.monotonic()
                    daemon.proc.send_signal(signal.SIGTERM)
                    stopping_s.append(notify.wait("STOPPING", "1", 30)[0] - asked)
                    code = daemon.stop()
                    exit_s.append(time.monotonic() - asked)
                if code != 0:
                    raise RuntimeError(f"run {i}: exit {code}:\n{daemon.log_tail()}")
        finally:
            broker.close()
    return {
        "start_to_ready": summary(ready_s),
        "sigterm_to_stopping": summary(stopping_s),
        "sigterm_to_exit": summary(exit_s),
        "rss_at_ready_mb": round(float(np.median(rss)), 1),
        "budget_ready_s": 3.0,
    }


def push_and_wait(
    client: Any, sub: Subscriber, model: bytes, key: Any, device: str, monitor: str = "main"
) -> float:
    """Publish a signed push of ``model`` (as ``asd-train push`` signs it) to ``device``
    and wait for its accepted answer on ``asd/<device>/model``; the seconds it took.
    RuntimeError if refused. Leaves 1.1 s before returning: ``issued_at`` has millisecond
    resolution, and the next push must be later."""
    prefix = f"asd/{device}"
    request_id = f"b-{uuid.uuid4().hex[:8]}"
    message = signing.push_message(
        model, request_id=request_id, target=device, monitor=monitor, private_key=key
    )
    sent = time.monotonic()
    client.publish(f"{prefix}/cmd/model", json.dumps(message), qos=1)

    def answered() -> bool:
        for m in sub.on(f"{prefix}/model"):
            last = json.loads(m.payload).get("last_push") or {}
            if last.get("id") == request_id:
                if not last.get("ok"):
                    raise RuntimeError(f"refused: {last}")
                return True
        return False

    wait_until(answered, 30, f"answer to {request_id}")
    took = time.monotonic() - sent
    time.sleep(1.1)
    return took


def bench_push(pushes: int) -> dict[str, Any]:
    live_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="asd-bench-") as tmp, virtual_mic() as mic:
        root = Path(tmp)
        push_key, device_key = keyfiles.generate_keys(root / "keys")
        key = keyfiles.load_private_key(push_key)
        models = [
            level_model(root / "m0.onnx", "v0", -30.0).read_bytes(),
            (REPO / "models" / "demo.onnx").read_bytes(),  # a trained model (ocsvm, 51 kB)
        ]
        broker = Broker(root / "broker")
        broker.start()
        try:
            config = write_config(
                root, broker, root / "m0.onnx", mic.device, push={"key_file": str(device_key)}
            )
            sub: Subscriber = broker.subscriber(f"{PREFIX}/model")
            daemon = DaemonProcess(config, env=mic.env, log_path=root / "daemon.log")
            try:
                daemon.wait_for("daemon_started", 30)
                sub.wait_for(f"{PREFIX}/model")
                time.sleep(2.0)
                rss_before = rss_mb(daemon.pid)
                client = broker.client()
                client.connect(broker.host, broker.port)
                client.loop_start()
                for i in range(pushes):
                    live_s.append(push_and_wait(client, sub, models[(i + 1) % 2], key, DEVICE))
                client.loop_stop()
                client.disconnect()
                time.sleep(2.0)
                rss_after = rss_mb(daemon.pid)
            finally:
                code = daemon.stop()
            if code != 0:
                raise RuntimeError(f"exit {code}:\n{daemon.log_tail()}")
        finally:
            broker.close()
    return {
        "publish_to_answer": summary(live_s),
        "model_bytes": [len(m) for m in models],
        "rss_before_push_mb": round(rss_before, 1),
        "rss_after_pushes_mb": round(rss_after, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    ready = sub.add_parser("ready", help="start to READY=1, SIGTERM to exit")
    ready.add_argument("--runs", type=int, default=10)
    push = sub.add_parser("push", help="signed push to the answer on <prefix>/model")
    push.add_argument("--pushes", type=int, default=10)
    args = parser.parse_args()
    if args.what == "ready":
        record("service_ready", bench_ready(args.runs))
    else:
        record("service_push", bench_push(args.pushes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
