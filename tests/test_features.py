"""Tests of the log-mel front end and the streaming pre-filter."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.audio import sine

from asd_edge.features import (
    LogMel,
    LogMelParams,
    PrefilterSpec,
    StreamingFilter,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
    normalize_window,
)

RATE = 16000
PARAMS = LogMelParams(sample_rate=RATE, n_fft=1024, hop_length=512, n_mels=128)


class TestLogMel:
    def test_shape_and_dtype(self) -> None:
        """One second at 16 kHz gives 1 + (16000 - 1024) // 512 = 30 frames of 128 mels, float32."""
        out = LogMel(PARAMS)(sine(440.0))
        assert out.shape == (30, 128)
        assert out.dtype == np.float32
        assert PARAMS.n_frames(16000) == 30

    def test_batch(self) -> None:
        """A batch gives the same frames as each window alone."""
        lm = LogMel(PARAMS)
        batch = np.stack([sine(440.0), sine(2000.0)])
        out = lm(batch)
        assert out.shape == (2, 30, 128)
        np.testing.assert_allclose(out[1], lm(batch[1]), atol=1e-5)

    def test_silence_is_finite_floor(self) -> None:
        """Digital silence is the -100 dB floor, not -inf or NaN."""
        out = LogMel(PARAMS)(np.zeros(RATE, dtype=np.float32))
        assert np.all(np.isfinite(out))
        assert np.allclose(out, -100.0)

    @pytest.mark.parametrize("freq_hz", [250.0, 1000.0, 3000.0, 6000.0])
    def test_sine_lands_in_its_mel_band(self, freq_hz: float) -> None:
        """The loudest band of a pure tone is the band whose centre is nearest the tone."""
        out = LogMel(PARAMS)(sine(freq_hz))
        loudest = int(np.argmax(out.mean(axis=0)))
        centres = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(RATE / 2), 130))[1:-1]
        assert abs(loudest - int(np.argmin(np.abs(centres - freq_hz)))) <= 1

    def test_fixed_reference_keeps_loudness(self) -> None:
        """Ten times the amplitude is +20 dB in every band that holds the tone (no per-clip ref)."""
        lm = LogMel(PARAMS)
        quiet, loud = lm(sine(1000.0, amplitude=0.01)), lm(sine(1000.0, amplitude=0.1))
        band = int(np.argmax(quiet.mean(axis=0)))
        assert loud[:, band].mean() - quiet[:, band].mean() == pytest.approx(20.0, abs=0.01)

    def test_short_window_is_an_error(self) -> None:
        """A window shorter than n_fft is refused with a message, not padded silently."""
        with pytest.raises(ValueError, match="shorter than n_fft"):
            LogMel(PARAMS)(np.zeros(512, dtype=np.float32))


class TestMelFilterbank:
    def test_shape_and_nonnegative(self) -> None:
        """(n_mels, 1 + n_fft // 2), non-negative, every band has some weight."""
        fb = mel_filterbank(RATE, 1024, 128)
        assert fb.shape == (128, 513)
        assert fb.min() >= 0.0
        assert np.all(fb.sum(axis=1) > 0)

    def test_mel_scale_round_trip(self) -> None:
        """hz_to_mel and mel_to_hz invert each other on both sides of the 1 kHz knee."""
        hz = np.array([0.0, 100.0, 999.0, 1000.0, 4000.0, 8000.0])
        np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-9, atol=1e-9)

    def test_matches_librosa(self) -> None:
        """Equal to librosa.filters.mel within 1e-6 for the contract's default parameters."""
        librosa = pytest.importorskip("librosa", reason="librosa is in the [train] extra")
        for sr, n_fft, n_mels, fmin, fmax in [
            (16000, 1024, 128, 0.0, 8000.0),
            (16000, 1024, 64, 50.0, None),
            (44100, 2048, 128, 20.0, 8000.0),
        ]:
            ours = mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
            ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
            np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)


class TestStreamingFilter:
    @settings(max_examples=30, deadline=None)
    @given(st.lists(st.integers(1, 3000), min_size=1, max_size=12))
    def test_blocks_equal_whole(self, sizes: list[int]) -> None:
        """Filtering in blocks of any size equals filtering the whole signal at once."""
        spec = PrefilterSpec(type="butter_bandpass", low_hz=20.0, high_hz=7000.0, order=4)
        x = np.random.default_rng(1).standard_normal(sum(sizes)).astype(np.float32)
        whole = StreamingFilter(spec.sos(RATE))(x)
        streaming = StreamingFilter(spec.sos(RATE))
        edges = np.cumsum([0, *sizes])
        pieces = [streaming(x[a:b]) for a, b in itertools.pairwise(edges)]
        np.testing.assert_allclose(np.concatenate(pieces), whole, atol=1e-5)

    def test_bandpass_removes_dc_and_keeps_passband(self) -> None:
        """The seed's 20 Hz-8 kHz band-pass (8 kHz dropped at 16 kHz) kills DC, passes 1 kHz."""
        spec = PrefilterSpec(type="butter_bandpass", low_hz=20.0, high_hz=8000.0, order=4)
        filt = StreamingFilter(spec.sos(RATE))
        dc = filt(np.full(RATE * 2, 0.5, dtype=np.float32))
        assert abs(dc[-RATE // 2 :]).max() < 1e-3
        tone = StreamingFilter(spec.sos(RATE))(sine(1000.0, seconds=2.0))
        assert np.sqrt(np.mean(tone[RATE:] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


class TestNormalize:
    def test_peak_and_zscore(self) -> None:
        """peak scales max |x| to 1; zscore gives zero mean, unit variance; silence stays 0."""
        x = np.stack([sine(300.0, amplitude=0.2) + 0.1, np.zeros(RATE, np.float32)])
        peak = normalize_window(x, "peak")
        assert np.abs(peak[0]).max() == pytest.approx(1.0)
        z = normalize_window(x, "zscore")
        assert z[0].mean() == pytest.approx(0.0, abs=1e-5)
        assert z[0].std() == pytest.approx(1.0, rel=1e-4)
        assert not np.any(peak[1]) and not np.any(z[1])
