"""Opening an outbox file: the schema checked or made, a damaged file salvaged and set aside."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Final

import structlog

from ...errors import OutboxError
from .salvage import Salvage, read_damaged

__all__ = ["COLUMNS", "MEMORY", "open_or_replace"]

log = structlog.get_logger()

MEMORY: Final = ":memory:"
"""Pass as the path for an outbox that lives only as long as the process (not durable)."""

SCHEMA_VERSION: Final = 1
SCHEMA: Final = """
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
COLUMNS: Final = "rowid, alert_id, topic, key, payload, created_s, ready"


class _Corrupt(sqlite3.DatabaseError):
    """The file is a database, but not a sound asd-edge outbox."""


def _is_corrupt(exc: sqlite3.Error) -> bool:
    """True for a file that is damaged or not ours; False for locks, permissions, I/O, full disk."""
    if isinstance(exc, _Corrupt):
        return True
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def open_or_replace(path: str) -> tuple[sqlite3.Connection, Salvage | None]:
    """The file at ``path`` opened (made if missing); a damaged one is first read for what
    can be salvaged (returned with the connection to the new file), then moved aside.
    OutboxError when no usable file can be had (``salvaged``: what was read)."""
    try:
        return _connect(path), None
    except sqlite3.Error as exc:
        if path == MEMORY or not _is_corrupt(exc):
            raise OutboxError(f"{path}: cannot open the outbox: {exc}") from exc
        damage = str(exc)
    except OSError as exc:
        raise OutboxError(f"{path}: cannot open the outbox: {exc}") from exc
    salvage = read_damaged(path)
    try:
        moved = _move_aside(path)
    except OSError as exc:
        raise OutboxError(
            f"{path}: damaged ({damage}) and cannot be moved aside: {exc}",
            salvaged=salvage.contents,
        ) from exc
    log.error("outbox_corrupt", path=path, moved_to=moved, error=damage)
    try:
        return _connect(path), salvage
    except (sqlite3.Error, OSError) as exc:
        raise OutboxError(
            f"{path}: cannot create the outbox: {exc}", salvaged=salvage.contents
        ) from exc


def _connect(path: str) -> sqlite3.Connection:
    """A connection to a sound outbox at ``path`` (WAL, fsync per commit, schema made);
    _Corrupt for a file that is not one."""
    if path != MEMORY:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if path != MEMORY and str(mode).lower() != "wal":
            raise _Corrupt(f"journal_mode: expected wal, got {mode}")
        conn.execute("PRAGMA synchronous=FULL")
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise _Corrupt(f"quick_check: {check}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise _Corrupt(f"user_version: expected {SCHEMA_VERSION}, got {version}")
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;{SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
            )
            conn.execute(f"SELECT {COLUMNS} FROM outbox LIMIT 1").fetchall()
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


def _move_aside(path: str) -> str:
    """Rename the database (and its WAL and shared-memory files) to a timestamped name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = Path(path)
    target = base.with_name(f"{base.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = base.with_name(f"{base.name}.corrupt-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(path + suffix)
        with contextlib.suppress(FileNotFoundError):
            source.rename(str(target) + suffix)
    return str(target)
