"""Waveform augmentation: pitch shift, background noise at an SNR, gain, time shift.

The trainer calls an :class:`Augmenter` on waveforms before features, and
``asd-train prepare --augment N`` writes N augmented copies of each train segment.
Each transform is applied with probability ``p``, in this order: pitch shift
(librosa), circular time shift, background noise (a random stretch of a random
noise file, at an SNR drawn from ``snr_db``, measured against the signal as it is
at that point), gain. Training only: librosa is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asd_edge.audiofile import to_mono
from asd_edge.errors import AudioDecodeError
from training.errors import DataError

__all__ = ["AugmentConfig", "Augmenter", "snr_db"]


@dataclass(frozen=True)
class AugmentConfig:
    """Which transforms to apply and how strongly; ``None`` / empty turns one off."""

    pitch_semitones: tuple[float, float] | None = None
    """Uniform range of the pitch shift in semitones, e.g. (-1, 1)."""
    noise_files: tuple[Path, ...] = ()
    """Background recordings to mix in (any format ``read_audio`` reads)."""
    snr_db: tuple[float, float] = (10.0, 30.0)
    """Uniform range of the signal-to-noise ratio of the mix, dB."""
    gain_db: tuple[float, float] | None = None
    """Uniform range of a gain applied last, dB."""
    shift_s: float | None = None
    """Maximum circular time shift, seconds (either way)."""
    p: float = 0.5
    """Probability of each transform."""
    at_least_one: bool = False
    """Apply one of the configured transforms when the draws chose none (so that a
    materialised copy always differs from its source)."""

    def __post_init__(self) -> None:
        for name in ("pitch_semitones", "snr_db", "gain_db"):
            lo_hi = getattr(self, name)
            if lo_hi is not None and (len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]):
                raise ValueError(f"{name}: expected (low, high) with low <= high, got {lo_hi}")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {self.p}")
        if self.shift_s is not None and self.shift_s < 0:
            raise ValueError(f"shift_s: expected >= 0 seconds, got {self.shift_s}")

    @property
    def transforms(self) -> tuple[str, ...]:
        """The configured transforms, in the order they are applied."""
        names = []
        if self.pitch_semitones is not None:
            names.append("pitch")
        if self.shift_s:
            names.append("shift")
        if self.noise_files:
            names.append("noise")
        if self.gain_db is not None:
            names.append("gain")
        return tuple(names)


def snr_db(signal_part: np.ndarray, noise_part: np.ndarray) -> float:
    """Signal-to-noise ratio of two waveforms of the same length, dB."""
    ps = float(np.mean(np.square(signal_part, dtype=np.float64)))
    pn = float(np.mean(np.square(noise_part, dtype=np.float64)))
    return 10.0 * np.log10(ps / pn)


class Augmenter:
    """Applies an :class:`AugmentConfig` to float32 mono waveforms at ``sample_rate``.

    Noise files are decoded, mixed to mono and resampled once, here (a bad file is a
    :class:`DataError` naming it). Reproducible: the same seed (or the same ``rng``
    state) gives the same output.
    """

    def __init__(self, config: AugmentConfig, sample_rate: int, seed: int = 0) -> None:
        self.config = config
        self.sample_rate = sample_rate
        self.rng = np.random.default_rng(seed)
        self.noises = [self._load_noise(Path(p)) for p in config.noise_files]

    def _load_noise(self, path: Path) -> np.ndarray:
        from asd_edge.resample import resample_whole
        from training.sources import decode_audio

        try:
            audio = decode_audio(path)
        except AudioDecodeError as e:
            raise DataError(f"noise file {e}") from None
        mono = resample_whole(to_mono(audio.samples, None), audio.sample_rate, self.sample_rate)
        if mono.shape[0] == 0 or not np.any(mono):
            raise DataError(f"noise file {path}: silent or empty, cannot be mixed at an SNR")
        return mono

    def __call__(self, wave: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """An augmented copy of ``wave`` (float32 mono, same length)."""
        r = self.rng if rng is None else rng
        x = np.asarray(wave, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected a mono waveform (1-D), got shape {x.shape}")
        names = self.config.transforms
        chosen = {name for name in names if r.random() < self.config.p}
        if not chosen and self.config.at_least_one and names:
            chosen = {names[int(r.integers(len(names)))]}
        out = x.copy()
        if "pitch" in chosen:
            out = self.pitch_shift(out, float(r.uniform(*self.config.pitch_semitones)))  # type: ignore[misc]
        if "shift" in chosen:
            max_shift = round(float(self.config.shift_s or 0.0) * self.sample_rate)
            out = np.roll(out, int(r.integers(-max_shift, max_shift + 1)))
        if "noise" in chosen:
            out = self.add_noise(out, float(r.uniform(*self.config.snr_db)), r)
        if "gain" in chosen:
            gain_db = float(r.uniform(*self.config.gain_db))  # type: ignore[misc]
            out = (out * 10.0 ** (gain_db / 20.0)).astype(np.float32)
        return np.asarray(out, dtype=np.float32)

    def pitch_shift(self, wave: np.ndarray, semitones: float) -> np.ndarray:
        """``wave`` shifted by ``semitones`` (librosa), same length."""
        import librosa

        y = librosa.effects.pitch_shift(wave, sr=self.sample_rate, n_steps=semitones)
        return np.asarray(y[: wave.shape[0]], dtype=np.float32)

    def add_noise(self, wave: np.ndarray, snr: float, rng: np.random.Generator) -> np.ndarray:
        """``wave`` plus a random stretch of a random noise file, at ``snr`` dB."""
        n = wave.shape[0]
        signal_power = float(np.mean(np.square(wave, dtype=np.float64)))
        if signal_power == 0.0 or not self.noises:
            return wave
        noise = self.noises[int(rng.integers(len(self.noises)))]
        if noise.shape[0] < n:  # loop a short recording
            noise = np.tile(noise, -(-n // noise.shape[0]))
        start = int(rng.integers(noise.shape[0] - n + 1))
        part = noise[start : start + n].astype(np.float64)
        noise_power = float(np.mean(np.square(part)))
        if noise_power == 0.0:  # a silent stretch of a recording
            return wave
        scale = np.sqrt(signal_power / (noise_power * 10.0 ** (snr / 10.0)))
        return (wave + scale * part).astype(np.float32)
