"""Datasets of synthetic machines: DCASE-style folders, or a prepared dataset with a manifest."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asd_edge.audiofile import write_wav

from .faults import ANOMALY_KINDS
from .machine import Machine

__all__ = ["machine_name", "write_dataset", "write_labelled_dataset"]


def machine_name(machine_id: int) -> str:
    """The folder :func:`write_dataset` writes machine ``machine_id`` to."""
    return f"machine_{machine_id:02d}"


def _progress(items: Iterable[Any], total: int, enabled: bool, desc: str) -> Iterable[Any]:
    if not (enabled and sys.stderr.isatty()):
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # synth must run with the daemon's dependencies only
        return items
    return tqdm(items, total=total, desc=desc, unit="file", file=sys.stderr)


def write_dataset(
    out: Path,
    *,
    machines: int = 1,
    train_files: int = 40,
    test_normal: int = 10,
    test_anomaly: int = 10,
    duration_s: float = 10.0,
    sample_rate: int = 16000,
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Write a DCASE-style dataset of synthetic machines; return the written paths.

    Layout: ``out/machine_0X/train/normal_id_0X_0000000N.wav`` and
    ``out/machine_0X/test/{normal_id_0X_0000000N.wav, anomaly_id_0X_0000000N_<kind>.wav}``
    (kinds cycled in :data:`ANOMALY_KINDS` order), 16-bit WAV. Each file's sound is a
    function of (seed, machine, split, index) only: the same arguments give
    byte-identical files.
    """
    if machines < 1 or min(train_files, test_normal, test_anomaly) < 0:
        raise ValueError("machines must be >= 1 and file counts >= 0")
    jobs: list[tuple[int, str, int, str | None]] = []
    for m in range(machines):
        jobs += [(m, "train", i, None) for i in range(train_files)]
        jobs += [(m, "test", i, None) for i in range(test_normal)]
        jobs += [(m, "test", i, ANOMALY_KINDS[i % len(ANOMALY_KINDS)]) for i in range(test_anomaly)]
    written: list[Path] = []
    split_code = {"train": 0, "test": 1}
    for m, split, i, kind in _progress(jobs, len(jobs), progress, "synth"):
        machine = Machine(machine_id=m, seed=seed, sample_rate=sample_rate)
        folder = Path(out) / machine_name(m) / split
        folder.mkdir(parents=True, exist_ok=True)
        code = 2 if kind is not None else split_code[split]
        rng = np.random.default_rng([seed, m, code, i])
        if kind is None:
            wave = machine.normal(duration_s, rng)
            name = f"normal_id_{m:02d}_{i:08d}.wav"
        else:
            wave = machine.anomaly(kind, duration_s, rng)
            name = f"anomaly_id_{m:02d}_{i:08d}_{kind}.wav"
        path = folder / name
        write_wav(path, wave, sample_rate)
        written.append(path)
    return written


def write_labelled_dataset(
    root: Path,
    plan: Sequence[tuple[str, str, int]],
    *,
    duration_s: float = 2.0,
    seed: int = 0,
) -> Path:
    """A prepared dataset (``root/manifest.csv``) of machine 0: ``plan`` lists
    ``(split, label, count)``; anomaly kinds cycle through ``ANOMALY_KINDS``. Unlike
    ``write_dataset`` (DCASE layout, normal-only train), it can put labelled anomalies
    in any split, as the supervised kind needs. Deterministic given ``seed``."""
    from ..dataset import file_sha256, write_manifest  # pulls no heavy dependency

    machine = Machine(machine_id=0, seed=seed)
    rows = []
    for code, (split, label, count) in enumerate(plan):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rng = np.random.default_rng([seed, code, i])
            if label == "normal":
                wave = machine.normal(duration_s, rng)
            else:
                wave = machine.anomaly(ANOMALY_KINDS[i % len(ANOMALY_KINDS)], duration_s, rng)
            rel = f"{split}/{label}_{i:03d}.wav"
            write_wav(root / rel, wave, machine.sample_rate)
            rows.append([rel, label, split, rel, file_sha256(root / rel)])
    write_manifest(root, rows)
    return root
