"""Events to alerts: the payload contract, alert ids, and the clip each alert points to."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from .clips import ClipRecorder, ClipResult, clip_facts, found_clip, lost_clip
from .decision import Event
from .jsonvalues import iso_utc
from .machine import MachineChange
from .modelspec import BandsSpec, band_evidence
from .ring import RingBuffer

__all__ = ["AlertSink", "Alerts", "Link", "MonitorInfo", "finish_previous_run", "new_alert_id"]

log = structlog.get_logger()


class AlertSink(Protocol):
    """Where alerts go (``MqttLink`` in production): stored durably, then published."""

    def submit_alert(
        self, alert_id: str, payload: Mapping[str, Any], *, phase: str, held: bool = False
    ) -> None:
        """Queue an alert (``held``: stored, but not published before ``release_alert``)."""
        ...

    def release_alert(self, alert_id: str, phase: str, payload: Mapping[str, Any]) -> None:
        """Publish a held alert with its final payload."""
        ...

    def publish_clip(self, alert_id: str, data: bytes) -> bool:
        """Publish a saved clip's bytes (if configured and small enough)."""
        ...


class Link(AlertSink, Protocol):
    """The daemon's connection to the world (``MqttLink``): alerts, health, state."""

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 5.0) -> None: ...

    def held_alerts(self) -> list[tuple[str, str, dict[str, Any]]]: ...

    def open_alerts(self) -> list[tuple[str, dict[str, Any]]]: ...

    def publish_health(self, payload: Mapping[str, Any]) -> None: ...

    def publish_model(self, payload: Mapping[str, Any]) -> None: ...

    def publish_monitor_state(self, monitor: str, payload: Mapping[str, Any]) -> None: ...

    def publish_score(self, monitor: str, payload: Mapping[str, Any]) -> None: ...

    def set_discovery(
        self, monitors: Sequence[str], *, model_names: Mapping[str, str] = ...
    ) -> None: ...

    def stats(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class MonitorInfo:
    """What an alert says about the monitor that raised it and where its audio is."""

    name: str
    model: Mapping[str, str]
    """``name``, ``version`` and ``sha256`` of the model in force."""
    window_s: float
    """The model's window: an event's audio begins one window before its onset."""
    ring: RingBuffer
    """The capture ring of the monitor's channel."""
    sample_rate: int
    """Capture rate of that ring."""
    bands: BandsSpec | None = None
    """The model's ``bands`` output, if it has one: its alerts then carry ``evidence``."""

    def evidence(self, event: Event) -> list[dict[str, Any]] | None:
        """The event's evidence (its peak window's bands); None for a model without bands."""
        return None if self.bands is None else band_evidence(self.bands, event.peak_bands)


def new_alert_id(monitor: str, epoch_s: float) -> str:
    """A unique, time-ordered, readable alert id: ``20261121T101502Z-main-3f2a9c1d``."""
    stamp = datetime.fromtimestamp(epoch_s, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{monitor}-{secrets.token_hex(4)}"


@dataclass(slots=True)
class _Open:
    """An event in progress and the facts its end alert repeats."""

    alert_id: str
    started_at: str
    clip_path: Path | None
    start_payload: dict[str, Any]


class Alerts:
    """Turns each monitor's events into start and end alerts, each naming its clip.

    Called from the tick loop (``event``, ``input_problem``, ``machine``) and from the
    clip writer thread (``clip_done``). An event's start opens its clip on the
    ``recorder`` and its end closes it there (the daemon owns the recorder and feeds it
    scores and ticks). The end alert of an event whose clip is still being recorded is
    stored *held* (durable, unpublished) and released with the clip's path, duration
    and sha256 once it is saved, or with the reason it was not.
    """

    def __init__(
        self,
        *,
        device_id: str,
        sink: AlertSink | None,
        recorder: ClipRecorder | None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.device_id = device_id
        self._sink = sink
        self._recorder = recorder
        self._wall = wall_clock
        self._open: dict[str, _Open] = {}
        self._lock = threading.Lock()
        self._waiting: dict[str, dict[str, Any]] = {}  # alert id → held end payload
        self._clips: dict[str, ClipResult] = {}  # alert id → clip result before its end
        self._input_open: dict[tuple[str, int | None], tuple[dict[str, Any], float]] = {}
        self._machine_open: dict[str, tuple[dict[str, Any], float]] = {}  # monitor → start

    def wall_time(self, info: MonitorInfo, stream_s: float) -> float:
        """Wall-clock epoch seconds of a stream time of ``info``'s ring."""
        newest_s = info.ring.written / info.sample_rate
        return self._wall() - max(0.0, newest_s - stream_s)

    def event(self, info: MonitorInfo, event: Event) -> str | None:
        """Publish the alert of one event phase; returns its alert id."""
        if event.phase == "start":
            return self._start(info, event)
        return self._end(info, event)

    def _start(self, info: MonitorInfo, event: Event) -> str:
        begin_s = max(0.0, event.onset_s - info.window_s)
        started = self.wall_time(info, begin_s)
        alert_id = new_alert_id(info.name, started)
        evidence = info.evidence(event)
        clip_path = None
        if self._recorder is not None:
            clip_path = self._recorder.start(
                alert_id=alert_id,
                monitor=info.name,
                event=event,
                ring=info.ring,
                sample_rate=info.sample_rate,
                window_s=info.window_s,
                model=info.model,
                evidence=evidence,
            )
        payload: dict[str, Any] = {
            "id": alert_id,
            "type": "anomaly",
            "device_id": self.device_id,
            "monitor": info.name,
            "phase": "start",
            "started_at": iso_utc(started),
            "detected_at": iso_utc(self._wall()),
            "score": event.score,
            "peak_score": event.peak_score,
            "threshold": event.threshold,
            "model": dict(info.model),
            "clip": {"path": str(clip_path), "status": "recording"} if clip_path else None,
        }
        if evidence is not None:
            payload["evidence"] = evidence
        self._open[info.name] = _Open(alert_id, payload["started_at"], clip_path, payload)
        log.warning("anomaly_started", **_log_fields(alert_id, info, event, evidence))
        if self._sink is not None:
            self._sink.submit_alert(alert_id, payload, phase="start")
        return alert_id

    def _end(self, info: MonitorInfo, event: Event) -> str | None:
        opened = self._open.pop(info.name, None)
        if opened is None:  # an end without a start: nothing was announced
            return None
        ended = self.wall_time(info, event.last_anomalous_s)
        payload = {
            **opened.start_payload,
            "phase": "end",
            "ended_at": iso_utc(ended),
            "duration_s": round(event.last_anomalous_s - event.onset_s + info.window_s, 3),
            "score": event.score,
            "peak_score": event.peak_score,
            "detected_at": iso_utc(self._wall()),  # when the end was decided
        }
        evidence = info.evidence(event)
        if evidence is not None:
            payload["evidence"] = evidence
        log.info(
            "anomaly_ended",
            duration_s=payload["duration_s"],
            **_log_fields(opened.alert_id, info, event, evidence),
        )
        if self._recorder is not None and opened.clip_path is not None:
            self._recorder.end(monitor=info.name, event=event, evidence=evidence)
        with self._lock:
            result = self._clips.pop(opened.alert_id, None)
            held = opened.clip_path is not None and result is None
            if result is not None:
                payload["clip"] = clip_facts(result)
            if held:
                self._waiting[opened.alert_id] = payload
        if self._sink is not None:
            self._sink.submit_alert(opened.alert_id, payload, phase="end", held=held)
        return opened.alert_id

    def input_problem(
        self,
        condition: str,
        channel: int | None,
        phase: str,
        *,
        since_s: float,
        monitors: list[str],
        details: Mapping[str, Any],
    ) -> str | None:
        """Publish an input alert (``type: input``): ``condition`` (input_lost, silence,
        clipping, overrun) on ``channel`` started or ended; ``since_s`` is the wall-clock
        epoch at which it began (used by a start). Start and end share one alert id."""
        key = (condition, channel)
        if phase == "start":
            where = "device" if channel is None else f"ch{channel}"
            alert_id = new_alert_id(f"input-{condition}-{where}", since_s)
            payload: dict[str, Any] = {
                "id": alert_id,
                "type": "input",
                "device_id": self.device_id,
                "condition": condition,
                "channel": channel,
                "monitors": monitors,
                "phase": "start",
                "started_at": iso_utc(since_s),
                "detected_at": iso_utc(self._wall()),
                "details": dict(details),
            }
            self._input_open[key] = (payload, since_s)
            log.error(
                "input_problem",
                alert_id=alert_id,
                condition=condition,
                channel=channel,
                **dict(details),
            )
        else:
            found = self._input_open.pop(key, None)
            if found is None:
                return None
            opened, began = found
            alert_id = opened["id"]
            payload = self._end_of(opened, began, details)
            log.warning(
                "input_recovered",
                alert_id=alert_id,
                condition=condition,
                channel=channel,
                duration_s=payload["duration_s"],
            )
        if self._sink is not None:
            self._sink.submit_alert(alert_id, payload, phase=phase)
        return alert_id

    def _end_of(
        self, opened: Mapping[str, Any], began: float, details: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The end phase of an open input or machine alert: the start's payload with the
        end time and duration, these ``details``, and ``detected_at`` now (when the end was
        decided)."""
        ended = self._wall()
        payload = {
            **opened,
            "phase": "end",
            "ended_at": iso_utc(ended),
            "duration_s": round(max(0.0, ended - began), 3),
            "details": dict(details),
            "detected_at": iso_utc(ended),
        }
        return payload

    def end_input_problems(self, reason: str) -> None:
        """End every open input alert (at shutdown), so that none is left without an end."""
        for condition, channel in list(self._input_open):
            self.input_problem(
                condition,
                channel,
                "end",
                since_s=self._wall(),
                monitors=[],
                details={"reason": reason},
            )

    def machine(self, info: MonitorInfo, change: MachineChange, *, alert: bool) -> str | None:
        """Log the machine's state change (``machine_stopped`` / ``machine_running``) and,
        with ``alert`` (``monitors[].stopped: alert``), start a ``type: machine`` alert
        when it stops; running again ends the alert that is open, if any. Start and end
        share one alert id. Returns the alert id published, if any."""
        facts = {
            "monitor": info.name,
            "level_dbfs": round(change.level_dbfs, 1),
            "limit_dbfs": round(change.limit_dbfs, 1),
            "hold_s": round(change.at_s - change.since_s, 3),
        }
        if change.state == "running":
            log.info("machine_running", **facts)
            return self.end_machine(
                info.name,
                {
                    "reason": "running",
                    "level_dbfs": facts["level_dbfs"],
                    "running_from_dbfs": facts["limit_dbfs"],
                },
            )
        log.info("machine_stopped", **facts)
        if not alert or info.name in self._machine_open:
            return None
        since = self.wall_time(info, change.since_s)
        alert_id = new_alert_id(f"machine-{info.name}", since)
        payload: dict[str, Any] = {
            "id": alert_id,
            "type": "machine",
            "device_id": self.device_id,
            "monitor": info.name,
            "condition": "stopped",
            "phase": "start",
            "started_at": iso_utc(since),
            "detected_at": iso_utc(self._wall()),
            "model": dict(info.model),
            "details": {
                "level_dbfs": facts["level_dbfs"],
                "stopped_below_dbfs": facts["limit_dbfs"],
            },
        }
        self._machine_open[info.name] = (payload, since)
        if self._sink is not None:
            self._sink.submit_alert(alert_id, payload, phase="start")
        return alert_id

    def end_machine(self, monitor: str | None, details: Mapping[str, Any]) -> str | None:
        """End the open machine alert of ``monitor`` (None: of every monitor, at shutdown),
        its ``details`` replaced by these; returns the last alert id ended."""
        ended_id = None
        for name in [monitor] if monitor is not None else list(self._machine_open):
            found = self._machine_open.pop(name, None)
            if found is None:
                continue
            opened, began = found
            payload = self._end_of(opened, began, details)
            ended_id = str(opened["id"])
            if self._sink is not None:
                self._sink.submit_alert(ended_id, payload, phase="end")
        return ended_id

    def open_anomaly(self, monitor: str) -> str | None:
        """The id of ``monitor``'s anomaly alert in progress, if any (any thread)."""
        opened = self._open.get(monitor)
        return None if opened is None else opened.alert_id

    def clip_done(self, result: ClipResult) -> None:
        """The clip writer finished (or skipped) a clip: release its end alert."""
        with self._lock:
            payload = self._waiting.pop(result.alert_id, None)
            if payload is None:  # the event is still going on (clip cut at max length)
                self._clips[result.alert_id] = result
            else:
                payload["clip"] = clip_facts(result)
        if self._sink is None:
            return
        if payload is not None:
            self._sink.release_alert(result.alert_id, "end", payload)
        if result.path is not None:
            self._publish_clip(result)

    def _publish_clip(self, result: ClipResult) -> None:
        assert self._sink is not None and result.path is not None
        try:
            data = result.path.read_bytes()
        except OSError as exc:
            log.error("clip_unreadable", alert_id=result.alert_id, error=str(exc))
            return
        self._sink.publish_clip(result.alert_id, data)


def _log_fields(
    alert_id: str, info: MonitorInfo, event: Event, evidence: list[dict[str, Any]] | None
) -> dict[str, Any]:
    extra = {} if evidence is None else {"evidence": evidence}
    return {
        **extra,
        "alert_id": alert_id,
        "monitor": info.name,
        "onset_s": round(event.onset_s, 3),
        "at_s": round(event.at_s, 3),
        "score": event.score,
        "peak_score": event.peak_score,
        "threshold": event.threshold,
        "model": info.model.get("name"),
        "model_version": info.model.get("version"),
    }


def interrupted_end(start: Mapping[str, Any], *, detected_at: str) -> dict[str, Any]:
    """The end of an alert whose daemon was killed first: the start's payload, ``phase:
    end``, ``status: interrupted``. ``ended_at`` is the last moment the daemon is known to
    have run it, taken as the start's ``detected_at``: no heartbeat is written while an
    alert is open (input and machine alerts can stay open for days), so the true end lies
    between that and the restart, and ``duration_s`` is a lower bound. ``detected_at`` is
    when the end was decided: the restart. An anomaly's clip is as the restart finds it
    (``found_clip``)."""
    ended_at = start.get("detected_at") or start.get("started_at")
    end = {
        **start,
        "phase": "end",
        "status": "interrupted",
        "ended_at": ended_at,
        "detected_at": detected_at,
    }
    try:
        began = datetime.fromisoformat(str(start.get("started_at")))
        lasted_s = (datetime.fromisoformat(str(ended_at)) - began).total_seconds()
        end["duration_s"] = round(max(0.0, lasted_s), 3)
    except (TypeError, ValueError):  # a start without its times: no duration to give
        end["duration_s"] = None
    return end if start.get("clip") is None else found_clip(end)


def finish_previous_run(link: Link) -> None:
    """At start, before any new alert: finish what a daemon killed meanwhile left. Its held
    end alerts go out with their clip as found on disk (``found_clip``); each alert it
    started and never ended (anomaly, input or machine alike, recorded open by the
    outbox) gets its end now, ``status: interrupted`` (``interrupted_end``)."""
    for alert_id, phase, payload in link.held_alerts():
        log.warning("held_alert_released", alert_id=alert_id, phase=phase)
        try:
            released = found_clip(payload)
        except Exception:  # a damaged clip or sidecar must not stop the start (nor loop it)
            log.exception("held_alert_clip_unreadable", alert_id=alert_id)
            released = lost_clip(payload)
        link.release_alert(alert_id, phase, released)
    now = iso_utc(time.time())
    for alert_id, start in link.open_alerts():
        log.warning("interrupted_alert_ended", alert_id=alert_id, type=start.get("type"))
        link.submit_alert(alert_id, interrupted_end(start, detected_at=now), phase="end")
