"""Files that survive a crash or a power cut: atomic replacement with fsync, for every writer.

One implementation for the daemon (clips, models, key files, spectrograms) and the
training side (datasets, run records, plots, models): a reader sees the old file or
the new one, never a part of one, and a power cut just after the call does not
lose the new name.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["fsync_dir", "write_atomic"]

_TEMP_ATTEMPTS = 8


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> Path:
    """Replace ``path`` with ``data`` so that a reader or a crash sees the old file or the
    new one, never a part: the bytes go to a new temporary ``.<name>.<random>.tmp`` in the
    same directory, are fsynced, renamed over ``path``, then the directory is fsynced
    (``fsync_dir``). On any error the temporary file is removed and ``path`` is left as
    it was. ``mode``: the file's exact permission bits (e.g. 0o600 for a private key),
    set before any byte is written; None: 0666 less the umask, as ``open`` would.
    Returns ``path`` as a Path. The directory must exist."""
    target = Path(path)
    tmp, fd = _create_temporary(target, 0o666 if mode is None else mode & 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def _create_temporary(target: Path, mode: int) -> tuple[Path, int]:
    """A new, exclusively created temporary file beside ``target``: its path and
    descriptor (``mode`` less the umask; ``tempfile.mkstemp`` would always give 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for _attempt in range(_TEMP_ATTEMPTS):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, flags, mode)
        except FileExistsError:
            continue  # that name is taken (a leftover, or another writer's): draw again
    raise FileExistsError(f"no free temporary name beside {target} in {_TEMP_ATTEMPTS} tries")


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory, which makes a rename inside it durable (a power cut must not
    lose the new name). Does nothing where the directory cannot be opened or fsynced
    (some filesystems refuse; the file's own data is already safe)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
