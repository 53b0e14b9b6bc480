"""Decoding any audio file ffmpeg reads (FLAC, MP3, MP4, M4A, ...), whole, through its
command line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import structlog

from ..errors import AudioDecodeError

__all__ = ["decode_with_ffmpeg"]

log = structlog.get_logger()

_FFMPEG_MISSING: Final = "ffmpeg is not installed (apt-get install ffmpeg)"


def _run(args: list[str], name: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(args, capture_output=True, check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise AudioDecodeError(name, _FFMPEG_MISSING) from None


def _ffmpeg_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"


def decode_with_ffmpeg(path: Path, name: str) -> tuple[npt.NDArray[np.float32], int]:
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
    return samples.astype(np.float32), rate
