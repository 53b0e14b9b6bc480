"""Deterministic machine-like sound with anomalies (numpy and scipy only): ``asd-train synth``.

A :class:`Machine` is a fixed voice (hum with ~10 harmonics and a slow drift of the
fundamental, coloured broadband noise, periodic mechanical ticks) chosen from its
``machine_id`` and ``seed``. Each call to :meth:`Machine.normal` varies the level
(±2 dB), the drift phase, the noise and the tick jitter, so no two normal files are
alike. Anomalies change the sound in the way their name says while keeping the
overall level within about 1.5 dB of normal (except ``impact``, which is loud by
nature), so a level meter alone does not catch them:

- ``bearing``: a train of short resonant impulses at a rate unrelated to the hum;
- ``shift``: the fundamental (and every harmonic) moves up by 6 % × severity;
- ``imbalance``: the hum is amplitude-modulated at the rotation rate;
- ``impact``: a few loud broadband knocks;
- ``squeal``: a narrowband high tone with vibrato.

This module must import where only the daemon's dependencies exist (the demo player
and end-to-end tests use it), so it uses numpy and scipy only; tqdm is optional.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from scipy import signal

from asd_edge.audiofile import write_wav

__all__ = [
    "ANOMALY_KINDS",
    "Machine",
    "configure",
    "decaying_tone",
    "machine_name",
    "make_stream",
    "parse_events",
    "place_pulses",
    "run",
    "write_dataset",
    "write_labelled_dataset",
]

ANOMALY_KINDS: tuple[str, ...] = ("bearing", "shift", "imbalance", "impact", "squeal")
"""Every anomaly kind :meth:`Machine.anomaly` and :func:`make_stream` accept."""

NORMAL_RMS = 0.08
"""Mean RMS of a normal file (about -22 dBFS) before the per-file ±2 dB variation."""
LEVEL_SPREAD_DB = 2.0
FADE_S = 0.05
"""Raised-cosine cross-fade in and out of an anomaly inside a stream."""
SHIFT_PER_SEVERITY = 0.06
"""Relative rise of the fundamental per unit of severity for ``shift``."""
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
        _check_kind(kind)
        _check_severity(severity)
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
        envs: dict[str, np.ndarray] = {}
        fade = round(FADE_S * sr)
        for start, stop, kind in events:
            env = envs.setdefault(kind, np.zeros(n))
            _add_window(env, start, stop, fade, total=n)

        # Hum: harmonics of a slowly drifting fundamental (phase is integrated, so a
        # frequency shift inside a stream is seamless).
        f_inst = v.f0_hz * (1.0 + v.drift_depth * np.sin(2 * np.pi * v.drift_hz * t + drift_phase))
        if "shift" in envs:
            f_inst = f_inst * (1.0 + SHIFT_PER_SEVERITY * severity * envs["shift"])
        phase = 2 * np.pi * np.cumsum(f_inst) / sr
        hum = np.zeros(n)
        for k, (a, ph) in enumerate(zip(v.harmonic_amps, v.harmonic_phases, strict=True), 1):
            if a > 0.0:
                hum += a * np.sin(k * phase + ph)
        hum /= np.sqrt(np.sum(v.harmonic_amps**2) / 2.0)
        if "imbalance" in envs:
            depth = min(0.9, 0.6 * severity)
            rot = np.sin(2 * np.pi * v.rotation_hz * t + rng.uniform(0.0, 2 * np.pi))
            hum = hum * (1.0 + depth * envs["imbalance"] * rot)

        noise = signal.sosfilt(v.noise_sos, rng.standard_normal(n))
        noise /= _filter_rms(v.noise_sos, sr)
        ticks, tick_power = self._ticks(n, rng)

        norm = np.sqrt(1.0 + v.noise_gain**2 + v.tick_gain**2 * tick_power)
        x = level / norm * (hum + v.noise_gain * noise + v.tick_gain * ticks)

        if "bearing" in envs:
            x += level * 0.4 * severity * envs["bearing"] * self._bearing(n, rng)
        if "squeal" in envs:
            x += level * 0.35 * severity * envs["squeal"] * self._squeal(n, t, rng)
        if "impact" in envs:
            spans = [(a, b) for a, b, k in events if k == "impact"]
            x += self._impacts(n, spans, rng, peak=min(0.6, 7.0 * level * severity))

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

    def _bearing(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Resonant impulses at the bearing fault rate, normalised to unit RMS."""
        v = self.voice
        sr = self.sample_rate
        pulse = decaying_tone(v.bearing_hz, 0.0008, sr)
        period = sr / v.bearing_rate_hz
        count = int(n / period) + 2
        starts = rng.uniform(0.0, period) + period * np.arange(count)
        starts = starts + rng.normal(0.0, 0.01 * period, count)
        amps = rng.uniform(0.6, 1.0, count)
        rms = np.sqrt(np.sum(pulse**2) * np.mean(amps**2) / period)
        return place_pulses(n, pulse, starts, amps) / rms

    def _squeal(self, n: int, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A narrowband tone with 6 Hz, ±1 % vibrato, unit RMS."""
        v = self.voice
        vib = 1.0 + 0.01 * np.sin(2 * np.pi * 6.0 * t + rng.uniform(0.0, 2 * np.pi))
        phase = 2 * np.pi * np.cumsum(v.squeal_hz * vib) / self.sample_rate
        return np.sqrt(2.0) * np.sin(phase + rng.uniform(0.0, 2 * np.pi))

    def _impacts(
        self,
        n: int,
        spans: Sequence[tuple[int, int]],
        rng: np.random.Generator,
        *,
        peak: float,
    ) -> np.ndarray:
        """A few broadband knocks (band-passed noise bursts, 30 ms decay) in each span."""
        sr = self.sample_rate
        knock_len = round(0.15 * sr)
        out = np.zeros(n)
        for start, stop in spans:
            length = stop - start
            count = max(1, round(length / sr * 0.4))
            lo, hi = start + round(0.02 * sr), stop - knock_len // 3
            if hi <= lo:
                lo, hi = start, max(start + 1, stop - 1)
            for pos in np.sort(rng.integers(lo, hi, size=count)):
                burst = signal.sosfilt(self.voice.impact_sos, rng.standard_normal(knock_len))
                burst *= np.exp(-np.arange(knock_len) / (0.03 * sr))
                burst *= peak * rng.uniform(0.7, 1.0) / np.max(np.abs(burst))
                end = min(n, int(pos) + knock_len)
                out[pos:end] += burst[: end - pos]
        return out


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


def _filter_rms(sos: np.ndarray, sample_rate: int) -> float:
    """RMS of the filter's output for unit white noise (from its impulse response)."""
    impulse = np.zeros(sample_rate)
    impulse[0] = 1.0
    return float(np.sqrt(np.sum(signal.sosfilt(sos, impulse) ** 2)))


def _check_kind(kind: str) -> None:
    if kind not in ANOMALY_KINDS:
        raise ValueError(
            f"unknown anomaly kind {kind!r}; expected one of {', '.join(ANOMALY_KINDS)}"
        )


def _check_severity(severity: float) -> None:
    if not (np.isfinite(severity) and severity >= 0.0):
        raise ValueError(f"severity must be a non-negative number, got {severity}")


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
    _check_severity(severity)
    spans: list[tuple[int, int, str]] = []
    for start_s, dur_s, kind in events:
        _check_kind(kind)
        if not (start_s >= 0.0 and dur_s > 0.0 and start_s + dur_s <= duration_s + 1e-9):
            raise ValueError(
                f"event {start_s}:{dur_s}:{kind} does not fit in a {duration_s} s stream"
            )
        sr = machine.sample_rate
        spans.append((round(start_s * sr), round((start_s + dur_s) * sr), kind))
    rng = np.random.default_rng([seed, machine.machine_id, 0x57])
    return machine._render(n, rng, spans, severity)


def machine_name(machine_id: int) -> str:
    """The folder :func:`write_dataset` writes machine ``machine_id`` to."""
    return f"machine_{machine_id:02d}"


def _progress(items: Iterable[Any], total: int, enabled: bool, desc: str) -> Iterable[Any]:
    if not (enabled and sys.stderr.isatty()):
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # synth must run with the daemon's dependencies only
        return items
    return tqdm(items, total=total, desc=desc, unit="file", file=sys.stderr)


def write_dataset(
    out: Path,
    *,
    machines: int = 1,
    train_files: int = 40,
    test_normal: int = 10,
    test_anomaly: int = 10,
    duration_s: float = 10.0,
    sample_rate: int = 16000,
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Write a DCASE-style dataset of synthetic machines; return the written paths.

    Layout: ``out/machine_0X/train/normal_id_0X_0000000N.wav`` and
    ``out/machine_0X/test/{normal_id_0X_0000000N.wav, anomaly_id_0X_0000000N_<kind>.wav}``
    (kinds cycled in :data:`ANOMALY_KINDS` order), 16-bit WAV. Each file's sound is a
    function of (seed, machine, split, index) only: the same arguments give
    byte-identical files.
    """
    if machines < 1 or min(train_files, test_normal, test_anomaly) < 0:
        raise ValueError("machines must be >= 1 and file counts >= 0")
    jobs: list[tuple[int, str, int, str | None]] = []
    for m in range(machines):
        jobs += [(m, "train", i, None) for i in range(train_files)]
        jobs += [(m, "test", i, None) for i in range(test_normal)]
        jobs += [(m, "test", i, ANOMALY_KINDS[i % len(ANOMALY_KINDS)]) for i in range(test_anomaly)]
    written: list[Path] = []
    split_code = {"train": 0, "test": 1}
    for m, split, i, kind in _progress(jobs, len(jobs), progress, "synth"):
        machine = Machine(machine_id=m, seed=seed, sample_rate=sample_rate)
        folder = Path(out) / machine_name(m) / split
        folder.mkdir(parents=True, exist_ok=True)
        code = 2 if kind is not None else split_code[split]
        rng = np.random.default_rng([seed, m, code, i])
        if kind is None:
            wave = machine.normal(duration_s, rng)
            name = f"normal_id_{m:02d}_{i:08d}.wav"
        else:
            wave = machine.anomaly(kind, duration_s, rng)
            name = f"anomaly_id_{m:02d}_{i:08d}_{kind}.wav"
        path = folder / name
        write_wav(path, wave, sample_rate)
        written.append(path)
    return written


def write_labelled_dataset(
    root: Path,
    plan: Sequence[tuple[str, str, int]],
    *,
    duration_s: float = 2.0,
    seed: int = 0,
) -> Path:
    """A prepared dataset (``root/manifest.csv``) of machine 0: ``plan`` lists
    ``(split, label, count)``; anomaly kinds cycle through ``ANOMALY_KINDS``. Unlike
    ``write_dataset`` (DCASE layout, normal-only train), it can put labelled anomalies
    in any split, as the supervised kind needs. Deterministic given ``seed``."""
    from training.dataset import file_sha256, write_manifest  # pulls no heavy dependency

    machine = Machine(machine_id=0, seed=seed)
    rows = []
    for code, (split, label, count) in enumerate(plan):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rng = np.random.default_rng([seed, code, i])
            if label == "normal":
                wave = machine.normal(duration_s, rng)
            else:
                wave = machine.anomaly(ANOMALY_KINDS[i % len(ANOMALY_KINDS)], duration_s, rng)
            rel = f"{split}/{label}_{i:03d}.wav"
            write_wav(root / rel, wave, machine.sample_rate)
            rows.append([rel, label, split, rel, file_sha256(root / rel)])
    write_manifest(root, rows)
    return root


def parse_events(text: str) -> list[tuple[float, float, str]]:
    """Parse ``"start:dur:kind,..."`` (seconds) into events; ValueError naming the bad one."""
    events: list[tuple[float, float, str]] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        parts = item.split(":")
        if len(parts) != 3:
            raise ValueError(f"event {item!r}: expected start:dur:kind, e.g. 12:5:bearing")
        try:
            start_s, dur_s = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"event {item!r}: start and dur must be numbers (seconds)") from None
        kind = parts[2].strip()
        _check_kind(kind)
        events.append((start_s, dur_s, kind))
    return events


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``asd-train synth``'s arguments to ``parser``."""
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--machines", type=int, default=1, help="machines (default: %(default)s)")
    parser.add_argument(
        "--train-files", type=int, default=40, help="normal training files (default: %(default)s)"
    )
    parser.add_argument(
        "--test-normal", type=int, default=10, help="normal test files (default: %(default)s)"
    )
    parser.add_argument(
        "--test-anomaly",
        type=int,
        default=10,
        help=f"anomalous test files, kinds cycled: {', '.join(ANOMALY_KINDS)} "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--duration-s", type=float, default=10.0, help="seconds per file (default: %(default)s)"
    )
    parser.add_argument("--rate", type=int, default=16000, help="Hz (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument(
        "--stream",
        type=float,
        metavar="SECONDS",
        help="instead of a dataset, write one continuous stream of this length "
        "(OUT/stream.wav, events in OUT/stream.json)",
    )
    parser.add_argument(
        "--events",
        default="",
        help='anomalies in the stream: "start:dur:kind,..." in seconds, e.g. "20:5:bearing"',
    )
    parser.add_argument(
        "--machine-id", type=int, default=0, help="the machine of the stream (default: 0)"
    )
    parser.add_argument(
        "--severity", type=float, default=1.0, help="stream anomaly severity (default: 1.0)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``asd-train synth``; return the exit code."""
    out: Path = args.out
    try:
        if args.stream is not None:
            events = parse_events(args.events)
            machine = Machine(machine_id=args.machine_id, seed=args.seed, sample_rate=args.rate)
            wave = make_stream(
                args.stream, events, machine=machine, seed=args.seed, severity=args.severity
            )
            out.mkdir(parents=True, exist_ok=True)
            write_wav(out / "stream.wav", wave, args.rate)
            meta = {
                "wav": "stream.wav",
                "sample_rate": args.rate,
                "duration_s": args.stream,
                "machine_id": args.machine_id,
                "seed": args.seed,
                "severity": args.severity,
                "events": [{"start_s": s, "dur_s": d, "kind": k} for s, d, k in events],
            }
            (out / "stream.json").write_text(json.dumps(meta, indent=2) + "\n")
            print(out / "stream.wav")
            return 0
        paths = write_dataset(
            out,
            machines=args.machines,
            train_files=args.train_files,
            test_normal=args.test_normal,
            test_anomaly=args.test_anomaly,
            duration_s=args.duration_s,
            sample_rate=args.rate,
            seed=args.seed,
            progress=not args.quiet,
        )
    except ValueError as e:
        print(f"asd-train synth: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} files under {out}")
    return 0
