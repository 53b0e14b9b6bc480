"""The recordings ``asd-train prepare`` reads: audio files and JSON waveform records.

Every input (a file, or a folder searched recursively) becomes a sequence of
:class:`Recording` objects: mono float32 at the target rate, in blocks, with the label
its names carry. Audio is opened with :func:`asd_edge.audiofile.open_audio` (its own
reader for WAV, which reads a block at a time, so that a recorder's multi-hour file
never has to fit in memory; ffmpeg for MP3/MP4/M4A and the rest, and soundfile first
for FLAC/OGG where it is installed, which decode whole), one channel picked or all mixed
down, and resampled block by block by the daemon's own ``StreamResampler`` (the samples
of ``scipy.signal.resample_poly`` over the whole recording).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asd_edge.audiofile import (
    AudioData,
    AudioReader,
    check_channel,
    check_rate,
    open_audio,
    to_mono,
)
from asd_edge.errors import AudioDecodeError
from asd_edge.resample import StreamResampler, resample_whole
from training.dataset import AUDIO_EXTENSIONS
from training.jsonwave import DEFAULT_JSON_RATE, read_json_waves
from training.labels import Label, label_from_name

__all__ = [
    "INPUT_EXTENSIONS",
    "InputFile",
    "Recording",
    "SegmentCutter",
    "decode_audio",
    "find_inputs",
    "open_input_audio",
    "read_recordings",
]

INPUT_EXTENSIONS: tuple[str, ...] = (*AUDIO_EXTENSIONS, ".json")
_SOUNDFILE_EXTENSIONS = (".flac", ".ogg")


@dataclass(frozen=True)
class InputFile:
    """One input file and the name its labels are read from."""

    path: Path
    """Absolute path."""
    label_name: Path
    """The names that carry the file's label: for a folder INPUT, the path from the
    folder's own name down to the file (``pump/normal/a.wav``); for a file INPUT, its
    folder's name and its own (``normal/a.wav``). Folders above do not count."""


@dataclass(frozen=True)
class Recording:
    """One recording, ready to cut into segments."""

    source: str
    """Where it came from: the file's absolute path, plus ``#record N`` for JSON."""
    path: Path
    blocks: Iterator[np.ndarray]
    """Its samples, float32 mono at ``sample_rate``, in consecutive blocks: read as they
    are consumed, once, and only until the next recording is asked for (the file is
    closed then). AudioDecodeError while they are read if the file turns out shorter
    than it said or holds a NaN or infinite sample."""
    sample_rate: int
    label: Label | None
    original_rate: int
    channels: int


def find_inputs(inputs: Sequence[str | Path]) -> tuple[list[InputFile], list[Path]]:
    """Every readable-looking file under ``inputs`` (sorted, de-duplicated) and the inputs
    that do not exist. Files given by name are taken whatever their extension."""
    found: dict[Path, InputFile] = {}
    missing: list[Path] = []
    for raw in inputs:
        p = Path(raw).expanduser().absolute()
        if not p.exists():
            missing.append(p)
        elif p.is_file():
            found.setdefault(p, InputFile(p, Path(p.parent.name) / p.name))
        else:
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p)
                if (
                    f.suffix.lower() in INPUT_EXTENSIONS
                    and not any(part.startswith(".") for part in rel.parts)
                    and f.is_file()
                ):
                    found.setdefault(f, InputFile(f, Path(p.name) / rel))
    return sorted(found.values(), key=lambda i: str(i.path)), missing


def open_input_audio(path: Path) -> AudioReader:
    """Open an audio file for reading in blocks (a WAV is read as they are consumed);
    soundfile first for FLAC/OGG, where it is installed (decoded whole)."""
    if path.suffix.lower() in _SOUNDFILE_EXTENSIONS:
        try:
            import soundfile
        except ImportError:
            pass
        else:
            try:
                data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            except (RuntimeError, soundfile.LibsndfileError):
                pass  # let ffmpeg have a go
            else:
                check_rate(str(path), int(rate))
                samples = np.ascontiguousarray(data)
                shape = samples.shape
                return AudioReader(str(path), int(rate), shape[1], shape[0], decoded=samples)
    return open_audio(path)


def decode_audio(path: Path) -> AudioData:
    """Decode a whole audio file; soundfile first for FLAC/OGG, where it is installed."""
    with open_input_audio(path) as audio:
        return audio.read()


def _mono_blocks(audio: AudioReader, channel: int | None, sample_rate: int) -> Iterator[np.ndarray]:
    """``audio``'s blocks mixed down (or one channel picked) and resampled to
    ``sample_rate``; AudioDecodeError at a NaN or infinite sample."""
    resample = StreamResampler(audio.sample_rate, sample_rate)
    for block in audio.blocks(finite=True):
        out = resample(to_mono(block, channel))
        if out.size:
            yield out
    tail = resample.flush()
    if tail.size:
        yield tail


def read_recordings(
    item: InputFile,
    *,
    sample_rate: int,
    channel: int | None = None,
    json_rate: int = DEFAULT_JSON_RATE,
    on_problem: Callable[[str], None] | None = None,
) -> Iterator[Recording]:
    """The recordings of one input file at ``sample_rate``.

    ``channel`` picks one channel (0-based) of multichannel audio; None mixes all down.
    The label is the record's own (JSON), else the one :func:`label_from_name` reads
    from ``item.label_name``. Raises ``AudioDecodeError`` (audio that cannot be read,
    a channel that does not exist) or ``JsonWaveError`` (malformed JSON, after the
    records before the error); ``on_problem`` hears about single bad JSON records.
    """
    name_label = label_from_name(item.label_name)
    source = item.path.as_posix()
    if item.path.suffix.lower() == ".json":
        for rec in read_json_waves(item.path, default_rate=json_rate, on_problem=on_problem):
            yield Recording(
                source=f"{source}#record {rec.record_index}",
                path=item.path,
                blocks=iter((resample_whole(rec.samples, rec.sample_rate, sample_rate),)),
                sample_rate=sample_rate,
                label=rec.label if rec.label is not None else name_label,
                original_rate=rec.sample_rate,
                channels=1,
            )
        return
    audio = open_input_audio(item.path)
    try:
        if audio.frames == 0:
            raise AudioDecodeError(str(item.path), "no samples (empty audio)")
        try:
            check_channel(channel, audio.channels)
        except ValueError as e:
            raise AudioDecodeError(str(item.path), str(e)) from None
    except BaseException:
        audio.close()
        raise
    try:  # the file stays open while the consumer reads the blocks
        yield Recording(
            source=source,
            path=item.path,
            blocks=_mono_blocks(audio, channel, sample_rate),
            sample_rate=sample_rate,
            label=name_label,
            original_rate=audio.sample_rate,
            channels=audio.channels,
        )
    finally:
        audio.close()


class SegmentCutter:
    """Cuts a recording's blocks into segments as they come: every full ``segment`` from
    the start, then the rest if it is at least ``min_segment`` long (and not empty).
    Holds at most a segment and a block."""

    def __init__(self, segment: int, min_segment: int) -> None:
        self.segment = segment
        self.min_segment = min_segment
        self.samples = 0
        """Samples seen so far (the recording's length once ``cut`` is done)."""
        self.segments = 0
        """Segments given so far."""

    def cut(self, blocks: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        """(index of the first sample, samples) of each segment of ``blocks``."""
        pending: list[np.ndarray] = []
        held = start = 0
        for block in blocks:
            self.samples += block.shape[0]
            pending.append(block)
            held += block.shape[0]
            if held < self.segment:
                continue
            buf = pending[0] if len(pending) == 1 else np.concatenate(pending)  # (no copy)
            while buf.shape[0] >= self.segment:
                self.segments += 1
                yield start, buf[: self.segment]
                start += self.segment
                buf = buf[self.segment :]
            pending, held = ([buf] if buf.size else []), buf.shape[0]
        if held and held >= self.min_segment:
            self.segments += 1
            yield start, np.concatenate(pending)
