"""Files that survive a crash or a power cut, and files read without risk.

Writing: atomic replacement with fsync, one implementation for the daemon (clips,
models, key files, spectrograms) and the training side (datasets, run records, plots,
models): a reader sees the old file or the new one, never a part of one, and a power
cut just after the call does not lose the new name.

Reading: a file a configuration names (the configuration itself, models, keys,
passwords, TLS files) is read only if it is a regular file within a size bound, so a
FIFO, ``/dev/zero`` or a huge sparse file is refused at once instead of hanging the
reader or filling its memory.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import FileRejected

__all__ = ["fsync_dir", "open_regular", "read_regular", "write_atomic"]

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


def open_regular(path: str | os.PathLike[str], max_bytes: int) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file of at most ``max_bytes``.

    Checked before a byte is read: anything but a regular file (a FIFO, whose reader
    waits for a writer; a device such as ``/dev/zero``, which never ends; a directory
    or a socket) and a file larger than ``max_bytes`` are FileRejected; a file that
    cannot be opened raises the OSError ``open`` raises. The file is opened without
    waiting (O_NONBLOCK) and checked again through its descriptor, so a FIFO swapped in
    after the first look is refused too."""
    _check_regular(path, os.stat(path), max_bytes)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        _check_regular(path, os.fstat(fd), max_bytes)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of ``path``, a regular file of at most ``max_bytes`` (``open_regular``);
    FileRejected also when it grows past ``max_bytes`` while it is read."""
    with open_regular(path, max_bytes) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileRejected(path, f"too large: grew past {max_bytes:,} bytes while it was read")
    return data


def _check_regular(path: str | os.PathLike[str], st: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise FileRejected(path, f"not a regular file ({_file_kind(st.st_mode)})")
    if st.st_size > max_bytes:
        raise FileRejected(path, f"too large: {st.st_size:,} bytes (at most {max_bytes:,})")


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), f"file type {stat.S_IFMT(mode):o}")
