"""The clips kept around events: cut from the ring on the tick, written within quota by a worker."""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import importlib
import io
import json
import math
import os
import queue
import re
import threading
import time
import wave
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import structlog
from scipy.io import wavfile

from .audiofile import _fsync_dir
from .config import ClipsConfig
from .decision import Event
from .errors import ConfigError
from .logs import json_safe
from .ring import RingBuffer
from .spectrogram import PALETTE, encode_png, spectrogram_indexed

__all__ = [
    "MB",
    "WORKER_NICE",
    "ClipRecorder",
    "ClipRequest",
    "ClipResult",
    "ClipStore",
    "ClipUsage",
    "encode_audio",
]

log = structlog.get_logger()

MB = 1_000_000
"""Bytes in the megabyte of ``clips.max_total_mb`` and ``clips.min_free_mb``."""
WORKER_NICE = 10
"""Niceness of the clip worker thread (the tick thread keeps the process's)."""
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
"""UTC wall time of a clip's first sample at the front of its file name."""
AUDIO_SUFFIXES = {".wav": "wav", ".flac": "flac"}
_CLIP_SUFFIXES = (*AUDIO_SUFFIXES, ".png", ".json")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_STOP = object()
_PRUNE = object()
_FLAC_HINT = "pip install 'asd-edge[flac]'"


@dataclass(frozen=True, slots=True)
class ClipRequest:
    """Everything the worker needs to write one clip (built on the tick, owned by the worker)."""

    alert_id: str
    """Id of the alert the clip belongs to."""
    monitor: str
    """Monitor name."""
    device_id: str
    """This device."""
    samples: npt.NDArray[np.float32]
    """Mono float32 audio, copied out of the ring."""
    sample_rate: int
    """Capture rate of ``samples``."""
    started_at: datetime
    """UTC wall time of the first sample."""
    stream_start_s: float
    """Stream time of the first sample."""
    pre_s: float
    """Pre-roll actually included (less than configured if the ring held less)."""
    event: Mapping[str, Any]
    """Event facts for the sidecar (stream times, offsets into the clip, peak, truncation)."""
    model: Mapping[str, Any]
    """The model that decided: name, version, sha256."""
    scores: Sequence[tuple[float, float]]
    """(stream time of window end, score) of the windows scored during the clip."""
    path: Path
    """Where the audio goes (``ClipStore.planned_path``)."""
    markers_s: tuple[float, ...] = ()
    """Seconds into the clip where the anomaly starts and ends (lines in the spectrogram)."""

    @property
    def duration_s(self) -> float:
        """Length of the audio in seconds."""
        return int(self.samples.shape[0]) / self.sample_rate


@dataclass(frozen=True, slots=True)
class ClipResult:
    """What became of a request (``on_done`` receives one for every request)."""

    alert_id: str
    """Id of the alert."""
    monitor: str
    """Monitor name."""
    path: Path | None
    """The audio file; None when skipped."""
    duration_s: float
    """Length of the audio in seconds."""
    bytes: int
    """Size of the audio file (0 when skipped)."""
    sha256: str | None
    """SHA-256 of the audio file, hex."""
    spectrogram: Path | None
    """The PNG beside it, if any."""
    sidecar: Path | None
    """The JSON sidecar."""
    error: str | None
    """Why it was skipped or failed; None when saved."""


@dataclass(frozen=True, slots=True)
class ClipUsage:
    """A snapshot of the store for the health topic."""

    bytes: int
    """Bytes all clips take (audio, sidecars, pictures)."""
    files: int
    """Files in the clip store."""
    clips: int
    """Clips (an audio file with its sidecar and picture)."""
    saved: int
    """Clips written since start."""
    skipped: int
    """Clips skipped since start (queue full, quota, write error)."""
    deleted: int
    """Clips deleted by retention since start."""
    last_error: str | None
    """The latest reason a clip was skipped or could not be deleted."""


@dataclass(slots=True)
class _Stored:
    """One clip on disk in the running index."""

    stem: Path
    files: list[Path]
    bytes: int
    created_s: float


def _soundfile() -> Any:
    """The soundfile module (imported only for ``clips.format: flac``)."""
    try:
        return importlib.import_module("soundfile")
    except (ImportError, OSError) as exc:  # OSError: the package is there, libsndfile is not
        raise ConfigError(
            f"clips.format: flac needs the soundfile package ({exc}); "
            f"{_FLAC_HINT}, or use format: wav"
        ) from None


def encode_audio(samples: npt.ArrayLike, sample_rate: int, fmt: Literal["wav", "flac"]) -> bytes:
    """Mono float samples as 16-bit WAV or FLAC bytes (clipped to [-1, 1], as ``write_wav``)."""
    data = np.nan_to_num(np.asarray(samples, dtype=np.float64), nan=0.0)
    pcm = np.clip(np.round(data * 32768.0), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    if fmt == "flac":
        _soundfile().write(buffer, pcm, int(sample_rate), format="FLAC", subtype="PCM_16")
    else:
        wavfile.write(buffer, int(sample_rate), pcm)
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    """``.<name>.tmp``, fsync, rename over ``path``, fsync of the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _statvfs_usage(directory: Path) -> tuple[int, int]:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def _plain(value: object) -> object:
    """JSON for what ``json`` does not know: numpy scalars and arrays, else the text."""
    if isinstance(value, np.generic | np.ndarray):
        return json_safe(value.tolist())
    return str(value)


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / MB:.2f} MB"


class ClipStore:
    """Owns ``<state_dir>/clips`` and the worker thread that writes clips into it.

    Layout: ``clips/<monitor>/<YYYYmmddTHHMMSSZ>_<alert_id>.{wav|flac,png,json}``.
    The audio, then the picture, then the sidecar are each written to
    ``.<name>.tmp``, fsynced and renamed, so the sidecar marks a complete clip.
    On ``start()``: leftover ``.tmp`` files are deleted; an audio file whose
    sidecar is missing (a crash between the two renames) is KEPT, because it is
    whole and an alert may already name it, and gets a sidecar marked
    ``"recovered": true`` (file facts only); a sidecar or picture without audio
    (a crash while retention deleted the set, audio first) is deleted.
    Retention runs before every write on an index built once at start.
    """

    def __init__(
        self,
        directory: Path,
        config: ClipsConfig,
        *,
        on_done: Callable[[ClipResult], None],
        clock: Callable[[], float] = time.time,
        disk_usage: Callable[[Path], tuple[int, int]] | None = None,
    ) -> None:
        if config.format == "flac":
            _soundfile()  # a missing package is a config error at start, not at the first event
        self.directory = Path(directory)
        self.config = config
        self._on_done = on_done
        self._clock = clock
        self._disk_usage = disk_usage or _statvfs_usage
        self._queue: queue.Queue[object] = queue.Queue(config.queue)
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._lock = threading.Lock()
        self._index: list[_Stored] = []  # oldest first; only the worker touches it once started
        self._bytes = 0
        self._saved = self._skipped = self._deleted = 0
        self._last_error: str | None = None

    # --- tick side -------------------------------------------------------------------------

    def planned_path(self, monitor: str, alert_id: str, started_at: datetime) -> Path:
        """Where the clip of an alert goes (pure: no I/O)."""
        stamp = started_at.astimezone(UTC).strftime(STAMP_FORMAT)
        name = f"{stamp}_{_UNSAFE.sub('-', alert_id)}.{self.config.format}"
        return self.directory / _UNSAFE.sub("-", monitor) / name

    def submit(self, request: ClipRequest) -> bool:
        """Queue a clip; never blocks. False (and ``on_done`` called at once, on the
        caller's thread, with a skipped result) if the queue is full or the store stopped."""
        if self._stopped:
            self._skip(request, "clip store stopped")
            return False
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            self._skip(request, f"queue full ({self.config.queue} clips waiting)")
            return False
        return True

    def prune(self) -> bool:
        """Ask the worker to delete the clips past ``max_age_days`` now (it also does
        before every write and when it starts); never blocks, False if the queue is full.
        Worth calling now and then (e.g. daily) on a device that records nothing for long."""
        try:
            self._queue.put_nowait(_PRUNE)
        except queue.Full:
            return False
        return True

    def usage(self) -> ClipUsage:
        """Thread-safe snapshot of sizes and counters."""
        with self._lock:
            return ClipUsage(
                bytes=self._bytes,
                files=sum(len(c.files) for c in self._index),
                clips=len(self._index),
                saved=self._saved,
                skipped=self._skipped,
                deleted=self._deleted,
                last_error=self._last_error,
            )

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Clean up after a crash, index what is on disk, start the worker (which first
        deletes the clips past ``max_age_days``)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._scan()
        self._thread = threading.Thread(target=self._run, name="clip-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write the clips already queued, then end the worker (waits at most ``timeout_s``)."""
        self._stopped = True
        thread = self._thread
        if thread is None:
            return
        deadline = time.monotonic() + timeout_s
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            log.warning("clip_writer_stuck", queued=self._queue.qsize())
            return
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("clip_writer_stuck", queued=self._queue.qsize())
        else:
            self._thread = None

    # --- worker ----------------------------------------------------------------------------

    def _run(self) -> None:
        # Background work: on a busy CPU the tick goes first (Linux: a nice per thread).
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
        self._delete_expired()
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if item is _PRUNE:
                self._delete_expired()
                continue
            assert isinstance(item, ClipRequest)
            try:
                result = self._write(item)
            except Exception as exc:  # supervisor boundary: one bad clip must not end the worker
                log.exception("clip_failed", alert_id=item.alert_id, monitor=item.monitor)
                result = self._skip(item, f"internal error: {exc!r}", report=False)
            self._deliver(result)

    def _deliver(self, result: ClipResult) -> None:
        try:
            self._on_done(result)
        except Exception:  # the callback is the caller's; its failure must not stop clips
            log.exception("clip_callback_failed", alert_id=result.alert_id)

    def _skip(self, request: ClipRequest, reason: str, *, report: bool = True) -> ClipResult:
        with self._lock:
            self._skipped += 1
            self._last_error = reason
        log.warning(
            "clip_skipped", alert_id=request.alert_id, monitor=request.monitor, reason=reason
        )
        result = ClipResult(
            request.alert_id, request.monitor, None, request.duration_s, 0, None, None, None, reason
        )
        if report:
            self._deliver(result)
        return result

    def _write(self, request: ClipRequest) -> ClipResult:
        fmt = self.config.format
        audio_path = request.path
        audio = encode_audio(request.samples, request.sample_rate, fmt)
        sha256 = hashlib.sha256(audio).hexdigest()
        png_path: Path | None = None
        png = b""
        if self.config.spectrogram:
            png_path = audio_path.with_suffix(".png")
            index = spectrogram_indexed(
                request.samples,
                request.sample_rate,
                markers_s=request.markers_s,
                pre_s=request.pre_s,
            )
            png = encode_png(index, PALETTE)
        sidecar_path = audio_path.with_suffix(".json")
        sidecar = self._sidecar(request, audio_path, fmt, sha256, len(audio), png_path)
        need = len(audio) + len(png) + len(sidecar)
        deleted, problem = self._make_room(need)
        if problem is not None:
            return self._skip(request, problem, report=False)
        written: list[Path] = []
        try:
            audio_path.parent.mkdir(parents=True, exist_ok=True)
            for path, data in ((audio_path, audio), (png_path, png), (sidecar_path, sidecar)):
                if path is not None:
                    _write_atomic(path, data)
                    written.append(path)
        except OSError as exc:
            for path in written:  # never leave part of a set behind
                path.unlink(missing_ok=True)
            return self._skip(request, f"write failed: {exc}", report=False)
        stored = _Stored(audio_path.with_suffix(""), written, need, self._clock())
        with self._lock:
            bisect.insort(self._index, stored, key=lambda c: c.created_s)
            self._bytes += need
            self._saved += 1
        log.info(
            "clip_saved",
            alert_id=request.alert_id,
            monitor=request.monitor,
            path=str(audio_path),
            duration_s=round(request.duration_s, 3),
            bytes=len(audio),
            deleted=deleted,
        )
        return ClipResult(
            request.alert_id,
            request.monitor,
            audio_path,
            request.duration_s,
            len(audio),
            sha256,
            png_path,
            sidecar_path,
            None,
        )

    def _sidecar(
        self,
        request: ClipRequest,
        audio_path: Path,
        fmt: str,
        sha256: str,
        n_bytes: int,
        png_path: Path | None,
    ) -> bytes:
        duration_s = request.duration_s
        scores = [
            {"offset_s": round(t - request.stream_start_s, 6), "score": s}
            for t, s in request.scores
            if 0.0 < t - request.stream_start_s <= duration_s + 1e-6
        ]
        doc = {
            "alert_id": request.alert_id,
            "device_id": request.device_id,
            "monitor": request.monitor,
            "event": dict(request.event),
            "model": dict(request.model),
            "clip": {
                "file": audio_path.name,
                "format": fmt,
                "sample_rate": request.sample_rate,
                "samples": int(request.samples.shape[0]),
                "duration_s": duration_s,
                "pre_s": request.pre_s,
                "started_at": request.started_at.astimezone(UTC).isoformat(timespec="milliseconds"),
                "stream_start_s": request.stream_start_s,
                "sha256": sha256,
                "bytes": n_bytes,
                "spectrogram": png_path.name if png_path is not None else None,
            },
            "scores": scores,
        }
        return (json.dumps(json_safe(doc), indent=1, default=_plain) + "\n").encode()

    # --- retention -------------------------------------------------------------------------

    def _make_room(self, need: int) -> tuple[int, str | None]:
        """Apply age, total and free-space limits for a clip of ``need`` bytes, oldest
        first. Returns (clips deleted, why the clip cannot be written or None). Nothing
        is deleted for a clip that could not fit even with every clip gone."""
        cfg = self.config
        deleted = self._delete_expired()
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

    def _delete_expired(self) -> int:
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
        # Audio first: a crash in between leaves a sidecar without audio, which start() deletes.
        for path in sorted(clip.files, key=lambda p: p.suffix not in AUDIO_SUFFIXES):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                with self._lock:
                    self._last_error = f"cannot delete {path}: {exc}"
                log.warning("clip_delete_failed", path=str(path), error=str(exc))
        log.debug("clip_deleted", path=str(clip.stem), reason=reason, bytes=clip.bytes)
        return clip.bytes

    def _scan(self) -> None:
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
                _write_atomic(sidecar, _recovered_sidecar(audio[0]))
                files.append(sidecar)
                log.warning("clip_recovered", path=str(audio[0]))
            except OSError as exc:  # e.g. a full disk: keep the audio as it is
                log.warning("clip_recovery_failed", path=str(audio[0]), error=str(exc))
        stats = [p.stat() for p in files]
        size = sum(s.st_size for s in stats)
        return _Stored(stem, files, size, max(s.st_mtime for s in stats))


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
        except (wave.Error, EOFError) as exc:
            clip["error"] = str(exc)
    _stamp, _, alert_id = audio.stem.partition("_")
    doc = {"alert_id": alert_id, "monitor": audio.parent.name, "recovered": True, "clip": clip}
    return (json.dumps(doc, indent=1) + "\n").encode()


@dataclass(slots=True)
class _OpenClip:
    """A clip the recorder is following: where it starts, where it stops, what is copied."""

    alert_id: str
    monitor: str
    ring: RingBuffer
    sample_rate: int
    window_s: float
    start_index: int
    """Ring index of the first sample (pre-roll included)."""
    anomaly_index: int
    """Ring index where the anomalous audio begins (``onset_s - window_s``)."""
    limit_index: int
    """``start_index`` + ``clips.max_clip_s``: the clip is cut here at the latest."""
    started_at: datetime
    start_event: Event
    model: Mapping[str, Any]
    path: Path
    buffer: npt.NDArray[np.float32]
    """Room for the longest clip; ``buffer[i]`` is ring sample ``start_index + i``."""
    filled: int = 0
    """Samples of ``buffer`` copied from the ring so far."""
    head: int = 0
    """Samples at the front the ring had already overwritten (the clip starts after them)."""
    lost: int = 0
    """Samples missing from the clip (``head`` plus any gap, which is silence)."""
    scores: list[tuple[float, float]] = field(default_factory=list)
    stop_index: int | None = None
    """Ring index after the last sample, once the event has ended; None while it runs."""
    end_event: Event | None = None
    submitted: bool = False

    def due_index(self) -> int:
        """Ring index the clip ends at, as far as known now."""
        if self.stop_index is None:
            return self.limit_index
        return max(self.start_index, min(self.stop_index, self.limit_index))

    def drain(self) -> None:
        """Copy what the ring has gained of the clip since the last call (a tick's worth:
        the ring never has to hold a whole clip, and no tick copies one at once)."""
        begin = self.start_index + self.filled
        end = min(self.ring.written, self.due_index())
        if end <= begin:
            return
        view = self.buffer[self.filled : end - self.start_index]
        chunk = self.ring.read(begin, end, out=view)
        missing = chunk.start - begin
        if missing:  # overwritten before we copied it: place the rest where it belongs
            view[missing:] = chunk.data
            view[:missing] = 0.0
            self.lost += missing
            if self.filled == 0:
                self.head = missing
        self.filled = end - self.start_index


class ClipRecorder:
    """The tick side of clips: which clips are open, when each is cut.

    Every method runs on the tick thread and does no disk I/O. An open clip's
    audio is copied out of the ring a tick at a time, once (pre-roll at the start);
    a finished clip is handed to ``ClipStore.submit``.
    """

    def __init__(
        self,
        store: ClipStore,
        config: ClipsConfig,
        *,
        device_id: str,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.config = config
        self.device_id = device_id
        self._wall_clock = wall_clock
        self._open: list[_OpenClip] = []  # not yet submitted
        self._active: dict[str, _OpenClip] = {}  # monitor -> clip of its event in progress
        self._history: dict[str, deque[tuple[float, float]]] = {}
        max_clip_s = config.max_clip_s if config.max_clip_s is not None else 3600.0
        self._max_clip_s = max_clip_s
        self._history_s = max_clip_s + config.pre_s + 10.0

    @property
    def pending(self) -> int:
        """Clips being recorded (opened, not yet submitted)."""
        return len(self._open)

    def start(
        self,
        *,
        alert_id: str,
        monitor: str,
        event: Event,
        ring: RingBuffer,
        sample_rate: int,
        window_s: float,
        model: Mapping[str, Any],
    ) -> Path | None:
        """Open the clip of an event that just started; returns its planned path
        (None when clips are disabled). The clip begins ``pre_s`` before the
        anomalous audio (``onset_s - window_s``), or at the oldest sample the ring holds."""
        if not self.config.enabled:
            return None
        previous = self._active.pop(monitor, None)
        if previous is not None and previous.stop_index is None:  # a start without an end
            previous.stop_index = ring.written
        anomaly_index = max(0, round((event.onset_s - window_s) * sample_rate))
        wanted = anomaly_index - round(self.config.pre_s * sample_rate)
        start_index = min(max(wanted, ring.oldest, 0), anomaly_index)
        age_s = (ring.written - start_index) / sample_rate
        started_at = datetime.fromtimestamp(self._wall_clock() - age_s, tz=UTC)
        path = self.store.planned_path(monitor, alert_id, started_at)
        limit = round(self._max_clip_s * sample_rate)
        clip = _OpenClip(
            alert_id=alert_id,
            monitor=monitor,
            ring=ring,
            sample_rate=sample_rate,
            window_s=window_s,
            start_index=start_index,
            anomaly_index=anomaly_index,
            limit_index=start_index + limit,
            started_at=started_at,
            start_event=event,
            model=dict(model),
            path=path,
            buffer=np.empty(limit, dtype=np.float32),  # its pages are touched as it fills
        )
        start_s = start_index / sample_rate
        clip.scores = [(t, s) for t, s in self._history.get(monitor, ()) if t > start_s]
        clip.drain()  # the pre-roll, before the ring overwrites it
        self._open.append(clip)
        self._active[monitor] = clip
        return path

    def score(self, monitor: str, at_s: float, score: float) -> None:
        """Record a window score (``at_s``: stream time of the window's end) for the
        timeline of the monitor's open clips and of clips that start soon."""
        if not self.config.enabled:
            return
        history = self._history.setdefault(monitor, deque())
        history.append((at_s, score))
        while history[0][0] < at_s - self._history_s:
            history.popleft()
        for clip in self._open:
            if clip.monitor == monitor and (
                clip.stop_index is None or at_s * clip.sample_rate <= clip.stop_index
            ):
                clip.scores.append((at_s, score))

    def end(self, *, monitor: str, event: Event) -> None:
        """The monitor's event ended: its clip closes at ``last_anomalous_s + post_s``
        (unless it was already cut at ``max_clip_s``: then nothing more is recorded)."""
        clip = self._active.pop(monitor, None)
        if clip is None:
            return
        clip.end_event = event
        if not clip.submitted:
            stop_s = event.last_anomalous_s + self.config.post_s
            clip.stop_index = max(clip.anomaly_index, round(stop_s * clip.sample_rate))

    def poll(self) -> list[str]:
        """Copy the new audio of every open clip; submit those whose end the ring now
        holds, or that reached ``max_clip_s`` (cut there, marked truncated). Returns
        the alert ids queued."""
        queued = []
        for clip in list(self._open):
            clip.drain()
            due = clip.due_index()
            if clip.start_index + clip.filled >= due:
                cut = "end" if due == clip.stop_index else "max_clip_s"
                if self._submit(clip, due, cut):
                    queued.append(clip.alert_id)
        return queued

    def flush(self) -> list[str]:
        """At shutdown: submit every open clip with what the ring holds now."""
        queued = []
        for clip in list(self._open):
            clip.drain()
            due = clip.due_index()
            stop = min(due, clip.start_index + clip.filled)
            cut = "end" if stop == clip.stop_index else "shutdown"
            if self._submit(clip, stop, cut):
                queued.append(clip.alert_id)
        self._active.clear()
        return queued

    def _submit(self, clip: _OpenClip, stop: int, cut: str) -> bool:
        self._open.remove(clip)
        clip.submitted = True
        rate = clip.sample_rate
        first = clip.start_index + clip.head  # ring index of the clip's first sample
        samples = clip.buffer[clip.head : max(clip.head, stop - clip.start_index)]
        start, end = clip.start_event, clip.end_event
        duration_s = samples.shape[0] / rate
        anomaly_offset_s = (clip.anomaly_index - first) / rate
        end_offset_s = None if end is None else end.last_anomalous_s - first / rate
        markers = [t for t in (anomaly_offset_s, end_offset_s) if t is not None and t >= 0.0]
        facts = {
            "onset_s": start.onset_s,
            "started_s": start.at_s,
            "anomaly_start_s": clip.anomaly_index / rate,
            "anomaly_start_offset_s": anomaly_offset_s,
            "last_anomalous_s": None if end is None else end.last_anomalous_s,
            "anomaly_end_offset_s": end_offset_s,
            "ended_s": None if end is None else end.at_s,
            "score": start.score,
            "peak_score": max([start.peak_score, *(s for _, s in clip.scores if math.isfinite(s))]),
            "threshold": start.threshold,
            "window_s": clip.window_s,
            "truncated": cut == "max_clip_s",
            "cut": cut,
            "lost_samples": clip.lost,
        }
        request = ClipRequest(
            alert_id=clip.alert_id,
            monitor=clip.monitor,
            device_id=self.device_id,
            samples=samples,
            sample_rate=rate,
            started_at=clip.started_at + timedelta(seconds=clip.head / rate),
            stream_start_s=first / rate,
            pre_s=max(0, clip.anomaly_index - first) / rate,
            event=facts,
            model=clip.model,
            scores=list(clip.scores),
            path=clip.path,
            markers_s=tuple(t for t in markers if t <= duration_s),
        )
        return self.store.submit(request)
