"""Synthetic faults injected into *real* normal recordings (numpy and scipy only).

Users have no recordings of their machine failing. To choose a detector and to say
what it catches at its threshold, faults are added to held-out normal audio of the
user's own machine, the way ``training.synth`` makes them on its synthetic machine (which builds its
faults from :func:`decaying_tone` and :func:`place_pulses` here):

- ``impulses``: a train of short resonant clicks (a bearing defect) at a rate
  unrelated to the machine's (20-70 Hz), resonance 2-5 kHz;
- ``tone_shift``: the whole sound slightly faster (pitch and speed up by
  ``2 % x severity``): a changed running speed;
- ``imbalance``: amplitude modulation at a slow rotation rate (5-25 Hz);
- ``band_level``: one band (a third of an octave to an octave) louder by
  ``3 dB x severity``, all else unchanged: the signature of many real faults;
- ``squeal``: a narrowband tone with vibrato (1.5-6 kHz);
- ``level``: the whole sound ``2 dB x severity`` louder or quieter (a clogged filter, a
  loose cover, a failing motor: many faults change mostly the loudness).

``severity`` is 0.5 (slight), 1 (clear) or 2 (strong) in the reports; added sounds
(impulses, squeal) sit at ``ADDED_DB + 20 log10(severity)`` dB relative to the
recording's RMS. Everything is seeded: the same recording, fault, severity and seed
give the same samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from scipy import signal

__all__ = ["ADDED_DB", "FAULTS", "SEVERITIES", "decaying_tone", "inject", "place_pulses"]

FAULTS: tuple[str, ...] = (
    "impulses",
    "tone_shift",
    "imbalance",
    "band_level",
    "squeal",
    "level",
)
"""Every fault :func:`inject` makes."""
SEVERITIES: tuple[float, ...] = (0.5, 1.0, 2.0)
"""The severities the reports use: slight, clear, strong."""
ADDED_DB = -14.0
"""Level of an added sound (impulses, squeal) at severity 1, dB relative to the
recording's RMS; each doubling of severity adds 6 dB."""

FloatArray = npt.NDArray[np.float32]


def decaying_tone(freq_hz: float, decay_s: float, sample_rate: int) -> np.ndarray:
    """A sine at ``freq_hz`` decaying with time constant ``decay_s`` (6 of them long)."""
    length = max(8, round(6 * decay_s * sample_rate))
    k = np.arange(length)
    return np.exp(-k / (decay_s * sample_rate)) * np.sin(2 * np.pi * freq_hz * k / sample_rate)


def place_pulses(n: int, pulse: np.ndarray, starts: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """Sum of ``pulse`` scaled by ``amps`` at (rounded) sample positions ``starts``."""
    comb = np.zeros(n + pulse.shape[0])
    pos = np.round(starts).astype(np.int64)
    keep = (pos >= 0) & (pos < n)
    np.add.at(comb, pos[keep], amps[keep])
    return signal.oaconvolve(comb, pulse)[:n] if np.any(keep) else np.zeros(n)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) or 1e-6


def _added_gain(x: np.ndarray, severity: float) -> float:
    return float(_rms(x) * 10.0 ** ((ADDED_DB + 20.0 * math.log10(max(severity, 1e-3))) / 20.0))


def _impulses(x: np.ndarray, sr: int, severity: float, rng: np.random.Generator) -> np.ndarray:
    rate = rng.uniform(20.0, 70.0)
    f_res = min(rng.uniform(2000.0, 5000.0), 0.4 * sr)
    pulse = decaying_tone(f_res, 0.0008, sr)
    n = x.shape[0]
    period = sr / rate
    starts = rng.uniform(0.0, period) + period * np.arange(int(n / period) + 1)
    starts = starts + rng.normal(0.0, 0.01 * period, starts.shape)
    train = place_pulses(n, pulse, starts, rng.uniform(0.6, 1.0, starts.shape))
    return x + _added_gain(x, severity) * train / _rms(train)


def _tone_shift(x: np.ndarray, sr: int, severity: float, rng: np.random.Generator) -> np.ndarray:
    factor = 1.0 + 0.02 * severity
    # Play faster by `factor`: resample to 1/factor of the samples (rational approximation),
    # then continue with the beginning again, cross-faded over 20 ms (no click at the seam).
    up, down = 200, round(200 * factor)
    y = signal.resample_poly(x, up, down)
    fade = max(1, min(round(0.02 * sr), y.shape[0] // 2))
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / max(fade, 1))
    out = y
    while out.shape[0] < x.shape[0]:
        joined = out[-fade:] * ramp[::-1] + y[:fade] * ramp
        out = np.concatenate([out[:-fade], joined, y[fade:]])
    return np.asarray(out[: x.shape[0]])


def _imbalance(x: np.ndarray, sr: int, severity: float, rng: np.random.Generator) -> np.ndarray:
    rot = rng.uniform(5.0, 25.0)
    depth = min(0.9, 0.25 * severity)
    t = np.arange(x.shape[0]) / sr
    return x * (1.0 + depth * np.sin(2 * np.pi * rot * t + rng.uniform(0.0, 2 * np.pi)))


def _band_level(x: np.ndarray, sr: int, severity: float, rng: np.random.Generator) -> np.ndarray:
    nyq = sr / 2.0
    width_oct = rng.uniform(1.0 / 3.0, 1.0)
    lo = math.exp(rng.uniform(math.log(100.0), math.log(0.6 * nyq / 2**width_oct)))
    hi = min(lo * 2**width_oct, 0.95 * nyq)
    sos = signal.butter(4, [lo, hi], btype="bandpass", fs=sr, output="sos")
    band = signal.sosfiltfilt(sos, x)
    gain = 10.0 ** (3.0 * severity / 20.0)
    return np.asarray(x + (gain - 1.0) * band)


def _squeal(x: np.ndarray, sr: int, severity: float, rng: np.random.Generator) -> np.ndarray:
    f = min(rng.uniform(1500.0, 6000.0), 0.4 * sr)
    t = np.arange(x.shape[0]) / sr
    vib = 1.0 + 0.01 * np.sin(2 * np.pi * 6.0 * t + rng.uniform(0.0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(f * vib) / sr + rng.uniform(0.0, 2 * np.pi)
    return np.asarray(x + _added_gain(x, severity) * np.sqrt(2.0) * np.sin(phase))


def _level(x: np.ndarray, sr: int, severity: float, rng: np.random.Generator) -> np.ndarray:
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return np.asarray(x * 10.0 ** (sign * 2.0 * severity / 20.0))


_MAKERS: dict[str, Callable[[np.ndarray, int, float, np.random.Generator], np.ndarray]] = {
    "impulses": _impulses,
    "tone_shift": _tone_shift,
    "imbalance": _imbalance,
    "band_level": _band_level,
    "squeal": _squeal,
    "level": _level,
}


def inject(
    samples: npt.ArrayLike, sample_rate: int, fault: str, severity: float = 1.0, seed: int = 0
) -> FloatArray:
    """``samples`` (mono, float) with ``fault`` throughout, as float32; ValueError on a bad
    fault name or severity."""
    if fault not in _MAKERS:
        raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(FAULTS)}")
    if not (math.isfinite(severity) and severity > 0):
        raise ValueError(f"severity must be positive, got {severity}")
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples, got shape {x.shape}")
    rng = np.random.default_rng([seed, FAULTS.index(fault), round(severity * 100)])
    y = _MAKERS[fault](x, sample_rate, severity, rng)
    return np.asarray(np.clip(y, -1.0, 1.0), dtype=np.float32)
