"""``asd-train prepare``: recordings in, a segmented, split, hashed dataset out.

    asd-train prepare recordings/ more.m4a --out data/pump --rate 16000 --segment-s 10

1. Every INPUT (file, or folder searched recursively: WAV FLAC MP3 MP4 M4A OGG and
   JSON waveform files) is decoded, one channel picked or all mixed down
   (``--channel``), and resampled to ``--rate`` (:mod:`training.sources`).
2. Each recording is cut into ``--segment-s`` segments from its start. The remainder
   is kept, **shorter and not padded**, if it lasts at least ``--min-segment-s``
   (default: half a segment), else dropped; a recording shorter than that is skipped
   and reported. Levels are kept as recorded (no normalisation).
3. Recordings (not segments: segments of one recording never land in two splits)
   are split train/valid/test with a seed, per label, so that each split gets about
   its fraction of the segments. Anomalies go to valid/test only, unless
   ``--labelled-train`` (supervised kinds), which splits them like normals.
4. Segments are written as 16-bit WAV under ``OUT/<split>/<label>/`` with ASCII names
   (the source's name made ASCII, a short hash of its path, the segment number);
   ``OUT/manifest.csv`` lists ``path,label,split,source,sha256,offset_s,duration_s,
   sample_rate,augmented``; ``OUT/prepare.json`` records the arguments, the counts and
   every skipped file with its reason.
5. ``--augment N`` adds N augmented copies of each train segment (``augmented`` = 1,
   same source and label), see :mod:`training.augment`.

Labels come from folder and file names (:mod:`training.labels`), or ``--label`` for
all inputs. Unreadable files and files without a label are reported by name and
skipped, the rest goes on (exit 1); exit 65 if nothing usable was found, 66 if an
INPUT does not exist. The command line is :mod:`training.prepare_cli`; the work is here.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from asd_edge.audiofile import read_audio, write_wav
from asd_edge.errors import AudioDecodeError
from training.augment import AugmentConfig, Augmenter
from training.dataset import SPLITS, assign_splits, file_sha256, rows_sha256, write_manifest
from training.errors import DataError
from training.jsonwave import DEFAULT_JSON_RATE
from training.labels import Label
from training.sources import InputFile, Recording, SegmentCutter, read_recordings

__all__ = ["EXTRA_COLUMNS", "PrepareResult", "Segment", "prepare"]

EXTRA_COLUMNS = ("offset_s", "duration_s", "sample_rate", "augmented")
"""The manifest's columns after the required ones."""
_STAGING = ".prepare-staging"


@dataclass(frozen=True)
class Segment:
    """One written segment (or augmented copy) of a recording."""

    path: Path
    label: Label
    source: str
    index: int
    offset_s: float
    duration_s: float
    split: str = ""
    augmented: int = 0
    sha256: str = ""


@dataclass(frozen=True)
class PrepareResult:
    """What :func:`prepare` did."""

    segments: tuple[Segment, ...]
    skipped: tuple[tuple[str, str], ...]
    """(path, reason) of every input file or record that was not used."""
    warnings: tuple[str, ...]
    data_sha256: str


def _slug(text: str, limit: int = 40) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", ascii_text).strip("._-")
    return slug[:limit] or "rec"


def _stem(rec: Recording, root: str) -> str:
    """ASCII-safe, recognisable and unique name stem of a recording. Its digest is of the
    source's path below ``root`` (the inputs' common folder), so the same recordings
    prepared from another place get the same names, and so the same fit."""
    digest = hashlib.sha1(rec.source.removeprefix(root).encode()).hexdigest()[:8]
    record = rec.source.rpartition("#record ")[2] if "#record " in rec.source else ""
    suffix = f"_r{int(record):06d}" if record else ""
    return f"{_slug(rec.path.stem)}{suffix}_{digest}"


def _progress(items: Sequence[Any], enabled: bool, desc: str, unit: str) -> Iterable[Any]:
    if not (enabled and sys.stderr.isatty()):
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit, file=sys.stderr)


def prepare(
    inputs: Sequence[InputFile],
    out: Path,
    *,
    sample_rate: int = 16000,
    segment_s: float = 10.0,
    min_segment_s: float | None = None,
    channel: int | None = None,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    label: Label | None = None,
    labelled_train: bool = False,
    json_rate: int = DEFAULT_JSON_RATE,
    augment: int = 0,
    augment_config: AugmentConfig | None = None,
    progress: bool = False,
) -> PrepareResult:
    """Cut, split and write ``inputs`` under ``out`` (see the module doc); the result.

    ``out`` must hold no previous dataset (``asd-train prepare`` clears one with
    ``--force``, see :mod:`training.prepare_cli`).
    """
    segment = round(segment_s * sample_rate)
    min_segment = round((segment_s / 2 if min_segment_s is None else min_segment_s) * sample_rate)
    if segment < 1:
        raise ValueError(f"--segment-s {segment_s} is shorter than one sample")
    staging = out / _STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    skipped: list[tuple[str, str]] = []
    warnings: list[str] = []
    staged: list[Segment] = []
    root = os.path.commonpath([i.path.parent.as_posix() for i in inputs]) if inputs else ""
    try:
        for item in _progress(inputs, progress, "reading", "file"):
            staged += _stage(
                item,
                staging,
                skipped,
                root=root.rstrip("/") + "/",
                sample_rate=sample_rate,
                segment=segment,
                min_segment=min_segment,
                channel=channel,
                label=label,
                json_rate=json_rate,
            )
        placed = _place(staged, out, split, seed, labelled_train, warnings)
        if augment > 0 and augment_config is not None:
            placed += _augment(placed, augment, augment_config, sample_rate, seed, progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    placed.sort(key=lambda s: s.path.relative_to(out).as_posix())
    digest = rows_sha256((s.path.relative_to(out).as_posix(), s.sha256) for s in placed)
    if placed:
        write_manifest(
            out,
            (
                [
                    s.path.relative_to(out).as_posix(),
                    s.label,
                    s.split,
                    s.source,
                    s.sha256,
                    f"{s.offset_s:.6f}",
                    f"{s.duration_s:.6f}",
                    sample_rate,
                    s.augmented,
                ]
                for s in placed
            ),
            EXTRA_COLUMNS,
        )
    return PrepareResult(tuple(placed), tuple(skipped), tuple(warnings), digest)


def _stage(
    item: InputFile,
    staging: Path,
    skipped: list[tuple[str, str]],
    *,
    root: str,
    sample_rate: int,
    segment: int,
    min_segment: int,
    channel: int | None,
    label: Label | None,
    json_rate: int,
) -> list[Segment]:
    """Decode one input file and write its segments into the staging folder."""
    out: list[Segment] = []

    def problem(line: str) -> None:
        skipped.append((str(item.path), line.removeprefix(f"{item.path}: ")))

    recordings = read_recordings(
        item, sample_rate=sample_rate, channel=channel, json_rate=json_rate, on_problem=problem
    )
    first = 0  # out[first:]: the segments of the recording being read
    try:
        for rec in recordings:
            first = len(out)
            where = rec.source.removeprefix(item.path.as_posix()).lstrip("#")
            rec_label = label or rec.label
            if rec_label is None:
                problem(
                    f"{where + ': ' if where else ''}no label in its folder or file names "
                    "(expected normal/ok or anomaly/ng in them; or give --label)"
                )
                continue
            stem = _stem(rec, root)
            cutter = SegmentCutter(segment, min_segment)  # read and written a block at a time
            for k, (a, samples) in enumerate(cutter.cut(rec.blocks)):
                path = staging / f"{stem}_{k:04d}.wav"
                write_wav(path, samples, sample_rate)
                seconds = samples.shape[0] / sample_rate
                out.append(Segment(path, rec_label, rec.source, k, a / sample_rate, seconds))
            if not cutter.segments:
                problem(
                    f"{where + ': ' if where else ''}too short: "
                    f"{cutter.samples / sample_rate:.2f} s < --min-segment-s "
                    f"{min_segment / sample_rate:g} (lower --segment-s or --min-segment-s)"
                )
    except (AudioDecodeError, DataError, OSError) as e:
        for seg in out[first:]:  # a recording bad in its middle goes as a whole
            seg.path.unlink(missing_ok=True)
        del out[first:]
        kept = f" ({len(out)} segment(s) of the records before it are kept)" if out else ""
        reason = f"cannot read: {e.strerror or e}" if isinstance(e, OSError) else str(e)
        problem(f"{reason}{kept}")
    finally:
        recordings.close()  # the file, also when this stopped in the middle
    return out


def _place(
    staged: list[Segment],
    out: Path,
    split: tuple[float, float, float],
    seed: int,
    labelled_train: bool,
    warnings: list[str],
) -> list[Segment]:
    """Choose each source's split and move its segments to ``out/<split>/<label>/``."""
    by_label: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for s in staged:
        by_label[s.label][s.source] += 1
    normal_fractions: dict[str, float] = dict(zip(SPLITS, split, strict=True))
    if labelled_train:
        anomaly_fractions = normal_fractions
    else:
        held_out = split[1] + split[2]
        anomaly_fractions = (
            {"valid": split[1] / held_out, "test": split[2] / held_out}
            if held_out > 0
            else {"test": 1.0}
        )
    where: dict[tuple[str, str], str] = {}
    for code, (lab, fractions) in enumerate(
        [("normal", normal_fractions), ("anomaly", anomaly_fractions)]
    ):
        sizes = by_label.get(lab, {})
        chosen = assign_splits(dict(sizes), fractions, np.random.default_rng([seed, code]))
        where.update({(lab, src): sp for src, sp in chosen.items()})
        missing = [s for s in SPLITS if fractions.get(s, 0) > 0 and s not in chosen.values()]
        if sizes and missing:
            warnings.append(
                f"{len(sizes)} {lab} recording(s) cannot fill every split: no {lab} segments "
                f"in {', '.join(missing)} (segments of one recording stay in one split)"
            )
    if not by_label.get("normal"):
        warnings.append("no normal recordings: nothing for an unsupervised detector to learn")
    placed = []
    for s in staged:
        sp = where[(s.label, s.source)]
        target = out / sp / s.label / s.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(s.path, target)
        placed.append(replace(s, path=target, split=sp, sha256=file_sha256(target)))
    return placed


def _augment(
    placed: list[Segment],
    copies: int,
    config: AugmentConfig,
    sample_rate: int,
    seed: int,
    progress: bool,
) -> list[Segment]:
    """``copies`` augmented copies of each train segment, written beside it."""
    augmenter = Augmenter(config, sample_rate, seed=seed)
    train = [s for s in placed if s.split == "train"]
    added = []
    for s in _progress(train, progress, "augmenting", "segment"):
        wave = read_audio(s.path).samples[:, 0]
        key = int(hashlib.sha1(s.path.name.encode()).hexdigest()[:8], 16)
        for j in range(1, copies + 1):
            copy = augmenter(wave, np.random.default_rng([seed, key, j]))
            target = s.path.with_name(f"{s.path.stem}_aug{j}.wav")
            write_wav(target, copy, sample_rate)
            added.append(replace(s, path=target, augmented=1, sha256=file_sha256(target)))
    return added
