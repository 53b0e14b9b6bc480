"""The project's one log-mel front end (numpy only), shared by the daemon and training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "DB_FLOOR",
    "LogMel",
    "LogMelParams",
    "PrefilterSpec",
    "StreamingFilter",
    "hz_to_mel",
    "mel_filterbank",
    "mel_to_hz",
    "normalize_window",
    "periodic_hann",
]

FloatArray = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]

DB_FLOOR = 1e-10
"""Mel power below this is clipped before the log: the floor is -100 dB (fixed reference 1.0)."""

NormalizeMethod = Literal["none", "peak", "zscore"]


@dataclass(frozen=True, slots=True)
class LogMelParams:
    """Log-mel parameters as the model contract's ``features`` object carries them."""

    sample_rate: int
    """Sample rate of the waveform the features are computed from, in Hz."""
    n_fft: int = 1024
    """FFT length (and Hann window length) in samples."""
    hop_length: int = 512
    """Samples between frame starts."""
    n_mels: int = 128
    """Number of mel bands."""
    fmin: float = 0.0
    """Lowest band edge in Hz."""
    fmax: float | None = None
    """Highest band edge in Hz; None means the Nyquist frequency."""
    power: float = 2.0
    """Exponent of the magnitude spectrum: 2 for power, 1 for magnitude."""
    log: Literal["db"] = "db"
    """``db``: ``10 * log10(max(mel, 1e-10))`` with a fixed reference of 1.0."""

    @property
    def fmax_hz(self) -> float:
        """The effective highest band edge in Hz."""
        return float(self.sample_rate) / 2.0 if self.fmax is None else float(self.fmax)

    def n_frames(self, window_samples: int) -> int:
        """Frames in a window of ``window_samples`` (no centre padding)."""
        if window_samples < self.n_fft:
            return 0
        return 1 + (window_samples - self.n_fft) // self.hop_length


# The Slaney mel scale: linear below 1 kHz, logarithmic above.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_KNEE_HZ = 1000.0
_SLANEY_KNEE_MEL = _SLANEY_KNEE_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = float(np.log(6.4) / 27.0)


def hz_to_mel(hz: npt.ArrayLike) -> Float64Array:
    """Hz to mels on the Slaney scale (librosa's default, ``htk=False``)."""
    f = np.asarray(hz, dtype=np.float64)
    return np.where(
        f >= _SLANEY_KNEE_HZ,
        _SLANEY_KNEE_MEL
        + np.log(np.maximum(f, _SLANEY_KNEE_HZ) / _SLANEY_KNEE_HZ) / _SLANEY_LOG_STEP,
        f / _SLANEY_HZ_PER_MEL,
    )


def mel_to_hz(mels: npt.ArrayLike) -> Float64Array:
    """Mels on the Slaney scale back to Hz."""
    m = np.asarray(mels, dtype=np.float64)
    return np.where(
        m >= _SLANEY_KNEE_MEL,
        _SLANEY_KNEE_HZ * np.exp(_SLANEY_LOG_STEP * (m - _SLANEY_KNEE_MEL)),
        _SLANEY_HZ_PER_MEL * m,
    )


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> FloatArray:
    """Triangular mel filters, shape ``(n_mels, 1 + n_fft // 2)``.

    Equal to ``librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels,
    fmin=fmin, fmax=fmax)`` (Slaney scale, Slaney area normalisation); the
    training tests hold it to that within 1e-6.
    """
    if fmax is None:
        fmax = sample_rate / 2.0
    fft_hz = np.linspace(0.0, sample_rate / 2.0, 1 + n_fft // 2)
    mel_hz = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_hz)
    ramps = np.subtract.outer(mel_hz, fft_hz)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_hz[2 : n_mels + 2] - mel_hz[:n_mels]))[:, None]
    return weights.astype(np.float32)


def periodic_hann(n: int) -> Float64Array:
    """The periodic ("fftbins") Hann window of ``n`` samples, as
    ``scipy.signal.get_window("hann", n)`` and librosa use it."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


class LogMel:
    """Log-mel frames of fixed-length windows: ``float32[..., n_frames, n_mels]``.

    Framing has no centre padding; each frame is multiplied by a periodic Hann
    window, transformed with a real FFT, raised to ``power``, projected on the mel
    filterbank and converted to dB against a fixed reference of 1.0 (never the
    clip's maximum, which would hide a change of loudness).
    """

    def __init__(self, params: LogMelParams) -> None:
        self.params = params
        self._window = periodic_hann(params.n_fft)
        self._fb_t = (
            mel_filterbank(
                params.sample_rate, params.n_fft, params.n_mels, params.fmin, params.fmax_hz
            )
            .astype(np.float64)
            .T
        )

    def __call__(self, windows: npt.ArrayLike) -> FloatArray:
        """Features of one window ``[samples]`` or a batch ``[batch, samples]``."""
        x = np.asarray(windows, dtype=np.float64)
        p = self.params
        if x.shape[-1] < p.n_fft:
            raise ValueError(f"a window of {x.shape[-1]} samples is shorter than n_fft={p.n_fft}")
        frames = np.lib.stride_tricks.sliding_window_view(x, p.n_fft, axis=-1)[
            ..., :: p.hop_length, :
        ]
        spectrum = np.abs(np.fft.rfft(frames * self._window, axis=-1))
        if p.power != 1.0:
            spectrum = spectrum**p.power
        mel = spectrum @ self._fb_t
        return (10.0 * np.log10(np.maximum(mel, DB_FLOOR))).astype(np.float32)


@dataclass(frozen=True, slots=True)
class PrefilterSpec:
    """A Butterworth filter applied to the stream before windowing (``prefilter``)."""

    type: Literal["butter_bandpass", "butter_highpass", "butter_lowpass"]
    """Filter shape."""
    order: int = 4
    """Butterworth order."""
    low_hz: float | None = None
    """Lower cut-off in Hz (band-pass and high-pass)."""
    high_hz: float | None = None
    """Upper cut-off in Hz (band-pass and low-pass)."""

    def sos(self, sample_rate: int) -> Float64Array:
        """Second-order sections for ``sample_rate``; a band edge at or past Nyquist is dropped."""
        from scipy import signal  # only models with a pre-filter pay for scipy.signal

        nyquist = sample_rate / 2.0
        low = self.low_hz if self.type != "butter_lowpass" else None
        high = self.high_hz if self.type != "butter_highpass" else None
        if high is not None and high >= nyquist:
            high = None
        if low is not None and high is not None:
            sos = signal.butter(
                self.order, [low, high], btype="bandpass", fs=sample_rate, output="sos"
            )
        elif low is not None:
            sos = signal.butter(self.order, low, btype="highpass", fs=sample_rate, output="sos")
        elif high is not None:
            sos = signal.butter(self.order, high, btype="lowpass", fs=sample_rate, output="sos")
        else:
            raise ValueError(f"{self.type} needs a cut-off below Nyquist ({nyquist:g} Hz)")
        return np.asarray(sos, dtype=np.float64)


class StreamingFilter:
    """A causal IIR filter over a stream of blocks: the state carries across blocks,
    so filtering a signal in pieces equals filtering it whole."""

    def __init__(self, sos: npt.ArrayLike) -> None:
        from scipy import signal  # only models with a pre-filter pay for scipy.signal

        self._sosfilt = signal.sosfilt
        self._sos = np.asarray(sos, dtype=np.float64)
        self._zi = np.zeros((self._sos.shape[0], 2), dtype=np.float64)

    def __call__(self, block: npt.ArrayLike) -> FloatArray:
        """Filter the next block of the stream."""
        y, self._zi = self._sosfilt(self._sos, np.asarray(block, dtype=np.float64), zi=self._zi)
        return np.asarray(y, dtype=np.float32)

    def reset(self) -> None:
        """Forget the state (after a gap in the stream)."""
        self._zi[:] = 0.0


def normalize_window(windows: npt.ArrayLike, method: NormalizeMethod) -> FloatArray:
    """Per-window normalisation of waveform input: ``none``, ``peak`` (max |x| = 1)
    or ``zscore`` (zero mean, unit variance); silent windows stay zero."""
    x = np.asarray(windows, dtype=np.float32)
    if method == "none":
        return x
    if method == "peak":
        scale = np.max(np.abs(x), axis=-1, keepdims=True)
        peak: FloatArray = np.divide(x, scale, out=np.zeros_like(x), where=scale > 1e-8)
        return peak
    if method == "zscore":
        centred = x - x.mean(axis=-1, keepdims=True)
        std = centred.std(axis=-1, keepdims=True)
        z: FloatArray = np.divide(centred, std, out=np.zeros_like(x), where=std > 1e-8)
        return z
    raise ValueError(f"unknown normalisation {method!r}")
