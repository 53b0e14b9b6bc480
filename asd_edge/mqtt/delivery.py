"""Alert delivery: outbox rows to the broker in order, at QoS 1, deleted on PUBACK."""

from __future__ import annotations

import json
import sqlite3
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
from paho.mqtt.client import Client
from paho.mqtt.reasoncodes import ReasonCode

from ..config import OutboxConfig
from ..errors import OutboxError
from .outbox import MEMORY, Outbox

__all__ = ["MAX_INFLIGHT", "Delivery"]

log = structlog.get_logger()

MAX_INFLIGHT: Final = 10
"""Alerts handed to the broker and not yet acknowledged, at most."""
_COUNTERS: Final = ("published", "acked", "refused", "outbox_depth", "dropped_rows", "dropped_age")


@dataclass(frozen=True, slots=True)
class _Flight:
    rowid: int
    alert_id: str
    phase: str
    since_s: float


class Delivery:
    """The outbox and the alerts in flight: what is stored, sent, acknowledged or refused.

    Used by the link thread only (no locks). An alert phase is stored durably
    first (held ones wait for ``release``), then published in rowid order while
    fewer than ``max_inflight`` are unacknowledged; a PUBACK deletes its row. After
    a reconnect every ready row not in flight is published again, in order (paho
    re-sends the ones in flight itself). A database error is logged, never raised:
    an alert that cannot be stored is still published from memory.
    """

    def __init__(
        self,
        *,
        topic: str,
        outbox_path: Path,
        outbox: OutboxConfig,
        clock: Callable[[], float],
        max_inflight: int = MAX_INFLIGHT,
    ) -> None:
        self.topic = topic
        """Where alerts go (``<prefix>/alert``)."""
        self.outbox_path = Path(outbox_path)
        self.outbox_config = outbox
        self.max_inflight = max_inflight
        self._clock = clock
        self._outbox: Outbox | None = None
        self.held_at_start: list[tuple[str, str, dict[str, Any]]] = []
        """(alert_id, phase, payload) of the rows a previous run left held, once opened."""
        self.open_at_start: list[tuple[str, dict[str, Any]]] = []
        """(alert_id, start payload) of the alerts a previous run started and never ended."""
        self._inflight: dict[int, _Flight] = {}
        self._sent: set[int] = set()
        self._refused: set[int] = set()
        self._cursor = 0
        self._submitted_s: dict[int, float] = {}
        self._unstored: deque[tuple[str, bytes]] = deque(maxlen=outbox.max_rows)
        self.counts = dict.fromkeys(_COUNTERS, 0)
        """Alerts published, acknowledged and refused; rows waiting and dropped by the bounds."""
        self.last_ack_latency_s: float | None = None
        """From submission to PUBACK, of the latest acknowledged alert."""

    @property
    def in_flight(self) -> int:
        """Alerts published and not acknowledged yet."""
        return len(self._inflight)

    # --- the outbox -----------------------------------------------------------------

    def open(self) -> None:
        """Open the outbox file (memory if it cannot be used) and read what a previous run
        left: the held rows and the alerts started and not ended."""
        max_rows, max_age_s = self.outbox_config.max_rows, self.outbox_config.max_age_days * 86400
        try:
            self._outbox = Outbox(self.outbox_path, max_rows=max_rows, max_age_s=max_age_s)
        except (OutboxError, sqlite3.Error) as exc:
            log.error(
                "outbox_unavailable", path=str(self.outbox_path), error=str(exc), fallback="memory"
            )
            self._outbox = self._memory_outbox()
        for row in self._outbox.held():
            if (body := _decoded(row.alert_id, row.payload)) is not None:
                self.held_at_start.append((row.alert_id, row.key, body))
        for alert_id, payload in self._outbox.open_alerts(self.topic):
            if (body := _decoded(alert_id, payload)) is not None:
                self.open_at_start.append((alert_id, body))
        self._refresh_counts()

    def ensure_open(self) -> None:
        """After ``open`` failed unexpectedly: the memory outbox, so that delivery goes on."""
        if self._outbox is None:
            self._outbox = self._memory_outbox()

    def _memory_outbox(self) -> Outbox:
        """The fallback when the file cannot be used: alerts kept while the process lives."""
        config = self.outbox_config
        return Outbox(MEMORY, max_rows=config.max_rows, max_age_s=config.max_age_days * 86400)

    def close(self) -> None:
        """Close the outbox (every stored row is already on disk)."""
        if self._outbox is not None:
            self._outbox.close()

    # --- storing --------------------------------------------------------------------

    def store(self, alert_id: str, phase: str, body: bytes, held: bool, at_s: float) -> None:
        """Store one alert phase (``held``: not published until released); ``at_s`` on the
        injected clock, when it was submitted. A ``start`` is recorded as open and its
        ``end`` closes it, in the same transaction (no write of its own)."""
        assert self._outbox is not None
        try:
            rowid = self._outbox.add(
                alert_id,
                self.topic,
                body,
                ready=not held,
                key=phase,
                opens=phase == "start",
                closes=phase == "end",
            )
        except sqlite3.Error as exc:
            log.error("outbox_write_failed", alert_id=alert_id, phase=phase, error=str(exc))
            self._unstored.append((alert_id, body))
            return
        self._submitted_s[rowid] = at_s
        while len(self._submitted_s) > self.outbox_config.max_rows:
            del self._submitted_s[next(iter(self._submitted_s))]
        self._refresh_counts()

    def release(self, alert_id: str, phase: str, body: bytes, at_s: float) -> None:
        """A held alert phase becomes ready with its final body (stored anew if unknown)."""
        assert self._outbox is not None
        try:
            row = self._outbox.find(alert_id, self.topic, phase)
            if row is None or not self._outbox.release(row.rowid, body):
                log.warning("alert_release_unknown", alert_id=alert_id, phase=phase)
                self.store(alert_id, phase, body, False, at_s)
                return
        except sqlite3.Error as exc:
            log.error("outbox_write_failed", alert_id=alert_id, phase=phase, error=str(exc))
            self._unstored.append((alert_id, body))
            return
        self._cursor = min(self._cursor, row.rowid - 1)

    # --- publishing -----------------------------------------------------------------

    def replay(self) -> None:
        """After a (re)connect: start again from the oldest ready row, and apply the bounds."""
        assert self._outbox is not None
        self._cursor = 0  # rows in flight are re-sent by paho; _sent skips them
        self._refused.clear()
        self._outbox_call(self._outbox.prune)

    def pump(self, client: Client) -> None:
        """Publish ready outbox rows in order while fewer than max_inflight are unacknowledged."""
        assert self._outbox is not None
        while self._unstored and len(self._inflight) < self.max_inflight:
            client.publish(self.topic, self._unstored.popleft()[1], 1)
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return
        rows = (
            self._outbox_call(
                self._outbox.pending,
                after_rowid=self._cursor,
                limit=room + len(self._sent) + len(self._refused),
            )
            or []
        )
        for row in rows:
            self._cursor = max(self._cursor, row.rowid)
            if row.rowid in self._sent or row.rowid in self._refused:
                continue
            info = client.publish(row.topic, row.payload, 1)
            since_s = self._submitted_s.pop(row.rowid, self._clock())
            self._inflight[info.mid] = _Flight(row.rowid, row.alert_id, row.key, since_s)
            self._sent.add(row.rowid)
            self.counts["published"] += 1
            log.debug("alert_published", alert_id=row.alert_id, phase=row.key, mid=info.mid)
            room -= 1
            if room == 0:
                return

    def acknowledged(self, mid: int, reason: ReasonCode) -> None:
        """The broker answered publish ``mid``: delete its row, or (refused) keep it unsent
        until the next connection."""
        flight = self._inflight.pop(mid, None)
        if flight is None or self._outbox is None:
            return
        self._sent.discard(flight.rowid)
        if reason.is_failure:
            self._refused.add(flight.rowid)
            self.counts["refused"] += 1
            log.error(
                "alert_refused", alert_id=flight.alert_id, phase=flight.phase, reason=str(reason)
            )
            return
        self._outbox_call(self._outbox.ack, flight.rowid)
        self.counts["acked"] += 1
        latency_s = self._clock() - flight.since_s
        self.last_ack_latency_s = latency_s
        log.info(
            "alert_acknowledged",
            alert_id=flight.alert_id,
            phase=flight.phase,
            latency_s=round(latency_s, 4),
        )
        self._refresh_counts()

    # --- helpers --------------------------------------------------------------------

    def _outbox_call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one outbox operation; a database error is logged, never raised."""
        try:
            return method(*args, **kwargs)
        except sqlite3.Error as exc:
            log.error("outbox_error", operation=method.__name__, error=str(exc))
            return None

    def _refresh_counts(self) -> None:
        if self._outbox is None:
            return
        try:
            stats = self._outbox.stats
            self.counts.update(
                outbox_depth=self._outbox.depth(),
                dropped_rows=stats.dropped_rows,
                dropped_age=stats.dropped_age,
            )
        except sqlite3.Error as exc:
            log.error("outbox_error", operation="stats", error=str(exc))


def _decoded(alert_id: str, payload: bytes) -> dict[str, Any] | None:
    """A stored alert's JSON body; None (logged) when it cannot be read."""
    try:
        body: dict[str, Any] = json.loads(payload)
    except ValueError as exc:
        log.error("outbox_row_unreadable", alert_id=alert_id, error=str(exc))
        return None
    return body
