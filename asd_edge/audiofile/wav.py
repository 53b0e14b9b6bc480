"""The WAV format: a file's header read into a ``WavLayout`` (where its samples are, how
they are stored) and its data decoded block by block; 16-bit PCM WAV bytes and files."""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO, Final, Literal

import numpy as np
import numpy.typing as npt

from ..durable import write_atomic
from ..errors import AudioDecodeError

__all__ = ["WavLayout", "pcm16", "wav_bytes", "wav_layout", "write_wav"]

FloatArray = npt.NDArray[np.float32]

_RIFF_MAGIC: Final = (b"RIFF", b"RIFX", b"RF64")
_HEADER_CHUNK_MAX: Final = 1 << 16
"""A ``fmt `` or ``ds64`` chunk larger than this is not one (they are 16-40 bytes)."""
_EXTENSIBLE_TAIL: Final = {
    "<": b"\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71",
    ">": b"\x00\x00\x00\x10\x80\x00\x00\xaa\x00\x38\x9b\x71",
}
"""The end of a WAVE_FORMAT_EXTENSIBLE sub-format GUID whose first 4 bytes are a format tag."""


@dataclass(frozen=True, slots=True)
class WavLayout:
    """Where a WAV file's samples are and how they are stored."""

    sample_rate: int
    channels: int
    width: int
    """Bytes per sample (its container: a 20-bit sample may take 3)."""
    kind: Literal["u", "i", "f"]
    """Unsigned 8-bit, signed integer, or IEEE float."""
    order: Literal["<", ">"]
    """Byte order: little (RIFF, RF64) or big (RIFX)."""
    data_offset: int
    data_bytes: int
    """The size of the data chunk, as the header says."""

    @property
    def block_align(self) -> int:
        """Bytes per frame."""
        return self.width * self.channels

    @property
    def frames(self) -> int:
        """Whole frames in the data chunk (a partial last one is left out)."""
        return self.data_bytes // self.block_align

    def decode(self, raw: bytes) -> FloatArray:
        """Whole frames of raw data as float32 ``(frames, channels)``, full scale [-1, 1]:
        8-bit is unsigned (128 is silence), integers are scaled by their full scale
        (a 24-bit sample as the top 3 bytes of an int32), floats are kept."""
        if self.kind == "u":
            data = np.frombuffer(raw, dtype=np.uint8)
            samples = (data.astype(np.float32) - 128.0) / 128.0
        elif self.kind == "f":
            samples = np.frombuffer(raw, dtype=f"{self.order}f{self.width}").astype(np.float32)
        else:
            ints = _left_justified(raw, self.width, self.order)
            samples = (ints / 2.0 ** (8 * ints.dtype.itemsize - 1)).astype(np.float32)
        return samples.reshape(-1, self.channels)


def _left_justified(raw: bytes, width: int, order: str) -> npt.NDArray[np.signedinteger[Any]]:
    """Signed integers of ``width`` bytes as native int16/32/64; a 3, 5, 6 or 7-byte sample
    fills the top bytes of the next wider type (its full scale is that type's)."""
    if width in (2, 4, 8):
        return np.frombuffer(raw, dtype=f"{order}i{width}").astype(f"=i{width}")
    wide = 4 if width == 3 else 8
    packed = np.frombuffer(raw, dtype=np.uint8).reshape(-1, width)
    bytes_ = np.zeros((packed.shape[0], wide), dtype=np.uint8)
    if order == "<":
        bytes_[:, wide - width :] = packed
    else:
        bytes_[:, :width] = packed
    return bytes_.view(f"{order}i{wide}").reshape(-1).astype(f"=i{wide}")


def wav_layout(f: BinaryIO, name: str) -> WavLayout | None:
    """The layout of the WAV file ``f`` (named ``name``) holds, read from its header; None
    when it is not a RIFF/RIFX/RF64 WAVE file of integer PCM or float samples, or its
    header does not parse (ffmpeg may still read it). AudioDecodeError naming the file
    when it cannot be read, or its header announces more audio than it holds (a
    recording cut short, or a header that claims 2**31 samples over a second of data)."""
    try:
        layout = _parse_header(f)
        if layout is not None:
            _check_complete(layout, f, name)
    except OSError as e:
        raise AudioDecodeError(name, f"cannot read: {e.strerror or e}") from None
    return layout


def _parse_header(f: BinaryIO) -> WavLayout | None:
    head = f.read(12)
    if len(head) < 12 or head[:4] not in _RIFF_MAGIC or head[8:] != b"WAVE":
        return None
    order: Literal["<", ">"] = ">" if head[:4] == b"RIFX" else "<"
    rf64_data_bytes: int | None = None
    fmt: tuple[int, int, int, Literal["u", "i", "f"]] | None = None
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            return None  # no data chunk
        (size,) = struct.unpack(f"{order}I", chunk[4:])
        if chunk[:4] == b"data":
            if fmt is None:
                return None
            if head[:4] == b"RF64":
                if rf64_data_bytes is None:
                    return None
                size = rf64_data_bytes
            rate, channels, width, kind = fmt
            return WavLayout(rate, channels, width, kind, order, f.tell(), size)
        if chunk[:4] not in (b"fmt ", b"ds64"):
            f.seek(size + (size & 1), os.SEEK_CUR)  # a chunk not needed (LIST, fact, ...)
            continue
        body = f.read(size) if size <= _HEADER_CHUNK_MAX else b""
        if len(body) < max(size, 16):
            return None
        if chunk[:4] == b"ds64":
            (rf64_data_bytes,) = struct.unpack("<Q", body[8:16])
        else:
            fmt = _wav_format(body, order)
            if fmt is None:
                return None
        f.seek(size & 1, os.SEEK_CUR)  # the pad byte after an odd-sized chunk


def _wav_format(
    body: bytes, order: Literal["<", ">"]
) -> tuple[int, int, int, Literal["u", "i", "f"]] | None:
    """(rate, channels, bytes per sample, kind) from a ``fmt `` chunk; None for an encoding
    other than integer PCM or IEEE float, or a sample size that makes no sense for it."""
    tag, channels, rate, _, block_align, bits = struct.unpack(f"{order}HHIIHH", body[:16])
    if tag == 0xFFFE and len(body) >= 40 and body[28:40] == _EXTENSIBLE_TAIL[order]:
        (tag,) = struct.unpack(f"{order}I", body[24:28])  # WAVE_FORMAT_EXTENSIBLE's sub-format
    if channels == 0 or rate == 0 or block_align == 0 or block_align % channels:
        return None
    width = block_align // channels
    if tag == 1 and 1 <= bits <= 8:
        return (rate, channels, width, "u") if width == 1 else None
    if tag == 1 and width in (2, 3, 4, 5, 6, 7, 8) and bits <= 64:
        return rate, channels, width, "i"
    if tag == 3 and bits in (32, 64) and width == bits // 8:
        return rate, channels, width, "f"
    return None


def _check_complete(layout: WavLayout, f: BinaryIO, name: str) -> None:
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):
        return  # its length is not known before it is read: ``blocks`` notices
    held = max(0, st.st_size - layout.data_offset)
    if layout.data_bytes > held:
        per_s = layout.block_align * layout.sample_rate
        raise AudioDecodeError(
            name,
            f"truncated: the header announces {layout.data_bytes:,} bytes of audio "
            f"({layout.data_bytes / per_s:,.3f} s), the file holds {held:,} "
            f"({held / per_s:,.3f} s)",
        )


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
