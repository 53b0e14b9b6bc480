"""What can still be read of an outbox file that is damaged, truncated or read-only."""

# SQLite's own ".recover" is a feature of its command-line shell, not of the library, so
# this reads the tables row by row through a read-only connection instead: a scan that
# meets a damaged page resumes past it (found by seeking, which needs only the b-tree's
# upper pages), and the unique index, a separate b-tree, names the rows that were lost.

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote

import structlog

from .rows import OpenAlert, OutboxContents, OutboxRow, OutboxStats

__all__ = ["Salvage", "read_damaged"]

log = structlog.get_logger()

_MAX_ROWID: Final = (1 << 63) - 1
_MIN_ROWID: Final = -(1 << 63)
_ROW_COLUMNS: Final = "alert_id, topic, key, payload, created_s, ready"


@dataclass(frozen=True, slots=True)
class Salvage:
    """What ``read_damaged`` found in a file."""

    contents: OutboxContents
    """The rows, open alerts and counters that could be read, in order, ids kept."""
    readable: bool
    """False when the file could not be read as an outbox at all (missing, unreadable,
    not a database): ``contents`` is then empty and says nothing of what it held."""
    lost: tuple[tuple[int, str, str], ...] = ()
    """(rowid, alert_id, phase) of rows the file's index lists but whose data could not
    be read (a lower bound: a damaged index lists fewer)."""
    error: str | None = None
    """The first error met, if any."""

    @property
    def lost_ids(self) -> list[str]:
        """The alert ids of the rows lost, in rowid order, each once."""
        return list(dict.fromkeys(alert_id for _rowid, alert_id, _key in self.lost))


def read_damaged(path: str | Path) -> Salvage:
    """Every row, open alert and counter of the outbox file at ``path`` that SQLite can
    still read. Never writes to it and never raises: a file that cannot be read at all
    gives an empty, ``readable=False`` salvage."""
    errors: list[str] = []
    conn = _connect(str(path), errors)
    if conn is None:
        return Salvage(OutboxContents(), False, error=errors[0] if errors else None)
    try:
        scanned = (_row(raw) for raw in _scan(conn, "outbox", _ROW_COLUMNS, errors))
        rows = {row.rowid: row for row in scanned if row is not None}
        opened = [
            OpenAlert(str(a), str(t), bytes(p))
            for _rowid, a, t, p in _scan(conn, "open_alerts", "alert_id, topic, payload", errors)
            if isinstance(a, str) and isinstance(t, str) and isinstance(p, bytes)
        ]
        counters = {
            str(name): int(value)
            for _rowid, name, value in _scan(conn, "counters", "name, value", errors)
            if isinstance(value, int)
        }
        listed = _listed(conn, errors)
        for rowid in {entry[0] for entry in listed} - rows.keys():  # passed over by the scan
            if (found := _point(conn, rowid)) is not None:
                rows[rowid] = found
        sequence = _sequence(conn, errors)
    finally:
        conn.close()
    lost = tuple(entry for entry in listed if entry[0] not in rows)
    last = max([sequence, *rows, *(entry[0] for entry in listed)])
    contents = OutboxContents(
        rows=tuple(rows[rowid] for rowid in sorted(rows)),
        open_alerts=tuple(opened),
        stats=OutboxStats(counters.get("dropped_rows", 0), counters.get("dropped_age", 0)),
        last_rowid=last,
    )
    return Salvage(contents, True, lost, errors[0] if errors else None)


def _connect(path: str, errors: list[str]) -> sqlite3.Connection | None:
    """A read-only connection that sees the outbox table, or None.

    Without a WAL file, ``immutable=1`` reads the main file as it is and creates nothing
    beside it. With one (a killed writer's), ``mode=ro`` reads what it holds too (it
    needs the shared-memory file, which a read-only file system may lack; then
    ``immutable=1`` all the same). ``writable_schema`` lets SQLite read a file shorter
    than its header says (a truncated one), which it otherwise refuses as corrupt;
    ``query_only`` keeps every statement a read."""
    if not Path(path).is_file():
        errors.append(f"{path}: no such file")
        return None
    wal = Path(path + "-wal").exists()
    for option in ("mode=ro", "immutable=1") if wal else ("immutable=1",):
        try:
            conn = sqlite3.connect(f"file:{quote(path)}?{option}", uri=True)
        except sqlite3.Error as exc:
            errors.append(f"{option}: {exc}")
            continue
        try:
            conn.execute("PRAGMA writable_schema=ON")
            conn.execute("PRAGMA query_only=ON")
            conn.execute("SELECT rowid FROM outbox LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            errors.append(f"{option}: {exc}")
            conn.close()
            continue
        return conn
    return None


def _scan(
    conn: sqlite3.Connection, table: str, columns: str, errors: list[str]
) -> Iterator[tuple[object, ...]]:
    """(rowid, *columns) of every readable row of ``table``, in rowid order, resuming past
    damage: a row whose data cannot be read (a bad overflow page) is passed over; a damaged
    page of the b-tree is passed over whole (``_past_damage``)."""
    after = _MIN_ROWID
    while True:
        try:
            for raw in conn.execute(
                f"SELECT rowid, {columns} FROM {table} WHERE rowid > ? ORDER BY rowid", (after,)
            ):
                if not isinstance(raw[0], int) or raw[0] <= after:
                    continue  # a damaged page's nonsense, out of order
                after = raw[0]
                yield raw
            return
        except sqlite3.Error as exc:
            errors.append(f"{table}: {exc}")
            try:
                found = conn.execute(
                    f"SELECT rowid FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT 1", (after,)
                ).fetchone()
            except sqlite3.Error:
                resume = _past_damage(conn, table, after)
                if resume is None:
                    return
                after = resume
                continue
            if found is None or not isinstance(found[0], int) or found[0] <= after:
                return
            after = found[0]  # its rowid is readable, its data is not: pass it over


def _point(conn: sqlite3.Connection, rowid: int) -> OutboxRow | None:
    """The outbox row ``rowid`` read alone, or None if it cannot be."""
    try:
        raw = conn.execute(
            f"SELECT rowid, {_ROW_COLUMNS} FROM outbox WHERE rowid = ?", (rowid,)
        ).fetchone()
    except sqlite3.Error:
        return None
    return None if raw is None else _row(raw)


def _past_damage(conn: sqlite3.Connection, table: str, after: int) -> int | None:
    """The smallest rowid ``x`` above ``after`` from which a seek ("rowid > x") works
    again, or None if none does: probes ``after`` + 1, 2, 4, ... then bisects. (Readable
    rows between two damaged pages that the probes jump over are read afterwards, one by
    one, from the index: ``read_damaged``.)"""

    def seeks(x: int) -> bool:
        try:
            conn.execute(
                f"SELECT rowid FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT 1", (x,)
            ).fetchone()
        except sqlite3.Error:
            return False
        return True

    if after >= _MAX_ROWID - 1:
        return None
    bad, step = after, 1
    while not seeks(after + step):
        bad = after + step
        if _MAX_ROWID - after <= 2 * step:
            return None
        step *= 2
    good = after + step
    while good - bad > 1:
        middle = (good + bad) // 2
        if seeks(middle):
            good = middle
        else:
            bad = middle
    return good


def _listed(conn: sqlite3.Connection, errors: list[str]) -> list[tuple[int, str, str]]:
    """(rowid, alert_id, phase) of every row as the unique index lists it, as far as it
    can be read: what should be there, to say what was lost."""
    listed: list[tuple[int, str, str]] = []
    try:
        names = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox' "
            "AND name LIKE 'sqlite_autoindex_%'"
        ).fetchall()
    except sqlite3.Error as exc:
        errors.append(f"index: {exc}")
        return listed
    for (name,) in names:
        with contextlib.suppress(sqlite3.Error):
            for rowid, alert_id, key in conn.execute(
                f'SELECT rowid, alert_id, key FROM outbox INDEXED BY "{name}"'
            ):
                if isinstance(rowid, int):
                    listed.append((rowid, str(alert_id), str(key)))
    return sorted(set(listed))


def _sequence(conn: sqlite3.Connection, errors: list[str]) -> int:
    """The highest rowid the outbox ever handed out (AUTOINCREMENT's record), or 0."""
    try:
        found = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    except sqlite3.Error as exc:
        errors.append(f"sqlite_sequence: {exc}")
        return 0
    return int(found[0]) if found is not None and isinstance(found[0], int) else 0


def _row(raw: tuple[object, ...]) -> OutboxRow | None:
    """An outbox row from (rowid, alert_id, topic, key, payload, created_s, ready), or
    None when a damaged page gave values of the wrong types."""
    rowid, alert_id, topic, key, payload, created_s, ready = raw
    if not (
        isinstance(rowid, int)
        and isinstance(alert_id, str)
        and isinstance(topic, str)
        and isinstance(key, str)
        and isinstance(payload, bytes)
        and isinstance(created_s, int | float)
        and isinstance(ready, int)
    ):
        return None
    return OutboxRow(rowid, alert_id, topic, payload, float(created_s), bool(ready), key)
