"""Tests of streaming resampling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal

from asd_edge.resample import StreamResampler

RATES = [8000, 11025, 16000, 22050, 44100, 48000]


class TestStreamResampler:
    @settings(max_examples=25, deadline=None)
    @given(
        st.sampled_from(RATES),
        st.sampled_from([16000, 44100]),
        st.lists(st.integers(1, 5000), min_size=1, max_size=15),
    )
    def test_blocks_equal_whole_stream(self, in_rate: int, out_rate: int, sizes: list[int]) -> None:
        """Any block sizes give resample_poly of the whole stream, minus the held-back tail."""
        x = np.random.default_rng(2).standard_normal(sum(sizes)).astype(np.float32)
        r = StreamResampler(in_rate, out_rate)
        edges = np.cumsum([0, *sizes])
        y = np.concatenate([r(x[a:b]) for a, b in itertools.pairwise(edges)])
        if r.passthrough:
            np.testing.assert_array_equal(y, x)
            return
        ref = signal.resample_poly(x.astype(np.float64), r.up, r.down, window=("kaiser", 5.0))
        assert abs(len(ref) - len(y)) <= r.delay_in * r.up // r.down + 1
        np.testing.assert_allclose(y, ref[: len(y)], atol=1e-5)

    @pytest.mark.parametrize(("in_rate", "n"), [(44100, 44100), (48000, 4801), (8000, 7999)])
    def test_flush_completes_the_stream(self, in_rate: int, n: int) -> None:
        """After flush the stream holds exactly what resample_poly gives for the whole input."""
        x = np.random.default_rng(4).standard_normal(n).astype(np.float32)
        r = StreamResampler(in_rate, 16000)
        y = np.concatenate([r(x[:1000]), r(x[1000:]), r.flush()])
        ref = signal.resample_poly(x.astype(np.float64), r.up, r.down, window=("kaiser", 5.0))
        assert y.shape == ref.shape
        np.testing.assert_allclose(y, ref, atol=1e-5)

    def test_tone_survives(self) -> None:
        """A 1 kHz tone at 44.1 kHz comes out at 16 kHz with its frequency and level."""
        t = np.arange(44100 * 2) / 44100
        y = StreamResampler(44100, 16000)((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
        spectrum = np.abs(np.fft.rfft(y[:16000]))
        assert np.argmax(spectrum) == 1000
        assert np.sqrt(np.mean(y[1000:16000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)

    def test_reset_starts_a_new_stream(self) -> None:
        """After reset the output is as from a new resampler."""
        x = np.random.default_rng(3).standard_normal(5000).astype(np.float32)
        r = StreamResampler(48000, 16000)
        r(x)
        r.reset()
        np.testing.assert_array_equal(r(x), StreamResampler(48000, 16000)(x))
