"""The outbox: alerts stored before they are published, deleted once acknowledged.

- ``database``: ``Outbox``, one SQLite file (WAL, fsync per commit), or ``MEMORY``.
- ``opening``: the file opened and its schema checked; a damaged one salvaged, set aside
  and replaced.
- ``salvage``: ``read_damaged``, every row SQLite can still read of a damaged, truncated
  or read-only file.
- ``storage``: ``OutboxStorage``, the file while the disk takes writes, memory (with
  what the file held) while it does not, and back.
- ``rows``: what an outbox holds (``OutboxRow``, ``OutboxStats``, ``OutboxContents``).
"""

from ...errors import OutboxError
from .database import MEMORY, Outbox
from .rows import OpenAlert, OutboxContents, OutboxRow, OutboxStats
from .salvage import Salvage, read_damaged
from .storage import OutboxStorage

__all__ = [
    "MEMORY",
    "OpenAlert",
    "Outbox",
    "OutboxContents",
    "OutboxError",
    "OutboxRow",
    "OutboxStats",
    "OutboxStorage",
    "Salvage",
    "read_damaged",
]
