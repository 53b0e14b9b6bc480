"""What the daemon says about its monitors: model facts, the ``model`` topic, the status line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .inputhealth import InputHealth
from .modelstore import ModelManager
from .monitor import Monitor
from .telemetry import Telemetry

__all__ = ["describe", "model_facts", "model_payload", "status_line"]


def model_facts(monitor: Monitor) -> dict[str, str]:
    """``name``, ``version`` and ``sha256`` of the model a monitor runs (alerts carry them)."""
    spec = monitor.detector.spec
    return {"name": spec.name, "version": spec.version, "sha256": monitor.detector.sha256}


def describe(monitor: Monitor) -> dict[str, object]:
    """A monitor as the ``daemon_started`` log line shows it."""
    spec = monitor.detector.spec
    return {
        "name": monitor.name,
        "model": spec.name,
        "version": spec.version,
        "kind": spec.kind,
        "sha256": monitor.detector.sha256,
        "threshold": monitor.decision.policy.threshold,
        "model_rate": spec.sample_rate,
        "hop_s": monitor.hop_s,
        "bands": spec.bands.n_bands if spec.bands is not None else None,
        "stopped_below_dbfs": spec.level.stopped_below_dbfs if spec.level is not None else None,
    }


def model_payload(
    device_id: str, monitors: Sequence[Monitor], models: ModelManager | None
) -> dict[str, Any]:
    """``<prefix>/model``: the active model of every monitor, where it came from, what it
    replaced, and the answer to the last push or rollback."""
    described: dict[str, Any] = {}
    for m in monitors:
        facts: dict[str, Any] = {"source": "config", "previous": None, "last_error": None}
        if models is not None:
            facts.update(models.facts(m.name))
        described[m.name] = {
            **model_facts(m),
            "kind": m.detector.spec.kind,
            "path": str(m.detector.path),
            "threshold": m.decision.policy.threshold,
            "loaded_at": m.detector.loaded_at,
            **facts,
        }
    last_push = models.last_push() if models is not None else None
    return {"device_id": device_id, "monitors": described, "last_push": last_push}


def status_line(
    sample_rate: int,
    monitors: Sequence[Monitor],
    telemetry: Telemetry | None,
    input_health: InputHealth | None,
) -> str:
    """One line for ``systemctl status`` (sd_notify STATUS=): rate, monitors and their
    models, events so far, input problems."""
    events = sum(s.events for s in telemetry.monitors.values()) if telemetry is not None else 0
    problems = input_health.active_names() if input_health is not None else []
    names = ", ".join(
        f"{m.name} ({m.detector.spec.name} {m.detector.spec.version})" for m in monitors
    )
    return (
        f"listening at {sample_rate} Hz: {names}; {events} event(s); "
        f"input {', '.join(problems) if problems else 'ok'}"
    )
