"""Spectrogram pictures of clips as PNG files, with numpy, zlib and struct only."""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .audiofile import _fsync_dir

__all__ = [
    "BAND_PX",
    "FLOOR_DB",
    "MARKER_RGB",
    "MAX_HEIGHT_PX",
    "MAX_WIDTH_PX",
    "PRE_ROLL_RGB",
    "encode_png",
    "fft_size",
    "spectrogram_png",
    "spectrogram_rgb",
    "stft_db",
    "write_png",
]

FloatArray = npt.NDArray[np.float32]
RgbArray = npt.NDArray[np.uint8]

FLOOR_DB = -100.0
"""Bottom of the colour scale in dB relative to a full-scale sine (fixed, never per clip)."""
MAX_WIDTH_PX = 1600
"""Widest picture; longer clips are binned in time (power averaged)."""
MAX_HEIGHT_PX = 512
"""Most frequency rows; finer FFTs (high rates) are binned in frequency."""
BAND_PX = 6
"""Height of the band above the spectrogram that marks the pre-roll."""
MARKER_RGB = (255, 48, 48)
"""Colour of the vertical lines where the anomaly starts and ends (absent from viridis)."""
PRE_ROLL_RGB = (230, 230, 230)
"""Colour of the band's pre-roll part (the rest of the band is black)."""

# Viridis sampled at nine points (0, 1/8, ..., 1); interpolated into a 256-entry LUT.
_VIRIDIS = np.array(
    [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ],
    dtype=np.float64,
)
_LUT: RgbArray = (
    np.stack(
        [
            np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_VIRIDIS)), _VIRIDIS[:, c])
            for c in range(3)
        ],
        axis=1,
    )
    .round()
    .astype(np.uint8)
)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FRAMES_PER_BLOCK = 256


def fft_size(sample_rate: int) -> int:
    """FFT length for a rate: 512 at 16 kHz, scaled with the rate to a power of two."""
    return int(2 ** max(6, round(math.log2(512 * sample_rate / 16000))))


def stft_db(samples: npt.ArrayLike, sample_rate: int) -> tuple[FloatArray, int]:
    """Power spectrogram in dB (0 dB = a full-scale sine), ``[frames, n_fft // 2 + 1]``.

    Periodic Hann window, half-overlapping frames, no centre padding (a clip
    shorter than one frame is zero-padded to one). Returns the dB values, floored
    at ``FLOOR_DB``, and the hop in samples.
    """
    x = np.nan_to_num(np.asarray(samples, dtype=np.float32).ravel())
    n_fft = fft_size(sample_rate)
    hop = n_fft // 2
    if x.shape[0] < n_fft:
        x = np.concatenate([x, np.zeros(n_fft - x.shape[0], dtype=np.float32)])
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    full_scale = (window.sum() / 2.0) ** 2  # |X|^2 at the bin of a unit-amplitude sine
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    power = np.empty((frames.shape[0], n_fft // 2 + 1), dtype=np.float32)
    for i in range(0, frames.shape[0], _FRAMES_PER_BLOCK):  # bounded temporary memory
        spectrum = np.fft.rfft(frames[i : i + _FRAMES_PER_BLOCK] * window, axis=1)
        power[i : i + _FRAMES_PER_BLOCK] = spectrum.real**2 + spectrum.imag**2
    power /= np.float32(full_scale)
    db = 10.0 * np.log10(np.maximum(power, np.float32(10.0 ** (FLOOR_DB / 10.0))))
    return db.astype(np.float32), hop


def _bin_mean_db(db: FloatArray, groups: int, axis: int) -> FloatArray:
    """Average ``db`` in power over ``groups`` nearly equal runs along ``axis``."""
    n = db.shape[axis]
    if n <= groups:
        return db
    edges = np.linspace(0, n, groups + 1).astype(np.int64)
    power = np.add.reduceat(10.0 ** (db.astype(np.float64) / 10.0), edges[:-1], axis=axis)
    counts = np.diff(edges).astype(np.float64)
    shape = [1, 1]
    shape[axis] = groups
    mean = power / counts.reshape(shape)
    return (10.0 * np.log10(mean)).astype(np.float32)


def spectrogram_rgb(
    samples: npt.ArrayLike,
    sample_rate: int,
    *,
    markers_s: Sequence[float] = (),
    pre_s: float = 0.0,
    max_width_px: int = MAX_WIDTH_PX,
) -> RgbArray:
    """The picture: a ``BAND_PX`` band on top (pre-roll in light grey), below it the
    spectrogram with low frequencies at the bottom, and a red vertical line at each
    marker (seconds from the clip's start). ``uint8[height, width, 3]``."""
    x = np.asarray(samples, dtype=np.float32).ravel()
    duration_s = max(x.shape[0], 1) / sample_rate
    db, _hop = stft_db(x, sample_rate)
    db = _bin_mean_db(db, max_width_px, axis=0)
    db = _bin_mean_db(db, MAX_HEIGHT_PX, axis=1)
    level = np.clip((db - FLOOR_DB) / -FLOOR_DB, 0.0, 1.0)
    index = np.round(level * 255).astype(np.intp)
    image = _LUT[index.T[::-1]]  # rows: frequency, highest first
    width = image.shape[1]
    band = np.zeros((BAND_PX, width, 3), dtype=np.uint8)
    band[: BAND_PX - 1, : _column(pre_s, duration_s, width)] = PRE_ROLL_RGB
    for marker_s in markers_s:
        if math.isfinite(marker_s) and 0.0 <= marker_s <= duration_s:
            image[:, min(_column(marker_s, duration_s, width), width - 1)] = MARKER_RGB
    return np.ascontiguousarray(np.concatenate([band, image], axis=0))


def _column(t_s: float, duration_s: float, width: int) -> int:
    """Picture column of a time (the frames evenly cover the clip)."""
    return max(0, min(width, round(t_s / duration_s * width)))


def encode_png(rgb: npt.ArrayLike) -> bytes:
    """An 8-bit RGB PNG of ``uint8[height, width, 3]`` (no filtering, zlib level 6)."""
    image = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"rgb must be uint8[height, width, 3], got shape {image.shape}")
    height, width = image.shape[0], image.shape[1]
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # filter byte 0 per row
    rows[:, 1:] = image.reshape(height, 3 * width)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def write_png(path: str | os.PathLike[str], rgb: npt.ArrayLike) -> None:
    """Write ``encode_png(rgb)`` atomically (``.<name>.tmp``, fsync, rename, fsync dir)."""
    target = Path(path)
    data = encode_png(rgb)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def spectrogram_png(
    samples: npt.ArrayLike,
    sample_rate: int,
    path: str | os.PathLike[str],
    *,
    markers_s: Sequence[float] = (),
    pre_s: float = 0.0,
) -> tuple[int, int]:
    """Write the spectrogram picture of ``samples`` to ``path``; returns (height, width)."""
    rgb = spectrogram_rgb(samples, sample_rate, markers_s=markers_s, pre_s=pre_s)
    write_png(path, rgb)
    return rgb.shape[0], rgb.shape[1]
