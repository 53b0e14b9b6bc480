"""The spectrogram of a clip as colour levels on a fixed dB scale (numpy only)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "FLOOR_DB",
    "LEVELS",
    "MAX_HEIGHT_PX",
    "MAX_WIDTH_PX",
    "Spectrogram",
    "fft_size",
    "spectrogram",
]

FloatArray = npt.NDArray[np.float32]

FLOOR_DB = -100.0
"""Bottom of the colour scale in dB relative to a full-scale sine (fixed, never per clip)."""
LEVELS = 32
"""Colour levels from FLOOR_DB to 0 dB (about 3.2 dB each): more would add bytes to every
picture (the noise of a spectrogram does not compress), not legibility."""
MAX_WIDTH_PX = 800
"""Most time columns; longer clips are averaged in time (power, before the dB)."""
MAX_HEIGHT_PX = 256
"""Most frequency rows; finer FFTs (high rates) are averaged in frequency."""
_FRAMES_PER_BLOCK = 256


def fft_size(sample_rate: int) -> int:
    """FFT length for a rate: 512 at 16 kHz, scaled with the rate to a power of two."""
    return int(2 ** max(6, round(math.log2(512 * sample_rate / 16000))))


@dataclass(frozen=True, slots=True)
class Spectrogram:
    """A clip's spectrogram as colour levels, ready to draw."""

    levels: npt.NDArray[np.uint8]
    """``uint8[rows, columns]`` in 0..LEVELS-1 (FLOOR_DB..0 dB), highest frequency first."""
    duration_s: float
    """Length of the clip; the columns cover it evenly."""
    low_hz: float
    """Frequency at the bottom edge of the lowest row (half a bin below 0 Hz)."""
    high_hz: float
    """Frequency at the top edge of the highest row (half a bin above Nyquist)."""


def _frames(x: FloatArray, n_fft: int) -> int:
    return 1 + (int(x.shape[0]) - n_fft) // (n_fft // 2)


def _edges(n: int, groups: int) -> npt.NDArray[np.int64]:
    """Boundaries of ``min(n, groups)`` nearly equal runs over ``n`` items."""
    return np.linspace(0, n, min(n, groups) + 1).astype(np.int64)


def _window(n_fft: int) -> FloatArray:
    """Periodic Hann window."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def _prepared(samples: npt.ArrayLike, n_fft: int) -> FloatArray:
    """Mono float32 without NaN, zero-padded to one frame if shorter."""
    x = np.nan_to_num(np.asarray(samples, dtype=np.float32).ravel())
    if x.shape[0] < n_fft:
        x = np.concatenate([x, np.zeros(n_fft - x.shape[0], dtype=np.float32)])
    return x


def spectrogram(
    samples: npt.ArrayLike,
    sample_rate: int,
    *,
    max_width_px: int = MAX_WIDTH_PX,
    max_height_px: int = MAX_HEIGHT_PX,
) -> Spectrogram:
    """The levels of ``samples``: the STFT's power, averaged into at most
    ``max_width_px`` columns and ``max_height_px`` rows, then put on the fixed
    FLOOR_DB..0 dB scale (0 dB: a full-scale sine at its bin). Periodic Hann
    window, half-overlapping frames, no centre padding (a clip shorter than one frame is
    zero-padded to one). Frames are transformed a block at a time and summed into
    their column at once, so memory is bounded by the picture, not by the clip."""
    n_fft = fft_size(sample_rate)
    hop = n_fft // 2
    x = _prepared(samples, n_fft)
    window = _window(n_fft)
    full_scale = np.float32((window.sum() / 2.0) ** 2)  # |X|^2 at a unit sine's bin
    n_frames, n_bins = _frames(x, n_fft), n_fft // 2 + 1
    row_edges = _edges(n_bins, max_height_px)
    n_columns = min(n_frames, max_width_px)
    column_of = (np.arange(n_frames) * n_columns) // n_frames  # frame -> column
    total = np.zeros((n_columns, row_edges.shape[0] - 1), dtype=np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    for start in range(0, n_frames, _FRAMES_PER_BLOCK):
        block = frames[start : start + _FRAMES_PER_BLOCK]
        spectrum = np.fft.rfft(block * window, axis=1)
        power = np.add.reduceat(spectrum.real**2 + spectrum.imag**2, row_edges[:-1], axis=1)
        columns = column_of[start : start + block.shape[0]]
        first = np.flatnonzero(np.r_[True, columns[1:] != columns[:-1]])
        total[columns[first]] += np.add.reduceat(power, first, axis=0)
    counts = np.bincount(column_of, minlength=n_columns)[:, None] * np.diff(row_edges)[None, :]
    power = total / (counts * full_scale)
    db = 10.0 * np.log10(np.maximum(power, 10.0 ** (FLOOR_DB / 10.0)))
    level = np.clip((db - FLOOR_DB) / -FLOOR_DB, 0.0, 1.0)
    levels = np.round(level * (LEVELS - 1)).astype(np.uint8).T[::-1]
    bin_hz = sample_rate / n_fft
    return Spectrogram(
        levels=np.ascontiguousarray(levels),
        duration_s=max(int(np.asarray(samples).size), 1) / sample_rate,
        low_hz=-bin_hz / 2,
        high_hz=sample_rate / 2 + bin_hz / 2,
    )
