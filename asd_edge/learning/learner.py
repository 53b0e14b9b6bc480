"""Learning in the running daemon: the ``cmd/learn`` and ``cmd/feedback`` commands, one
session at a time, fed from the tick, its progress on ``<prefix>/learn``, and what a
restart left behind.

Where things are (``<state_dir>/learn``): ``session.json`` while a session runs (a
restart finds it and says the learning was interrupted), and per monitor
``<monitor>/normal-<ms>.npz`` (the learned normal data: window statistics and 30 s of
audio per piece, about 5 MB per hour of learning plus up to 7 MB of excerpts and their
frames, measured by ``benchmarks/bench_learning.py``) and ``marked-<ms>.npz`` (false
alarms marked normal). A learning's collected data becomes one of them only once its
model runs. At most ``session.MAX_DATA_FILES`` files are kept per monitor (``append``
and feedback add one; a new learning replaces them).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import structlog

from ..capture import AudioSource
from ..clips.lookup import find_clip, newest_clip
from ..config import LEARN_MIN_S, Config, MonitorConfig
from ..durable import write_atomic
from ..errors import CommandError
from ..modelstore import ModelManager
from ..mqtt.commands import Command
from .session import LearnSession, Progress, clean_up, data_files

__all__ = ["SESSION_FILE", "Learner"]

log = structlog.get_logger()

SESSION_FILE: Final = "session.json"
_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
"""A monitor name (``monitors[].name``'s pattern): a folder under ``state_dir/learn``."""
CHUNK_S: Final = 2.0
"""Most audio handed to the session per tick (a late tick hands more over several)."""
STOP_WAIT_S: Final = 5.0


class Learner:
    """The daemon's face for learning (see the module doc)."""

    def __init__(
        self,
        config: Config,
        *,
        models: ModelManager | None,
        publish: Callable[[Mapping[str, Any]], None] | None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.models = models
        self.publish: Callable[[Mapping[str, Any]], None] = publish or (lambda _payload: None)
        """Where progress goes (the link's ``publish_learn``; set once the link exists)."""
        self._wall = wall_clock
        self.root = Path(config.state_dir) / "learn"
        self.open_anomaly: Callable[[str], str | None] = lambda _monitor: None
        """The id of a monitor's anomaly alert in progress (set by the assembly)."""
        self._lock = threading.Lock()
        self._session: LearnSession | None = None
        self._source: AudioSource | None = None
        self._cursor = 0
        self._channel = 0

    # --- the daemon's thread ------------------------------------------------------------

    def attach(self, source: AudioSource) -> None:
        """The capture learning listens to (after it started); first, what a killed or
        stopped run's learning left is said and cleaned up (``recover``)."""
        self.recover()
        self._source = source

    def recover(self) -> None:
        """A session a killed or stopped daemon left: say it was interrupted, clean up."""
        marker = self.root / SESSION_FILE
        try:
            left = json.loads(marker.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            left = {}
        left = left if isinstance(left, dict) else {}
        monitor, rid = left.get("monitor"), left.get("id")
        progress = Progress(
            str(monitor), str(rid), float(left.get("seconds_wanted") or 0.0), False,
            state="failed", started_at=str(left.get("started_at") or ""),
            error="interrupted: the daemon restarted while learning; the model it ran "
            "before keeps running",
        )  # fmt: skip
        log.warning("learn_interrupted", monitor=monitor, id=rid)
        self.publish(progress.as_dict())
        try:  # a state directory that refuses writes leaves it for the next start
            if isinstance(monitor, str) and _NAME.match(monitor):
                clean_up(self.root / monitor)
            marker.unlink(missing_ok=True)
        except OSError as exc:
            log.error("learn_cleanup_failed", path=str(self.root), error=str(exc))

    def poll(self) -> None:
        """Hand the session the audio captured since the last tick (a copy)."""
        session, source = self._session, self._source
        if session is None or source is None or not session.collecting:
            return
        ring = source.ring(self._channel)
        chunk = ring.since(self._cursor, round(CHUNK_S * source.sample_rate))
        self._cursor = chunk.start + chunk.data.shape[0]
        if chunk.data.shape[0] or chunk.lost:
            session.offer(chunk.data.copy(), chunk.lost)

    def stop(self) -> None:
        """The daemon stops: a session in progress ends as interrupted."""
        session = self._session
        if session is not None:
            session.cancel("failed", "interrupted: the daemon stopped while learning")
            session.join(STOP_WAIT_S)

    @property
    def active(self) -> dict[str, Any] | None:
        """The session in progress (its progress), or None."""
        session = self._session
        return None if session is None else session.progress.as_dict()

    # --- the MQTT thread ----------------------------------------------------------------

    def command(self, cmd: Command) -> dict[str, Any]:
        """``cmd/learn``: start (``monitor``, ``seconds``, ``append``) or ``cancel``.
        CommandError says why a request is refused."""
        args = cmd.args
        if not self.config.learn.enabled:
            raise CommandError("learning over MQTT is off (learn.enabled: false)")
        with self._lock:
            session = self._session
            if args.get("cancel") is True:
                if session is None:
                    raise CommandError("cancel: nothing is being learned")
                named = args.get("monitor")
                if named is not None and named != session.progress.monitor:
                    raise CommandError(
                        f"cancel: monitor {named!r} is not learning "
                        f"({session.progress.monitor!r} is)"
                    )
                session.cancel()
                return {"monitor": session.progress.monitor, "state": "cancelled"}
            monitor = self._monitor(args.get("monitor"))
            seconds = self._seconds(args.get("seconds"))
            if session is not None:
                p = session.progress
                raise CommandError(
                    f"busy: monitor {p.monitor!r} is learning ({p.state}, "
                    f"{p.seconds_collected:.0f} of {p.seconds_wanted:g} s); cancel it first"
                )
            if self.models is None or self._source is None:
                raise CommandError("learning needs the running daemon's model store")
            self._session = self._start(monitor, seconds, bool(args.get("append")), cmd.id)
            return {"monitor": monitor.name, "state": "collecting", "seconds_wanted": seconds}

    def feedback(self, cmd: Command) -> dict[str, Any]:
        """``cmd/feedback``: ``{"alert_id", "verdict": "normal"}`` (``alert_id: "last"``
        with ``monitor``: that monitor's latest alert): the alert's clip joins the
        monitor's learned data as marked normal and the model is refitted. CommandError
        says why a request is refused."""
        args = cmd.args
        if not self.config.learn.enabled:
            raise CommandError("learning over MQTT is off (learn.enabled: false)")
        if args.get("verdict") != "normal":
            raise CommandError('verdict: expected "normal" (the alert was a false alarm)')
        with self._lock:
            if self._session is not None:
                p = self._session.progress
                raise CommandError(
                    f"busy: monitor {p.monitor!r} is learning ({p.state}); try again later"
                )
            clip, alert = self._clip(str(args.get("alert_id")), args.get("monitor"))
            monitor = self._monitor(alert.get("monitor"))
            directory = self.root / monitor.name
            if not sorted(directory.glob("normal-*.npz")):
                raise CommandError(
                    f"monitor {monitor.name!r} has no normal sound learned on this device: "
                    "learn it first (cmd/learn), then mark its false alarms"
                )
            if self.models is None or self._source is None:
                raise CommandError("learning needs the running daemon's model store")
            self._session = self._start(monitor, 0.0, True, cmd.id, clip=(clip, alert))
            return {"monitor": monitor.name, "state": "fitting", "alert_id": alert.get("alert_id")}

    def _clip(self, alert_id: str, monitor: object) -> tuple[Path, dict[str, Any]]:
        """The clip of an alert (or the newest of ``monitor``'s for ``last``) and its
        sidecar; CommandError when it is not on this device."""
        clips = Path(self.config.state_dir) / "clips"
        if alert_id == "last":
            name = self._monitor(monitor).name
            running = self.open_anomaly(name)
            if running is not None:
                raise CommandError(
                    f"alert_id: monitor {name!r}'s alert {running} is still in progress: its "
                    "clip is saved once it ends; mark it then"
                )
            found = newest_clip(clips, name)
            if found is None:
                raise CommandError(f"alert_id: monitor {name!r} has no alert clip on this device")
            return found
        try:
            found = find_clip(clips, alert_id)
        except ValueError as exc:
            raise CommandError(f"alert_id: {exc}") from None
        if found is not None:
            return found
        raise CommandError(
            f"alert_id: the clip of alert {alert_id} is not on this device (deleted by "
            "retention: clips.max_total_mb, clips.max_age_days; or never saved): "
            "nothing to learn from"
        )

    def _monitor(self, named: object) -> MonitorConfig:
        monitors = self.config.monitors
        if named is None:
            if len(monitors) == 1:
                return monitors[0]
            names = ", ".join(m.name for m in monitors)
            raise CommandError(f"monitor: name the monitor to learn (one of {names})")
        for m in monitors:
            if m.name == named:
                return m
        names = ", ".join(m.name for m in monitors)
        raise CommandError(f"monitor: {named!r} does not exist (monitors: {names})")

    def _seconds(self, value: object) -> float:
        learn = self.config.learn
        if value is None:
            return learn.default_s
        seconds = float(value)  # type: ignore[arg-type]  # the spec allows int and float
        if not seconds >= LEARN_MIN_S:
            raise CommandError(
                f"seconds: at least {LEARN_MIN_S:g} s of normal sound are needed (the "
                f"threshold is cross-fitted on two 10 s pieces), got {seconds:g}"
            )
        if seconds > learn.max_s:
            raise CommandError(f"seconds: at most {learn.max_s:g} (learn.max_s), got {seconds:g}")
        return seconds

    def _start(
        self,
        monitor: MonitorConfig,
        seconds: float,
        append: bool,
        request_id: str | None,
        *,
        clip: tuple[Path, dict[str, Any]] | None = None,
    ) -> LearnSession:
        assert self.models is not None and self._source is not None
        source, models = self._source, self.models
        directory = self.root / monitor.name
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise CommandError(f"cannot write to the state directory: {exc}") from None
        previous = data_files(directory)
        rid = request_id or f"learn-{monitor.name}-{int(self._wall() * 1000)}"
        session = LearnSession(
            config=self.config,
            monitor=monitor,
            capture_rate=source.sample_rate,
            seconds=seconds,
            append=append,
            request_id=rid,
            directory=directory,
            previous_data=previous,
            publish=lambda payload: self.publish(payload),
            submit=models.submit_learned,
            outcome=models.last_push,
            on_end=self._ended,
            wall_clock=self._wall,
            clip=None if clip is None else clip[0],
            alert=None if clip is None else clip[1],
        )
        marker = {
            "monitor": monitor.name,
            "id": rid,
            "seconds_wanted": seconds,
            "started_at": session.progress.started_at,
        }
        try:
            write_atomic(self.root / SESSION_FILE, json.dumps(marker).encode(), mode=0o600)
        except OSError as exc:
            raise CommandError(f"cannot write to the state directory: {exc}") from None
        self._channel = monitor.channel
        self._cursor = source.ring(monitor.channel).written
        log.info(
            "learn_started",
            monitor=monitor.name,
            id=rid,
            seconds=seconds,
            append=append,
            marked=None if clip is None else clip[1].get("alert_id"),
        )
        session.start()
        return session

    def _ended(self, session: LearnSession) -> None:
        with self._lock:
            if self._session is session:
                self._session = None
            if self._session is None:  # not the marker of a session started since
                (self.root / SESSION_FILE).unlink(missing_ok=True)
