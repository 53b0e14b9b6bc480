"""training.augment: pitch, background noise at an SNR, gain and time shift, reproducibly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from asd_edge.audiofile import write_wav
from training.augment import AugmentConfig, Augmenter, snr_db
from training.errors import DataError

RATE = 16000


def tone(freq_hz: float, seconds: float = 1.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int = RATE) -> float:
    n = 8 * x.shape[0]  # zero-padded: 0.25 Hz bins at 1 s
    spec = np.abs(np.fft.rfft(x * np.hanning(x.shape[0]), n))
    return float(np.fft.rfftfreq(n, 1 / rate)[np.argmax(spec)])


@pytest.fixture()
def noise_file(tmp_path: Path) -> Path:
    """Two seconds of pink-ish noise at 8 kHz (resampled by the augmenter)."""
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.standard_normal(16000)) * 0.002
    x = (x - np.convolve(x, np.ones(64) / 64, "same")).astype(np.float32)
    write_wav(tmp_path / "noise.wav", x, 8000)
    return tmp_path / "noise.wav"


class TestNoise:
    @pytest.mark.parametrize("target_db", [3.0, 17.0, 30.0])
    def test_snr_is_what_was_asked(self, noise_file: Path, target_db: float) -> None:
        """The added noise sits at the asked SNR below the signal (within 0.5 dB)."""
        aug = Augmenter(
            AugmentConfig(noise_files=(noise_file,), snr_db=(target_db, target_db), p=1.0), RATE
        )
        x = tone(440, 1.5)
        y = aug(x)
        assert y.shape == x.shape and y.dtype == np.float32
        assert snr_db(x, y - x) == pytest.approx(target_db, abs=0.5)

    def test_snr_drawn_from_the_range(self, noise_file: Path) -> None:
        """Over many calls the SNRs cover the range and stay inside it."""
        aug = Augmenter(AugmentConfig(noise_files=(noise_file,), snr_db=(10.0, 20.0), p=1.0), RATE)
        x = tone(300, 0.5)
        snrs = [snr_db(x, aug(x) - x) for _ in range(30)]
        assert min(snrs) >= 9.5 and max(snrs) <= 20.5
        assert max(snrs) - min(snrs) > 5.0

    def test_noise_offset_is_random_and_short_noise_loops(self, noise_file: Path) -> None:
        """Different calls take different stretches; a signal longer than the noise still mixes."""
        aug = Augmenter(
            AugmentConfig(noise_files=(noise_file,), snr_db=(10, 10), p=1.0), RATE, seed=3
        )
        x = tone(300, 0.5)
        a, b = aug(x) - x, aug(x) - x
        assert not np.allclose(a, b)
        long = tone(300, 5.0)  # the noise file lasts 2 s
        assert snr_db(long, aug(long) - long) == pytest.approx(10.0, abs=0.5)

    def test_bad_noise_file_is_named(self, tmp_path: Path) -> None:
        """An unreadable or silent noise file is a DataError naming it."""
        bad = tmp_path / "broken.m4a"
        bad.write_bytes(b"not audio at all")
        with pytest.raises(DataError, match=r"broken\.m4a"):
            Augmenter(AugmentConfig(noise_files=(bad,)), RATE)
        silent = tmp_path / "silent.wav"
        write_wav(silent, np.zeros(800, np.float32), 8000)
        with pytest.raises(DataError, match=r"silent\.wav: silent"):
            Augmenter(AugmentConfig(noise_files=(silent,)), RATE)

    def test_real_background_recordings(self, shared_data: Path) -> None:
        """The study's m4a recordings (48 kHz AAC, Japanese names) mix in at the asked SNR."""
        files = tuple(sorted((shared_data / "background").glob("*.m4a")))[:3]
        assert len(files) == 3 and any(ord(c) > 127 for c in files[0].name)
        aug = Augmenter(AugmentConfig(noise_files=files, snr_db=(12, 12), p=1.0), RATE, seed=1)
        assert all(n.dtype == np.float32 and n.shape[0] > RATE for n in aug.noises)
        x = tone(200, 1.0)
        for _ in range(3):
            assert snr_db(x, aug(x) - x) == pytest.approx(12.0, abs=0.5)


class TestOtherTransforms:
    @pytest.mark.parametrize("semitones", [-2.0, 1.0])
    def test_pitch_shift_moves_a_tone_by_the_ratio(self, semitones: float) -> None:
        """A 440 Hz tone lands at 440 · 2^(n/12) (within 1 %), same length."""
        aug = Augmenter(AugmentConfig(pitch_semitones=(semitones, semitones), p=1.0), RATE)
        y = aug(tone(440.0, 1.0))
        assert y.shape == (RATE,) and y.dtype == np.float32
        assert peak_hz(y[2000:-2000]) == pytest.approx(440.0 * 2 ** (semitones / 12), rel=0.01)

    def test_gain_and_shift(self) -> None:
        """Gain scales by a factor inside its range; time shift is a circular roll."""
        x = np.random.default_rng(0).uniform(-0.3, 0.3, RATE).astype(np.float32)
        gain = Augmenter(AugmentConfig(gain_db=(-6.0, -3.0), p=1.0), RATE)
        for _ in range(5):
            ratio_db = 20 * np.log10(np.std(gain(x)) / np.std(x))
            assert -6.01 <= ratio_db <= -2.99
        shift = Augmenter(AugmentConfig(shift_s=0.1, p=1.0), RATE, seed=4)
        y = shift(x)
        lags = [k for k in range(-1600, 1601) if np.array_equal(np.roll(x, k), y)]
        assert len(lags) == 1 and lags[0] != 0

    def test_probability_and_at_least_one(self) -> None:
        """p=0 leaves the wave as it was, unless at_least_one asks for one transform."""
        x = tone(500, 0.2)
        off = Augmenter(AugmentConfig(gain_db=(-6.0, -6.0), p=0.0), RATE)
        np.testing.assert_array_equal(off(x), x)
        one = Augmenter(AugmentConfig(gain_db=(-6.0, -6.0), p=0.0, at_least_one=True), RATE)
        np.testing.assert_allclose(one(x), x * 10 ** (-6 / 20), rtol=1e-5)

    def test_same_seed_same_output(self, noise_file: Path) -> None:
        """Same seed (or same rng) → same output; another seed → another output."""
        cfg = AugmentConfig(
            pitch_semitones=(-1, 1), noise_files=(noise_file,), gain_db=(-3, 3), shift_s=0.05
        )
        x = tone(330, 0.5)
        a = [Augmenter(cfg, RATE, seed=7)(x) for _ in range(2)]
        np.testing.assert_array_equal(a[0], a[1])
        outs = {Augmenter(cfg, RATE, seed=s)(x).tobytes() for s in range(4)}
        assert len(outs) > 1
        aug = Augmenter(cfg, RATE)
        r1 = aug(x, np.random.default_rng(5))
        r2 = aug(x, np.random.default_rng(5))
        np.testing.assert_array_equal(r1, r2)

    def test_bad_config(self) -> None:
        """Inverted ranges and probabilities outside [0, 1] are refused by field name."""
        with pytest.raises(ValueError, match="gain_db"):
            AugmentConfig(gain_db=(3.0, -3.0))
        with pytest.raises(ValueError, match="p: "):
            AugmentConfig(p=1.5)
