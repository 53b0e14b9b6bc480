"""Bad disks for tests: a small tmpfs (filled up, remounted read-only) and an ext4 image
that a disk error turns read-only under open files. Needs root (or CAP_SYS_ADMIN): where
mounting is not permitted the test is skipped with the reason. Everything mounted is
unmounted when the test ends (``Mounts.close``, from the ``mounts`` fixture)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["Mounts", "fill", "not_root"]


def not_root() -> None:
    """Skip unless running as an ordinary user: permission bits do not stop root (a
    read-only mount does: the mount variants of these tests cover root)."""
    if os.geteuid() == 0:
        pytest.skip("root writes through permission bits; the read-only-mount variant runs")


def fill(folder: Path) -> Path:
    """Write zeros into ``folder/fill`` until its file system is full; returns the file."""
    path = folder / "fill"
    block = b"\0" * 4096
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return path


class Mounts:
    """The file systems one test mounted, unmounted (in reverse) by ``close``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._mounted: list[Path] = []

    def tmpfs(self, name: str, size_kb: int = 1024) -> Path:
        """A fresh tmpfs of ``size_kb`` at ``root/name``; skips where mounting is refused."""
        where = self._folder(name)
        self._run_or_skip("mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where))
        self._mounted.append(where)
        return where

    def ext4(self, name: str, size_mb: int = 16) -> Path:
        """An ext4 image loop-mounted at ``root/name`` with ``errors=remount-ro`` (see
        ``fail``); skips without mkfs.ext4, losetup or the right to mount."""
        if shutil.which("mkfs.ext4") is None or shutil.which("losetup") is None:
            pytest.skip("an ext4 image needs mkfs.ext4 and losetup (e2fsprogs, mount)")
        self.root.mkdir(parents=True, exist_ok=True)
        image = self.root / f"{name}.img"
        with image.open("wb") as f:
            f.truncate(size_mb << 20)
        self._run_or_skip("mkfs.ext4", "-q", "-F", str(image))
        where = self._folder(name)
        self._run_or_skip("mount", "-o", "loop,errors=remount-ro", str(image), str(where))
        self._mounted.append(where)
        return where

    def fail(self, where: Path) -> None:
        """A disk error on the ext4 at ``where``: the kernel makes it read-only at once,
        under the files held open (what ``mount -o remount,ro`` refuses to do)."""
        source = subprocess.run(
            ["findmnt", "-no", "SOURCE", str(where)], capture_output=True, text=True, check=True
        ).stdout.strip()
        trigger = Path("/sys/fs/ext4") / Path(source).name / "trigger_fs_error"
        if not trigger.exists():
            pytest.skip(f"this kernel has no {trigger} to fail a file system with")
        trigger.write_text("asd-edge test: disk error\n")

    def read_only(self, where: Path) -> None:
        """Remount ``where`` read-only (nothing may hold a file open for writing there)."""
        self._run("mount", "-o", "remount,ro", str(where))

    def writable(self, where: Path) -> None:
        """Remount ``where`` read-write again."""
        self._run("mount", "-o", "remount,rw", str(where))

    def close(self) -> None:
        """Unmount everything, newest first (lazily if something still holds it)."""
        while self._mounted:
            where = self._mounted.pop()
            done = subprocess.run(["umount", str(where)], capture_output=True, check=False)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)

    def _folder(self, name: str) -> Path:
        where = self.root / name
        where.mkdir(parents=True, exist_ok=True)
        return where

    def _run_or_skip(self, *command: str) -> None:
        if shutil.which(command[0]) is None:
            pytest.skip(f"{command[0]} is not installed")
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot {' '.join(command[:2])} here: {done.stderr.strip()}")

    def _run(self, *command: str) -> None:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{' '.join(command)}: {done.stderr.strip()}"
