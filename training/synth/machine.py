"""The synthetic machine: a fixed voice, rendered with or without its faults.

A :class:`Machine` is a fixed voice (hum with ~10 harmonics and a slow drift of the
fundamental, coloured broadband noise, periodic mechanical ticks) chosen from its
``machine_id`` and ``seed``. Each call to :meth:`Machine.normal` varies the level
(±2 dB), the drift phase, the noise and the tick jitter, so no two normal files are
alike. Its anomalies (:mod:`training.synth.faults`) change the sound in the way their
name says while keeping the overall level within about 1.5 dB of normal (except
``impact``, which is loud by nature), so a level meter alone does not catch them.
:func:`make_stream` renders one continuous stream with anomalies where asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import signal

from . import faults
from .faults import check_kind, check_severity, decaying_tone, place_pulses

__all__ = ["LEVEL_SPREAD_DB", "NORMAL_RMS", "Machine", "make_stream"]

NORMAL_RMS = 0.08
"""Mean RMS of a normal file (about -22 dBFS) before the per-file ±2 dB variation."""
LEVEL_SPREAD_DB = 2.0
"""Spread of the per-file level of normal sound, ± dB."""
_PEAK_LIMIT = 0.98


@dataclass(frozen=True)
class _Voice:
    """The fixed parameters of one machine's sound (drawn once from its id and seed)."""

    f0_hz: float
    harmonic_amps: np.ndarray
    harmonic_phases: np.ndarray
    drift_hz: float
    drift_depth: float
    noise_sos: np.ndarray
    noise_gain: float
    tick_rate_hz: float
    tick_hz: float
    tick_decay_s: float
    tick_gain: float
    rotation_hz: float
    bearing_rate_hz: float
    bearing_hz: float
    squeal_hz: float
    impact_sos: np.ndarray


@dataclass(frozen=True)
class Machine:
    """One machine's sound, fixed by ``machine_id`` and ``seed``, at ``sample_rate`` Hz."""

    machine_id: int = 0
    """Which machine: a different id is a differently sounding machine."""
    seed: int = 0
    """With ``machine_id``, fixes the voice; per-file variation comes from the rng passed in."""
    sample_rate: int = 16000
    """Hz (8000 and up; tones above 0.42 × rate are moved down)."""

    def __post_init__(self) -> None:
        if self.sample_rate < 4000:
            raise ValueError(f"sample_rate must be at least 4000 Hz, got {self.sample_rate}")
        if self.machine_id < 0 or self.seed < 0:
            raise ValueError("machine_id and seed must be non-negative")

    @cached_property
    def voice(self) -> _Voice:
        """The fixed parameters of this machine's sound."""
        rng = np.random.default_rng([self.seed, self.machine_id, 0x5EED])
        top = 0.42 * self.sample_rate
        f0 = float(rng.uniform(50.0, 120.0))
        k = np.arange(1, 11)
        amps = k**-0.7 * rng.uniform(0.5, 1.0, size=10)
        amps[0] = 1.0  # the fundamental is the strongest line
        amps[f0 * k >= top] = 0.0
        noise_fc = min(float(rng.uniform(800.0, 3000.0)), 0.4 * self.sample_rate)
        noise_sos = signal.butter(2, noise_fc, btype="low", fs=self.sample_rate, output="sos")
        impact_sos = signal.butter(
            2,
            [150.0, min(5000.0, 0.45 * self.sample_rate)],
            "band",
            fs=self.sample_rate,
            output="sos",
        )
        tick_hz = min(float(rng.uniform(1500.0, 2500.0)), 0.3 * self.sample_rate)
        bearing_hz = min(float(rng.uniform(3000.0, 4500.0)), 0.38 * self.sample_rate)
        squeal_hz = min(float(rng.uniform(2600.0, 3800.0)), 0.33 * self.sample_rate)
        return _Voice(
            f0_hz=f0,
            harmonic_amps=amps,
            harmonic_phases=rng.uniform(0.0, 2 * np.pi, size=10),
            drift_hz=float(rng.uniform(0.05, 0.2)),
            drift_depth=float(rng.uniform(0.002, 0.005)),
            noise_sos=noise_sos,
            noise_gain=float(rng.uniform(0.35, 0.55)),
            tick_rate_hz=float(rng.uniform(2.0, 6.0)),
            tick_hz=tick_hz,
            tick_decay_s=float(rng.uniform(0.002, 0.004)),
            tick_gain=float(rng.uniform(1.0, 1.6)),
            rotation_hz=f0 / int(rng.choice([2, 3, 4])),
            bearing_rate_hz=float(rng.uniform(31.0, 67.0)) * (1.0 + 0.01 * np.sqrt(2.0)),
            bearing_hz=bearing_hz,
            squeal_hz=squeal_hz,
            impact_sos=impact_sos,
        )

    def normal(self, duration_s: float, rng: np.random.Generator) -> np.ndarray:
        """``duration_s`` seconds of normal sound: float32 mono, peak < 1."""
        n = self._samples(duration_s)
        return self._render(n, rng, [], 1.0)

    def anomaly(
        self, kind: str, duration_s: float, rng: np.random.Generator, severity: float = 1.0
    ) -> np.ndarray:
        """``duration_s`` seconds of this machine with anomaly ``kind`` throughout."""
        check_kind(kind)
        check_severity(severity)
        n = self._samples(duration_s)
        return self._render(n, rng, [(0, n, kind)], severity)

    def _samples(self, duration_s: float) -> int:
        n = round(duration_s * self.sample_rate)
        if not np.isfinite(duration_s) or n < 1:
            raise ValueError(f"duration_s must be positive, got {duration_s}")
        return n

    # -- rendering -------------------------------------------------------------------

    def _render(
        self,
        n: int,
        rng: np.random.Generator,
        events: Sequence[tuple[int, int, str]],
        severity: float,
    ) -> np.ndarray:
        """The sound of ``n`` samples with anomalies on [start, stop) sample ranges."""
        v = self.voice
        sr = self.sample_rate
        t = np.arange(n) / sr
        level = NORMAL_RMS * 10.0 ** (rng.uniform(-LEVEL_SPREAD_DB, LEVEL_SPREAD_DB) / 20.0)
        drift_phase = rng.uniform(0.0, 2 * np.pi)
        envs = faults.envelopes(events, n, sr)

        # Hum: harmonics of a slowly drifting fundamental (phase is integrated, so a
        # frequency shift inside a stream is seamless).
        f_inst = v.f0_hz * (1.0 + v.drift_depth * np.sin(2 * np.pi * v.drift_hz * t + drift_phase))
        if "shift" in envs:
            f_inst = faults.shift(f_inst, envs["shift"], severity)
        phase = 2 * np.pi * np.cumsum(f_inst) / sr
        hum = np.zeros(n)
        for k, (a, ph) in enumerate(zip(v.harmonic_amps, v.harmonic_phases, strict=True), 1):
            if a > 0.0:
                hum += a * np.sin(k * phase + ph)
        hum /= np.sqrt(np.sum(v.harmonic_amps**2) / 2.0)
        if "imbalance" in envs:
            hum = faults.imbalance(hum, envs["imbalance"], t, v.rotation_hz, severity, rng)

        noise = signal.sosfilt(v.noise_sos, rng.standard_normal(n))
        noise /= _filter_rms(v.noise_sos, sr)
        ticks, tick_power = self._ticks(n, rng)

        norm = np.sqrt(1.0 + v.noise_gain**2 + v.tick_gain**2 * tick_power)
        x = level / norm * (hum + v.noise_gain * noise + v.tick_gain * ticks)

        if "bearing" in envs:
            bearing = faults.bearing(n, v.bearing_rate_hz, v.bearing_hz, sr, rng)
            x += level * 0.4 * severity * envs["bearing"] * bearing
        if "squeal" in envs:
            squeal = faults.squeal(t, v.squeal_hz, sr, rng)
            x += level * 0.35 * severity * envs["squeal"] * squeal
        if "impact" in envs:
            spans = [(a, b) for a, b, k in events if k == "impact"]
            knock_peak = min(0.6, 7.0 * level * severity)
            x += faults.impacts(n, spans, v.impact_sos, sr, rng, peak=knock_peak)

        peak = float(np.max(np.abs(x)))
        if peak > _PEAK_LIMIT:
            x *= _PEAK_LIMIT / peak
        return x.astype(np.float32)

    def _ticks(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        """Short decaying clicks at the tick rate with 3 % jitter; their mean power."""
        v = self.voice
        sr = self.sample_rate
        pulse = decaying_tone(v.tick_hz, v.tick_decay_s, sr)
        period = sr / v.tick_rate_hz
        count = int(n / period) + 2
        starts = (rng.uniform(0.0, period) + period * np.arange(count)) + rng.normal(
            0.0, 0.03 * period, count
        )
        amps = rng.uniform(0.8, 1.0, count)
        out = place_pulses(n, pulse, starts, amps)
        power = float(np.sum(pulse**2) * 0.82 / period)  # E[amp^2] ~ 0.82
        return out, power


def _filter_rms(sos: np.ndarray, sample_rate: int) -> float:
    """RMS of the filter's output for unit white noise (from its impulse response)."""
    impulse = np.zeros(sample_rate)
    impulse[0] = 1.0
    return float(np.sqrt(np.sum(signal.sosfilt(sos, impulse) ** 2)))


def make_stream(
    duration_s: float,
    events: Sequence[tuple[float, float, str]],
    *,
    machine: Machine,
    seed: int = 0,
    severity: float = 1.0,
) -> np.ndarray:
    """A continuous normal stream of ``machine`` (no seams) with anomalies.

    Each event ``(start_s, dur_s, kind)`` puts anomaly ``kind`` on
    ``[start_s, start_s + dur_s)``, cross-faded in and out over 50 ms (the fade lies
    inside the interval). Events may overlap. Deterministic given ``seed``.
    """
    n = machine._samples(duration_s)
    check_severity(severity)
    spans: list[tuple[int, int, str]] = []
    for start_s, dur_s, kind in events:
        check_kind(kind)
        if not (start_s >= 0.0 and dur_s > 0.0 and start_s + dur_s <= duration_s + 1e-9):
            raise ValueError(
                f"event {start_s}:{dur_s}:{kind} does not fit in a {duration_s} s stream"
            )
        sr = machine.sample_rate
        spans.append((round(start_s * sr), round((start_s + dur_s) * sr), kind))
    rng = np.random.default_rng([seed, machine.machine_id, 0x57])
    return machine._render(n, rng, spans, severity)
