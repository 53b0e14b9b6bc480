"""systemd's watchdog is fed only while ticks really happen: a real NOTIFY_SOCKET owned by
the test, a daemon replaying a recording in real time, and a tick stalled on purpose."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.audio import tone_burst, write_wav

from asd_edge.assembly import load_detectors
from asd_edge.config import parse_config
from asd_edge.daemon import Daemon
from asd_edge.filesource import FileSource
from asd_edge.sdnotify import Liveness, Notifier
from devkit.notify import NotifyListener

WATCHDOG_USEC = 300_000
"""A short interval: WATCHDOG=1 about every 0.1 s."""


@pytest.fixture
def notify_socket() -> Iterator[NotifyListener]:
    with NotifyListener() as listener:
        yield listener


class ReadyProbe(Notifier):
    """A real Notifier that also notes whether capture ran when READY=1 was sent."""

    source: Any = None
    alive_at_ready: bool | None = None

    def ready(self, status: str | None = None) -> bool:
        self.alive_at_ready = self.source is not None and self.source.alive
        return super().ready(status)


def pings(messages: list[tuple[float, dict[str, str]]]) -> list[float]:
    return NotifyListener.times(messages, "WATCHDOG", "1")


def test_watchdog_stops_while_a_tick_is_stuck_and_resumes_after(
    tmp_path: Path, level_model: Path, notify_socket: NotifyListener
) -> None:
    """READY=1 after capture starts; WATCHDOG=1 every ~interval/3 while ticks run; none at
    all while one tick is blocked (so systemd would kill and restart the service); pings
    again once the tick returns."""
    wav = write_wav(tmp_path / "hum.wav", tone_burst(16000, 60.0, (100.0, 101.0)), 16000)
    config = parse_config(
        {"monitors": [{"name": "fan", "model": str(level_model)}]}, base_dir=tmp_path
    )
    detectors = load_detectors(config)
    detector = detectors["fan"]
    stall = threading.Event()
    stuck_now = threading.Event()
    release = threading.Event()
    real_score = detector.score_bands  # what the monitor calls for every window

    def score(windows: Any) -> tuple[np.ndarray, np.ndarray | None]:
        if stall.is_set():
            stuck_now.set()
            release.wait(30)  # the tick is stuck here, as a hung inference would be
        return real_score(windows)

    detector.score_bands = score  # type: ignore[method-assign]
    listener = notify_socket
    notifier = ReadyProbe(listener.address, watchdog_usec=WATCHDOG_USEC)
    daemon = Daemon(config, detectors, source=FileSource(wav), notifier=notifier)
    notifier.source = daemon.source
    runner = threading.Thread(target=daemon.run, name="daemon")
    runner.start()
    try:
        first = listener.receive(2.0)
        ready = NotifyListener.times(first, "READY", "1")
        assert ready, first
        assert notifier.alive_at_ready is True, "READY=1 before capture ran"
        steady = [at for at in pings(first) if at > ready[0]]
        gaps = np.diff(steady)
        assert len(steady) >= 2 and gaps.max() < WATCHDOG_USEC / 1e6, gaps

        stall.set()
        assert stuck_now.wait(5), "no window was scored"
        listener.receive(0.05)  # what was sent before the tick got stuck
        stuck = pings(listener.receive(1.5))
        assert stuck == [], f"{len(stuck)} pings while the tick was stuck"

        stall.clear()
        release.set()
        resumed = pings(listener.receive(1.5))
        assert resumed, "no ping after the tick returned"
    finally:
        release.set()
        daemon.stop("test")
        runner.join(10)
    assert not runner.is_alive()
    tail = listener.receive(0.2)
    assert NotifyListener.times(tail, "STOPPING", "1"), tail


class CountingNotifier(Notifier):
    """A disabled Notifier that counts what the daemon would send."""

    def __init__(self) -> None:
        super().__init__(None)
        self.pings = 0
        self.statuses: list[str] = []

    def watchdog(self) -> bool:
        self.pings += 1
        return True

    def status(self, text: str) -> bool:
        self.statuses.append(text)
        return True


def test_liveness_pings_while_audio_arrives_or_is_being_reopened() -> None:
    """No new samples for longer than the stall timeout: no ping, unless the capture
    supervisor is reopening the stream; the status line is sent only when it changes."""
    notifier = CountingNotifier()
    live = Liveness(notifier, stall_timeout_s=2.0, clock=lambda: 0.0)
    live.start(0.0)
    for step in range(20):  # 1 s of audio arriving
        live.tick(step * 0.05, written=step * 800, recovering=False, line=lambda: "ok")
    assert notifier.pings == 20 and notifier.statuses == ["ok"]
    for step in range(20, 80):  # 3 s without a sample, nobody reopening
        live.tick(step * 0.05, written=19 * 800, recovering=False, line=lambda: "ok")
    silent = notifier.pings
    assert 20 < silent < 80  # pings for the stall timeout, then none
    live.tick(4.5, written=19 * 800, recovering=False, line=lambda: "ok")
    assert notifier.pings == silent
    live.tick(4.55, written=19 * 800, recovering=True, line=lambda: "ok")
    assert notifier.pings == silent + 1
    live.status(4.6, lambda: "input input_lost", force=True)
    assert notifier.statuses == ["ok", "input input_lost"]
