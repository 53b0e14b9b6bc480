"""Reading any audio file into float32 samples; 16-bit WAV encoding and writing."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from .durable import write_atomic
from .errors import AudioDecodeError

__all__ = [
    "AudioData",
    "pcm16",
    "read_audio",
    "to_mono",
    "wav_bytes",
    "write_wav",
]

log = structlog.get_logger()

FloatArray = npt.NDArray[np.float32]

_FFMPEG_MISSING = "ffmpeg is not installed (apt-get install ffmpeg)"
_RIFF_MAGIC = (b"RIFF", b"RIFX", b"RF64")
# Full scale of each integer PCM type scipy returns (24-bit arrives as int32, left-justified).
_INT_SCALE = {np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31, np.dtype(np.int64): 2.0**63}


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
    """Decode a WAV (scipy) or anything ffmpeg reads (FLAC, MP3, MP4, M4A, ...).

    Raises ``AudioDecodeError`` naming the file when it is missing, is not audio,
    or ffmpeg is needed but absent.
    """
    p = Path(path)
    name = str(path)
    try:
        with p.open("rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise AudioDecodeError(name, "no such file") from None
    except OSError as e:
        raise AudioDecodeError(name, f"cannot open: {e.strerror or e}") from None
    if magic in _RIFF_MAGIC:
        try:
            return _read_wav(p)
        except (
            ValueError,
            TypeError,
            EOFError,
            OSError,
            IndexError,
            struct.error,
            UnboundLocalError,  # scipy 1.17 on a RIFF header with no fmt chunk
        ) as e:
            # A WAV variant scipy does not parse (e.g. some extensible or compressed
            # formats), or a truncated file: let ffmpeg try before giving up.
            log.debug("wav_fallback_to_ffmpeg", path=name, error=str(e))
    return _read_ffmpeg(p, name)


def _read_wav(path: Path) -> AudioData:
    from scipy.io import wavfile  # not needed (nor its memory) by a daemon on a microphone

    with warnings.catch_warnings():
        # Unknown chunks (LIST, bext, ...) are harmless; scipy skips them.
        warnings.simplefilter("ignore", wavfile.WavFileWarning)
        rate, data = wavfile.read(path)
    if data.ndim == 1:
        data = data[:, np.newaxis]
    if data.dtype == np.uint8:
        samples = (data.astype(np.float32) - 128.0) / 128.0
    elif data.dtype in _INT_SCALE:
        samples = (data / _INT_SCALE[data.dtype]).astype(np.float32)
    elif data.dtype.kind == "f":
        samples = data.astype(np.float32, copy=False)
    else:
        raise ValueError(f"unsupported WAV sample type {data.dtype}")
    return AudioData(np.ascontiguousarray(samples), int(rate))


def _run(args: list[str], name: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(args, capture_output=True, check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise AudioDecodeError(name, _FFMPEG_MISSING) from None


def _ffmpeg_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"


def _read_ffmpeg(path: Path, name: str) -> AudioData:
    # "file:" plus an absolute path: ffmpeg never mistakes a name for an option
    # ("-x.mp3") or a protocol ("a:b.m4a").
    url = "file:" + str(path.absolute())
    probe = _run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_streams", "-of", "json", url],
        name,
    )
    if probe.returncode != 0:
        raise AudioDecodeError(name, f"not a readable audio file ({_ffmpeg_error(probe)})")
    try:
        streams: list[dict[str, Any]] = json.loads(probe.stdout)["streams"]
    except (ValueError, KeyError) as e:
        raise AudioDecodeError(name, f"unexpected ffprobe output: {e}") from None
    if not streams:
        raise AudioDecodeError(name, "not an audio file (no audio stream found)")
    try:
        rate = int(streams[0]["sample_rate"])
        channels = int(streams[0]["channels"])
    except (KeyError, ValueError) as e:
        raise AudioDecodeError(name, f"audio stream has no usable rate/channels: {e}") from None
    if rate <= 0 or channels <= 0:
        raise AudioDecodeError(name, f"audio stream reports {rate} Hz, {channels} channel(s)")
    dec = _run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-i",
            url,
            "-map",
            "0:a:0",
            "-f",
            "f32le",
            "-acodec",
            "pcm_f32le",
            "-ac",
            str(channels),
            "-ar",
            str(rate),
            "-",
        ],
        name,
    )
    if dec.returncode != 0:
        raise AudioDecodeError(name, f"ffmpeg cannot decode it ({_ffmpeg_error(dec)})")
    usable = len(dec.stdout) - len(dec.stdout) % (4 * channels)
    samples = np.frombuffer(dec.stdout[:usable], dtype="<f4").reshape(-1, channels)
    log.debug("audio_decoded_by_ffmpeg", path=name, sample_rate=rate, channels=channels)
    return AudioData(samples.astype(np.float32), rate)


def pcm16(samples: npt.ArrayLike) -> npt.NDArray[np.int16]:
    """Float samples (full scale [-1, 1]) as 16-bit integers: NaN becomes 0, values are
    scaled by 32768, rounded half to even and clipped to [-32768, 32767] (no wrapping)."""
    data = np.nan_to_num(np.asarray(samples, dtype=np.float64), nan=0.0)
    return np.clip(np.round(data * 32768.0), -32768, 32767).astype(np.int16)


def wav_bytes(samples: npt.ArrayLike, sample_rate: int) -> bytes:
    """A complete 16-bit PCM WAV file in memory, from float samples ``(frames,)`` or
    ``(frames, channels)`` converted as ``pcm16`` does."""
    pcm = pcm16(samples)
    if pcm.ndim not in (1, 2):
        raise ValueError(f"samples must be 1-D or 2-D (frames, channels), got shape {pcm.shape}")
    channels = 1 if pcm.ndim == 1 else pcm.shape[1]
    data = np.ascontiguousarray(pcm, dtype="<i2").tobytes()
    rate = int(sample_rate)
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(data),
        b"WAVE",
        b"fmt ",
        16,  # PCM fmt chunk
        1,  # WAVE_FORMAT_PCM
        channels,
        rate,
        rate * channels * 2,  # bytes per second
        channels * 2,  # block align
        16,  # bits per sample
        b"data",
        len(data),
    )
    return header + data


def write_wav(path: str | os.PathLike[str], samples: npt.ArrayLike, sample_rate: int) -> None:
    """Write float samples (``(frames,)`` or ``(frames, channels)``) as 16-bit PCM WAV.

    The bytes are ``wav_bytes(samples, sample_rate)`` (values clipped to [-1, 1]); the
    file appears atomically, as ``write_atomic`` writes it.
    """
    write_atomic(path, wav_bytes(samples, sample_rate))


def to_mono(samples: npt.ArrayLike, channel: int | None) -> FloatArray:
    """Return one channel of ``(frames, channels)`` samples, or their mean when ``None``."""
    data = np.asarray(samples, dtype=np.float32)
    if data.ndim == 1:
        data = data[:, np.newaxis]
    if data.ndim != 2:
        raise ValueError(f"samples must be 1-D or 2-D (frames, channels), got shape {data.shape}")
    if channel is None:
        return np.ascontiguousarray(data.mean(axis=1, dtype=np.float32))
    if not 0 <= channel < data.shape[1]:
        raise ValueError(f"channel {channel} does not exist: the audio has {data.shape[1]}")
    return np.ascontiguousarray(data[:, channel])
