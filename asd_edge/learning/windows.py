"""Normal sound cut into the kind's windows: a whole stream (``Featurizer``) or a live or
file stream fed in blocks and kept as statistics, in constant memory (``Collector``).

A ``Recording`` (``crossfit``) needs each window's statistics, end time and level; the
audio itself only for its first :data:`~asd_edge.learning.crossfit.MAX_INJECTED_S`
seconds (faults are injected there) and a few windows' log-mel frames for the export's
parity check. The collector keeps exactly that: 193 float32 statistics per window (with
numpy's per-array overhead about 7 MB per hour of learning at a 0.5 s hop, measured by
``benchmarks/bench_learning.py``), plus at most 30 s of audio and
their frames per piece.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..audiofile import pcm16
from ..durable import write_atomic
from ..errors import LearnError
from ..features import LogMel, LogMelParams
from ..meters import window_level_dbfs
from . import bandstat
from .recording import MAX_INJECTED_S, Recording

__all__ = [
    "CLIP_LEVEL",
    "DEFAULT_FEATURES",
    "Collector",
    "Featurizer",
    "features_for",
    "load_recordings",
    "save_recordings",
]

FloatArray = npt.NDArray[np.float32]
DEFAULT_FEATURES: dict[str, Any] = {
    "n_fft": 1024,
    "hop_length": 512,
    "n_mels": 128,
    "fmin": 0.0,
    "fmax": 8000.0,
    "power": 2.0,
    "log": "db",
}
"""The contract's default log-mel parameters (30 frames x 128 mels per 1 s at 16 kHz)."""
CLIP_LEVEL = 0.999
"""A sample at or above this magnitude counts as clipped (the health check's full scale)."""
PCM16_SCALE = 32768.0
"""Kept audio is saved as 16-bit PCM (``audiofile.pcm16``) and read back over this."""
BATCH = 32
"""Windows featurised together (numpy's per-call cost amortised)."""


def features_for(rate: int, window_s: float, n_mels: int) -> LogMelParams:
    """The default log-mel parameters with ``n_mels`` bands at a rate (``fmax`` at most
    half of it); LearnError when a window is shorter than ``n_fft``."""
    d = DEFAULT_FEATURES
    if round(window_s * rate) < int(d["n_fft"]):
        raise LearnError(f"a window of {window_s} s at {rate} Hz is shorter than n_fft")
    return LogMelParams(
        sample_rate=rate,
        n_fft=int(d["n_fft"]),
        hop_length=int(d["hop_length"]),
        n_mels=n_mels,
        fmin=float(d["fmin"]),
        fmax=min(float(d["fmax"]), rate / 2.0),
        power=float(d["power"]),
    )


class Featurizer:
    """A whole model-rate stream → (log-mel windows, window end times) at a hop."""

    def __init__(self, features: LogMelParams, window_s: float, hop_s: float) -> None:
        self.features = features
        self.sample_rate = features.sample_rate
        self.window_samples = round(window_s * self.sample_rate)
        self.hop_samples = max(1, round(hop_s * self.sample_rate))
        self.logmel = LogMel(features)

    def windows(self, stream: npt.ArrayLike) -> tuple[FloatArray, npt.NDArray[np.float64]]:
        """Windows ``[n, window_samples]`` on the hop grid from the first sample, and their
        end times in seconds."""
        x = np.asarray(stream, dtype=np.float32)
        n = self.window_samples
        if x.shape[0] < n:
            return np.zeros((0, n), dtype=np.float32), np.zeros(0)
        starts = np.arange(0, x.shape[0] - n + 1, self.hop_samples, dtype=np.int64)
        view = np.lib.stride_tricks.sliding_window_view(x, n)
        return np.ascontiguousarray(view[starts]), (starts + n) / self.sample_rate

    def __call__(self, stream: npt.ArrayLike) -> tuple[FloatArray, npt.NDArray[np.float64]]:
        waves, ends = self.windows(stream)
        return self.logmel(waves), ends

    def recording(self, source: str, stream: npt.ArrayLike) -> Recording:
        """A whole stream cut into windows, with their statistics and levels."""
        waves, ends = self.windows(stream)
        logmel = self.logmel(waves)
        return Recording(
            source=source,
            sample_rate=self.sample_rate,
            stream=np.asarray(stream, dtype=np.float32),
            logmel=logmel,
            stats=bandstat.statistics(logmel) if logmel.shape[0] else np.zeros((0, 0)),
            end_s=ends.astype(np.float64),
            levels_dbfs=window_level_dbfs(waves).astype(np.float64),
        )


@dataclass
class _Piece:
    """What is kept of one piece of a source."""

    source: str
    stats: list[FloatArray] = field(default_factory=list)
    levels: list[FloatArray] = field(default_factory=list)
    logmel: list[FloatArray] = field(default_factory=list)
    kept: list[FloatArray] = field(default_factory=list)
    kept_samples: int = 0
    keeping: bool = True
    windows: int = 0


class Collector:
    """Model-rate mono audio fed in blocks → the windows' statistics, in constant memory.

    Windows that the input-health checks would flag are skipped and counted by reason:
    ``silence`` (level below ``silence_dbfs``), ``clipping`` (more than
    ``clipping_ratio`` of the samples at full scale), ``nonfinite`` samples, and any
    ``bad`` reason the caller marks a block with (``input_lost``, ``overrun``). The
    usable windows of a piece are laid end to end at the hop: calibration sees the
    sound, not the gaps. ``piece_s``: a source is cut into pieces of this length that
    serve as the folds' sources (one live stream); None keeps each source whole.
    """

    def __init__(
        self,
        features: LogMelParams,
        window_s: float,
        hop_s: float,
        *,
        piece_s: float | None = None,
        keep_s: float = MAX_INJECTED_S,
        silence_dbfs: float = -80.0,
        clipping_ratio: float = 0.001,
    ) -> None:
        self.featurizer = Featurizer(features, window_s, hop_s)
        self.window_s = window_s
        self.hop_s = self.featurizer.hop_samples / features.sample_rate
        self.piece_samples = (
            None if piece_s is None else max(1, round(piece_s * features.sample_rate))
        )
        self.keep_samples = round(keep_s * features.sample_rate)
        self.silence_dbfs = silence_dbfs
        self.clipping_ratio = clipping_ratio
        self.pieces: list[_Piece] = []
        self.skipped_s: dict[str, float] = {}
        """Seconds of windows skipped (hops), by reason."""
        self.windows = 0
        self._source = ""
        self._buffer = np.zeros(0, dtype=np.float32)
        self._base = 0  # source sample index of _buffer[0]
        self._next = 0  # source sample index of the next window's start
        self._bad: list[tuple[int, int, str]] = []
        self._pending: list[tuple[int, FloatArray]] = []
        self._last_piece: _Piece | None = None

    @property
    def seconds(self) -> float:
        """Usable normal audio collected so far, seconds (one hop per window)."""
        return self.windows * self.hop_s

    @property
    def skipped_total_s(self) -> float:
        """Skipped audio so far, seconds."""
        return sum(self.skipped_s.values())

    def begin(self, source: str) -> None:
        """Start a new source (a file, or the live stream): no window spans two."""
        self._flush()
        self._source = source
        self._buffer = np.zeros(0, dtype=np.float32)
        self._base = self._next = 0
        self._bad = []
        self._last_piece = None

    def gap(self) -> None:
        """The stream broke (samples lost): windows restart after it."""
        end = self._base + self._buffer.shape[0]
        self._buffer = np.zeros(0, dtype=np.float32)
        self._base = self._next = end

    def feed(self, block: npt.ArrayLike, *, bad: str | None = None) -> None:
        """Append model-rate samples; ``bad``: skip every window that overlaps them, for
        this reason."""
        x = np.asarray(block, dtype=np.float32).reshape(-1)
        if x.shape[0] == 0:
            return
        start = self._base + self._buffer.shape[0]
        if bad is not None:
            self._bad.append((start, start + x.shape[0], bad))
        self._buffer = np.concatenate([self._buffer, x])
        w, hop = self.featurizer.window_samples, self.featurizer.hop_samples
        end = self._base + self._buffer.shape[0]
        while self._next + w <= end:
            at = self._next - self._base
            self._judge(self._next, self._buffer[at : at + w])
            self._next += hop
        drop = self._next - self._base
        if drop > 0:
            self._buffer = self._buffer[drop:].copy()
            self._base = self._next
        self._bad = [b for b in self._bad if b[1] > self._base]
        if len(self._pending) >= BATCH:
            self._flush()

    def finish(self) -> None:
        """Featurise the windows still pending."""
        self._flush()

    def _skip(self, reason: str) -> None:
        self.skipped_s[reason] = self.skipped_s.get(reason, 0.0) + self.hop_s
        self._last_piece = None  # the kept audio of a piece stays contiguous

    def _judge(self, start: int, window: FloatArray) -> None:
        for lo, hi, reason in self._bad:
            if lo < start + window.shape[0] and hi > start:
                self._skip(reason)
                return
        if not np.isfinite(window).all():
            self._skip("nonfinite")
            return
        if float(window_level_dbfs(window)[0]) < self.silence_dbfs:
            self._skip("silence")
            return
        clipped = np.count_nonzero(np.abs(window) >= CLIP_LEVEL) / window.shape[0]
        if clipped > self.clipping_ratio:
            self._skip("clipping")
            return
        self._pending.append((start, window.copy()))
        self.windows += 1

    def _piece(self, start: int) -> _Piece:
        k = 0 if self.piece_samples is None else start // self.piece_samples
        name = self._source if self.piece_samples is None else f"{self._source}#{k}"
        if not self.pieces or self.pieces[-1].source != name:
            self.pieces.append(_Piece(name))
        return self.pieces[-1]

    def _flush(self) -> None:
        if not self._pending:
            return
        starts = [s for s, _ in self._pending]
        waves = np.stack([w for _, w in self._pending])
        self._pending = []
        logmel = self.featurizer.logmel(waves)
        stats = bandstat.statistics(logmel).astype(np.float32)
        levels = window_level_dbfs(waves)
        hop = self.featurizer.hop_samples
        for i, start in enumerate(starts):
            piece = self._piece(start)
            piece.stats.append(stats[i])
            piece.levels.append(levels[i : i + 1])
            piece.windows += 1
            if piece.keeping:
                contiguous = self._last_piece is piece
                if not contiguous and piece.kept_samples:
                    piece.keeping = False  # the kept audio stays one contiguous stretch
                else:
                    part = waves[i] if not contiguous else waves[i][-hop:]
                    piece.kept.append(part.copy())
                    piece.kept_samples += part.shape[0]
                    piece.logmel.append(logmel[i])
                    piece.keeping = piece.kept_samples < self.keep_samples
            self._last_piece = piece

    def recordings(self) -> list[Recording]:
        """What was collected, one ``Recording`` per piece that holds at least a window."""
        self._flush()
        rate = self.featurizer.sample_rate
        out = []
        for p in self.pieces:
            if not p.windows:
                continue
            ends = self.window_s + self.hop_s * np.arange(p.windows, dtype=np.float64)
            out.append(
                Recording(
                    source=p.source,
                    sample_rate=rate,
                    stream=np.concatenate(p.kept) if p.kept else np.zeros(0, np.float32),
                    logmel=np.stack(p.logmel),
                    stats=np.stack(p.stats).astype(np.float64),
                    end_s=ends,
                    levels_dbfs=np.concatenate(p.levels).astype(np.float64),
                )
            )
        return out


def save_recordings(path: Path, recordings: list[Recording], *, mode: int = 0o600) -> int:
    """Write recordings to one ``.npz`` file (atomic); returns its size in bytes."""
    arrays: dict[str, np.ndarray] = {
        "sources": np.array([r.source for r in recordings], dtype=np.str_),
        "rates": np.array([r.sample_rate for r in recordings], dtype=np.int64),
    }
    for i, r in enumerate(recordings):
        arrays[f"stats_{i}"] = r.stats.astype(np.float32)
        arrays[f"end_{i}"] = r.end_s
        arrays[f"levels_{i}"] = r.levels_dbfs.astype(np.float32)
        arrays[f"stream_{i}"] = pcm16(r.stream)  # as a clip keeps it: half the bytes
        arrays[f"logmel_{i}"] = r.logmel
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    data = buf.getvalue()
    write_atomic(path, data, mode=mode)
    return len(data)


def load_recordings(path: Path) -> list[Recording]:
    """Recordings written by :func:`save_recordings`; LearnError naming the file when it
    cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as z:
            sources = [str(s) for s in z["sources"]]
            rates = [int(v) for v in z["rates"]]
            return [
                Recording(
                    source=src,
                    sample_rate=rate,
                    stream=z[f"stream_{i}"].astype(np.float32) / PCM16_SCALE,
                    logmel=z[f"logmel_{i}"].astype(np.float32),
                    stats=z[f"stats_{i}"].astype(np.float64),
                    end_s=z[f"end_{i}"].astype(np.float64),
                    levels_dbfs=z[f"levels_{i}"].astype(np.float64),
                )
                for i, (src, rate) in enumerate(zip(sources, rates, strict=True))
            ]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise LearnError(f"{path}: learned data cannot be read ({exc})") from None
