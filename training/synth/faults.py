"""The synthetic machine's faults: what each anomaly kind does to its sound.

- ``bearing``: a train of short resonant impulses at a rate unrelated to the hum;
- ``shift``: the fundamental (and every harmonic) moves up by 6 % × severity;
- ``imbalance``: the hum is amplitude-modulated at the rotation rate;
- ``impact``: a few loud broadband knocks;
- ``squeal``: a narrowband high tone with vibrato.

Each generator draws from the rng it is given, always in the same order, so a sound is
a function of its seed. :func:`decaying_tone` and :func:`place_pulses` are also the
bricks of the faults ``asd_edge.learning.inject`` adds to real recordings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import signal

from asd_edge.learning.inject import decaying_tone, place_pulses

__all__ = [
    "ANOMALY_KINDS",
    "FADE_S",
    "SHIFT_PER_SEVERITY",
    "bearing",
    "check_kind",
    "check_severity",
    "decaying_tone",
    "envelopes",
    "imbalance",
    "impacts",
    "place_pulses",
    "shift",
    "squeal",
]

ANOMALY_KINDS: tuple[str, ...] = ("bearing", "shift", "imbalance", "impact", "squeal")
"""Every anomaly kind ``Machine.anomaly`` and ``make_stream`` accept."""

FADE_S = 0.05
"""Raised-cosine cross-fade in and out of an anomaly inside a stream."""
SHIFT_PER_SEVERITY = 0.06
"""Relative rise of the fundamental per unit of severity for ``shift``."""


def check_kind(kind: str) -> None:
    """ValueError unless ``kind`` is one of :data:`ANOMALY_KINDS`."""
    if kind not in ANOMALY_KINDS:
        raise ValueError(
            f"unknown anomaly kind {kind!r}; expected one of {', '.join(ANOMALY_KINDS)}"
        )


def check_severity(severity: float) -> None:
    """ValueError unless ``severity`` is a finite non-negative number."""
    if not (np.isfinite(severity) and severity >= 0.0):
        raise ValueError(f"severity must be a non-negative number, got {severity}")


def _add_window(env: np.ndarray, start: int, stop: int, fade: int, *, total: int) -> None:
    """Raise ``env`` to 1 on [start, stop) with raised-cosine ramps of ``fade`` samples
    (no ramp at the very beginning or end of the signal)."""
    start = max(0, start)
    stop = min(total, stop)
    if stop <= start:
        return
    w = np.ones(stop - start)
    f = min(fade, (stop - start) // 2)
    if f > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(f) + 0.5) / f)
        if start > 0:
            w[:f] = ramp
        if stop < total:
            w[-f:] = np.minimum(w[-f:], ramp[::-1])
    env[start:stop] = np.maximum(env[start:stop], w)


def envelopes(
    events: Sequence[tuple[int, int, str]], n: int, sample_rate: int
) -> dict[str, np.ndarray]:
    """Kind → where it sounds over ``n`` samples (0 to 1): 1 on each of its
    ``(start, stop, kind)`` sample ranges, faded in and out over :data:`FADE_S` inside it."""
    envs: dict[str, np.ndarray] = {}
    fade = round(FADE_S * sample_rate)
    for start, stop, kind in events:
        env = envs.setdefault(kind, np.zeros(n))
        _add_window(env, start, stop, fade, total=n)
    return envs


def shift(f_hz: np.ndarray, env: np.ndarray, severity: float) -> np.ndarray:
    """The instantaneous fundamental ``f_hz`` raised by ``SHIFT_PER_SEVERITY × severity``
    where ``env`` is 1."""
    return f_hz * (1.0 + SHIFT_PER_SEVERITY * severity * env)


def imbalance(
    hum: np.ndarray,
    env: np.ndarray,
    t: np.ndarray,
    rotation_hz: float,
    severity: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """``hum`` amplitude-modulated at the rotation rate (depth ``0.6 × severity``, at most
    0.9) where ``env`` is 1."""
    depth = min(0.9, 0.6 * severity)
    rot = np.sin(2 * np.pi * rotation_hz * t + rng.uniform(0.0, 2 * np.pi))
    return hum * (1.0 + depth * env * rot)


def bearing(
    n: int, rate_hz: float, resonance_hz: float, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """Resonant impulses at the bearing fault rate, normalised to unit RMS."""
    pulse = decaying_tone(resonance_hz, 0.0008, sample_rate)
    period = sample_rate / rate_hz
    count = int(n / period) + 2
    starts = rng.uniform(0.0, period) + period * np.arange(count)
    starts = starts + rng.normal(0.0, 0.01 * period, count)
    amps = rng.uniform(0.6, 1.0, count)
    rms = np.sqrt(np.sum(pulse**2) * np.mean(amps**2) / period)
    return place_pulses(n, pulse, starts, amps) / rms


def squeal(t: np.ndarray, freq_hz: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A narrowband tone with 6 Hz, ±1 % vibrato, unit RMS."""
    vib = 1.0 + 0.01 * np.sin(2 * np.pi * 6.0 * t + rng.uniform(0.0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(freq_hz * vib) / sample_rate
    return np.sqrt(2.0) * np.sin(phase + rng.uniform(0.0, 2 * np.pi))


def impacts(
    n: int,
    spans: Sequence[tuple[int, int]],
    sos: np.ndarray,
    sample_rate: int,
    rng: np.random.Generator,
    *,
    peak: float,
) -> np.ndarray:
    """A few broadband knocks (noise bursts band-passed by ``sos``, 30 ms decay) in each
    span."""
    sr = sample_rate
    knock_len = round(0.15 * sr)
    out = np.zeros(n)
    for start, stop in spans:
        length = stop - start
        count = max(1, round(length / sr * 0.4))
        lo, hi = start + round(0.02 * sr), stop - knock_len // 3
        if hi <= lo:
            lo, hi = start, max(start + 1, stop - 1)
        for pos in np.sort(rng.integers(lo, hi, size=count)):
            burst = signal.sosfilt(sos, rng.standard_normal(knock_len))
            burst *= np.exp(-np.arange(knock_len) / (0.03 * sr))
            burst *= peak * rng.uniform(0.7, 1.0) / np.max(np.abs(burst))
            end = min(n, int(pos) + knock_len)
            out[pos:end] += burst[: end - pos]
    return out
