"""Clip pictures drawn in a short-lived child process, so the daemon never loads Pillow.

Pillow, its image plugins and its font add about 13 MB to a process for good from the
first picture on, and Python cannot unload them. A clip is rare, so the clip writer hands
each picture to a child ``python`` running ``main`` (about 0.3 s of CPU on this machine,
most of it Python, numpy and Pillow starting) and keeps only the PNG that comes back: the
daemon's memory stays flat however many clips it writes.

The child reads one JSON line (the picture's parameters and the number of samples)
followed by the mono samples as little-endian float32 on stdin, and writes the PNG to
stdout; on failure it exits 1 with one line on stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..childproc import run_python
from ..errors import ChildFailed

__all__ = ["PAINT_TIMEOUT_S", "main", "paint"]

PAINT_TIMEOUT_S: Final = 60.0
"""The longest a picture may take (a 10 min 48 kHz clip takes about 2 s on 2 cores)."""
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_HEADER_MAX_BYTES: Final = 1 << 16
_CHILD: Final = f"import sys; from {__name__} import main; sys.exit(main())"


def paint(
    samples: npt.ArrayLike,
    sample_rate: int,
    *,
    title: str,
    markers_s: Sequence[float] = (),
    pre_s: float = 0.0,
    band_hz: tuple[float, float] | None = None,
) -> bytes:
    """The PNG of ``picture.draw_picture`` for these arguments, drawn in a child process;
    ChildFailed (with the child's reason) when it fails or takes over PAINT_TIMEOUT_S."""
    audio = np.ascontiguousarray(samples, dtype="<f4").reshape(-1)
    header = {
        "sample_rate": int(sample_rate),
        "frames": int(audio.size),
        "title": title,
        "markers_s": [float(t) for t in markers_s],
        "pre_s": float(pre_s),
        "band_hz": None if band_hz is None else [float(band_hz[0]), float(band_hz[1])],
    }
    # One copy of the samples (the message), not two: the clip may be minutes long.
    message = b"".join((json.dumps(header).encode("utf-8"), b"\n", audio.data.cast("B")))
    png = run_python(_CHILD, message, timeout_s=PAINT_TIMEOUT_S, what="the picture process")
    if not png.startswith(_PNG_SIGNATURE):
        raise ChildFailed("the picture process failed: its output is not a PNG")
    return png


def _parse_header(line: bytes) -> dict[str, Any]:
    header = json.loads(line)
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header


def main() -> int:
    """The child: parameters and samples on stdin, the PNG on stdout."""
    from .picture import draw_picture

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    try:
        header = _parse_header(stdin.readline(_HEADER_MAX_BYTES))
        audio = np.frombuffer(stdin.read(), dtype="<f4")
        if audio.size != header["frames"]:
            raise ValueError(f"expected {header['frames']} samples, got {audio.size}")
        band = header["band_hz"]
        png = draw_picture(
            audio,
            int(header["sample_rate"]),
            title=str(header["title"]),
            markers_s=[float(t) for t in header["markers_s"]],
            pre_s=float(header["pre_s"]),
            band_hz=None if band is None else (float(band[0]), float(band[1])),
        ).png
    except (ValueError, KeyError, TypeError, OSError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    stdout.write(png)
    stdout.flush()
    return 0
