"""The state directory's health: which parts cannot write there, why, and since when."""

from __future__ import annotations

import errno
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .inputhealth import InputChange, InputCondition

__all__ = ["CONDITION", "REASONS", "RETRY_S", "DiskFault", "StateDisk", "disk_reason"]

CONDITION: Final = "disk"
"""The input-style condition (``type: input`` alert, health ``input`` list) of a state
directory that refuses writes."""
RETRY_S: Final = 60.0
"""How often a part that cannot write to the state directory tries again (on its own
thread, never on the tick's)."""
REASONS: Final = ("read_only", "full", "permission", "io_error", "damaged", "busy", "error")
"""What ``disk_reason`` can say."""

_BY_ERRNO: Final = {
    errno.EROFS: "read_only",
    errno.ENOSPC: "full",
    errno.EDQUOT: "full",
    errno.EFBIG: "full",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.EIO: "io_error",
}
_BY_SQLITE: Final = (
    ("SQLITE_READONLY", "read_only"),
    ("SQLITE_FULL", "full"),
    ("SQLITE_CORRUPT", "damaged"),
    ("SQLITE_NOTADB", "damaged"),
    ("SQLITE_BUSY", "busy"),
    ("SQLITE_LOCKED", "busy"),
    ("SQLITE_PERM", "permission"),
    ("SQLITE_AUTH", "permission"),
)


def disk_reason(exc: BaseException, directory: str | Path | None = None) -> str:
    """Why a write under ``directory`` failed, as one of ``REASONS``.

    The error's own code first (errno, or SQLite's error name, also of the error it
    was raised from); for the ones that do not say (SQLite's I/O error on a file system
    remounted read-only after a disk error, "unable to open" in a directory that cannot
    be written), what the file system says: read-only, no space left, not writable."""
    for cause in _causes(exc):
        if isinstance(cause, OSError) and cause.errno in _BY_ERRNO:
            return _BY_ERRNO[cause.errno]
        name = str(getattr(cause, "sqlite_errorname", "") or "")
        for prefix, reason in _BY_SQLITE:
            if name.startswith(prefix):
                return reason
    if directory is not None:
        found = _file_system_says(Path(directory))
        if found is not None:
            return found
    names = [str(getattr(c, "sqlite_errorname", "")) for c in _causes(exc)]
    return "io_error" if any(n.startswith("SQLITE_IOERR") for n in names) else "error"


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _file_system_says(directory: Path) -> str | None:
    """read_only, full or permission from the nearest existing folder up from ``directory``:
    its file system's flags and free space, then a nameless file created there (a file
    system shut down read-only after a disk error keeps its flags, but refuses it)."""
    folder = directory
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        fs = os.statvfs(folder)
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY:
        return "read_only"
    if fs.f_bavail == 0:
        return "full"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return _BY_ERRNO.get(exc.errno or 0)
    return None


@dataclass(frozen=True, slots=True)
class DiskFault:
    """One part of the daemon that cannot write to the state directory."""

    part: str
    """``outbox`` or ``clips``."""
    reason: str
    """One of ``REASONS``."""
    error: str
    """The error itself, for people."""


class StateDisk:
    """Which parts of the daemon cannot write to the state directory, as one condition.

    The parts that write there (the outbox, the clip store) call ``failed`` when a write
    fails and ``recovered`` once one succeeds again, from their own threads; each part
    tries again on its own timer (``RETRY_S``) or at its next write. The tick thread
    calls ``update`` at every wake: one comparison of a counter while nothing changed;
    otherwise the ``disk`` condition's start (the first part failing) or end (the last
    part recovered), reported once each as an ``InputChange`` (channel None) for the
    daemon to alert like the input's conditions. While it lasts, ``active`` gives it for
    the health message's ``input`` list. Its details: ``path``, ``reason`` and ``error``
    of the first part that failed, and ``parts`` (each failing part's reason); the end
    repeats the last ones seen.
    """

    def __init__(self, directory: str | Path, *, clock: Callable[[], float] = time.monotonic):
        self.directory = Path(directory)
        self._clock = clock
        self._lock = threading.Lock()
        self._faults: dict[str, DiskFault] = {}
        self._version = 0
        # The tick thread's view (only ``update`` writes these).
        self._seen = 0
        self._since_s: float | None = None
        self._details: dict[str, Any] = {}

    # --- any thread ----------------------------------------------------------------

    def failed(self, part: str, exc: BaseException, reason: str | None = None) -> str:
        """``part`` cannot write (``exc``); returns the reason (``disk_reason`` unless
        given). Repeating the same fault changes nothing."""
        reason = reason or disk_reason(exc, self.directory)
        fault = DiskFault(part, reason, str(exc)[:500])
        with self._lock:
            if self._faults.get(part) != fault:
                self._faults[part] = fault
                self._version += 1
        return reason

    def recovered(self, part: str) -> None:
        """``part`` writes again (cheap when it was not failing)."""
        if part not in self._faults:
            return
        with self._lock:
            if self._faults.pop(part, None) is not None:
                self._version += 1

    def faults(self) -> list[DiskFault]:
        """The parts failing now, in the order they failed."""
        with self._lock:
            return list(self._faults.values())

    # --- the tick thread -----------------------------------------------------------

    def update(self, now_s: float | None = None) -> list[InputChange]:
        """The ``disk`` condition's start or end if it changed since the last call."""
        if self._version == self._seen:
            return []
        now = self._clock() if now_s is None else now_s
        with self._lock:
            self._seen = self._version
            faults = list(self._faults.values())
        if faults:
            first = faults[0]
            self._details = {
                "path": str(self.directory),
                "reason": first.reason,
                "error": first.error,
                "parts": {fault.part: fault.reason for fault in faults},
            }
            if self._since_s is not None:
                return []
            self._since_s = now
            return [InputChange(CONDITION, None, "start", now, now, dict(self._details))]
        if self._since_s is None:
            return []
        since, self._since_s = self._since_s, None
        return [InputChange(CONDITION, None, "end", since, now, dict(self._details))]

    def active(self) -> list[InputCondition]:
        """The ``disk`` condition while it lasts (as of the last ``update``), else empty."""
        if self._since_s is None:
            return []
        return [InputCondition(CONDITION, None, self._since_s, dict(self._details))]
