"""What the demo saw: alerts as received from the broker, matched to the injected anomalies."""

from __future__ import annotations

import json
import statistics
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from devkit.broker import Received
from training.synth import Anomaly

__all__ = [
    "AlertBook",
    "AlertRecord",
    "Detection",
    "Outcome",
    "describe_phase",
    "evaluate",
    "evidence_text",
    "parse_iso",
    "render_summary",
]


def parse_iso(text: str) -> float:
    """Epoch seconds of an alert's ISO 8601 UTC time (``2026-11-21T10:15:02.250Z``)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class AlertRecord:
    """Both phases of one alert, as the broker delivered them."""

    id: str
    monitor: str
    start: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    start_received_at: float | None = None
    """Wall-clock time the start alert reached the demo's subscriber."""
    end_received_at: float | None = None

    @property
    def started_at_s(self) -> float | None:
        """Epoch seconds the daemon says the anomalous sound began."""
        payload = self.start or self.end
        return parse_iso(payload["started_at"]) if payload and payload.get("started_at") else None

    @property
    def ended_at_s(self) -> float | None:
        """Epoch seconds of the last anomalous window (from the end alert)."""
        return parse_iso(self.end["ended_at"]) if self.end and self.end.get("ended_at") else None

    @property
    def clip(self) -> dict[str, Any]:
        """The end alert's ``clip`` object (empty before the end)."""
        clip = (self.end or {}).get("clip")
        return clip if isinstance(clip, dict) else {}


class AlertBook:
    """The alerts of one run, filled from paho's thread, read from the main thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._alerts: dict[str, AlertRecord] = {}
        self.invalid: list[str] = []
        """Alert messages that were not an alert (with the reason)."""
        self.input_alerts: list[dict[str, Any]] = []
        """Input alerts (``type: input``: the microphone lost, silent, clipping, overrun)."""

    def add(self, message: Received) -> tuple[AlertRecord, str] | None:
        """Record an alert message; the record and its phase, or None for a repeat
        (QoS 1 may deliver twice) or an invalid payload (kept in ``invalid``)."""
        try:
            payload = json.loads(message.payload)
            if isinstance(payload, dict) and payload.get("type") == "input":
                with self._lock:
                    self.input_alerts.append(payload)
                return None
            alert_id, phase = str(payload["id"]), str(payload["phase"])
            monitor = str(payload["monitor"])
        except (ValueError, KeyError, TypeError) as exc:
            with self._lock:
                self.invalid.append(f"{message.payload[:80]!r}: {exc}")
            return None
        if phase not in ("start", "end"):
            with self._lock:
                self.invalid.append(f"alert {alert_id}: unknown phase {phase!r}")
            return None
        with self._lock:
            record = self._alerts.setdefault(alert_id, AlertRecord(alert_id, monitor))
            if getattr(record, phase) is not None:
                return None
            setattr(record, phase, payload)
            setattr(record, f"{phase}_received_at", message.received_at)
        return record, phase

    def alerts(self) -> list[AlertRecord]:
        """Every alert so far, in order of start."""
        with self._lock:
            records = list(self._alerts.values())
        return sorted(records, key=lambda r: r.started_at_s or 0.0)

    def open_count(self) -> int:
        """Alerts whose start arrived and whose end has not."""
        with self._lock:
            return sum(1 for r in self._alerts.values() if r.start and not r.end)


def describe_phase(record: AlertRecord, phase: str, playback_start_s: float | None) -> list[str]:
    """Readable lines for one alert phase as received: time, monitor, phase, id,
    score vs threshold, the evidence bands (which band changed); for an end, also its clip."""
    payload = record.start if phase == "start" else record.end
    assert payload is not None
    received = record.start_received_at if phase == "start" else record.end_received_at
    assert received is not None
    clock = datetime.fromtimestamp(received).strftime("%H:%M:%S.%f")[:-3]
    offset = f"+{received - playback_start_s:5.1f} s" if playback_start_s is not None else ""
    score, threshold = payload.get("score"), payload.get("threshold")
    relation = ">" if _num(score) > _num(threshold) else "<="
    line = (
        f"  {clock} {offset:>9}  {record.monitor}  {phase.upper():5}  {record.id}  "
        f"score {_fmt(score)} {relation} threshold {_fmt(threshold)}"
    )
    lines = [line]
    if "evidence" in payload:  # a model with a bands output
        bands = [evidence_text(band) for band in payload["evidence"] or []]
        lines.append(
            f"      evidence: {'; '.join(bands)}"
            if bands
            else "      evidence: no band's level moved by 3 normal spreads (the change is "
            "in how the sound varies, or it is too small to name a band)"
        )
    if phase == "start":
        return lines
    lines[0] += f", peak {_fmt(payload.get('peak_score'))}, {payload.get('duration_s', '?')} s"
    clip = record.clip
    if clip.get("status") == "saved":
        sha = str(clip.get("sha256") or "")[:12]
        clip_line = (
            f"      clip saved: {_relative(clip.get('path'), Path.cwd())}"
            f" ({clip.get('duration_s')} s, sha256 {sha}…; spectrogram .png beside it)"
        )
    else:
        clip_line = f"      clip {clip.get('status', 'missing')}: {clip.get('error') or 'no clip'}"
    return [*lines, clip_line]


def evidence_text(band: dict[str, Any]) -> str:
    """One evidence band as people read it: ``3072-3380 Hz +13.5 dB (9.1 spreads)``."""
    lo, hi = band.get("band_hz", ["?", "?"])
    delta = band.get("delta_db")
    sign = "+" if isinstance(delta, int | float) and delta > 0 else ""
    return f"{_fmt(lo)}-{_fmt(hi)} Hz {sign}{_fmt(delta)} dB ({_fmt(band.get('z'))} spreads)"


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


@dataclass(frozen=True)
class Detection:
    """An injected anomaly and the alert that caught it (None: missed)."""

    anomaly: Anomaly
    alert: AlertRecord | None
    latency_s: float | None
    """Start alert at the subscriber minus the wall time the anomaly began to play."""


@dataclass
class Outcome:
    """The run's facts: detections, false alarms, clips, and what broke (if anything)."""

    detections: list[Detection]
    false_alarms: list[AlertRecord]
    alerts: list[AlertRecord]
    problems: list[str] = field(default_factory=list)
    """Pipeline failures: an alert without end, a clip not saved, a bad exit code."""

    @property
    def detected(self) -> list[Detection]:
        """The detections that found an alert."""
        return [d for d in self.detections if d.alert is not None]

    @property
    def clips_saved(self) -> list[AlertRecord]:
        """Alerts whose clip was saved."""
        return [a for a in self.alerts if a.clip.get("status") == "saved"]

    def as_dict(self, playback_start_s: float) -> dict[str, Any]:
        """The outcome as JSON-ready data (``summary.json``)."""
        return {
            "pipeline_ok": not self.problems,
            "problems": self.problems,
            "anomalies_played": len(self.detections),
            "anomalies_detected": len(self.detected),
            "false_alarms": len(self.false_alarms),
            "clips_saved": len(self.clips_saved),
            "anomalies": [
                {
                    "kind": d.anomaly.kind,
                    "start_s": d.anomaly.start_s,
                    "duration_s": d.anomaly.duration_s,
                    "detected": d.alert is not None,
                    "alert_id": d.alert.id if d.alert else None,
                    "latency_s": None if d.latency_s is None else round(d.latency_s, 3),
                }
                for d in self.detections
            ],
            "alerts": [
                {
                    "id": a.id,
                    "monitor": a.monitor,
                    "started_s": _offset(a.started_at_s, playback_start_s),
                    "ended_s": _offset(a.ended_at_s, playback_start_s),
                    "peak_score": (a.end or a.start or {}).get("peak_score"),
                    "false_alarm": a in self.false_alarms,
                    "clip": a.clip or None,
                }
                for a in self.alerts
            ],
        }


def _offset(epoch_s: float | None, origin_s: float) -> float | None:
    return None if epoch_s is None else round(epoch_s - origin_s, 3)


def evaluate(
    anomalies: Sequence[Anomaly],
    alerts: Sequence[AlertRecord],
    *,
    playback_start_s: float,
    slack_s: float,
) -> Outcome:
    """Match alerts to anomalies: an alert whose started_at..ended_at overlaps an
    anomaly's played interval widened by ``slack_s`` on both sides detects it (the
    earliest such alert counts); an alert that overlaps none is a false alarm. Every
    alert must have both phases and a saved clip, else it is a problem."""
    caught: dict[int, AlertRecord] = {}
    false_alarms: list[AlertRecord] = []
    problems: list[str] = []
    for alert in alerts:
        if alert.start is None:
            problems.append(f"alert {alert.id}: an end alert arrived without its start")
        if alert.end is None:
            problems.append(f"alert {alert.id}: the start alert never got its end alert")
        elif alert.clip.get("status") != "saved":
            problems.append(
                f"alert {alert.id}: clip {alert.clip.get('status', 'missing')}"
                f" ({alert.clip.get('error') or 'no clip in the end alert'})"
            )
        begin = alert.started_at_s
        if begin is None:
            continue
        end = alert.ended_at_s
        if end is None and alert.start is not None:
            end = parse_iso(alert.start.get("detected_at") or alert.start["started_at"])
        end = begin if end is None else end
        hits = [
            i
            for i, a in enumerate(anomalies)
            if begin <= playback_start_s + a.end_s + slack_s
            and playback_start_s + a.start_s - slack_s <= end
        ]
        if not hits:
            false_alarms.append(alert)
        for i in hits:
            if i not in caught:
                caught[i] = alert
    detections = []
    for i, anomaly in enumerate(anomalies):
        catcher = caught.get(i)
        latency = None
        if catcher is not None and catcher.start_received_at is not None:
            latency = catcher.start_received_at - (playback_start_s + anomaly.start_s)
        detections.append(Detection(anomaly, catcher, latency))
    return Outcome(detections, false_alarms, list(alerts), problems)


def render_summary(outcome: Outcome, *, playback_start_s: float) -> str:
    """The summary table and totals, readable in an 80-column terminal."""
    lines = [
        "",
        "Summary (times in seconds from the start of playback)",
        f"  {'#':>2}  {'anomaly':10} {'played':>11}  {'result':8} {'latency':>7}  "
        f"{'alert':8}  clip",
    ]
    for number, d in enumerate(outcome.detections, 1):
        played = f"{d.anomaly.start_s:.1f}-{d.anomaly.end_s:.1f}"
        if d.alert is None:
            lines.append(f"  {number:>2}  {d.anomaly.kind:10} {played:>11}  MISSED")
            continue
        latency = "?" if d.latency_s is None else f"{d.latency_s:.2f} s"
        lines.append(
            f"  {number:>2}  {d.anomaly.kind:10} {played:>11}  {'detected':8} {latency:>7}  "
            f"{_short_id(d.alert)}  {_clip_cell(d.alert)}"
        )
    for alert in outcome.false_alarms:
        begin = _offset(alert.started_at_s, playback_start_s)
        end = _offset(alert.ended_at_s, playback_start_s)
        span = f"{begin:.1f}-{end:.1f}" if begin is not None and end is not None else "?"
        lines.append(
            f"   -  {'(none)':10} {span:>11}  {'FALSE':8} {'':>7}  "
            f"{_short_id(alert)}  {_clip_cell(alert)}"
        )
    missed = [d.anomaly.kind for d in outcome.detections if d.alert is None]
    lines += [
        "",
        f"  anomalies played:   {len(outcome.detections)}",
        f"  detected:           {len(outcome.detected)}",
    ]
    if missed:
        lines.append(f"  MISSED:             {len(missed)} ({', '.join(missed)})")
    lines.append(f"  false alarms:       {len(outcome.false_alarms)}")
    latencies = [d.latency_s for d in outcome.detections if d.latency_s is not None]
    if latencies:
        lines.append(
            "  latency, onset to alert at the subscriber: "
            f"min {min(latencies):.2f} s, median {statistics.median(latencies):.2f} s, "
            f"max {max(latencies):.2f} s"
        )
    lines.append(
        f"  clips saved:        {len(outcome.clips_saved)} of {len(outcome.alerts)} alerts"
        " (WAV, spectrogram PNG and JSON sidecar each)"
    )
    folders = sorted({str(Path(str(a.clip["path"])).parent) for a in outcome.clips_saved})
    for folder in folders:
        lines.append(
            f"  clips in:           {_relative(folder, Path.cwd())}/ (<time>_<alert id>.*)"
        )
    return "\n".join(lines)


def _short_id(alert: AlertRecord) -> str:
    """The alert id's random tail, enough to find its clip."""
    return alert.id.rsplit("-", 1)[-1][:8]


def _clip_cell(alert: AlertRecord) -> str:
    clip = alert.clip
    if clip.get("status") == "saved":
        return f"saved, {clip.get('duration_s')} s"
    return str(clip.get("status") or "none")


def _relative(path: Any, base: Path) -> str:
    if not path:
        return "-"
    try:
        return str(Path(str(path)).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)
