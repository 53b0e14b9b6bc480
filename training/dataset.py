"""The data ``fit`` and ``evaluate`` read: a prepared manifest or a DCASE-style folder.

Two layouts are understood:

- **prepared** (``asd-train prepare``): a folder holding ``manifest.csv`` (or the CSV
  itself) with columns ``path,label,split,source,sha256`` (more columns are allowed),
  ``path`` relative to the CSV's folder, ``split`` one of train/valid/test.
- **DCASE-style**: a folder with ``train/`` (normal recordings only) and optionally
  ``test/``, searched recursively, labels in the names (:mod:`training.labels`). A
  seeded ``valid_fraction`` of the train files becomes the ``valid`` split. A file in
  ``train/`` whose name says anomaly, and a test file whose name carries no label, is
  **skipped with a warning** (listed in :attr:`Dataset.skipped`), not an error: one
  misplaced file should not stop a training run, and the warning names it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import numpy as np
import structlog

from asd_edge.durable import write_atomic
from training.errors import DataError
from training.labels import LABELS, Label, label_from_name

__all__ = [
    "AUDIO_EXTENSIONS",
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "SPLITS",
    "DataFile",
    "Dataset",
    "Split",
    "assign_splits",
    "audio_files",
    "file_sha256",
    "load_dataset",
    "rows_sha256",
    "write_manifest",
]

log = structlog.get_logger()

Split = Literal["train", "valid", "test"]
SPLITS: tuple[Split, ...] = ("train", "valid", "test")
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".mp3", ".mp4", ".m4a", ".ogg")
"""File name endings read as audio (case-insensitive)."""
MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS: tuple[str, ...] = ("path", "label", "split", "source", "sha256")
"""Required columns of a manifest, in the order ``prepare`` writes them."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class DataFile:
    """One audio file of a dataset."""

    path: Path
    """Absolute path."""
    label: Label
    split: Split
    source: str
    """The original recording (and record index / offset) it came from; files with the
    same source are never in two splits of a prepared dataset."""


@dataclass(frozen=True)
class Dataset:
    """The files of a dataset, by split and label, and a hash that identifies them."""

    root: Path
    files: tuple[DataFile, ...]
    sample_rate: int | None
    """Rate of all files if known (prepared datasets), else None."""
    sha256: str
    """Hash identifying the data (for the model metadata's ``training.data_sha256``)."""
    kind: Literal["manifest", "dcase"]
    skipped: tuple[str, ...] = field(default=())
    """One ``path: reason`` line per file found but not used."""

    def split(self, name: str, label: Label | None = None) -> list[DataFile]:
        """The files of split ``name`` (train/valid/test), optionally of one label only."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        if label is not None and label not in LABELS:
            raise ValueError(f"unknown label {label!r}; expected normal or anomaly")
        return [f for f in self.files if f.split == name and (label is None or f.label == label)]


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 of a file's content, hex."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def rows_sha256(rows: Iterable[tuple[str, str]]) -> str:
    """The dataset hash: SHA-256 over sorted ``relative path <TAB> file sha256`` lines."""
    h = hashlib.sha256()
    for rel, digest in sorted(rows):
        h.update(f"{rel}\t{digest}\n".encode())
    return h.hexdigest()


def audio_files(folder: Path) -> list[Path]:
    """Audio files under ``folder`` (recursive, hidden files skipped), sorted."""
    found = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in AUDIO_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(found)


def load_dataset(
    path: str | Path, *, valid_fraction: float = 0.15, seed: int = 0, verify: bool = False
) -> Dataset:
    """Load a prepared dataset (folder with ``manifest.csv``, or the CSV) or a DCASE folder.

    ``valid_fraction`` and ``seed`` choose the DCASE ``valid`` split (at least one file
    when train has two or more; ignored for manifests, which carry their split).
    ``verify`` re-hashes every manifest file against its ``sha256`` column.
    Raises :class:`DataError` naming the path and what was expected.
    """
    p = Path(path).expanduser().absolute()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder (expected a dataset folder or manifest.csv)")
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise DataError(f"{p}: not a dataset (expected a folder or a manifest .csv file)")
        return _load_manifest(p, verify=verify)
    if (p / MANIFEST_NAME).is_file():
        return _load_manifest(p / MANIFEST_NAME, verify=verify)
    if (p / "train").is_dir() or (p / "test").is_dir():
        return _load_dcase(p, valid_fraction=valid_fraction, seed=seed)
    hint = sorted(
        c.name
        for c in p.iterdir()
        if c.is_dir() and ((c / MANIFEST_NAME).is_file() or (c / "train").is_dir())
    )
    more = f"; these folders inside are datasets: {', '.join(hint)}" if hint else ""
    raise DataError(
        f"{p}: not a dataset folder (expected {MANIFEST_NAME}, or train/ and test/ folders){more}"
    )


def _load_manifest(csv_path: Path, *, verify: bool) -> Dataset:
    root = csv_path.parent
    try:
        with csv_path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in MANIFEST_COLUMNS if c not in header]
            if missing:
                raise DataError(
                    f"{csv_path}: missing column(s) {', '.join(missing)} "
                    f"(expected {','.join(MANIFEST_COLUMNS)}; found {','.join(header) or 'none'})"
                )
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise DataError(f"{csv_path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{csv_path}: not a valid CSV ({e})") from None
    files: list[DataFile] = []
    hashes: list[tuple[str, str]] = []
    rates: set[str] = set()
    for n, row in enumerate(rows, start=1):
        where = f"{csv_path}: row {n}"
        if None in row:
            raise DataError(f"{where}: more fields than the header has")
        values = {c: (row.get(c) or "").strip() for c in MANIFEST_COLUMNS}
        rel = values["path"]
        if not rel:
            raise DataError(f"{where}: bad column path: empty")
        if values["label"] not in LABELS:
            raise DataError(
                f"{where}: bad column label: expected normal or anomaly, got {values['label']!r}"
            )
        if values["split"] not in SPLITS:
            raise DataError(
                f"{where}: bad column split: expected train, valid or test, got {values['split']!r}"
            )
        if not _SHA256.match(values["sha256"]):
            raise DataError(
                f"{where}: bad column sha256: expected 64 lowercase hex digits, "
                f"got {values['sha256']!r}"
            )
        file_path = (root / rel).absolute()
        if not file_path.is_file():
            raise DataError(f"{where}: file listed but missing: {file_path}")
        if verify and file_sha256(file_path) != values["sha256"]:
            raise DataError(f"{where}: {rel} has changed since the manifest was written (sha256)")
        if row.get("sample_rate"):
            rates.add(str(row["sample_rate"]).strip())
        files.append(
            DataFile(
                path=file_path,
                label=cast(Label, values["label"]),
                split=cast(Split, values["split"]),
                source=values["source"] or rel,
            )
        )
        hashes.append((Path(rel).as_posix(), values["sha256"]))
    dataset = Dataset(
        root=root,
        files=tuple(files),
        sample_rate=_manifest_rate(csv_path, rates),
        sha256=rows_sha256(hashes),
        kind="manifest",
    )
    _require_normal_train(dataset, csv_path)
    return dataset


def _manifest_rate(csv_path: Path, rates: set[str]) -> int | None:
    """The rate of all files: the ``sample_rate`` column, else ``prepare.json``."""
    if len(rates) == 1:
        try:
            return int(float(next(iter(rates))))
        except ValueError:
            return None
    if rates:
        return None
    info = csv_path.parent / "prepare.json"
    try:
        rate = json.loads(info.read_text(encoding="utf-8")).get("sample_rate")
    except (OSError, ValueError, AttributeError):
        return None
    return rate if isinstance(rate, int) and rate > 0 else None


def _load_dcase(root: Path, *, valid_fraction: float, seed: int) -> Dataset:
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    skipped: list[str] = []
    train: list[Path] = []
    test: list[tuple[Path, Label]] = []
    if (root / "train").is_dir():
        for p in audio_files(root / "train"):
            rel = p.relative_to(root)
            if label_from_name(rel) == "anomaly":
                skipped.append(f"{p}: name says anomaly, but train/ holds normal sound only")
            else:
                train.append(p)
    if (root / "test").is_dir():
        for p in audio_files(root / "test"):
            label = label_from_name(p.relative_to(root))
            if label is None:
                skipped.append(f"{p}: no label in the name (expected normal or anomaly in it)")
            else:
                test.append((p, label))
    for line in skipped:
        log.warning("dataset_file_skipped", detail=line)
    valid = set(_choose_valid(train, root, valid_fraction, seed))
    files = [
        DataFile(p, "normal", "valid" if p in valid else "train", p.relative_to(root).as_posix())
        for p in train
    ]
    files += [DataFile(p, label, "test", p.relative_to(root).as_posix()) for p, label in test]
    digest = rows_sha256((f.path.relative_to(root).as_posix(), file_sha256(f.path)) for f in files)
    dataset = Dataset(
        root=root,
        files=tuple(files),
        sample_rate=None,
        sha256=digest,
        kind="dcase",
        skipped=tuple(skipped),
    )
    _require_normal_train(dataset, root / "train")
    return dataset


def _choose_valid(train: list[Path], root: Path, fraction: float, seed: int) -> list[Path]:
    """A seeded ``fraction`` of ``train`` (at least 1 of 2+, never all of them)."""
    n = len(train)
    if n < 2 or fraction <= 0.0:
        return []
    count = min(n - 1, max(1, round(fraction * n)))
    ordered = sorted(train, key=lambda p: p.relative_to(root).as_posix())
    picks = np.random.default_rng(seed).permutation(n)[:count]
    return [ordered[i] for i in sorted(picks)]


def _require_normal_train(dataset: Dataset, where: Path) -> None:
    if not dataset.split("train", "normal"):
        raise DataError(
            f"{where}: no normal train files (a detector learns normal sound from them)"
        )


def assign_splits(
    sizes: dict[str, int], fractions: dict[str, float], rng: np.random.Generator
) -> dict[str, str]:
    """Source → split, in a seeded order, each source to the split furthest below its
    fraction of the segments assigned so far (so a split's share approaches its fraction)."""
    names = sorted(sizes)
    splits = [s for s in SPLITS if fractions.get(s, 0.0) > 0.0]
    assigned = dict.fromkeys(splits, 0)
    total = 0
    out: dict[str, str] = {}
    for i in rng.permutation(len(names)):
        name = names[int(i)]
        total += sizes[name]
        best = max(splits, key=lambda s: (fractions[s] * total - assigned[s], fractions[s]))
        assigned[best] += sizes[name]
        out[name] = best
    return out


def write_manifest(root: Path, rows: Iterable[Sequence[object]], extra: Sequence[str] = ()) -> Path:
    """Write ``root/manifest.csv`` atomically: the required columns, then ``extra`` ones;
    each row gives the values in that order (``path`` relative to ``root``)."""
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow([*MANIFEST_COLUMNS, *extra])
    w.writerows(rows)
    return write_atomic(root / MANIFEST_NAME, text.getvalue().encode("utf-8"))
