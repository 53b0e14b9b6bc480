"""Test sounds (a tone, a burst in noise) and WAV files written by the product's own writer."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from asd_edge import audiofile

__all__ = ["sine", "sparse_wav", "tone_burst", "write_wav"]


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """A 16-bit WAV test file, written by the product's own writer; returns the path."""
    audiofile.write_wav(path, samples, rate)
    return path


def sparse_wav(path: Path, rate: int, channels: int, data_bytes: int) -> Path:
    """A 16-bit PCM WAV of ``data_bytes`` of silence that takes no disk space: its header,
    then a hole up to the announced length (``truncate``); returns the path."""
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        channels,
        rate,
        rate * channels * 2,
        channels * 2,
        16,
        b"data",
        data_bytes,
    )
    path.write_bytes(header)
    os.truncate(path, len(header) + data_bytes)
    return path


def sine(
    freq_hz: float, seconds: float = 1.0, amplitude: float = 0.5, rate: int = 16000
) -> np.ndarray:
    """A pure tone, float32."""
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def tone_burst(
    rate: int, seconds: float, burst: tuple[float, float], seed: int = 0, amplitude: float = 0.5
) -> np.ndarray:
    """Quiet broadband noise (about -50 dBFS) with a loud 1 kHz burst in ``burst`` (seconds)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    x = 0.003 * rng.standard_normal(n)
    t = np.arange(n) / rate
    inside = (t >= burst[0]) & (t < burst[1])
    x[inside] += amplitude * np.sin(2 * np.pi * 1000 * t[inside])
    return x.astype(np.float32)
