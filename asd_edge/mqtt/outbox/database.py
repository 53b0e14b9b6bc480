"""The outbox file: a durable, ordered queue of alerts (SQLite) that outlives crashes."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog

from ...errors import OutboxError
from .opening import COLUMNS, MEMORY, open_or_replace
from .rows import OpenAlert, OutboxContents, OutboxRow, OutboxStats
from .salvage import Salvage

__all__ = ["MEMORY", "Outbox"]

log = structlog.get_logger()


class Outbox:
    """Alerts stored before publishing, deleted once acknowledged (SQLite, WAL, fsync per commit).

    It also keeps the alerts that are open (started, not ended; see ``add``), so that
    a start whose end a crash prevented can be ended at the next start.

    Used from one thread only. A file that is not a readable SQLite database of ours
    (damaged, truncated, foreign) is read for every row SQLite can still give
    (``salvage.read_damaged``), renamed aside (``<name>.corrupt-<UTC time>``) and
    replaced by a new file holding those rows, ids and order kept (logged as
    ``outbox_corrupt`` and ``outbox_salvaged``, with the rows salvaged and lost).
    OutboxError is raised when no usable file can be had; its ``salvaged`` then holds
    what was read of a damaged one, for the caller to keep elsewhere.
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
        self._last_rowid = 0
        self._conn, salvage = open_or_replace(self.path)
        try:
            self._last_rowid = self._read_last_rowid()
            if salvage is not None:
                self._carry(salvage)
            self.prune()
        except sqlite3.Error as exc:
            self._conn.close()
            raise OutboxError(
                f"{self.path}: cannot use the outbox: {exc}",
                salvaged=None if salvage is None else salvage.contents,
            ) from exc

    # --- opening -------------------------------------------------------------------

    def _carry(self, salvage: Salvage) -> None:
        """Into the new file: what could be read of the damaged one (ids and order kept)."""
        contents = salvage.contents
        if contents.rows or contents.open_alerts:
            self.load(contents, replace=True)
        lost = salvage.lost_ids
        (log.error if lost else log.warning)(
            "outbox_salvaged",
            path=self.path,
            rows=len(contents.rows),
            held=sum(not row.ready for row in contents.rows),
            open_alerts=len(contents.open_alerts),
            lost=len(salvage.lost),
            lost_alerts=lost[:20],
            readable=salvage.readable,
        )

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
        self._last_rowid = max(self._last_rowid, rowid)
        return rowid

    def release(self, rowid: int, payload: bytes) -> bool:
        """A held row becomes ready, with its final payload; False if there is no such row."""
        with _transaction(self._conn):
            cursor = self._conn.execute(
                "UPDATE outbox SET ready = 1, payload = ? WHERE rowid = ?", (bytes(payload), rowid)
            )
        return cursor.rowcount > 0

    def ack(self, rowid: int, *, alert_id: str | None = None, key: str | None = None) -> None:
        """The broker acknowledged the row: delete it (an unknown rowid is ignored).

        With ``alert_id`` (and ``key``), only if the row is still that alert phase: a
        rowid that now names another row (the outbox moved) is left alone."""
        query = "DELETE FROM outbox WHERE rowid = ?"
        args: list[object] = [rowid]
        if alert_id is not None:
            query += " AND alert_id = ?"
            args.append(alert_id)
        if key is not None:
            query += " AND key = ?"
            args.append(key)
        with _transaction(self._conn):
            self._conn.execute(query, args)

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

    def load(self, contents: OutboxContents, *, replace: bool) -> dict[int, int]:
        """Carry another outbox's ``contents`` into this one, in one transaction; returns
        {old rowid: new rowid} for each row that did not keep its rowid.

        ``replace``: what this one holds is dropped first; every row keeps its rowid and
        the counters become those of ``contents`` (this outbox takes the other's place).
        Otherwise the rows come after those held here: a row already here (same
        alert_id, topic and key) is not added again, but if it is held here and ready
        there (released since), it becomes ready with the payload released; a row whose
        rowid is not above every rowid here gets a new one, and the counters are added up.
        Either way rows added later get higher rowids than ``contents.last_rowid``, and
        the bounds apply.
        """
        remap: dict[int, int] = {}
        conn = self._conn
        with _transaction(conn):
            if replace:
                conn.execute("DELETE FROM outbox")
                conn.execute("DELETE FROM open_alerts")
                conn.execute("UPDATE counters SET value = 0")
            floor = int(conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM outbox").fetchone()[0])
            for row in contents.rows:
                found = conn.execute(
                    "SELECT rowid, ready FROM outbox WHERE alert_id = ? AND topic = ? AND key = ?",
                    (row.alert_id, row.topic, row.key),
                ).fetchone()
                if found is not None:
                    if row.ready and not found[1]:  # released there, still held here
                        conn.execute(
                            "UPDATE outbox SET ready = 1, payload = ? WHERE rowid = ?",
                            (bytes(row.payload), found[0]),
                        )
                    remap[row.rowid] = int(found[0])
                    continue
                values = (row.alert_id, row.topic, row.key, bytes(row.payload), row.created_s)
                if row.rowid > floor:
                    conn.execute(
                        f"INSERT INTO outbox ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (row.rowid, *values, int(row.ready)),
                    )
                    floor = row.rowid
                    continue
                cursor = conn.execute(
                    "INSERT INTO outbox (alert_id, topic, key, payload, created_s, ready) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (*values, int(row.ready)),
                )
                assert cursor.lastrowid is not None
                floor = remap[row.rowid] = cursor.lastrowid
            for alert in contents.open_alerts:
                conn.execute(
                    "INSERT OR REPLACE INTO open_alerts VALUES (?, ?, ?)",
                    (alert.alert_id, alert.topic, bytes(alert.payload)),
                )
            self._count("dropped_rows", contents.stats.dropped_rows)
            self._count("dropped_age", contents.stats.dropped_age)
            conn.execute(
                "UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'outbox'",
                (contents.last_rowid,),
            )
            conn.execute(
                "INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox', ? "
                "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'outbox')",
                (contents.last_rowid,),
            )
            self._enforce_bounds()
        self._last_rowid = max(self._last_rowid, contents.last_rowid, floor)
        return remap

    # --- reading -------------------------------------------------------------------

    def contents(self) -> OutboxContents:
        """Everything this outbox holds, to carry into another (``load``)."""
        found_rows = self._conn.execute(f"SELECT {COLUMNS} FROM outbox ORDER BY rowid")
        rows = [_row(r) for r in found_rows]
        opened = [
            OpenAlert(str(alert_id), str(topic), bytes(payload))
            for alert_id, topic, payload in self._conn.execute(
                "SELECT alert_id, topic, payload FROM open_alerts ORDER BY rowid"
            )
        ]
        last = max([self._read_last_rowid(), self._last_rowid, *(row.rowid for row in rows)])
        return OutboxContents(tuple(rows), tuple(opened), self.stats, last)

    @property
    def last_rowid(self) -> int:
        """The highest rowid this outbox has handed out (kept in memory: known without
        reading the file, e.g. once its disk fails reads)."""
        return self._last_rowid

    def _read_last_rowid(self) -> int:
        """The highest rowid in the file's records (AUTOINCREMENT's, or a row's)."""
        found = self._conn.execute(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0), "
            "COALESCE((SELECT MAX(rowid) FROM outbox), 0))"
        ).fetchone()
        return int(found[0])

    def pending(self, *, after_rowid: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Ready rows with a rowid above ``after_rowid``, oldest first, at most ``limit``."""
        rows = self._conn.execute(
            f"SELECT {COLUMNS} FROM outbox WHERE ready = 1 AND rowid > ? ORDER BY rowid LIMIT ?",
            (after_rowid, limit),
        ).fetchall()
        return [_row(r) for r in rows]

    def held(self) -> list[OutboxRow]:
        """Rows stored held and not released yet (e.g. left by a previous run), oldest first."""
        rows = self._conn.execute(
            f"SELECT {COLUMNS} FROM outbox WHERE ready = 0 ORDER BY rowid"
        ).fetchall()
        return [_row(r) for r in rows]

    def find(self, alert_id: str, topic: str, key: str = "") -> OutboxRow | None:
        """The row stored for (alert_id, topic, key), or None."""
        row = self._conn.execute(
            f"SELECT {COLUMNS} FROM outbox WHERE alert_id = ? AND topic = ? AND key = ?",
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
        conn.execute("COMMIT")  # a full or read-only disk fails here: roll back too
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


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
