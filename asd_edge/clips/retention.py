"""Retention of clips: the index of what is on disk, age and size limits, crash recovery.

Only the clip writer's thread changes the index once the writer has started; the
counters are read from any thread (``snapshot``) under a lock.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import math
import os
import threading
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ..config import ClipsConfig
from ..durable import write_atomic
from .types import ClipResult

__all__ = ["AUDIO_SUFFIXES", "MB", "Retention", "saved_clip", "statvfs_usage"]

log = structlog.get_logger()

MB = 1_000_000
"""Bytes in the megabyte of ``clips.max_total_mb`` and ``clips.min_free_mb``."""
AUDIO_SUFFIXES = {".wav": "wav", ".flac": "flac"}
_CLIP_SUFFIXES = (*AUDIO_SUFFIXES, ".png", ".json")


@dataclass(slots=True)
class _Stored:
    """One clip on disk in the running index."""

    stem: Path
    files: list[Path]
    bytes: int
    created_s: float


def statvfs_usage(directory: Path) -> tuple[int, int]:
    """(free bytes for an unprivileged writer, total bytes) of ``directory``'s filesystem."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / MB:.2f} MB"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The index's counters at one moment."""

    bytes: int
    files: int
    clips: int
    deleted: int


class Retention:
    """The clips under ``directory`` (``<monitor>/<stem>.{wav|flac,png,json}``), oldest
    first, kept within ``max_age_days``, ``max_total_mb`` and ``min_free_mb``.

    ``scan`` builds the index once at start and cleans up after a crash: leftover
    ``.*.tmp`` files are deleted; an audio file whose sidecar is missing is KEPT (it is
    whole and an alert may name it) and gets a sidecar marked ``"recovered": true``;
    a sidecar or picture without audio is deleted. ``on_error`` hears every file that
    could not be deleted.
    """

    def __init__(
        self,
        directory: Path,
        config: ClipsConfig,
        *,
        clock: Callable[[], float],
        disk_usage: Callable[[Path], tuple[int, int]],
        on_error: Callable[[str], None],
    ) -> None:
        self.directory = directory
        self.config = config
        self._clock = clock
        self._disk_usage = disk_usage
        self._on_error = on_error
        self._lock = threading.Lock()
        self._index: list[_Stored] = []
        self._bytes = 0
        self._deleted = 0

    def snapshot(self) -> Snapshot:
        """Sizes and counters (thread-safe)."""
        with self._lock:
            return Snapshot(
                bytes=self._bytes,
                files=sum(len(c.files) for c in self._index),
                clips=len(self._index),
                deleted=self._deleted,
            )

    def add(self, stem: Path, files: list[Path], n_bytes: int) -> None:
        """A clip the writer has just written."""
        stored = _Stored(stem, files, n_bytes, self._clock())
        with self._lock:
            bisect.insort(self._index, stored, key=lambda c: c.created_s)
            self._bytes += n_bytes

    def make_room(self, need: int) -> tuple[int, str | None]:
        """Apply age, total and free-space limits for a clip of ``need`` bytes, oldest
        first. Returns (clips deleted, why the clip cannot be written or None). Nothing
        is deleted for a clip that could not fit even with every clip gone."""
        cfg = self.config
        deleted = self.delete_expired()
        max_total = int(cfg.max_total_mb * MB)
        min_free = int(cfg.min_free_mb * MB)
        if need > max_total:
            return deleted, (
                f"quota: the clip needs {_mb(need)}, more than clips.max_total_mb "
                f"({cfg.max_total_mb:g} MB)"
            )
        try:
            free, _total = self._disk_usage(self.directory)
        except OSError as exc:
            return deleted, f"cannot read the free space of {self.directory}: {exc}"
        shortfall = need + min_free - free - self._bytes
        if shortfall > 0:
            return deleted, (
                f"quota: cannot free {_mb(shortfall)}: the clip needs {_mb(need)}, "
                f"{_mb(free)} free and clips hold {_mb(self._bytes)}, "
                f"clips.min_free_mb is {cfg.min_free_mb:g} MB"
            )
        freed = 0
        while self._index and (self._bytes + need > max_total or free + freed - need < min_free):
            freed += self._delete_oldest("quota")
            deleted += 1
        return deleted, None

    def delete_expired(self) -> int:
        """Delete the clips older than ``max_age_days``; returns how many."""
        if self.config.max_age_days is None:
            return 0
        cutoff = self._clock() - self.config.max_age_days * 86400.0
        deleted = 0
        while self._index and self._index[0].created_s < cutoff:
            self._delete_oldest("age")
            deleted += 1
        return deleted

    def _delete_oldest(self, reason: str) -> int:
        with self._lock:
            clip = self._index.pop(0)
            self._bytes -= clip.bytes
            self._deleted += 1
        # Audio first: a crash in between leaves a sidecar without audio, which scan() deletes.
        for path in sorted(clip.files, key=lambda p: p.suffix not in AUDIO_SUFFIXES):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                self._on_error(f"cannot delete {path}: {exc}")
                log.warning("clip_delete_failed", path=str(path), error=str(exc))
        log.debug("clip_deleted", path=str(clip.stem), reason=reason, bytes=clip.bytes)
        return clip.bytes

    def scan(self) -> None:
        """Index the clips on disk once; remove crash leftovers (see the class docstring).
        A file that cannot be read or removed is logged and passed over."""
        groups: dict[Path, list[Path]] = {}
        for path in self.directory.glob("*/*"):
            try:
                if path.name.startswith(".") and path.name.endswith(".tmp"):
                    path.unlink(missing_ok=True)
                    log.info("clip_temp_removed", path=str(path))
                elif path.suffix in _CLIP_SUFFIXES and path.is_file():
                    groups.setdefault(path.with_suffix(""), []).append(path)
            except OSError as exc:
                log.warning("clip_scan_failed", path=str(path), error=str(exc))
        index: list[_Stored] = []
        for stem, files in groups.items():
            try:
                stored = self._check_set(stem, files)
            except OSError as exc:
                log.warning("clip_scan_failed", path=str(stem), error=str(exc))
                continue
            if stored is not None:
                index.append(stored)
        index.sort(key=lambda c: c.created_s)
        with self._lock:
            self._index = index
            self._bytes = sum(c.bytes for c in index)

    def _check_set(self, stem: Path, files: list[Path]) -> _Stored | None:
        """The index entry of a clip found on disk, completed or removed if a crash cut it."""
        audio = [p for p in files if p.suffix in AUDIO_SUFFIXES]
        if not audio:
            for path in files:
                path.unlink(missing_ok=True)
            log.info("clip_remains_removed", path=str(stem))
            return None
        sidecar = stem.with_suffix(".json")
        if sidecar not in files:
            try:
                write_atomic(sidecar, _recovered_sidecar(audio[0]))
                files.append(sidecar)
                log.warning("clip_recovered", path=str(audio[0]))
            except OSError as exc:  # e.g. a full disk: keep the audio as it is
                log.warning("clip_recovery_failed", path=str(audio[0]), error=str(exc))
        stats = [p.stat() for p in files]
        size = sum(s.st_size for s in stats)
        return _Stored(stem, files, size, max(s.st_mtime for s in stats))


def saved_clip(audio: Path) -> ClipResult | None:
    """The clip of ``audio`` as it is on disk, from its sidecar (after ``scan``, an audio
    file whose sidecar a crash cut off has a rebuilt one: ``recovered``); None when the
    audio file is not there. For the alerts a killed daemon left without their clip."""
    try:
        if audio.suffix not in AUDIO_SUFFIXES or not audio.is_file():
            return None
        doc = json.loads(audio.with_suffix(".json").read_bytes())
    except (OSError, ValueError):  # no sidecar (its recovery failed): the file's own facts
        try:
            doc = json.loads(_recovered_sidecar(audio))
        except OSError:
            return None
    doc = doc if isinstance(doc, dict) else {}
    clip: dict[str, Any] = doc["clip"] if isinstance(doc.get("clip"), dict) else {}
    picture, sidecar = audio.with_suffix(".png"), audio.with_suffix(".json")
    return ClipResult(
        alert_id=str(doc.get("alert_id", "")),
        monitor=str(doc.get("monitor", audio.parent.name)),
        path=audio,
        duration_s=_number(clip.get("duration_s"), 0.0),
        bytes=int(_number(clip.get("bytes"), audio.stat().st_size)),
        sha256=clip.get("sha256") if isinstance(clip.get("sha256"), str) else None,
        spectrogram=picture if picture.is_file() else None,
        sidecar=sidecar if sidecar.is_file() else None,
        error=None,
        recovered=doc.get("recovered") is True,
    )


def _number(value: object, default: float) -> float:
    """A sidecar's number, or ``default`` when it is missing or not a finite number."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return float(default)


def _recovered_sidecar(audio: Path) -> bytes:
    """The sidecar of an audio file whose own sidecar was lost to a crash: file facts only."""
    data = audio.read_bytes()
    clip: dict[str, Any] = {
        "file": audio.name,
        "format": AUDIO_SUFFIXES[audio.suffix],
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }
    if audio.suffix == ".wav":
        try:
            with wave.open(io.BytesIO(data)) as w:
                clip["sample_rate"] = w.getframerate()
                clip["duration_s"] = w.getnframes() / w.getframerate()
        except (wave.Error, EOFError, ZeroDivisionError) as exc:  # rate 0: a damaged header
            clip["error"] = str(exc) or type(exc).__name__
    _stamp, _, alert_id = audio.stem.partition("_")
    doc = {"alert_id": alert_id, "monitor": audio.parent.name, "recovered": True, "clip": clip}
    return (json.dumps(doc, indent=1) + "\n").encode()
