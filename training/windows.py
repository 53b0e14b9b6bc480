"""Dataset files to model inputs, computed exactly as the daemon computes them.

The daemon (``asd_edge.monitor.Monitor``) turns a capture stream into model input
like this: mono, resampled to the model's rate (its streaming resampler equals
``scipy.signal.resample_poly`` over the whole stream), the model's pre-filter run
over the stream (``StreamingFilter``), windows of ``window_s`` on a grid of hops
from the stream's first sample, then ``LogMel`` (log-mel kinds) or
``normalize_window`` (waveform kinds). This module does the same to files, so the
model is trained on what it will be fed. Only the hop differs: training may use a
denser or sparser grid than the deployed one (``hop_s``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from asd_edge.audiofile import read_audio, to_mono
from asd_edge.errors import AudioDecodeError
from asd_edge.features import (
    LogMel,
    LogMelParams,
    NormalizeMethod,
    PrefilterSpec,
    StreamingFilter,
    normalize_window,
)
from asd_edge.learning.windows import DEFAULT_FEATURES
from asd_edge.resample import resample_whole

if TYPE_CHECKING:  # the kinds import torch; windows must not (numpy kinds fit without it)
    from .kinds.base import KindInfo

__all__ = [
    "DEFAULT_FEATURES",
    "LabelledFile",
    "Skipped",
    "WindowSpec",
    "Windows",
    "augmenting",
    "file_stream",
    "load_windows",
    "stream_windows",
]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


LABELS = {"normal": 0, "anomaly": 1}
"""Label names of ``training.dataset.DataFile`` to the 0/1 targets the kinds use."""


class LabelledFile(Protocol):
    """What a window loader needs of a dataset file (``training.dataset.DataFile`` fits)."""

    @property
    def path(self) -> Path: ...

    @property
    def label(self) -> str: ...


@dataclass(frozen=True)
class WindowSpec:
    """How a stream becomes model input: the contract's fields, plus the training hop."""

    input: Literal["logmel", "waveform"]
    """What the graph takes: log-mel frames or the (pre-filtered, normalised) waveform."""
    sample_rate: int = 16000
    """The model's rate in Hz; files are resampled to it."""
    window_s: float = 1.0
    """Length of one window in seconds."""
    hop_s: float = 0.5
    """Seconds between window starts when cutting training files (not stored in the model)."""
    features: LogMelParams | None = None
    """Log-mel parameters (``input == "logmel"``)."""
    prefilter: PrefilterSpec | None = None
    """Filter run over the stream before windowing, if any."""
    normalize: NormalizeMethod = "none"
    """Per-window normalisation of waveform input."""

    @classmethod
    def for_kind(
        cls,
        info: KindInfo,
        *,
        sample_rate: int = 16000,
        window_s: float = 1.0,
        hop_s: float = 0.5,
    ) -> WindowSpec:
        """The spec of a detector kind at a rate, with the contract's default features."""
        if sample_rate < 8000:
            raise ValueError(f"sample rate must be at least 8000 Hz, got {sample_rate}")
        if window_s <= 0 or hop_s <= 0:
            raise ValueError(f"window_s and hop_s must be positive, got {window_s}, {hop_s}")
        features = None
        if info.input == "logmel":
            d = DEFAULT_FEATURES
            features = LogMelParams(
                sample_rate=sample_rate,
                n_fft=int(d["n_fft"]),
                hop_length=int(d["hop_length"]),
                n_mels=int(d["n_mels"]),
                fmin=float(d["fmin"]),
                fmax=min(float(d["fmax"]), sample_rate / 2.0),
                power=float(d["power"]),
            )
            if round(window_s * sample_rate) < features.n_fft:
                raise ValueError(
                    f"a window of {window_s} s at {sample_rate} Hz is shorter than "
                    f"n_fft={features.n_fft}"
                )
        return cls(
            input=info.input,
            sample_rate=sample_rate,
            window_s=window_s,
            hop_s=hop_s,
            features=features,
            prefilter=info.prefilter if info.input == "waveform" else None,
            normalize=info.normalize if info.input == "waveform" else "none",
        )

    @property
    def window_samples(self) -> int:
        """Samples in one window at the model's rate."""
        return round(self.window_s * self.sample_rate)

    @property
    def hop_samples(self) -> int:
        """Samples between window starts at the model's rate."""
        return max(1, round(self.hop_s * self.sample_rate))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one model input (no batch axis)."""
        if self.features is not None:
            return (self.features.n_frames(self.window_samples), self.features.n_mels)
        return (self.window_samples,)

    def metadata(self, frames: int = 1) -> dict[str, Any]:
        """The contract's fields this spec fixes (``sample_rate`` ... ``normalize``)."""
        meta: dict[str, Any] = {
            "sample_rate": self.sample_rate,
            "window_s": self.window_s,
            "input": self.input,
        }
        if self.features is not None:
            f = self.features
            meta["features"] = {
                "n_fft": f.n_fft,
                "hop_length": f.hop_length,
                "n_mels": f.n_mels,
                "fmin": f.fmin,
                "fmax": f.fmax_hz,
                "power": f.power,
                "log": f.log,
                "frames": frames,
            }
        else:
            if self.prefilter is not None:
                p = self.prefilter
                pre: dict[str, Any] = {"type": p.type, "order": p.order}
                if p.low_hz is not None:
                    pre["low_hz"] = p.low_hz
                if p.high_hz is not None:
                    pre["high_hz"] = p.high_hz
                meta["prefilter"] = pre
            meta["normalize"] = self.normalize
        return meta

    def model_input(self, waveforms: npt.ArrayLike) -> FloatArray:
        """Model input of windows ``[batch, window_samples]`` (already pre-filtered)."""
        x = np.asarray(waveforms, dtype=np.float32)
        if self.features is not None:
            return LogMel(self.features)(x)
        return normalize_window(x, self.normalize)


@dataclass(frozen=True)
class Skipped:
    """A file that gave no windows, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Windows:
    """Model inputs of many files, each window tagged with its file, position and label."""

    spec: WindowSpec
    x: FloatArray
    """Model inputs ``[N, *spec.input_shape]``."""
    file_index: IntArray
    """``[N]``: index into ``files`` of the window's file."""
    start: IntArray
    """``[N]``: first sample of the window in its file's model-rate stream."""
    label: IntArray
    """``[N]``: 0 normal, 1 anomaly."""
    files: tuple[Path, ...]
    """The files that gave windows."""
    durations_s: tuple[float, ...] = ()
    """Length of each file in seconds."""
    streams: tuple[FloatArray, ...] | None = field(default=None, repr=False)
    """Each file's pre-filtered model-rate stream, when kept (for augmentation)."""

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def select(self, mask: npt.ArrayLike) -> Windows:
        """The windows where ``mask`` (boolean or indices) selects."""
        m = np.asarray(mask)
        return replace(
            self,
            x=self.x[m],
            file_index=self.file_index[m],
            start=self.start[m],
            label=self.label[m],
        )

    def waveforms(self, indices: npt.ArrayLike) -> FloatArray:
        """The pre-filtered waveforms ``[len(indices), window_samples]`` of some windows."""
        if self.streams is None:
            raise ValueError("the streams were not kept (load_windows(keep_streams=True))")
        n = self.spec.window_samples
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((idx.shape[0], n), dtype=np.float32)
        for row, i in enumerate(idx):
            s = int(self.start[i])
            out[row] = self.streams[int(self.file_index[i])][s : s + n]
        return out


def file_stream(path: str | os.PathLike[str], spec: WindowSpec) -> FloatArray:
    """A file as the daemon's model-rate stream: mono, resampled, pre-filtered.

    Raises ``AudioDecodeError`` naming the file when it cannot be read.
    """
    audio = read_audio(path)
    mono = to_mono(audio.samples, None)
    finite = np.isfinite(mono)
    if not finite.all():  # as the monitor does: one NaN would poison the filter
        mono = np.where(finite, mono, np.float32(0.0))
    stream = resample_whole(mono, audio.sample_rate, spec.sample_rate)
    if spec.prefilter is not None:
        stream = StreamingFilter(spec.prefilter.sos(spec.sample_rate))(stream)
    return stream


def stream_windows(stream: FloatArray, spec: WindowSpec) -> tuple[FloatArray, IntArray]:
    """Windows ``[n, window_samples]`` on the hop grid from the first sample, and their starts."""
    n = spec.window_samples
    if stream.shape[0] < n:
        return np.zeros((0, n), dtype=np.float32), np.zeros(0, dtype=np.int64)
    starts = np.arange(0, stream.shape[0] - n + 1, spec.hop_samples, dtype=np.int64)
    view = np.lib.stride_tricks.sliding_window_view(stream, n)
    return np.ascontiguousarray(view[starts]), starts


def load_windows(
    files: Sequence[LabelledFile],
    spec: WindowSpec,
    *,
    keep_streams: bool = False,
    progress: bool = True,
    desc: str = "windows",
) -> tuple[Windows, list[Skipped]]:
    """Model inputs of every window of ``files``; unreadable or too short files are skipped.

    Returns the windows and the skipped files (each with a reason); the caller
    reports them and decides whether what is left is enough.
    """
    xs: list[FloatArray] = []
    file_index: list[IntArray] = []
    starts: list[IntArray] = []
    labels: list[IntArray] = []
    kept: list[Path] = []
    durations: list[float] = []
    streams: list[FloatArray] = []
    skipped: list[Skipped] = []
    for f in _bar(files, progress, desc):
        label = LABELS.get(str(f.label))
        if label is None:
            skipped.append(Skipped(Path(f.path), f"unknown label {f.label!r}"))
            continue
        try:
            stream = file_stream(f.path, spec)
        except AudioDecodeError as exc:
            skipped.append(Skipped(Path(f.path), exc.problem))
            continue
        waves, at = stream_windows(stream, spec)
        if not at.shape[0]:
            skipped.append(
                Skipped(
                    Path(f.path),
                    f"shorter than one window ({stream.shape[0] / spec.sample_rate:.3f} s "
                    f"< {spec.window_s} s)",
                )
            )
            continue
        xs.append(spec.model_input(waves))
        file_index.append(np.full(at.shape[0], len(kept), dtype=np.int64))
        starts.append(at)
        labels.append(np.full(at.shape[0], label, dtype=np.int64))
        kept.append(Path(f.path))
        durations.append(stream.shape[0] / spec.sample_rate)
        if keep_streams:
            streams.append(stream)
    empty_i = np.zeros(0, dtype=np.int64)
    windows = Windows(
        spec=spec,
        x=np.concatenate(xs) if xs else np.zeros((0, *spec.input_shape), dtype=np.float32),
        file_index=np.concatenate(file_index) if file_index else empty_i,
        start=np.concatenate(starts) if starts else empty_i,
        label=np.concatenate(labels) if labels else empty_i,
        files=tuple(kept),
        durations_s=tuple(durations),
        streams=tuple(streams) if keep_streams else None,
    )
    return windows, skipped


def _bar(items: Sequence[LabelledFile], progress: bool, desc: str) -> Iterable[LabelledFile]:
    enabled = progress and sys.stderr.isatty()
    return tqdm(items, desc=desc, unit="file", disable=not enabled, file=sys.stderr, leave=False)


def augmenting(
    windows: Windows, settings: Mapping[str, Any], seed: int
) -> Callable[[np.ndarray, np.ndarray, np.random.Generator], FloatArray]:
    """A trainer augmentation hook: each window's waveform (pre-filtered, from the kept
    streams) goes through ``training.augment.Augmenter``, then becomes model input.

    ``settings`` are ``AugmentConfig`` fields as JSON gives them (lists for ranges,
    paths as strings).
    """
    from .augment import AugmentConfig, Augmenter

    fields = {
        key: tuple(Path(v) for v in value) if key == "noise_files" else
        tuple(value) if isinstance(value, list) else value
        for key, value in settings.items()
    }  # fmt: skip
    augmenter = Augmenter(AugmentConfig(**fields), windows.spec.sample_rate, seed=seed)

    def hook(idx: np.ndarray, batch: np.ndarray, rng: np.random.Generator) -> FloatArray:
        waves = windows.waveforms(idx)
        return windows.spec.model_input(np.stack([augmenter(w, rng) for w in waves]))

    return hook
