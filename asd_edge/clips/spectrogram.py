"""Spectrogram pictures of clips as PNG files, with numpy, zlib and struct only."""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "BAND_PX",
    "BRACKET_PX",
    "FLOOR_DB",
    "LEVELS",
    "MARKER_RGB",
    "MAX_HEIGHT_PX",
    "MAX_WIDTH_PX",
    "PALETTE",
    "PRE_ROLL_RGB",
    "encode_png",
    "fft_size",
    "spectrogram_indexed",
    "stft_power",
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
"""Colour of the vertical lines where the anomaly starts and ends (absent from viridis), and
of the bracket around the strongest evidence band."""
BRACKET_PX = 3
"""Width of the bracket bars drawn at both sides of the picture across the evidence band;
the band's edges are dashed lines between them."""
PRE_ROLL_RGB = (230, 230, 230)
"""Colour of the band's pre-roll part (the rest of the band is black)."""

# Viridis sampled at nine points (0, 1/8, ..., 1), interpolated into LEVELS palette entries;
# the last entries of the 256-colour palette are the band and marker colours.
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
LEVELS = 253
"""Colour levels between FLOOR_DB and 0 dB."""
_BLACK, _PRE_ROLL, _MARKER = LEVELS, LEVELS + 1, LEVELS + 2
PALETTE: RgbArray = (
    np.concatenate(
        [
            np.stack(
                [
                    np.interp(
                        np.linspace(0, 1, LEVELS), np.linspace(0, 1, len(_VIRIDIS)), _VIRIDIS[:, c]
                    )
                    for c in range(3)
                ],
                axis=1,
            ),
            np.array([(0, 0, 0), PRE_ROLL_RGB, MARKER_RGB], dtype=np.float64),
        ]
    )
    .round()
    .astype(np.uint8)
)
"""The 256 colours of the picture: viridis levels, then black, pre-roll and marker colours."""
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FRAMES_PER_BLOCK = 256
_ZLIB_LEVEL = 6


def fft_size(sample_rate: int) -> int:
    """FFT length for a rate: 512 at 16 kHz, scaled with the rate to a power of two."""
    return int(2 ** max(6, round(math.log2(512 * sample_rate / 16000))))


def stft_power(samples: npt.ArrayLike, sample_rate: int) -> tuple[FloatArray, int]:
    """Power spectrogram relative to a full-scale sine (1.0 = 0 dB), ``[frames, n_fft//2+1]``.

    Periodic Hann window, half-overlapping frames, no centre padding (a clip
    shorter than one frame is zero-padded to one). Returns the power and the hop
    in samples.
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
    return power, hop


def _bin_mean(power: FloatArray, groups: int, axis: int) -> FloatArray:
    """Average ``power`` over ``groups`` nearly equal runs along ``axis``."""
    n = power.shape[axis]
    if n <= groups:
        return power
    edges = np.linspace(0, n, groups + 1).astype(np.int64)
    total = np.add.reduceat(power, edges[:-1], axis=axis)
    shape = [1, 1]
    shape[axis] = groups
    return (total / np.diff(edges).astype(np.float32).reshape(shape)).astype(np.float32)


def spectrogram_indexed(
    samples: npt.ArrayLike,
    sample_rate: int,
    *,
    markers_s: Sequence[float] = (),
    pre_s: float = 0.0,
    max_width_px: int = MAX_WIDTH_PX,
    band_hz: tuple[float, float] | None = None,
) -> npt.NDArray[np.uint8]:
    """The picture as ``PALETTE`` indices, ``uint8[height, width]``: a ``BAND_PX`` band
    on top (pre-roll in light grey), below it the spectrogram (dB from ``FLOOR_DB``
    to 0, low frequencies at the bottom), and a red vertical line at each marker
    (seconds from the clip's start). ``band_hz`` (the strongest evidence band) is
    bracketed in red: ``BRACKET_PX`` bars at both sides across its rows, dashed
    lines at its edges. Long clips are averaged into ``max_width_px`` columns, fine
    FFTs into ``MAX_HEIGHT_PX`` rows (in power, before the dB)."""
    x = np.asarray(samples, dtype=np.float32).ravel()
    duration_s = max(x.shape[0], 1) / sample_rate
    power, _hop = stft_power(x, sample_rate)
    n_bins = power.shape[1]
    power = _bin_mean(_bin_mean(power, max_width_px, axis=0), MAX_HEIGHT_PX, axis=1)
    db = 10.0 * np.log10(np.maximum(power, np.float32(10.0 ** (FLOOR_DB / 10.0))))
    level = np.clip((db - FLOOR_DB) / -FLOOR_DB, 0.0, 1.0)
    image = np.round(level * (LEVELS - 1)).astype(np.uint8).T[::-1]  # highest frequency first
    width = image.shape[1]
    band = np.full((BAND_PX, width), _BLACK, dtype=np.uint8)
    band[: BAND_PX - 1, : _column(pre_s, duration_s, width)] = _PRE_ROLL
    picture = np.concatenate([band, image], axis=0)
    for marker_s in markers_s:
        if math.isfinite(marker_s) and 0.0 <= marker_s <= duration_s:
            picture[BAND_PX:, min(_column(marker_s, duration_s, width), width - 1)] = _MARKER
    if band_hz is not None:
        _bracket(picture, band_hz, sample_rate, n_bins)
    return picture


def _bracket(
    picture: npt.NDArray[np.uint8], band_hz: tuple[float, float], sample_rate: int, n_bins: int
) -> None:
    """Mark the rows of ``band_hz`` in the spectrogram part of ``picture`` (in place)."""
    height = picture.shape[0] - BAND_PX
    hz_per_row = sample_rate / 2.0 / height * (n_bins / (n_bins - 1)) if n_bins > 1 else 1.0
    lo, hi = sorted(band_hz)
    # rows counted from the bottom (row r covers [r, r + 1) * hz_per_row, roughly)
    low_row = min(height - 1, max(0, math.floor(lo / hz_per_row)))
    high_row = min(height - 1, max(low_row, math.ceil(hi / hz_per_row) - 1))
    top, bottom = BAND_PX + height - 1 - high_row, BAND_PX + height - 1 - low_row
    width = picture.shape[1]
    bar = min(BRACKET_PX, width)
    picture[top : bottom + 1, :bar] = _MARKER
    picture[top : bottom + 1, width - bar :] = _MARKER
    dashes = (np.arange(width) // 4) % 2 == 0
    picture[top, dashes] = _MARKER
    picture[bottom, dashes] = _MARKER


def _column(t_s: float, duration_s: float, width: int) -> int:
    """Picture column of a time (the frames evenly cover the clip)."""
    return max(0, min(width, round(t_s / duration_s * width)))


def encode_png(pixels: npt.ArrayLike, palette: npt.ArrayLike | None = None) -> bytes:
    """An 8-bit PNG: RGB from ``uint8[height, width, 3]``, or, with ``palette``
    (``uint8[n <= 256, 3]``), indexed colour from ``uint8[height, width]`` indices
    (a third of the data to compress). No row filter, zlib level 6."""
    image = np.ascontiguousarray(np.asarray(pixels, dtype=np.uint8))
    if palette is None:
        if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ValueError(f"rgb must be uint8[height, width, 3], got shape {image.shape}")
        colour_type, plte = 2, b""
    else:
        colours = np.ascontiguousarray(np.asarray(palette, dtype=np.uint8))
        if colours.ndim != 2 or colours.shape[1] != 3 or not 1 <= colours.shape[0] <= 256:
            raise ValueError(f"palette must be uint8[1..256, 3], got shape {colours.shape}")
        if image.ndim != 2 or 0 in image.shape:
            raise ValueError(f"indices must be uint8[height, width], got shape {image.shape}")
        if int(image.max()) >= colours.shape[0]:
            raise ValueError(f"index {int(image.max())} is beyond the {colours.shape[0]} colours")
        colour_type, plte = 3, colours.tobytes()
    height, width = image.shape[0], image.shape[1]
    rows = np.zeros((height, 1 + image[0].size), dtype=np.uint8)  # filter byte 0 per row
    rows[:, 1:] = image.reshape(height, -1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join(
        [
            _PNG_SIGNATURE,
            chunk(b"IHDR", header),
            chunk(b"PLTE", plte) if plte else b"",
            chunk(b"IDAT", zlib.compress(rows.tobytes(), _ZLIB_LEVEL)),
            chunk(b"IEND", b""),
        ]
    )
