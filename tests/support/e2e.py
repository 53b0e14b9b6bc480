"""The end-to-end daemon's set-up: its configuration, its topics, its sound, what it sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from devkit.broker import Broker, Subscriber

__all__ = [
    "ALERT",
    "DEVICE",
    "PREFIX",
    "RATE",
    "alerts",
    "daemon_config",
    "request_health",
    "stream_with_bursts",
]

RATE = 16000
DEVICE = "e2e"
PREFIX = f"asd/{DEVICE}"
ALERT = f"{PREFIX}/alert"


def stream_with_bursts(
    seconds: float, bursts: list[tuple[float, float]], seed: int = 0
) -> np.ndarray:
    """Quiet noise (so every excerpt is unique) with loud tones at ``bursts`` (start, length)."""
    rng = np.random.default_rng(seed)
    audio = (0.003 * rng.standard_normal(round(seconds * RATE))).astype(np.float32)
    for i, (start, length) in enumerate(bursts):
        a, b = round(start * RATE), round((start + length) * RATE)
        t = np.arange(b - a) / RATE
        audio[a:b] += (0.5 * np.sin(2 * np.pi * (700 + 300 * i) * t)).astype(np.float32)
    return audio


def daemon_config(
    tmp_path: Path, broker: Broker, model: Path, device: str | int, **sections: Any
) -> Path:
    """``asd-edge.yaml`` in ``tmp_path``: device ``DEVICE``, monitor ``pump`` on ``model``,
    ``broker`` with quick reconnects, 1 s clips, JSON logs; each of ``sections`` updates
    its section (a dict is merged into it, anything else replaces it)."""
    base: dict[str, Any] = {
        "device_id": DEVICE,
        "state_dir": str(tmp_path / "state"),
        "input": {"device": device, "sample_rate": RATE},
        # a short refractory period lets the tests pack their anomalies a few seconds apart
        "monitors": [{"name": "pump", "model": str(model), "refractory_s": 1.0}],
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
        },
        "clips": {"pre_s": 1.0, "post_s": 1.0},
        "logging": {"format": "json", "level": "info"},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "asd-edge.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def alerts(sub: Subscriber, kind: str = "anomaly") -> list[dict[str, Any]]:
    """The alerts of type ``kind`` received so far (input alerts, e.g. the digital silence
    of the virtual microphone between two plays, are another type)."""
    return [a for m in sub.on(ALERT) if (a := json.loads(m.payload)).get("type") == kind]


def request_health(broker: Broker, sub: Subscriber) -> dict[str, Any]:
    """Ask for a health report now (cmd/health) and return it."""
    before = len(sub.on(f"{PREFIX}/health"))
    client = broker.client()
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(f"{PREFIX}/cmd/health", b"{}", qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()
    sub.wait_for(f"{PREFIX}/health", before + 1, 10)
    return json.loads(sub.on(f"{PREFIX}/health")[-1].payload)  # type: ignore[no-any-return]
