"""Audio files: any file read into float32 samples, a WAV in blocks; 16-bit WAV written.

``open_audio`` and ``read_audio`` are the face (``reader``); the formats behind it:

- ``reader``: ``AudioReader``, a file open for reading in blocks (``asd-edge score``) or
  whole (``read_audio``: training, replay), and the mono mix.
- ``wav``: the WAV header read (RIFF, RIFX, RF64; integer PCM or float) and its data
  decoded block by block, a truncated file refused; 16-bit WAV bytes and files.
- ``ffmpeg``: every other format, decoded whole by the ffmpeg command.
"""

from .reader import (
    BLOCK_BYTES,
    MIN_SAMPLE_RATE,
    AudioData,
    AudioReader,
    check_channel,
    check_rate,
    open_audio,
    read_audio,
    to_mono,
)
from .wav import pcm16, wav_bytes, write_wav

__all__ = [
    "BLOCK_BYTES",
    "MIN_SAMPLE_RATE",
    "AudioData",
    "AudioReader",
    "check_channel",
    "check_rate",
    "open_audio",
    "pcm16",
    "read_audio",
    "to_mono",
    "wav_bytes",
    "write_wav",
]
