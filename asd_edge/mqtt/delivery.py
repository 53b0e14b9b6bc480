"""Alert delivery: outbox rows to the broker in order, at QoS 1, deleted on PUBACK."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog
from paho.mqtt.client import Client
from paho.mqtt.reasoncodes import ReasonCode

from ..config import OutboxConfig
from ..statedisk import RETRY_S, StateDisk
from .outbox import Outbox, OutboxStorage

__all__ = ["MAX_INFLIGHT", "Delivery"]

log = structlog.get_logger()

T = TypeVar("T")

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
    re-sends the ones in flight itself). Each phase is published with one payload: a
    held phase never before its release. The outbox is ``outbox.OutboxStorage``: when
    the disk refuses the file, the rows move into memory and are delivered from there
    (``maintain`` takes them back to the file once it can). A database error that
    remains is logged, never raised: a ready phase that cannot be stored at all is
    still published, once, from a bounded queue.
    """

    def __init__(
        self,
        *,
        topic: str,
        outbox_path: Path,
        outbox: OutboxConfig,
        clock: Callable[[], float],
        max_inflight: int = MAX_INFLIGHT,
        retry_s: float = RETRY_S,
        disk: StateDisk | None = None,
    ) -> None:
        self.topic = topic
        """Where alerts go (``<prefix>/alert``)."""
        self.outbox_path = Path(outbox_path)
        self.outbox_config = outbox
        self.max_inflight = max_inflight
        self._clock = clock
        self.storage = OutboxStorage(
            self.outbox_path,
            max_rows=outbox.max_rows,
            max_age_s=outbox.max_age_days * 86400,
            clock=clock,
            retry_s=retry_s,
            disk=disk,
        )
        """The outbox: its file, or memory while the disk refuses it."""
        self._opened = False
        self.held_at_start: list[tuple[str, str, dict[str, Any]]] = []
        """(alert_id, phase, payload) of the rows a previous run left held, once opened."""
        self.open_at_start: list[tuple[str, dict[str, Any]]] = []
        """(alert_id, start payload) of the alerts a previous run started and never ended."""
        self._inflight: dict[int, _Flight] = {}
        self._sent: set[int] = set()
        self._refused: set[int] = set()
        self._cursor = 0
        self._generation = 0  # the storage's, when the cursor was last valid
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
        """Open the outbox (its file, or memory with what can be read of the file: see
        ``OutboxStorage``) and read what a previous run left: the held rows and the alerts
        started and not ended."""
        self._opened = True
        self.storage.open()
        for row in self.storage.run(Outbox.held):
            if (body := _decoded(row.alert_id, row.payload)) is not None:
                self.held_at_start.append((row.alert_id, row.key, body))
        for alert_id, payload in self.storage.run(lambda ob: ob.open_alerts(self.topic)):
            if (body := _decoded(alert_id, payload)) is not None:
                self.open_at_start.append((alert_id, body))
        self._refresh_counts()

    def ensure_open(self) -> None:
        """After ``open`` failed unexpectedly: an outbox all the same, so that delivery goes on."""
        if not self._opened:
            self._opened = True
            self.storage.open()

    def maintain(self) -> None:
        """Every turn of the link thread (a comparison, unless the outbox is in memory and
        its retry is due): back to the file once the disk takes it again."""
        remap = self.storage.retry()
        if remap is None:
            return
        if remap:
            self._renumber(remap)
        self._refresh_counts()

    def close(self) -> None:
        """Close the outbox (every row stored in the file is already on disk)."""
        self.storage.close()

    # --- storing --------------------------------------------------------------------

    def store(self, alert_id: str, phase: str, body: bytes, held: bool, at_s: float) -> None:
        """Store one alert phase (``held``: not published until released); ``at_s`` on the
        injected clock, when it was submitted. A ``start`` is recorded as open and its
        ``end`` closes it, in the same transaction (no write of its own)."""
        try:
            rowid = self.storage.run(
                lambda ob: ob.add(
                    alert_id,
                    self.topic,
                    body,
                    ready=not held,
                    key=phase,
                    opens=phase == "start",
                    closes=phase == "end",
                )
            )
        except sqlite3.Error as exc:
            log.error("outbox_write_failed", alert_id=alert_id, phase=phase, error=str(exc))
            if not held:  # a held phase waits for its release, which carries its last word
                self._unstored.append((alert_id, body))
            return
        self._submitted_s[rowid] = at_s
        while len(self._submitted_s) > self.outbox_config.max_rows:
            del self._submitted_s[next(iter(self._submitted_s))]
        self._refresh_counts()

    def release(self, alert_id: str, phase: str, body: bytes, at_s: float) -> None:
        """A held alert phase becomes ready with its final body (stored anew if unknown)."""
        try:
            row = self.storage.run(lambda ob: ob.find(alert_id, self.topic, phase))
            rowid = None if row is None else row.rowid
            if rowid is None or not self.storage.run(lambda ob: ob.release(rowid, body)):
                log.warning("alert_release_unknown", alert_id=alert_id, phase=phase)
                self.store(alert_id, phase, body, False, at_s)
                return
        except sqlite3.Error as exc:
            log.error("outbox_write_failed", alert_id=alert_id, phase=phase, error=str(exc))
            self._unstored.append((alert_id, body))
            return
        self._cursor = min(self._cursor, rowid - 1)

    # --- publishing -----------------------------------------------------------------

    def replay(self) -> None:
        """After a (re)connect: start again from the oldest ready row, and apply the bounds."""
        self._cursor = 0  # rows in flight are re-sent by paho; _sent skips them
        self._refused.clear()
        self._outbox_call("prune", Outbox.prune)

    def pump(self, client: Client) -> None:
        """Publish ready outbox rows in order while fewer than max_inflight are unacknowledged."""
        while self._unstored and len(self._inflight) < self.max_inflight:
            client.publish(self.topic, self._unstored.popleft()[1], 1)
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return
        self._follow_storage()
        after, limit = self._cursor, room + len(self._sent) + len(self._refused)
        rows = self._outbox_call("pending", lambda ob: ob.pending(after_rowid=after, limit=limit))
        if self._follow_storage():  # it moved during that call: ask where it is now
            rows = self._outbox_call("pending", lambda ob: ob.pending(limit=limit))
        for row in rows or []:
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
        if flight is None or not self._opened:
            return
        self._sent.discard(flight.rowid)
        if reason.is_failure:
            self._refused.add(flight.rowid)
            self.counts["refused"] += 1
            log.error(
                "alert_refused", alert_id=flight.alert_id, phase=flight.phase, reason=str(reason)
            )
            return
        self._outbox_call(
            "ack", lambda ob: ob.ack(flight.rowid, alert_id=flight.alert_id, key=flight.phase)
        )
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

    def _outbox_call(self, name: str, operation: Callable[[Outbox], T]) -> T | None:
        """Run one outbox operation; a database error is logged, never raised."""
        try:
            return self.storage.run(operation)
        except sqlite3.Error as exc:
            log.error("outbox_error", operation=name, error=str(exc))
            return None

    def _follow_storage(self) -> bool:
        """The outbox moved (to memory or back to the file) since the cursor was set: the
        rows there need not be those it points past, so the next pump looks at every row
        again (the ones in flight or sent are skipped). True if it moved."""
        if self.storage.generation == self._generation:
            return False
        self._generation = self.storage.generation
        self._cursor = 0
        return True

    def _renumber(self, remap: dict[int, int]) -> None:
        """Rows the outbox gave new rowids (back on a file holding rows of its own): the
        bookkeeping follows them, and the next pump looks at every row again."""
        self._inflight = {
            mid: dataclasses.replace(f, rowid=remap.get(f.rowid, f.rowid))
            for mid, f in self._inflight.items()
        }
        self._sent = {remap.get(rowid, rowid) for rowid in self._sent}
        self._refused = {remap.get(rowid, rowid) for rowid in self._refused}
        self._submitted_s = {remap.get(r, r): at for r, at in self._submitted_s.items()}
        self._cursor = 0

    def _refresh_counts(self) -> None:
        if not self._opened:
            return
        try:
            stats = self.storage.run(lambda ob: ob.stats)
            depth = self.storage.run(Outbox.depth)
        except sqlite3.Error as exc:
            log.error("outbox_error", operation="stats", error=str(exc))
            return
        self.counts.update(
            outbox_depth=depth, dropped_rows=stats.dropped_rows, dropped_age=stats.dropped_age
        )


def _decoded(alert_id: str, payload: bytes) -> dict[str, Any] | None:
    """A stored alert's JSON body; None (logged) when it cannot be read."""
    try:
        body: dict[str, Any] = json.loads(payload)
    except ValueError as exc:
        log.error("outbox_row_unreadable", alert_id=alert_id, error=str(exc))
        return None
    return body
