"""The recordings ``asd-train prepare`` reads: audio files and JSON waveform records.

Every input (a file, or a folder searched recursively) becomes a sequence of
:class:`Recording` objects: mono float32 at the target rate, with the label its
names carry. Audio is decoded with :func:`asd_edge.audiofile.read_audio` (its own
reader for WAV, ffmpeg for MP3/MP4/M4A and the rest; soundfile first for FLAC/OGG where
it is installed), one channel picked or all mixed down, and resampled with
``scipy.signal.resample_poly``, which is what the daemon's resampler computes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asd_edge.audiofile import AudioData, read_audio, to_mono
from asd_edge.errors import AudioDecodeError
from asd_edge.resample import resample_whole
from training.dataset import AUDIO_EXTENSIONS
from training.jsonwave import DEFAULT_JSON_RATE, read_json_waves
from training.labels import Label, label_from_name

__all__ = [
    "INPUT_EXTENSIONS",
    "InputFile",
    "Recording",
    "decode_audio",
    "find_inputs",
    "read_recordings",
    "segment_bounds",
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
    samples: np.ndarray
    """float32 mono at ``sample_rate``."""
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


def decode_audio(path: Path) -> AudioData:
    """Decode an audio file; soundfile first for FLAC/OGG, where it is installed."""
    if path.suffix.lower() in _SOUNDFILE_EXTENSIONS:
        try:
            import soundfile
        except ImportError:
            pass
        else:
            try:
                data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
                return AudioData(np.ascontiguousarray(data), int(rate))
            except (RuntimeError, soundfile.LibsndfileError):
                pass  # let ffmpeg have a go
    return read_audio(path)


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
                samples=resample_whole(rec.samples, rec.sample_rate, sample_rate),
                sample_rate=sample_rate,
                label=rec.label if rec.label is not None else name_label,
                original_rate=rec.sample_rate,
                channels=1,
            )
        return
    audio = decode_audio(item.path)
    if audio.frames == 0:
        raise AudioDecodeError(str(item.path), "no samples (empty audio)")
    try:
        mono = to_mono(audio.samples, channel)
    except ValueError as e:
        raise AudioDecodeError(str(item.path), str(e)) from None
    yield Recording(
        source=source,
        path=item.path,
        samples=resample_whole(mono, audio.sample_rate, sample_rate),
        sample_rate=sample_rate,
        label=name_label,
        original_rate=audio.sample_rate,
        channels=audio.channels,
    )


def segment_bounds(n_samples: int, segment: int, min_segment: int) -> list[tuple[int, int]]:
    """[start, stop) of the segments of ``n_samples``: full segments from the start, and
    the remainder if at least ``min_segment`` long."""
    bounds = [(s, s + segment) for s in range(0, n_samples - segment + 1, segment)]
    rest_start = len(bounds) * segment
    if n_samples - rest_start >= max(1, min_segment):
        bounds.append((rest_start, n_samples))
    return bounds
