"""The clip writer: a thread that encodes each clip, draws its picture and stores the set."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import io
import json
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy.typing as npt
import structlog

from ..audiofile import pcm16, wav_bytes
from ..config import ClipsConfig
from ..durable import write_atomic
from ..errors import ChildFailed, ConfigError
from ..jsonvalues import json_safe
from ..statedisk import RETRY_S, StateDisk
from .painter import paint
from .picture import clip_title
from .retention import MB, Retention, statvfs_usage
from .types import ClipRequest, ClipResult

__all__ = [
    "MB",
    "WORKER_NICE",
    "ClipStore",
    "ClipUsage",
    "encode_audio",
]

log = structlog.get_logger()

WORKER_NICE = 10
"""Niceness of the clip worker thread (the tick thread keeps the process's)."""
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
"""UTC wall time of a clip's first sample at the front of its file name."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_STOP = object()
_PRUNE = object()
_PROBE_NAME = ".write-probe"
PART = "clips"
"""The part named in ``StateDisk`` (and the ``disk`` alert's ``parts``)."""
_FLAC_HINT = "pip install 'asd-edge[flac]'"


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
    free_mb: float | None = None
    """Free space on the clips' filesystem in MB (``MB``), None when it cannot be read."""

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as plain JSON-ready values, one key per field (for the health topic)."""
        return dataclasses.asdict(self)


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
    """Mono float samples as 16-bit WAV or FLAC bytes (``audiofile.pcm16``: clipped to
    [-1, 1], as ``write_wav``)."""
    if fmt != "flac":
        return wav_bytes(samples, sample_rate)
    buffer = io.BytesIO()
    _soundfile().write(buffer, pcm16(samples), int(sample_rate), format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


class ClipStore:
    """Owns ``<state_dir>/clips`` and the worker thread that writes clips into it.

    Layout: ``clips/<monitor>/<YYYYmmddTHHMMSSZ>_<alert_id>.{wav|flac,png,json}``.
    The audio, then the picture, then the sidecar are each written by
    ``durable.write_atomic`` (``.<name>.<random>.tmp``, fsync, rename), so the
    sidecar marks a complete clip. Retention (``retention.Retention``) runs before
    every write on an index built once at ``start()``, which also cleans up after a
    crash (an audio file that lost its sidecar is kept and gets a recovered one).

    A folder that cannot be written (a read-only or full file system, no permission)
    stops nothing: each clip that cannot be written is skipped, its result saying why
    (the end alert's ``clip``: ``status: skipped`` with the error), and ``disk`` is told
    (part ``clips``) until a write works again: the next clip's, or the worker's own
    small test write every ``retry_s`` meanwhile.
    """

    def __init__(
        self,
        directory: Path,
        config: ClipsConfig,
        *,
        on_done: Callable[[ClipResult], None],
        clock: Callable[[], float] = time.time,
        disk_usage: Callable[[Path], tuple[int, int]] | None = None,
        disk: StateDisk | None = None,
        retry_s: float = RETRY_S,
    ) -> None:
        if config.format == "flac":
            _soundfile()  # a missing package is a config error at start, not at the first event
        self.directory = Path(directory)
        self.config = config
        self.on_done = on_done
        """Called with the result of every request (on the writer thread, or on the
        caller's for a request refused at once). ``assembly.build_services`` wires it to
        ``Alerts`` after building both (the alerts need the recorder, which needs this
        store); the daemon then adds its ``MemoryRelease.after_work``."""
        self._disk_usage = disk_usage or statvfs_usage
        self.disk = disk
        self.retry_s = retry_s
        self._unwritable = False  # the writer thread's: a write failed, none worked since
        self._queue: queue.Queue[object] = queue.Queue(config.queue)
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._lock = threading.Lock()
        self._saved = self._skipped = 0
        self._last_error: str | None = None
        self.retention = Retention(
            self.directory,
            config,
            clock=clock,
            disk_usage=self._disk_usage,
            on_error=self._error,
        )

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
        """Thread-safe snapshot of sizes and counters, with the free space of the clips'
        filesystem (one ``statvfs``; None when it cannot be read, e.g. before ``start()``)."""
        try:
            free_mb: float | None = round(self._disk_usage(self.directory)[0] / MB, 2)
        except OSError:
            free_mb = None
        with self._lock:  # taken before the index's own lock, never after it
            held = self.retention.snapshot()
            return ClipUsage(
                bytes=held.bytes,
                files=held.files,
                clips=held.clips,
                saved=self._saved,
                skipped=self._skipped,
                deleted=held.deleted,
                last_error=self._last_error,
                free_mb=free_mb,
            )

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Clean up after a crash, index what is on disk, start the worker (which first
        deletes the clips past ``max_age_days``). A folder that cannot be made is logged
        and reported; the worker starts all the same (see the class)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("clip_store_unwritable", path=str(self.directory), error=str(exc))
            self._write_failed(exc)
        self.retention.scan()
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
        self.retention.delete_expired()
        while True:
            try:  # while writes fail, a test write now and then says when they work again
                item = self._queue.get(timeout=self.retry_s if self._unwritable else None)
            except queue.Empty:
                self._probe()
                continue
            if item is _STOP:
                return
            if item is _PRUNE:
                self.retention.delete_expired()
                continue
            assert isinstance(item, ClipRequest)
            try:
                result = self._write(item)
            except Exception as exc:  # supervisor boundary: one bad clip must not end the worker
                log.exception("clip_failed", alert_id=item.alert_id, monitor=item.monitor)
                result = self._skip(item, f"internal error: {exc!r}", report=False)
            # The request holds the clip's buffer (room for clips.max_clip_s): let it go
            # now, not when the next clip replaces it days later.
            del item
            self._deliver(result)

    def _error(self, reason: str) -> None:
        with self._lock:
            self._last_error = reason

    def _write_failed(self, exc: OSError) -> None:
        self._unwritable = True
        if self.disk is not None:
            self.disk.failed(PART, exc)

    def _write_worked(self) -> None:
        if self._unwritable:
            self._unwritable = False
            log.warning("clip_store_writable", path=str(self.directory))
        if self.disk is not None:
            self.disk.recovered(PART)

    def _probe(self) -> None:
        """A small file written durably and removed: does the folder take writes again?"""
        probe = self.directory / _PROBE_NAME
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(probe, b"probe\n")
            probe.unlink()
        except OSError as exc:
            self._write_failed(exc)
            return
        self._write_worked()

    def _deliver(self, result: ClipResult) -> None:
        try:
            self.on_done(result)
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
            png = self._picture(request)
            png_path = audio_path.with_suffix(".png") if png else None
        sidecar_path = audio_path.with_suffix(".json")
        sidecar = self._sidecar(request, audio_path, fmt, sha256, len(audio), png_path)
        need = len(audio) + len(png) + len(sidecar)
        try:  # first: the free space of a folder that is not there cannot be read
            audio_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._write_failed(exc)
            return self._skip(request, f"write failed: {exc}", report=False)
        deleted, problem = self.retention.make_room(need)
        if problem is not None:
            return self._skip(request, problem, report=False)
        written: list[Path] = []
        try:
            for path, data in ((audio_path, audio), (png_path, png), (sidecar_path, sidecar)):
                if path is not None:
                    write_atomic(path, data)
                    written.append(path)
        except OSError as exc:
            for path in written:  # never leave part of a set behind
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            self._write_failed(exc)
            return self._skip(request, f"write failed: {exc}", report=False)
        self._write_worked()
        with self._lock:  # the index and the counter change together for usage()
            self.retention.add(audio_path.with_suffix(""), written, need)
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

    def _picture(self, request: ClipRequest) -> bytes:
        """The clip's PNG, drawn in a child process (``painter``); empty when that fails
        (logged): the clip is kept without its picture."""
        try:
            return paint(
                request.samples,
                request.sample_rate,
                title=clip_title(
                    request.monitor,
                    request.alert_at,
                    request.event.get("peak_score"),
                    request.event.get("threshold"),
                ),
                markers_s=request.markers_s,
                pre_s=request.pre_s,
                band_hz=request.band_hz,
            )
        except ChildFailed as exc:
            log.warning("clip_picture_failed", alert_id=request.alert_id, error=str(exc))
            return b""

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
        return (json.dumps(json_safe(doc), indent=1, default=str) + "\n").encode()
