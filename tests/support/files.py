"""Paths a reader must refuse at once, unread: a FIFO (a reader would wait for a writer
forever), a device that never ends and a huge sparse file (either would fill its memory)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["REJECTED_KINDS", "SPARSE_BYTES", "rejected_file"]

REJECTED_KINDS = ("fifo", "device", "sparse")
"""The kinds ``rejected_file`` makes, for ``pytest.mark.parametrize``."""
SPARSE_BYTES = 2**31
"""The sparse file's size (2 GB; it takes no disk space)."""


def rejected_file(root: Path, kind: str, suffix: str = "") -> tuple[Path, str]:
    """A path of ``kind`` (one of ``REJECTED_KINDS``) under ``root`` named with ``suffix``
    (e.g. ``.onnx``, which a model path needs), and what its refusal says
    (``durable.open_regular``). The device is ``/dev/zero``, through a symlink when the
    name needs ``suffix``."""
    if kind == "fifo":
        path = root / f"fifo{suffix}"
        os.mkfifo(path)
        return path, "not a regular file (a FIFO)"
    if kind == "device":
        path = Path("/dev/zero")
        if suffix:
            path = root / f"zero{suffix}"
            path.symlink_to("/dev/zero")
        return path, "not a regular file (a character device)"
    if kind == "sparse":
        path = root / f"sparse{suffix}"
        with path.open("wb") as f:
            f.truncate(SPARSE_BYTES)
        return path, f"too large: {SPARSE_BYTES:,} bytes"
    raise ValueError(f"kind: expected one of {REJECTED_KINDS}, got {kind!r}")
