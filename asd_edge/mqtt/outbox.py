"""The outbox: a durable, ordered queue of alerts (SQLite) that outlives outages and crashes."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from ..errors import OutboxError

__all__ = ["MEMORY", "Outbox", "OutboxError", "OutboxRow", "OutboxStats"]

log = structlog.get_logger()

MEMORY: Final = ":memory:"
"""Pass as the path for an outbox that lives only as long as the process (not durable)."""

_SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_s REAL NOT NULL,
    ready INTEGER NOT NULL,
    UNIQUE (alert_id, topic, key)
);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created_s);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('dropped_rows', 0), ('dropped_age', 0);
CREATE TABLE IF NOT EXISTS open_alerts (
    alert_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (alert_id, topic)
);
"""
# open_alerts came after version 1 without a new version: CREATE IF NOT EXISTS adds it to
# an older file, and an older daemon reading a newer file ignores it.
_COLUMNS: Final = "rowid, alert_id, topic, key, payload, created_s, ready"


class _Corrupt(sqlite3.DatabaseError):
    """The file is a database, but not a sound asd-edge outbox."""


def _is_corrupt(exc: sqlite3.Error) -> bool:
    """True for a file that is damaged or not ours; False for locks, permissions, I/O, full disk."""
    if isinstance(exc, _Corrupt):
        return True
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


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


class Outbox:
    """Alerts stored before publishing, deleted once acknowledged (SQLite, WAL, fsync per commit).

    It also keeps the alerts that are open (started, not ended; see ``add``), so that
    a start whose end a crash prevented can be ended at the next start.

    Used from one thread only. A file that is not a readable SQLite database of
    ours is renamed aside (``<name>.corrupt-<UTC time>``) with an error log and a
    new one created; OutboxError is raised only when no file can be made at all.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_rows: int,
        max_age_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows: expected at least 1, got {max_rows}")
        if not max_age_s > 0:
            raise ValueError(f"max_age_s: expected a positive number, got {max_age_s}")
        self.path = str(path)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._clock = clock
        self._conn = self._open_or_replace()
        try:
            self.prune()
        except sqlite3.Error as exc:
            self._conn.close()
            raise OutboxError(f"{self.path}: cannot use the outbox: {exc}") from exc

    # --- opening -------------------------------------------------------------------

    def _open_or_replace(self) -> sqlite3.Connection:
        """Open the file, moving a corrupt one aside and starting afresh."""
        try:
            return self._open()
        except sqlite3.Error as exc:
            if self.path == MEMORY or not _is_corrupt(exc):
                raise OutboxError(f"{self.path}: cannot open the outbox: {exc}") from exc
            moved = self._move_aside()
            log.error("outbox_corrupt", path=self.path, moved_to=moved, error=str(exc))
        except OSError as exc:
            raise OutboxError(f"{self.path}: cannot open the outbox: {exc}") from exc
        try:
            return self._open()
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"{self.path}: cannot create the outbox: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        if self.path != MEMORY:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if self.path != MEMORY and str(mode).lower() != "wal":
                raise _Corrupt(f"journal_mode: expected wal, got {mode}")
            conn.execute("PRAGMA synchronous=FULL")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise _Corrupt(f"quick_check: {check}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                raise _Corrupt(f"user_version: expected {_SCHEMA_VERSION}, got {version}")
            try:
                conn.executescript(
                    f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version={_SCHEMA_VERSION};COMMIT;"
                )
                conn.execute(f"SELECT {_COLUMNS} FROM outbox LIMIT 1").fetchall()
                conn.execute("SELECT name, value FROM counters LIMIT 1").fetchall()
                conn.execute("SELECT alert_id, topic, payload FROM open_alerts LIMIT 1").fetchall()
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorname", "") != "SQLITE_ERROR":
                    raise  # busy, locked, read-only, I/O, full: not the file's fault
                raise _Corrupt(f"not an asd-edge outbox: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self) -> str:
        """Rename the database (and its WAL and shared-memory files) to a timestamped name."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = Path(self.path)
        target = base.with_name(f"{base.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = base.with_name(f"{base.name}.corrupt-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(self.path + suffix)
            with contextlib.suppress(FileNotFoundError):
                source.rename(str(target) + suffix)
        return str(target)

    # --- writing -------------------------------------------------------------------

    def add(
        self,
        alert_id: str,
        topic: str,
        payload: bytes,
        *,
        ready: bool = True,
        key: str = "",
        opens: bool = False,
        closes: bool = False,
    ) -> int:
        """Store one message durably and return its rowid.

        (alert_id, topic, key) is unique: adding the same message again (a retry)
        returns the existing row unchanged. The bounds are then enforced: rows older
        than max_age_s, then the oldest beyond max_rows, are dropped and counted.
        ``opens`` (an alert's start) also records the alert as open, with this payload,
        until an add that ``closes`` it (its end), in the same transaction: what stays
        open across a crash is what ``open_alerts`` finds at the next start.
        """
        with _transaction(self._conn):
            found = self._conn.execute(
                "SELECT rowid FROM outbox WHERE alert_id = ? AND topic = ? AND key = ?",
                (alert_id, topic, key),
            ).fetchone()
            if found is not None:
                return int(found[0])
            if opens:
                self._conn.execute(
                    "INSERT OR REPLACE INTO open_alerts VALUES (?, ?, ?)",
                    (alert_id, topic, bytes(payload)),
                )
            if closes:
                self._conn.execute(
                    "DELETE FROM open_alerts WHERE alert_id = ? AND topic = ?", (alert_id, topic)
                )
            cursor = self._conn.execute(
                "INSERT INTO outbox (alert_id, topic, key, payload, created_s, ready) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (alert_id, topic, key, bytes(payload), float(self._clock()), int(ready)),
            )
            rowid = cursor.lastrowid
            assert rowid is not None
            self._enforce_bounds()
        return rowid

    def release(self, rowid: int, payload: bytes) -> bool:
        """A held row becomes ready, with its final payload; False if there is no such row."""
        with _transaction(self._conn):
            cursor = self._conn.execute(
                "UPDATE outbox SET ready = 1, payload = ? WHERE rowid = ?", (bytes(payload), rowid)
            )
        return cursor.rowcount > 0

    def ack(self, rowid: int) -> None:
        """The broker acknowledged the row: delete it (an unknown rowid is ignored)."""
        with _transaction(self._conn):
            self._conn.execute("DELETE FROM outbox WHERE rowid = ?", (rowid,))

    def prune(self) -> int:
        """Drop (and count) the rows beyond the bounds now; returns how many were dropped."""
        with _transaction(self._conn):
            return self._enforce_bounds()

    def _enforce_bounds(self) -> int:
        """Inside a transaction: drop rows too old, then the oldest beyond max_rows."""
        cutoff = float(self._clock()) - self.max_age_s
        old = self._conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE created_s < ?", (cutoff,)
        ).fetchone()[0]
        if old:
            self._conn.execute("DELETE FROM outbox WHERE created_s < ?", (cutoff,))
            self._count("dropped_age", old)
            log.warning("outbox_dropped", reason="max_age", rows=old, max_age_s=self.max_age_s)
        excess = self.depth() - self.max_rows
        if excess > 0:
            self._conn.execute(
                "DELETE FROM outbox WHERE rowid IN "
                "(SELECT rowid FROM outbox ORDER BY rowid LIMIT ?)",
                (excess,),
            )
            self._count("dropped_rows", excess)
            log.warning("outbox_dropped", reason="max_rows", rows=excess, max_rows=self.max_rows)
        return int(old) + max(excess, 0)

    def _count(self, name: str, n: int) -> None:
        self._conn.execute("UPDATE counters SET value = value + ? WHERE name = ?", (n, name))

    # --- reading -------------------------------------------------------------------

    def pending(self, *, after_rowid: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Ready rows with a rowid above ``after_rowid``, oldest first, at most ``limit``."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE ready = 1 AND rowid > ? ORDER BY rowid LIMIT ?",
            (after_rowid, limit),
        ).fetchall()
        return [_row(r) for r in rows]

    def held(self) -> list[OutboxRow]:
        """Rows stored held and not released yet (e.g. left by a previous run), oldest first."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE ready = 0 ORDER BY rowid"
        ).fetchall()
        return [_row(r) for r in rows]

    def find(self, alert_id: str, topic: str, key: str = "") -> OutboxRow | None:
        """The row stored for (alert_id, topic, key), or None."""
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE alert_id = ? AND topic = ? AND key = ?",
            (alert_id, topic, key),
        ).fetchone()
        return None if row is None else _row(row)

    def open_alerts(self, topic: str) -> list[tuple[str, bytes]]:
        """(alert_id, payload) of the alerts on ``topic`` added with ``opens`` and not closed
        since, in the order they were opened: at start, those a crash left open."""
        rows = self._conn.execute(
            "SELECT alert_id, payload FROM open_alerts WHERE topic = ? ORDER BY rowid", (topic,)
        ).fetchall()
        return [(str(alert_id), bytes(payload)) for alert_id, payload in rows]

    def depth(self) -> int:
        """How many rows (ready or held) are waiting."""
        return int(self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    @property
    def stats(self) -> OutboxStats:
        """Rows dropped by the bounds since the file was created (persisted)."""
        values = dict(self._conn.execute("SELECT name, value FROM counters").fetchall())
        return OutboxStats(
            dropped_rows=int(values.get("dropped_rows", 0)),
            dropped_age=int(values.get("dropped_age", 0)),
        )

    def close(self) -> None:
        """Close the database (every commit is already on disk)."""
        self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _row(r: tuple[object, ...]) -> OutboxRow:
    rowid, alert_id, topic, key, payload, created_s, ready = r
    assert isinstance(rowid, int) and isinstance(payload, bytes)
    return OutboxRow(
        rowid=rowid,
        alert_id=str(alert_id),
        topic=str(topic),
        payload=payload,
        created_s=float(created_s),  # type: ignore[arg-type]
        ready=bool(ready),
        key=str(key),
    )
