"""The in-process alert path's test doubles: an AlertSink that records, a monitor's info
on a filled ring, and the wall clock the tests inject."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from asd_edge.alerts import MonitorInfo
from asd_edge.ring import RingBuffer

__all__ = ["RATE", "WALL", "RecordingSink", "filled_ring", "info"]

RATE = 16000
WALL = 1_790_000_000.0  # 2026-09-21


class RecordingSink:
    """An AlertSink that keeps what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, dict[str, Any], bool]] = []
        self.clips: list[tuple[str, bytes]] = []
        self.released = threading.Event()
        self.clip_published = threading.Event()

    def submit_alert(
        self, alert_id: str, payload: Mapping[str, Any], *, phase: str, held: bool = False
    ) -> None:
        self.calls.append(("submit", alert_id, phase, dict(payload), held))

    def release_alert(self, alert_id: str, phase: str, payload: Mapping[str, Any]) -> None:
        self.calls.append(("release", alert_id, phase, dict(payload), False))
        self.released.set()

    def publish_clip(self, alert_id: str, data: bytes) -> bool:
        self.clips.append((alert_id, data))
        self.clip_published.set()
        return True


def info(ring: RingBuffer) -> MonitorInfo:
    return MonitorInfo(
        name="pump",
        model={"name": "m", "version": "v1", "sha256": "ab" * 32},
        window_s=1.0,
        ring=ring,
        sample_rate=RATE,
    )


def filled_ring(seconds: float) -> RingBuffer:
    ring = RingBuffer(RATE * 60)
    ring.write(np.full(round(seconds * RATE), 0.1, np.float32))
    return ring
