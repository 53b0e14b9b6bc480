"""One learning of a monitor's normal sound in the running daemon, on its own thread:
collect → fit (a child process) → hand the model to the model manager → done.

The tick thread only copies the new audio of the monitor's channel into the session's
bounded inbox (``offer``); everything else happens here or in the child: resampling,
log-mel frames and statistics (``Collector``), saving them, and waiting for the fit.
Progress goes to ``publish`` (the retained ``<prefix>/learn`` topic) on every change of
state and every few seconds while collecting or fitting.
"""

from __future__ import annotations

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
from ..errors import AudioDecodeError, CommandError, LearnError
from ..jsonvalues import iso_utc
from ..resample import StreamResampler
from .calibration import CalibrationConfig
from .job import PARENT_ENV
from .recording import MARKED_PREFIX, MIN_PIECE_S
from .windows import Collector, features_for, save_recordings

__all__ = ["PROGRESS_EVERY_S", "LearnSession", "State"]

log = structlog.get_logger()

State = Literal["collecting", "fitting", "done", "failed", "cancelled"]
PROGRESS_EVERY_S: Final = 2.0
"""Least time between two progress messages of the same state."""
INBOX_CHUNKS: Final = 256
"""Audio chunks the tick may queue before the session falls behind (then counted lost)."""
MOSTLY_BAD: Final = 0.5
"""Learning fails once the skipped audio exceeds this share of the audio asked for."""
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
        features = features_for(learn.sample_rate, 1.0, learn.n_mels)
        self.collector = Collector(
            features,
            1.0,
            monitor.hop_s,
            piece_s=max(MIN_PIECE_S, seconds / PIECES),
            silence_dbfs=config.health.silence_dbfs,
            clipping_ratio=config.health.clipping_ratio,
        )
        self.collector.begin(f"live-{self.progress.started_at}")
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
        self._resampler = StreamResampler(capture_rate, learn.sample_rate)
        self._inbox: queue.Queue[tuple[np.ndarray, int]] = queue.Queue(INBOX_CHUNKS)
        self._cancel = threading.Event()
        self._cancel_reason: State = "cancelled"
        self._cancel_error: str | None = None
        self._child: subprocess.Popen[str] | None = None
        self._last_sent = 0.0
        self._behind_samples = 0
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
        """Stop collecting or fitting; the model that runs now keeps running."""
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
        try:
            self._inbox.put_nowait((data, lost))
        except queue.Full:  # the session fell behind: that audio is lost to it
            self._behind_samples += data.shape[0]

    # --- the session's thread ----------------------------------------------------------

    def _run(self) -> None:
        p = self.progress
        try:
            data = self._collect() if self.clip is None else self._from_clip(self.clip)
            if data is None:
                return
            self._fit_and_install(data)
        except (LearnError, CommandError) as exc:
            p.state, p.error = "failed", str(exc)
        except Exception as exc:  # the thread's boundary: report, never take the daemon down
            log.exception("learn_failed", monitor=p.monitor, id=p.id)
            p.state, p.error = "failed", f"internal error: {type(exc).__name__}"
        finally:
            if self._cancel.is_set() and p.state in ("collecting", "fitting"):
                p.state, p.error = self._cancel_reason, self._cancel_error
            log.info("learn_ended", monitor=p.monitor, id=p.id, state=p.state, error=p.error)
            self._send(force=True)
            self._on_end(self)

    def _collect(self) -> Path | None:
        """Collect until the audio asked for is in; the saved statistics, or None when
        cancelled. LearnError when the input is unusable for most of the period."""
        p, c = self.progress, self.collector
        wanted = p.seconds_wanted
        deadline = self._started + wanted * 2 + 60.0
        while not self._cancel.is_set():
            try:
                data, lost = self._inbox.get(timeout=0.5)
            except queue.Empty:
                data, lost = None, 0
            behind, self._behind_samples = self._behind_samples, 0
            if lost or behind:
                for reason, samples in (("input_lost", lost), ("behind", behind)):
                    if samples:
                        c.skipped_s[reason] = (
                            c.skipped_s.get(reason, 0.0) + samples / self.capture_rate
                        )
                self._resampler.reset()
                c.gap()
            if data is not None and data.shape[0]:
                c.feed(self._resampler(data))
            p.seconds_collected, p.skipped_s = c.seconds, c.skipped_total_s
            p.skipped = dict(c.skipped_s)
            if c.seconds >= wanted:
                break
            if c.skipped_total_s > MOSTLY_BAD * wanted or time.monotonic() > deadline:
                raise LearnError(self._unusable())
            self._send()
        else:
            return None
        c.finish()
        p.seconds_collected = c.seconds
        recordings = c.recordings()
        path = self.directory / f"normal-{int(self._wall() * 1000)}.npz"
        size = save_recordings(path, recordings)
        log.info("learn_collected", monitor=p.monitor, seconds=round(c.seconds, 1), bytes=size)
        return path

    def _from_clip(self, clip: Path) -> Path:
        """The false alarm's clip as marked-normal statistics (saved beside the data)."""
        from ..audiofile import open_audio, to_mono

        learn = self.config.learn
        c = Collector(
            features_for(learn.sample_rate, 1.0, learn.n_mels),
            1.0,
            self.monitor.hop_s,
            silence_dbfs=self.config.health.silence_dbfs,
            clipping_ratio=self.config.health.clipping_ratio,
        )
        c.begin(f"{MARKED_PREFIX}{self.alert.get('alert_id')}")
        try:
            with open_audio(clip) as reader:
                resampler = StreamResampler(reader.sample_rate, learn.sample_rate)
                for block in reader.blocks():
                    c.feed(resampler(to_mono(block, None)))
                c.feed(resampler.flush())
        except AudioDecodeError as exc:
            raise LearnError(f"the clip cannot be read: {exc}") from None
        recordings = c.recordings()
        if not recordings:
            raise LearnError(f"the clip {clip.name} holds no usable window")
        self.progress.seconds_collected = c.seconds
        path = self.directory / f"normal-{int(self._wall() * 1000)}.npz"
        save_recordings(path, recordings)
        return path

    def _unusable(self) -> str:
        c, p = self.collector, self.progress
        lost = max(0.0, time.monotonic() - self._started - c.seconds - c.skipped_total_s)
        reasons = dict(c.skipped_s)
        if lost > 1.0:
            reasons["no_audio"] = reasons.get("no_audio", 0.0) + lost
        shown = ", ".join(f"{k} {v:.0f} s" for k, v in sorted(reasons.items(), key=lambda i: -i[1]))
        return (
            f"the input was unusable for most of the period ({shown or 'no audio'}): "
            f"{c.seconds:.0f} s of usable sound of {p.seconds_wanted:g} s asked for; "
            "the model that runs now keeps running"
        )

    def _fit_and_install(self, data: Path) -> None:
        p, learn = self.progress, self.config.learn
        p.state = "fitting"
        self._send(force=True)
        out, report_path = self.directory / "candidate.onnx", self.directory / "report.json"
        job = {
            "data": [str(d) for d in [*(self.previous_data if p.append else []), data]],
            "out": str(out),
            "report": str(report_path),
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
        job_path = self.directory / "job.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        report = self._run_child(job_path, learn.fit_timeout_s)
        if report is None:
            return
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
        self._keep(data)

    def _run_child(self, job_path: Path, timeout_s: float) -> dict[str, Any] | None:
        """Run the fit at low priority; its report, None when cancelled; LearnError."""
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", PARENT_ENV: str(os.getpid())}  # fmt: skip
        child = subprocess.Popen(
            [sys.executable, "-m", "asd_edge.learning.job", str(job_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self._child = child
        timer = threading.Timer(timeout_s, child.kill)
        timer.start()
        error = None
        report: dict[str, Any] | None = None
        try:
            assert child.stdout is not None
            for line in child.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if "progress" in msg:
                    self.progress.fit_progress = float(msg["progress"])
                    self._send()
                elif "error" in msg:
                    error = str(msg["error"])
                elif "report" in msg:
                    report = dict(msg["report"])
            code = child.wait()
        finally:
            timer.cancel()
            self._child = None
            job_path.unlink(missing_ok=True)
        if self._cancel.is_set():
            return None
        if code != 0 or report is None:
            if code < 0 and error is None:
                error = f"the fit was stopped after {timeout_s:g} s (learn.fit_timeout_s)"
            raise LearnError(error or f"the fit failed (exit {code})")
        return report

    def _install(self, model: bytes, report: Mapping[str, Any]) -> None:
        """Hand the model to the model manager and wait until it runs (or is refused)."""
        p = self.progress
        deadline = time.monotonic() + INSTALL_WAIT_S
        while True:
            try:
                self._submit(p.monitor, model, p.id)
                break
            except CommandError:  # a push is in flight: wait for it to end
                if time.monotonic() > deadline or self._cancel.wait(1.0):
                    raise LearnError("the model store stayed busy with a push") from None
        while not self._cancel.wait(0.1):
            last = self._outcome()
            if last is not None and last.get("id") == p.id and last.get("command") == "learn":
                if not last.get("ok"):
                    raise LearnError(f"the learned model was refused: {last.get('error')}")
                p.model = {"name": last.get("name"), "version": last.get("version"),
                           "sha256": last.get("sha256")}  # fmt: skip
                p.state, p.fit_progress = "done", 1.0
                log.info("learn_done", monitor=p.monitor, id=p.id, **report)
                return
            if time.monotonic() > deadline:
                raise LearnError("the learned model was not put in service in time")

    def _keep(self, data: Path) -> None:
        """The learned data stays as the monitor's normal data: alone, or beside the
        earlier data when appending."""
        if self.progress.append:
            return
        for old in self.previous_data:
            if old != data:
                old.unlink(missing_ok=True)

    def _send(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_sent < PROGRESS_EVERY_S:
            return
        self._last_sent = now
        self._publish(self.progress.as_dict())
