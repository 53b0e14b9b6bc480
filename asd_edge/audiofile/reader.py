"""An audio file opened for reading: a WAV in blocks as they are consumed (memory bounded
by a block, however long the file), anything else decoded whole by ffmpeg; mono mixes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final

import numpy as np
import numpy.typing as npt

from ..errors import AudioDecodeError
from .ffmpeg import decode_with_ffmpeg
from .wav import WavLayout, wav_layout

__all__ = [
    "BLOCK_BYTES",
    "MIN_SAMPLE_RATE",
    "AudioData",
    "AudioReader",
    "check_channel",
    "check_rate",
    "open_audio",
    "read_audio",
    "to_mono",
]

FloatArray = npt.NDArray[np.float32]

BLOCK_BYTES: Final = 1 << 20
"""How much of a WAV file's audio is read at once (1 MiB): what ``AudioReader.blocks``
holds of a WAV file, however long the file is."""
MIN_SAMPLE_RATE: Final = 1000
"""The lowest sample rate taken for audio (Hz): a file that says less (a 1 Hz header) is
refused by name rather than read as a recording thousands of times longer than it is."""


@dataclass(frozen=True)
class AudioData:
    """Decoded audio: all channels of a file at the file's own rate."""

    samples: FloatArray
    """float32, shape ``(frames, channels)``, full scale is [-1, 1]."""
    sample_rate: int
    """Frames per second."""

    @property
    def frames(self) -> int:
        """Number of sample frames (samples per channel)."""
        return int(self.samples.shape[0])

    @property
    def channels(self) -> int:
        """Number of channels."""
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate


def read_audio(path: str | os.PathLike[str]) -> AudioData:
    """Decode a whole WAV (PCM or float) or anything ffmpeg reads (FLAC, MP3, MP4, M4A, ...).

    Raises ``AudioDecodeError`` naming the file when it is missing, is not audio, is a
    truncated WAV, or ffmpeg is needed but absent (``open_audio``).
    """
    with open_audio(path) as audio:
        return audio.read()


def open_audio(path: str | os.PathLike[str]) -> AudioReader:
    """``path`` opened for reading (``AudioReader``): a WAV of integer PCM (8 to 64 bits)
    or float samples, in RIFF, RIFX or RF64, is read in blocks as it is consumed; any
    other file (or a WAV of another encoding, or whose header does not parse) is decoded
    whole by ffmpeg now.

    Raises ``AudioDecodeError`` naming the file when it is missing, is not audio, or
    ffmpeg is needed but absent, when a WAV's header announces more audio than the
    file holds (a truncated recording is not scored as if it were whole), and when its
    rate is below ``MIN_SAMPLE_RATE``. ``blocks(finite=True)`` raises it for NaN or
    infinite samples.
    """
    name = str(path)
    try:
        f = Path(path).open("rb")  # noqa: SIM115 (the reader holds it; closed on error below)
    except FileNotFoundError:
        raise AudioDecodeError(name, "no such file") from None
    except OSError as e:
        raise AudioDecodeError(name, f"cannot open: {e.strerror or e}") from None
    try:
        layout = wav_layout(f, name)
    except BaseException:
        f.close()
        raise
    if layout is not None:
        try:
            check_rate(name, layout.sample_rate)
        except AudioDecodeError:
            f.close()
            raise
        return AudioReader(
            name, layout.sample_rate, layout.channels, layout.frames, wav=(f, layout)
        )
    f.close()
    samples, rate = decode_with_ffmpeg(Path(path), name)
    check_rate(name, rate)
    return AudioReader(name, rate, samples.shape[1], samples.shape[0], decoded=samples)


def check_rate(name: str, rate: int) -> None:
    """AudioDecodeError naming the file ``name`` if ``rate`` is below ``MIN_SAMPLE_RATE``."""
    if rate < MIN_SAMPLE_RATE:
        raise AudioDecodeError(
            name, f"sample rate {rate} Hz is below {MIN_SAMPLE_RATE} Hz: not an audio recording"
        )


class AudioReader:
    """An audio file open for reading (``open_audio``): its rate, channels and length,
    and its samples as float32 ``(frames, channels)``, full scale [-1, 1], in blocks
    (``blocks``) or whole (``read``).

    A WAV file is read only as its blocks are consumed, so ``blocks`` holds at most
    ``BLOCK_BYTES`` of it at a time; a file ffmpeg decoded is in memory whole. A context
    manager: leaving it closes the file.
    """

    def __init__(
        self,
        name: str,
        sample_rate: int,
        channels: int,
        frames: int,
        *,
        wav: tuple[BinaryIO, WavLayout] | None = None,
        decoded: FloatArray | None = None,
    ) -> None:
        self.name = name
        """The path, as given."""
        self.sample_rate = sample_rate
        """Frames per second."""
        self.channels = channels
        """Number of channels."""
        self.frames = frames
        """Number of sample frames."""
        self._wav = wav
        self._decoded = decoded

    def blocks(
        self, max_frames: int | None = None, *, finite: bool = False
    ) -> Iterator[FloatArray]:
        """The samples in consecutive blocks of at most ``max_frames`` frames (default: as
        many as ``BLOCK_BYTES`` of the file hold). AudioDecodeError naming the file if a
        WAV turns out shorter than its header said (cut while it was read), and with
        ``finite`` if a sample is NaN or infinite (the tools that refuse such a file:
        ``score``, ``prepare``; the daemon's pipeline zeroes them, as the monitor does)."""
        can_be_bad = finite and (self._wav is None or self._wav[1].kind == "f")
        at = 0
        for block in self._raw_blocks(max_frames):
            if can_be_bad and not np.isfinite(block).all():
                bad = at + int(np.argmin(np.isfinite(block).all(axis=1)))
                raise AudioDecodeError(
                    self.name,
                    f"sample {bad:,} ({bad / self.sample_rate:.3f} s) is NaN or infinite",
                )
            at += block.shape[0]
            yield block

    def _raw_blocks(self, max_frames: int | None) -> Iterator[FloatArray]:
        if self._decoded is not None:
            step = max_frames or max(1, BLOCK_BYTES // (4 * self.channels))
            for begin in range(0, self._decoded.shape[0], step):
                yield self._decoded[begin : begin + step]
            return
        assert self._wav is not None
        f, layout = self._wav
        step = max(1, max_frames or BLOCK_BYTES // layout.block_align)
        f.seek(layout.data_offset)
        left = layout.frames
        while left > 0:
            want = min(step, left) * layout.block_align
            try:
                raw = f.read(want)
            except OSError as e:
                raise AudioDecodeError(self.name, f"cannot read: {e.strerror or e}") from None
            if len(raw) < want:
                raise AudioDecodeError(
                    self.name,
                    f"truncated while it was read: {left * layout.block_align - len(raw):,} "
                    "bytes of the audio its header announces are gone",
                )
            yield layout.decode(raw)
            left -= want // layout.block_align

    def read(self) -> AudioData:
        """All the samples at once."""
        if self._decoded is not None:
            return AudioData(self._decoded, self.sample_rate)
        samples = np.empty((self.frames, self.channels), dtype=np.float32)
        at = 0
        for block in self.blocks():
            samples[at : at + block.shape[0]] = block
            at += block.shape[0]
        return AudioData(samples, self.sample_rate)

    def close(self) -> None:
        """Let the file go (idempotent)."""
        if self._wav is not None:
            self._wav[0].close()

    def __enter__(self) -> AudioReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def to_mono(samples: npt.ArrayLike, channel: int | None) -> FloatArray:
    """Return one channel of ``(frames, channels)`` samples, or their mean when ``None``."""
    data = np.asarray(samples, dtype=np.float32)
    if data.ndim == 1:
        data = data[:, np.newaxis]
    if data.ndim != 2:
        raise ValueError(f"samples must be 1-D or 2-D (frames, channels), got shape {data.shape}")
    check_channel(channel, data.shape[1])
    if channel is None:
        return np.ascontiguousarray(data.mean(axis=1, dtype=np.float32))
    return np.ascontiguousarray(data[:, channel])


def check_channel(channel: int | None, channels: int) -> None:
    """ValueError unless ``channel`` is None (all) or one of ``channels``."""
    if channel is not None and not 0 <= channel < channels:
        raise ValueError(f"channel {channel} does not exist: the audio has {channels}")
