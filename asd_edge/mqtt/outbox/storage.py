"""Where the outbox lives: its file, or memory while the disk refuses the file."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal, TypeVar

import structlog

from ...errors import OutboxError
from ...statedisk import RETRY_S, StateDisk, disk_reason
from .database import MEMORY, Outbox
from .rows import OutboxContents
from .salvage import read_damaged

__all__ = ["PART", "OutboxStorage", "is_disk_error"]

log = structlog.get_logger()

PART = "outbox"
"""The part named in ``StateDisk`` (and the ``disk`` alert's ``parts``)."""

T = TypeVar("T")

_DISK_ERRORS: Final = (
    "SQLITE_READONLY",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_CANTOPEN",
    "SQLITE_CORRUPT",
    "SQLITE_NOTADB",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_PERM",
    "SQLITE_PROTOCOL",
    "SQLITE_NOLFS",
)
"""SQLite's errors (and their extended forms) that say the file or its disk failed."""


def is_disk_error(exc: BaseException) -> bool:
    """True for an error of the file or its disk (read-only, I/O, full, cannot open,
    damaged, busy or locked); False for the ones of the code that used it (a programming,
    integrity or plain SQL error), which moving to memory would not cure."""
    if not isinstance(exc, sqlite3.DatabaseError) or isinstance(
        exc, sqlite3.ProgrammingError | sqlite3.IntegrityError
    ):
        return False
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    return name.startswith(_DISK_ERRORS)


class OutboxStorage:
    """The outbox the link's delivery uses: the file, or memory while the disk refuses it.

    ``open`` opens the file. If it cannot be used (a read-only or full file system, no
    permission, a damaged file that cannot be replaced), or if an operation on it fails
    later (``run``: the disk filled up, was remounted read-only), the outbox moves into
    memory with every row and open alert that can still be read of the file (the open
    connection's ``Outbox.contents``, else ``salvage.read_damaged``), keeping each row's
    rowid, order and held state, and the failed operation runs there: nothing the file
    held is stranded and nothing is published twice. The memory outbox is bounded by
    ``max_rows`` like the file.

    While in memory, ``retry`` (called often; it costs a comparison) opens the file again
    every ``retry_s``; once it takes writes, it gets the memory outbox's rows (replacing
    what it held if that was read into memory, else after its own rows, renumbered where
    needed: ``retry`` returns {old rowid: new rowid}) and is used again. ``storage``,
    ``reason`` and ``error`` say where the rows are and why; ``disk`` is told as the part
    ``outbox``. Rows in memory are lost if the process ends before the disk takes them.

    Once the file has been open, a rowid is never handed out twice: the memory outbox
    numbers its rows after the highest rowid the file handed out, even when the file
    cannot be read any more. (A file that could not be opened at start gives memory no
    such number; when it comes back, ``retry`` renumbers memory's rows after its own, and
    acknowledgements match the alert and phase, never a bare rowid.) ``generation`` counts
    the moves (to memory and back), for a caller that keeps a position in the rows
    (``Delivery``'s cursor) to start again.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_rows: int,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
        retry_s: float = RETRY_S,
        disk: StateDisk | None = None,
    ) -> None:
        self.path = str(path)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.retry_s = retry_s
        self.disk = disk
        self._clock = clock
        self._file: Outbox | None = None
        self._memory: Outbox | None = None
        self._file_known = True  # the memory outbox holds all the file held
        self._retry_at = 0.0
        self.generation = 0
        """How many times the outbox moved between the file and memory."""
        self.reason: str | None = None
        """Why the outbox is in memory (``statedisk.REASONS``); None on the file."""
        self.error: str | None = None
        """The error that put it in memory; None on the file."""

    @property
    def storage(self) -> Literal["file", "memory"]:
        """Where the rows are now."""
        return "file" if self._file is not None else "memory"

    def open(self) -> None:
        """Open the file, or the memory outbox with what can be read of the file."""
        try:
            self._file = Outbox(self.path, max_rows=self.max_rows, max_age_s=self.max_age_s)
        except (OutboxError, sqlite3.Error, OSError) as exc:
            salvaged = getattr(exc, "salvaged", None)
            self._fall_back(exc, salvaged if isinstance(salvaged, OutboxContents) else None)

    def run(self, operation: Callable[[Outbox], T]) -> T:
        """``operation`` on the outbox in use; an error of the file or its disk
        (``is_disk_error``) moves the outbox into memory (see the class) and runs it there.
        Any other database error (the code's, not the disk's), and any error in memory,
        is logged and raised."""
        if self._file is None and self._memory is None:
            self.open()
        file = self._file
        if file is not None:
            try:
                return operation(file)
            except sqlite3.Error as exc:
                if not is_disk_error(exc):
                    log.error(
                        "outbox_operation_failed",
                        path=self.path,
                        error=str(exc),
                        error_name=getattr(exc, "sqlite_errorname", None),
                        exc_info=True,
                    )
                    raise
                self._fall_back(exc)
        assert self._memory is not None
        return operation(self._memory)

    def retry(self, now_s: float | None = None) -> dict[int, int] | None:
        """In memory and ``retry_s`` after the last attempt: back to the file if it takes
        the memory outbox's rows. Returns the rowids that changed ({} if none) once back
        on the file, else None."""
        memory = self._memory
        if memory is None or self._file is not None:
            return None
        now = self._clock() if now_s is None else now_s
        if now < self._retry_at:
            return None
        self._retry_at = now + self.retry_s
        try:
            file = Outbox(self.path, max_rows=self.max_rows, max_age_s=self.max_age_s)
        except (OutboxError, sqlite3.Error, OSError) as exc:
            log.debug("outbox_retry_failed", path=self.path, error=str(exc))
            return None
        try:
            remap = file.load(memory.contents(), replace=self._file_known)
        except sqlite3.Error as exc:
            file.close()
            log.debug("outbox_retry_failed", path=self.path, error=str(exc))
            return None
        memory.close()
        self._memory, self._file = None, file
        self.generation += 1
        log.warning(
            "outbox_restored",
            path=self.path,
            rows=file.depth(),
            was=self.reason,
            renumbered=len(remap),
        )
        self.reason = self.error = None
        if self.disk is not None:
            self.disk.recovered(PART)
        return remap

    def close(self) -> None:
        """Close the outbox in use; rows still in memory are gone with it (logged)."""
        if self._memory is not None:
            with contextlib.suppress(sqlite3.Error):
                left = self._memory.depth()
                if left:
                    log.error("outbox_memory_lost", path=self.path, rows=left, reason=self.reason)
        for outbox in (self._file, self._memory):
            if outbox is not None:
                with contextlib.suppress(sqlite3.Error):
                    outbox.close()

    def _fall_back(self, exc: BaseException, contents: OutboxContents | None = None) -> None:
        """Into memory, with ``contents`` or what can be read of the file."""
        file, self._file = self._file, None
        floor = 0 if file is None else file.last_rowid  # known without reading the file
        if file is not None and contents is None:
            with contextlib.suppress(sqlite3.Error):
                contents = file.contents()  # reads still work on a disk that refuses writes
        if file is not None:
            with contextlib.suppress(sqlite3.Error):
                file.close()
        known = True
        if contents is None:
            salvage = read_damaged(self.path)
            contents = salvage.contents
            known = salvage.readable or not Path(self.path).exists()
        if floor > contents.last_rowid:
            contents = dataclasses.replace(contents, last_rowid=floor)
        memory = Outbox(MEMORY, max_rows=self.max_rows, max_age_s=self.max_age_s)
        if contents.rows or contents.open_alerts or contents.last_rowid:
            memory.load(contents, replace=True)
        self._memory, self._file_known = memory, known
        self.generation += 1
        self._retry_at = self._clock() + self.retry_s
        self.reason = disk_reason(exc, Path(self.path).parent)
        self.error = str(exc)
        log.error(
            "outbox_unavailable",
            path=self.path,
            reason=self.reason,
            error=self.error,
            fallback="memory",
            rows=memory.depth(),
            file_read=known,
            retry_s=self.retry_s,
        )
        if self.disk is not None:
            self.disk.failed(PART, exc, self.reason)
