"""What an outbox holds: its rows, its counters, the alerts open, and all of it at once."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["OpenAlert", "OutboxContents", "OutboxRow", "OutboxStats"]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One stored message: an alert phase waiting for the broker's acknowledgement."""

    rowid: int
    """Position in the outbox; rows are published in increasing rowid order."""
    alert_id: str
    """The alert's stable id (the same on every retry)."""
    topic: str
    """MQTT topic the payload goes to."""
    payload: bytes
    """The message body (JSON)."""
    created_s: float
    """When it was stored, in seconds since the epoch."""
    ready: bool
    """False while held (e.g. until its clip is saved): not published yet."""
    key: str = ""
    """What makes the row unique beside alert_id and topic: the alert's phase."""


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """What the bounds took away, counted since the file was created."""

    dropped_rows: int
    """Rows dropped, oldest first, because the outbox held more than max_rows."""
    dropped_age: int
    """Rows dropped because they were older than max_age_s."""


@dataclass(frozen=True, slots=True)
class OpenAlert:
    """An alert started and not ended yet (``Outbox.add`` with ``opens``)."""

    alert_id: str
    topic: str
    payload: bytes
    """The start's payload (what an interrupted end repeats)."""


@dataclass(frozen=True, slots=True)
class OutboxContents:
    """Everything an outbox holds, to carry it into another one: from the file into
    memory when the disk refuses writes, back when it takes them again, or what could be
    read of a damaged file into its replacement (``Outbox.contents`` / ``Outbox.load``)."""

    rows: tuple[OutboxRow, ...] = ()
    """Every row, ready or held, in rowid order."""
    open_alerts: tuple[OpenAlert, ...] = ()
    """The alerts open, in the order they were opened."""
    stats: OutboxStats = field(default_factory=lambda: OutboxStats(0, 0))
    """The counters of what the bounds dropped."""
    last_rowid: int = 0
    """The highest rowid ever handed out (acknowledged rows included): rows added after
    a move get higher ones, so the order of publication holds across it."""
