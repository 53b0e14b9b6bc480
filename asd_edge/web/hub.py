"""Hands the fleet's updates to the open pages (server-sent events) and keeps the daemons
publishing live data while someone watches (``cmd/live`` leases)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Final

import structlog

from .fleet import Update

__all__ = ["QUEUE_FRAMES", "Hub", "Watcher"]

log = structlog.get_logger()

QUEUE_FRAMES: Final = 256
"""Updates queued per page; a page that falls further behind loses the oldest live frames."""
MAX_WATCHERS: Final = 32
"""Pages open at once; one more is refused (HTTP 503) rather than let memory grow."""
HEARTBEAT_S: Final = 15.0
"""A comment line this often keeps proxies from closing a quiet stream."""


@dataclass(eq=False)
class Watcher:
    """One open page: the device it watches (None: the fleet page) and its queue."""

    device: str | None
    queue: asyncio.Queue[Update] = field(default_factory=lambda: asyncio.Queue(QUEUE_FRAMES))
    dropped: int = 0


class Hub:
    """Fan-out of updates to watchers, on the server's event loop.

    ``publish`` may be called from any thread. ``renew(device, seconds)`` is called by
    ``run_leases`` for every device with a watcher, each ``lease_s / 2`` seconds; it says
    whether it could send the lease (False: the device is not known yet).
    """

    def __init__(
        self,
        *,
        lease_s: float,
        renew: Callable[[str, float], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lease_s = lease_s
        self._renew = renew
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchers: set[Watcher] = set()
        self._renewed: dict[str, float] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, update: Update) -> None:
        """From paho's thread: hand the update to the loop."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._dispatch, update)

    def _dispatch(self, update: Update) -> None:
        key, kind, _ = update
        for watcher in list(self._watchers):
            if watcher.device is None and kind == "live":
                continue  # the fleet page shows no live frames
            if watcher.device is not None and watcher.device != key:
                continue
            if watcher.queue.full():
                watcher.queue.get_nowait()
                watcher.dropped += 1
            watcher.queue.put_nowait(update)

    @property
    def full(self) -> bool:
        """As many pages as MAX_WATCHERS are open."""
        return len(self._watchers) >= MAX_WATCHERS

    def watched(self) -> set[str]:
        """The devices some page watches now."""
        return {w.device for w in self._watchers if w.device is not None}

    async def stream(self, device: str | None) -> AsyncIterator[str]:
        """Server-sent events for one page until it goes away."""
        watcher = Watcher(device)
        self._watchers.add(watcher)
        if device is not None:
            self._renew_now(device)
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    key, kind, body = await asyncio.wait_for(watcher.queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                data = json.dumps({"device": key, "body": body}, separators=(",", ":"))
                yield f"event: {kind}\ndata: {data}\n\n"
        finally:
            self._watchers.discard(watcher)

    def _renew_now(self, device: str) -> None:
        now = self._clock()
        last = self._renewed.get(device)
        if last is not None and now - last < self.lease_s / 2:
            return
        try:
            sent = self._renew(device, self.lease_s)
        except Exception as exc:  # a broker hiccup must not end the page's stream
            log.warning("web_live_renew_failed", device=device, error=str(exc))
            return
        if sent:  # a device not heard of yet is asked again at the next round
            self._renewed[device] = now

    async def run_leases(self) -> None:
        """Renew the live lease of every watched device, until cancelled."""
        while True:
            for device in self.watched():
                self._renew_now(device)
            for device in set(self._renewed) - self.watched():
                del self._renewed[device]  # nobody watches: let the lease run out
            await asyncio.sleep(1.0)
