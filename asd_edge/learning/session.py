"""One learning of a monitor's normal sound in the running daemon: a child process
(``job``) collects, fits and exports; this thread feeds it and follows it, then hands
the model to the model manager.

The tick only copies the new audio of the monitor's channel into the session's bounded
inbox (``offer``); this thread writes it to the child's stdin. Everything that costs
memory or CPU (resampling, log-mel frames, statistics, the fit) is the child's, at the
lowest priority, so the daemon's memory and tick stay as they were. Progress goes to
``publish`` (the retained ``<prefix>/learn`` topic) on every change of state and every
few seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import structlog

from ..config import Config, MonitorConfig
from ..errors import CommandError, LearnError
from ..jsonvalues import iso_utc
from .calibration import CalibrationConfig
from .job import FRAME, PARENT_ENV
from .recording import MARKED_PREFIX, MIN_PIECE_S

__all__ = [
    "MAX_DATA_FILES",
    "PROGRESS_EVERY_S",
    "LearnSession",
    "State",
    "clean_up",
    "data_files",
    "prune",
]

log = structlog.get_logger()

State = Literal["collecting", "fitting", "done", "failed", "cancelled"]
PROGRESS_EVERY_S: Final = 2.0
"""Least time between two progress messages of the same state."""
INBOX_S: Final = 20.0
"""Seconds of audio the tick may queue for the child before the session counts what
comes next as lost (``behind``): at most 3.8 MB at 48 kHz, whatever the child's pace."""
PIECES: Final = 5
"""A live stream is cut into this many pieces (at least ``MIN_PIECE_S`` each) that serve
as the cross-fitting's sources."""
INSTALL_WAIT_S: Final = 60.0
"""How long the session waits for the model manager to put the model in service."""

Submit = Callable[[str, bytes, str | None], None]
Outcome = Callable[[], Mapping[str, Any] | None]


@dataclass
class Progress:
    """What ``<prefix>/learn`` says about a session."""

    monitor: str
    id: str
    seconds_wanted: float
    append: bool
    state: State = "collecting"
    seconds_collected: float = 0.0
    skipped_s: float = 0.0
    skipped: dict[str, float] = field(default_factory=dict)
    fit_progress: float = 0.0
    error: str | None = None
    model: dict[str, Any] | None = None
    fit: dict[str, Any] | None = None
    started_at: str = ""
    feedback: dict[str, Any] | None = None
    """For a false alarm marked normal: the alert, its score and threshold then, and
    (once done) the score of its clip and the threshold now."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "id": self.id,
            "state": self.state,
            "seconds_collected": round(self.seconds_collected, 1),
            "seconds_wanted": self.seconds_wanted,
            "skipped_s": round(self.skipped_s, 1),
            "skipped": {k: round(v, 1) for k, v in self.skipped.items()},
            "append": self.append,
            "fit_progress": round(self.fit_progress, 3),
            "error": self.error,
            "model": self.model,
            "fit": self.fit,
            "started_at": self.started_at,
            **({"feedback": self.feedback} if self.feedback is not None else {}),
        }


MAX_DATA_FILES: Final = 8
"""Learned data files kept per monitor: beyond it the oldest marked-normal clip goes
first, then the oldest normal data, never the newest normal data."""


def data_files(directory: Path) -> list[Path]:
    """A monitor's learned data (``normal-*``, ``marked-*``), oldest first."""
    files = [*directory.glob("normal-*.npz"), *directory.glob("marked-*.npz")]
    return sorted(files, key=lambda p: p.name.split("-", 1)[1])


def prune(directory: Path) -> None:
    """Keep at most :data:`MAX_DATA_FILES` data files (see there which go)."""
    files = data_files(directory)
    marked = [p for p in files if p.name.startswith("marked-")]
    normal = [p for p in files if p.name.startswith("normal-")]
    while len(marked) + len(normal) > MAX_DATA_FILES:
        gone = marked.pop(0) if marked else normal.pop(0) if len(normal) > 1 else None
        if gone is None:
            return
        gone.unlink(missing_ok=True)


def clean_up(directory: Path) -> None:
    """Remove what a learning leaves in a monitor's folder besides its kept data: the
    collected data of a learning that did not end in a running model (``pending-*``), the
    child's output and any temporary file a kill interrupted."""
    for pattern in ("pending-*.npz", "candidate.onnx", "report.json", "job.json", ".*.tmp"):
        for path in directory.glob(pattern):
            path.unlink(missing_ok=True)


class LearnSession:
    """Learns one monitor's normal sound; ``start`` it, feed it with ``offer``."""

    def __init__(
        self,
        *,
        config: Config,
        monitor: MonitorConfig,
        capture_rate: int,
        seconds: float,
        append: bool,
        request_id: str,
        directory: Path,
        previous_data: list[Path],
        publish: Callable[[Mapping[str, Any]], None],
        submit: Submit,
        outcome: Outcome,
        on_end: Callable[[LearnSession], None],
        wall_clock: Callable[[], float] = time.time,
        clip: Path | None = None,
        alert: Mapping[str, Any] | None = None,
    ) -> None:
        """``clip`` (with its sidecar ``alert``): learn that false alarm's clip as normal
        (marked, see ``fitting``) beside the monitor's learned data instead of listening."""
        learn = config.learn
        self.config, self.monitor = config, monitor
        self.directory = directory
        self.previous_data = previous_data
        self._publish, self._submit, self._outcome = publish, submit, outcome
        self._on_end, self._wall = on_end, wall_clock
        self.progress = Progress(
            monitor.name, request_id, float(seconds), append, started_at=iso_utc(wall_clock())
        )
        self.clip, self.alert = clip, dict(alert or {})
        if clip is not None:
            event = self.alert.get("event") or {}
            self.progress.state = "fitting"
            self.progress.feedback = {
                "alert_id": self.alert.get("alert_id"),
                "alert_score": event.get("peak_score"),
                "alert_threshold": event.get("threshold"),
                "score_now": None,
                "threshold_now": None,
            }
        self.capture_rate = capture_rate
        self._inbox: queue.Queue[tuple[np.ndarray, int]] = queue.Queue()
        self._queued = 0  # samples in the inbox, under _queued_lock
        self._queued_lock = threading.Lock()
        self._inbox_limit = round(INBOX_S * capture_rate)
        self._cancel = threading.Event()
        self._cancel_reason: State = "cancelled"
        self._cancel_error: str | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._last_sent = 0.0
        self._behind_samples = 0
        self._collected = threading.Event()
        self._timed_out = False
        stamp = int(wall_clock() * 1000)
        kind = "normal" if clip is None else "marked"
        self.pending = directory / f"pending-{stamp}.npz"
        """What the child collects; it becomes ``kept`` once the model runs, else it goes."""
        self.kept = directory / f"{kind}-{stamp}.npz"
        del learn
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"learn-{monitor.name}", daemon=True)

    # --- any thread --------------------------------------------------------------------

    @property
    def collecting(self) -> bool:
        return self.progress.state == "collecting" and not self._cancel.is_set()

    def start(self) -> None:
        self._send(force=True)
        self._thread.start()

    def cancel(self, state: State = "cancelled", error: str | None = None) -> None:
        """Stop collecting or fitting; the model that runs now keeps running. Once the
        learned model is handed to the model manager, a cancel comes too late."""
        self._cancel_reason, self._cancel_error = state, error
        self._cancel.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.kill()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    # --- the tick thread ---------------------------------------------------------------

    def offer(self, data: np.ndarray, lost: int) -> None:
        """New capture audio of the monitor's channel (a copy), and samples lost before it."""
        with self._queued_lock:
            if self._queued + data.shape[0] > self._inbox_limit:
                self._behind_samples += data.shape[0]  # the child fell behind: lost to it
                return
            self._queued += data.shape[0]
        self._inbox.put_nowait((data, lost))

    # --- the session's thread ----------------------------------------------------------

    def _run(self) -> None:
        p = self.progress
        try:
            self._learn()
        except (LearnError, CommandError) as exc:
            p.state, p.error = "failed", str(exc)
        except Exception as exc:  # the thread's boundary: report, never take the daemon down
            log.exception("learn_failed", monitor=p.monitor, id=p.id)
            p.state, p.error = "failed", f"internal error: {type(exc).__name__}"
        finally:
            if self._cancel.is_set() and p.state in ("collecting", "fitting"):
                p.state, p.error = self._cancel_reason, self._cancel_error
            clean_up(self.directory)  # what a failed, cancelled or done learning leaves
            log.info("learn_ended", monitor=p.monitor, id=p.id, state=p.state, error=p.error)
            self._send(force=True)
            self._on_end(self)

    def _job(self) -> dict[str, Any]:
        """What the child does: collect (live or the clip) into ``pending``, then fit."""
        p, learn, health = self.progress, self.config.learn, self.config.health
        collect: dict[str, Any] = {
            "hop_s": self.monitor.hop_s,
            "silence_dbfs": health.silence_dbfs,
            "clipping_ratio": health.clipping_ratio,
            "save": str(self.pending),
        }
        if self.clip is None:
            collect.update(mode="live", seconds=p.seconds_wanted, capture_rate=self.capture_rate,
                           source=f"live-{p.started_at}",
                           piece_s=max(MIN_PIECE_S, p.seconds_wanted / PIECES))  # fmt: skip
        else:
            collect.update(mode="clip", path=str(self.clip),
                           source=f"{MARKED_PREFIX}{self.alert.get('alert_id')}")  # fmt: skip
        return {
            "data": [str(d) for d in (self.previous_data if p.append else [])],
            "collect": collect,
            "out": str(self.directory / "candidate.onnx"),
            "report": str(self.directory / "report.json"),
            "name": f"{self.config.device_id}-{p.monitor}-learned",
            "kind": learn.kind,
            "sample_rate": learn.sample_rate,
            "n_mels": learn.n_mels,
            "window_s": 1.0,
            "calibration": dataclasses.asdict(
                CalibrationConfig.for_monitor(self.monitor, learn.target_fa_per_day)
            ),
            "training": {
                "source": "learn",
                "monitor": p.monitor,
                "device_id": self.config.device_id,
            },
        }

    def _learn(self) -> None:
        p = self.progress
        job_path = self.directory / "job.json"
        job_path.write_text(json.dumps(self._job()), encoding="utf-8")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", PARENT_ENV: str(os.getpid())}  # fmt: skip
        child = subprocess.Popen(
            [sys.executable, "-m", "asd_edge.learning.job", str(job_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._child = child
        outcome: dict[str, Any] = {}
        reader = threading.Thread(target=self._follow, args=(child, outcome), daemon=True)
        reader.start()
        try:
            if self.clip is None:
                self._feed(child)
            if child.stdin is not None:
                with contextlib.suppress(OSError):
                    child.stdin.close()
            code = self._wait(child, self.config.learn.fit_timeout_s)
        finally:
            self._child = None
            if child.poll() is None:
                child.kill()
                child.wait()
            reader.join(5.0)  # no progress from the child after this
            job_path.unlink(missing_ok=True)
        if self._cancel.is_set():
            return
        report = outcome.get("report")
        if code != 0 or report is None:
            if code < 0 and "error" not in outcome:
                outcome["error"] = (
                    f"the fit was stopped after {self.config.learn.fit_timeout_s:g} s "
                    "(learn.fit_timeout_s)"
                    if self._timed_out
                    else f"the learning's process was killed (signal {-code}; out of memory?)"
                )
            raise LearnError(str(outcome.get("error") or f"the learning failed (exit {code})"))
        out = self.directory / "candidate.onnx"
        model = out.read_bytes()
        out.unlink(missing_ok=True)
        shown = ("fit_s", "cpu_s", "peak_rss_mb", "bytes", "chosen", "threshold",
                 "predicted_fa_per_day", "warning")  # fmt: skip
        p.fit = {k: report.get(k) for k in shown}
        self._install(model, report)
        if p.feedback is not None:
            scores = dict(report.get("marked") or {})
            p.feedback["score_now"] = scores.get(f"{MARKED_PREFIX}{p.feedback['alert_id']}")
            p.feedback["threshold_now"] = report.get("threshold")
        self._keep()

    def _feed(self, child: subprocess.Popen[bytes]) -> None:
        """Write the inbox's audio to the child until it has collected enough (or fails,
        or the input brings nothing for far too long)."""
        p = self.progress
        deadline = self._started + p.seconds_wanted * 2 + 60.0
        assert child.stdin is not None
        while not (self._cancel.is_set() or self._collected.is_set()):
            if child.poll() is not None:
                return
            try:
                data, lost = self._inbox.get(timeout=0.5)
            except queue.Empty:
                data, lost = None, 0
            with self._queued_lock:
                if data is not None:
                    self._queued -= data.shape[0]
                behind, self._behind_samples = self._behind_samples, 0
            lost += behind
            if data is None and not lost:
                if time.monotonic() > deadline:
                    raise LearnError(
                        f"no audio for most of the period: {p.seconds_collected:.0f} s of "
                        f"usable sound of {p.seconds_wanted:g} s asked for; the model that "
                        "runs now keeps running"
                    )
                continue
            samples = np.zeros(0, np.float32) if data is None else data
            try:
                child.stdin.write(FRAME.pack(samples.shape[0], lost) + samples.tobytes())
                child.stdin.flush()
            except (BrokenPipeError, OSError):  # it ended (failed or done): see its output
                return

    def _follow(self, child: subprocess.Popen[bytes], outcome: dict[str, Any]) -> None:
        """The child's progress lines, into the progress and ``outcome``."""
        p = self.progress
        assert child.stdout is not None
        for line in child.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            if "collected" in msg:
                p.seconds_collected = float(msg["collected"])
                p.skipped = {k: float(v) for k, v in dict(msg.get("skipped") or {}).items()}
                p.skipped_s = sum(p.skipped.values())
            if msg.get("collected_done"):
                self._collected.set()
                if p.state == "collecting":
                    p.state = "fitting"
                    self._send(force=True)
            elif "progress" in msg:
                p.fit_progress = float(msg["progress"])
                self._send()
            elif "collected" in msg:
                self._send()
            elif "error" in msg:
                outcome["error"] = str(msg["error"])
            elif "report" in msg:
                outcome["report"] = dict(msg["report"])

    def _wait(self, child: subprocess.Popen[bytes], timeout_s: float) -> int:
        """The child's exit code; killed after ``timeout_s`` of fitting, or on cancel."""
        fit_deadline: float | None = None
        while True:
            try:
                return child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            if self._cancel.is_set():
                child.kill()
            elif fit_deadline is None and (self.clip is not None or self._collected.is_set()):
                fit_deadline = time.monotonic() + timeout_s
            elif fit_deadline is not None and time.monotonic() > fit_deadline:
                self._timed_out = True
                child.kill()

    def _install(self, model: bytes, report: Mapping[str, Any]) -> None:
        """Hand the model to the model manager and wait until it runs (or is refused)."""
        p = self.progress
        deadline = time.monotonic() + INSTALL_WAIT_S
        before = self._outcome()  # a last_push with this id from before is not the answer
        while True:
            try:
                self._submit(p.monitor, model, p.id)
                break
            except CommandError:  # a push is in flight: wait for it to end
                if time.monotonic() > deadline or self._cancel.wait(1.0):
                    raise LearnError("the model store stayed busy with a push") from None
        while True:  # submitted: a cancel comes too late, the model goes into service
            time.sleep(0.1)
            last = self._outcome()
            if last is None or last == before:
                pass
            elif last.get("id") == p.id and last.get("command") == "learn":
                if not last.get("ok"):
                    raise LearnError(f"the learned model was refused: {last.get('error')}")
                p.model = {"name": last.get("name"), "version": last.get("version"),
                           "sha256": last.get("sha256")}  # fmt: skip
                p.state, p.fit_progress = "done", 1.0
                log.info("learn_done", monitor=p.monitor, id=p.id, **report)
                return
            if time.monotonic() > deadline:
                raise LearnError(
                    "the model manager has not answered in time; the model topic will say "
                    "whether the learned model runs"
                )

    def _keep(self) -> None:
        """The model runs: what was collected becomes the monitor's data; earlier data it
        did not learn (a new learning, not appended) goes."""
        with contextlib.suppress(OSError):
            self.pending.replace(self.kept)
        if not self.progress.append:
            for old in self.previous_data:
                old.unlink(missing_ok=True)
        prune(self.directory)

    def _send(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_sent < PROGRESS_EVERY_S:
            return
        self._last_sent = now
        self._publish(self.progress.as_dict())
