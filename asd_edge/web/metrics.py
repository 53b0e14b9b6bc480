"""``/metrics``: the devices' latest retained MQTT payloads as Prometheus metrics."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["CONTENT_TYPE", "METRICS", "DeviceSnapshot", "MetricSpec", "render_metrics"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The ``Content-Type`` of ``render_metrics``' bytes (Prometheus text format 0.0.4), as
prometheus_client's own handler sends by default. Not ``CONTENT_TYPE_LATEST``: since
prometheus_client 0.22 that announces format 1.0.0 (UTF-8 names), which
``generate_latest`` writes only when asked for another escaping."""

MB: Final = 1_000_000
"""The daemon's MB (``rss_mb``, ``free_mb``): 10^6 bytes."""
LEARN_STATES: Final = ("collecting", "fitting", "done", "failed", "cancelled")
"""The states of ``<prefix>/learn`` (``asd_edge.learning.session.State``)."""
INPUT_WHOLE: Final = ("input_lost", "overrun")
"""Input conditions of the whole input (``channel="all"``)."""
INPUT_PER_CHANNEL: Final = ("silence", "clipping")
"""Input conditions judged per channel."""


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """The latest retained payloads of one device, as the web process received them.

    Every payload is the decoded JSON object of its topic, or None when none arrived (or
    it was not an object); nothing in them is trusted to have the expected shape.
    """

    device_id: str
    """The device's id (the ``device`` label)."""
    status: Mapping[str, Any] | None = None
    """``<prefix>/status``: ``{"state": "online"|"offline", "version", ...}``."""
    health: Mapping[str, Any] | None = None
    """``<prefix>/health``: ``Telemetry.report``'s payload."""
    model: Mapping[str, Any] | None = None
    """``<prefix>/model``: ``telemetry.model_payload``'s payload."""
    monitors: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """``<prefix>/monitor/<name>`` by monitor name: ``Telemetry.monitor_payload``'s."""
    learn: Mapping[str, Any] | None = None
    """``<prefix>/learn``: the learning's progress."""
    received_at: Mapping[str, float] = field(default_factory=dict)
    """Unix time each topic was last received, by kind (``status``, ``health``...)."""


Kind = Literal["gauge", "counter", "info"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric family: its name, type, help text and label names."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]

    @property
    def sample_name(self) -> str:
        """The name its samples carry in the text format (``_total`` for a counter,
        ``_info`` for an info)."""
        suffix = {"counter": "_total", "info": "_info"}.get(self.kind, "")
        return self.name + suffix


_D, _DM, _DC = ("device",), ("device", "monitor"), ("device", "channel")


def _spec(name: str, kind: Kind, labels: tuple[str, ...], help_text: str) -> MetricSpec:
    return MetricSpec(name, kind, help_text, labels)


METRICS: Final[tuple[MetricSpec, ...]] = (
    _spec("asd_edge_online", "gauge", _D, "1 while the device's status is online, 0 once offline."),
    _spec("asd_edge_build", "info", _D, "The daemon's version, from its status message."),
    _spec("asd_edge_health_age_seconds", "gauge", _D, "Seconds since the last health message."),
    _spec("asd_edge_uptime_seconds", "gauge", _D, "Seconds the daemon had run at its last health."),
    # per monitor: <prefix>/monitor/<name>, else the health message's entry
    _spec("asd_edge_score", "gauge", _DM, "The monitor's latest anomaly score (model units)."),
    _spec("asd_edge_threshold", "gauge", _DM, "The score at which the monitor alerts."),
    _spec(
        "asd_edge_score_index",
        "gauge",
        _DM,
        "The latest score on one scale for every model: 1 at the threshold, 0 at the "
        "model's typical normal score.",
    ),
    _spec("asd_edge_anomaly", "gauge", _DM, "1 while an anomaly event is in progress, else 0."),
    _spec(
        "asd_edge_machine_running",
        "gauge",
        _DM,
        "1 while the machine runs, 0 while stopped; absent for a model without level.",
    ),
    _spec(
        "asd_edge_level_dbfs",
        "gauge",
        _DM,
        "RMS level of the monitor's channel over the health interval, in dBFS.",
    ),
    _spec(
        "asd_edge_window_level_dbfs",
        "gauge",
        _DM,
        "Level of the latest window as the model's level measures it, in dBFS.",
    ),
    _spec(
        "asd_edge_score_max",
        "gauge",
        _DM,
        "Highest score in the last health interval (absent when no window was scored).",
    ),
    _spec("asd_edge_events", "counter", _DM, "Anomaly events started since the daemon started."),
    _spec(
        "asd_edge_model",
        "info",
        _DM,
        "The model a monitor runs: name, version, kind and source (config, push, learn...).",
    ),
    _spec("asd_edge_model_error", "gauge", _DM, "1 when the last model change failed, else 0."),
    # the learning on the device
    _spec(
        "asd_edge_learn_state",
        "gauge",
        ("device", "monitor", "state"),
        "1 for the state of the device's latest learning, 0 for the other states.",
    ),
    _spec(
        "asd_edge_learn_collected_seconds",
        "gauge",
        _DM,
        "Seconds of normal sound the latest learning has collected.",
    ),
    _spec(
        "asd_edge_learn_wanted_seconds",
        "gauge",
        _DM,
        "Seconds of normal sound the latest learning asked for.",
    ),
    _spec(
        "asd_edge_learn_fit_progress_ratio", "gauge", _DM, "Progress of the learning's fit, 0-1."
    ),
    # the daemon
    _spec("asd_edge_tick_p50_seconds", "gauge", _D, "Median tick duration in the last interval."),
    _spec("asd_edge_tick_p95_seconds", "gauge", _D, "95th percentile tick, last interval."),
    _spec("asd_edge_tick_max_seconds", "gauge", _D, "Longest tick in the last interval."),
    _spec("asd_edge_skipped_wakes", "counter", _D, "Loop wakes that came late (a busy CPU)."),
    _spec(
        "asd_edge_process_cpu_core_ratio",
        "gauge",
        _D,
        "CPU used in the last health interval as a fraction of one core (can exceed 1).",
    ),
    _spec("asd_edge_process_resident_memory_bytes", "gauge", _D, "The daemon's resident memory."),
    # audio input
    _spec("asd_edge_lost_samples", "counter", _D, "Samples lost (overwritten before read)."),
    _spec("asd_edge_overruns", "counter", _D, "Times audio was lost because a reader fell behind."),
    _spec("asd_edge_input_overflows", "counter", _D, "Blocks the audio driver flagged as dropped."),
    _spec("asd_edge_input_restarts", "counter", _D, "Times the audio stream was reopened."),
    _spec("asd_edge_input_stalls", "counter", _D, "Times the audio stream was found dead."),
    _spec(
        "asd_edge_channel_level_dbfs",
        "gauge",
        _DC,
        "RMS level of an input channel over the last health interval, in dBFS.",
    ),
    _spec(
        "asd_edge_channel_clipped_ratio",
        "gauge",
        _DC,
        "Fraction of an input channel's samples at full scale in the last interval.",
    ),
    _spec(
        "asd_edge_input_problem",
        "gauge",
        ("device", "condition", "channel"),
        "1 while an input problem (input_lost, overrun, silence, clipping) is active, else 0; "
        'channel is "all" for the whole input.',
    ),
    # clips
    _spec("asd_edge_clips_bytes", "gauge", _D, "Bytes all stored clips take on disk."),
    _spec("asd_edge_clips", "gauge", _D, "Clips stored on disk."),
    _spec("asd_edge_clips_saved", "counter", _D, "Clips written since the daemon started."),
    _spec("asd_edge_clips_skipped", "counter", _D, "Clips skipped since start (quota, queue)."),
    _spec("asd_edge_clips_deleted", "counter", _D, "Clips deleted by retention since start."),
    _spec(
        "asd_edge_disk_free_bytes", "gauge", _D, "Free space on the clips' filesystem, in bytes."
    ),
    # MQTT and the outbox
    _spec("asd_edge_outbox_depth", "gauge", _D, "Alerts waiting in the outbox for the broker."),
    _spec(
        "asd_edge_outbox_dropped",
        "counter",
        ("device", "reason"),
        "Alerts the outbox dropped unsent (reason max_rows or max_age), since it was created.",
    ),
    _spec("asd_edge_mqtt_connects", "counter", _D, "Connections to the broker since start."),
    _spec("asd_edge_mqtt_disconnects", "counter", _D, "Connections lost since start."),
    _spec("asd_edge_mqtt_published", "counter", _D, "Messages published since start."),
    _spec(
        "asd_edge_mqtt_ack_latency_seconds",
        "gauge",
        _D,
        "Time the broker took to acknowledge the last alert.",
    ),
)
"""Every metric ``render_metrics`` can produce, in output order."""

_SPECS: Final = {spec.name: spec for spec in METRICS}
Labels = tuple[str, ...]


def render_metrics(devices: Mapping[str, DeviceSnapshot], *, now: float) -> bytes:
    """Every device's metrics in the Prometheus text format (``CONTENT_TYPE``).

    ``now`` is the unix time the ages are measured to. A payload of the wrong shape, a
    missing key, a non-finite number or text where a number belongs drops that sample
    only; this never raises on what a device sent.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(list(devices.values()), now))
    return generate_latest(registry)


class _SnapshotCollector(Collector):
    """One scrape's families, built from the snapshots it was given."""

    def __init__(self, snapshots: Sequence[DeviceSnapshot], now: float) -> None:
        self._snapshots = snapshots
        self._now = now

    def collect(self) -> Iterator[Metric]:
        samples = _Samples()
        seen: set[str] = set()
        for snap in self._snapshots:
            device = _label(snap.device_id)
            if device is None or device in seen:  # one device, one set of series
                continue
            seen.add(device)
            _device(samples, device, snap, self._now)
        yield from samples.families()


class _Samples:
    """The samples of every family, at most one per label set (the first wins)."""

    def __init__(self) -> None:
        self._values: dict[str, dict[Labels, float | dict[str, str]]] = {
            spec.name: {} for spec in METRICS
        }

    def add(self, name: str, labels: Labels, value: object) -> None:
        """A number (a bool as 1/0); anything else, or NaN/inf, is skipped."""
        number = _number(value, allow_bool=True)
        if number is None or (_SPECS[name].kind == "counter" and number < 0):
            return
        self._values[name].setdefault(labels, number)

    def info(self, name: str, labels: Labels, info: Mapping[str, object]) -> None:
        """An info sample: ``info``'s text values as labels (other values are dropped)."""
        text = {k: v for k, v in ((k, _label(v)) for k, v in info.items()) if v is not None}
        self._values[name].setdefault(labels, text)

    def families(self) -> Iterable[Metric]:
        for spec in METRICS:
            family: Metric
            if spec.kind == "info":
                info_family = InfoMetricFamily(spec.name, spec.help, labels=spec.labels)
                for labels, info in self._values[spec.name].items():
                    if isinstance(info, dict):
                        info_family.add_metric(labels, info)
                family = info_family
            else:
                cls = GaugeMetricFamily if spec.kind == "gauge" else CounterMetricFamily
                number_family = cls(spec.name, spec.help, labels=spec.labels)
                for labels, value in self._values[spec.name].items():
                    if isinstance(value, float):
                        number_family.add_metric(labels, value)
                family = number_family
            yield family


def _device(samples: _Samples, device: str, snap: DeviceSnapshot, now: float) -> None:
    d = (device,)
    status = _mapping(snap.status)
    state = status.get("state")
    if state in ("online", "offline"):
        samples.add("asd_edge_online", d, state == "online")
    if "version" in status:
        samples.info("asd_edge_build", d, {"version": status["version"]})
    received = _number(_mapping(snap.received_at).get("health"))
    if received is not None:
        samples.add("asd_edge_health_age_seconds", d, max(0.0, now - received))
    health = _mapping(snap.health)
    samples.add("asd_edge_uptime_seconds", d, health.get("uptime_s"))
    _monitors(samples, device, snap, health)
    _models(samples, device, _mapping(snap.model))
    _learn(samples, device, _mapping(snap.learn))
    _daemon(samples, d, health)
    _audio(samples, device, health)


def _monitors(
    samples: _Samples, device: str, snap: DeviceSnapshot, health: Mapping[str, Any]
) -> None:
    """Per monitor, from its own topic (the freshest) and else from the health entry."""
    entries: dict[str, Mapping[str, Any]] = {}
    for entry in _list(health.get("monitors")):
        name = _label(_mapping(entry).get("name"))
        if name is not None:
            entries.setdefault(name, _mapping(entry))
    own: dict[str, Mapping[str, Any]] = {}
    for key, payload in _mapping(snap.monitors).items():
        name = _label(key)
        if name is not None:
            own.setdefault(name, _mapping(payload))
    for name in [*own, *(n for n in entries if n not in own)]:
        labels = (device, name)
        entry = entries.get(name, {})
        state = own.get(name, {})
        # each figure from the monitor's own topic, else (missing or odd) from the health
        for metric, key, health_key in (
            ("asd_edge_score", "score", "last_score"),
            ("asd_edge_threshold", "threshold", "threshold"),
            ("asd_edge_score_index", "index", "index"),
            ("asd_edge_level_dbfs", "level_dbfs", None),
            ("asd_edge_window_level_dbfs", "window_level_dbfs", "window_level_dbfs"),
        ):
            samples.add(metric, labels, state.get(key))
            if health_key is not None:
                samples.add(metric, labels, entry.get(health_key))
        for source in (state, entry):
            samples.add("asd_edge_anomaly", labels, _bool(source.get("anomaly")))
        # null is news too (a model without level now): no fallback then
        machine = (state if "machine" in state else entry).get("machine")
        if machine in ("running", "stopped"):
            samples.add("asd_edge_machine_running", labels, machine == "running")
        samples.add("asd_edge_score_max", labels, entry.get("max_score"))
        samples.add("asd_edge_events", labels, _integer(entry.get("events")))


def _models(samples: _Samples, device: str, model: Mapping[str, Any]) -> None:
    for name, facts in _mapping(model.get("monitors")).items():
        monitor, facts = _label(name), _mapping(facts)
        if monitor is None or not facts:
            continue
        labels = (device, monitor)
        wanted = ("name", "version", "kind", "source")
        samples.info("asd_edge_model", labels, {k: facts[k] for k in wanted if k in facts})
        samples.add("asd_edge_model_error", labels, facts.get("last_error") is not None)


def _learn(samples: _Samples, device: str, learn: Mapping[str, Any]) -> None:
    monitor, state = _label(learn.get("monitor")), _label(learn.get("state"))
    if monitor is None or state is None:
        return
    labels = (device, monitor)
    for known in dict.fromkeys((*LEARN_STATES, state)):
        samples.add("asd_edge_learn_state", (*labels, known), known == state)
    samples.add("asd_edge_learn_collected_seconds", labels, learn.get("seconds_collected"))
    samples.add("asd_edge_learn_wanted_seconds", labels, learn.get("seconds_wanted"))
    samples.add("asd_edge_learn_fit_progress_ratio", labels, learn.get("fit_progress"))


def _daemon(samples: _Samples, d: Labels, health: Mapping[str, Any]) -> None:
    ticks = _mapping(health.get("ticks"))
    for key, name in (("p50", "p50"), ("p95", "p95"), ("max", "max")):
        ms = _number(ticks.get(f"tick_{key}_ms"))
        samples.add(f"asd_edge_tick_{name}_seconds", d, None if ms is None else ms / 1e3)
    samples.add("asd_edge_skipped_wakes", d, _integer(ticks.get("skipped_wakes")))
    process = _mapping(health.get("process"))
    cpu = _number(process.get("cpu_percent"))
    samples.add("asd_edge_process_cpu_core_ratio", d, None if cpu is None else cpu / 100.0)
    rss = _number(process.get("rss_mb"))
    samples.add("asd_edge_process_resident_memory_bytes", d, None if rss is None else rss * MB)
    clips = _mapping(health.get("clips"))
    samples.add("asd_edge_clips_bytes", d, _integer(clips.get("bytes")))
    samples.add("asd_edge_clips", d, _integer(clips.get("clips")))
    for key in ("saved", "skipped", "deleted"):
        samples.add(f"asd_edge_clips_{key}", d, _integer(clips.get(key)))
    free = _number(clips.get("free_mb"))
    samples.add("asd_edge_disk_free_bytes", d, None if free is None else free * MB)
    outbox = _mapping(health.get("outbox"))
    samples.add("asd_edge_outbox_depth", d, _integer(outbox.get("outbox_depth")))
    for key, reason in (("dropped_rows", "max_rows"), ("dropped_age", "max_age")):
        samples.add("asd_edge_outbox_dropped", (*d, reason), _integer(outbox.get(key)))
    mqtt = _mapping(health.get("mqtt"))
    for key in ("connects", "disconnects", "published"):
        samples.add(f"asd_edge_mqtt_{key}", d, _integer(mqtt.get(key)))
    samples.add("asd_edge_mqtt_ack_latency_seconds", d, mqtt.get("last_ack_latency_s"))


def _audio(samples: _Samples, device: str, health: Mapping[str, Any]) -> None:
    d = (device,)
    audio = _mapping(health.get("audio"))
    for key, name in (
        ("lost_samples", "asd_edge_lost_samples"),
        ("overruns", "asd_edge_overruns"),
        ("overflows", "asd_edge_input_overflows"),
        ("restarts", "asd_edge_input_restarts"),
        ("stalls", "asd_edge_input_stalls"),
    ):
        samples.add(name, d, _integer(audio.get(key)))
    channels: list[str] = []
    for item in _list(audio.get("channels")):
        level = _mapping(item)
        channel = _integer(level.get("channel"))
        if channel is None:
            continue
        labels = (device, str(channel))
        channels.append(str(channel))
        if _integer(level.get("samples")) != 0:  # no audio arrived: no level to speak of
            samples.add("asd_edge_channel_level_dbfs", labels, level.get("level_dbfs"))
            samples.add("asd_edge_channel_clipped_ratio", labels, level.get("clipped_ratio"))
    if "input" not in health:  # no input supervision: unknown, not healthy
        return
    active: set[tuple[str, str]] = set()
    for item in _list(health.get("input")):
        problem = _mapping(item)
        condition = _label(problem.get("condition"))
        channel = _integer(problem.get("channel"))
        if condition is not None:
            active.add((condition, "all" if channel is None else str(channel)))
    known = [(c, "all") for c in INPUT_WHOLE]
    known += [(c, ch) for c in INPUT_PER_CHANNEL for ch in channels]
    for condition, where in dict.fromkeys([*sorted(active), *known]):
        samples.add(
            "asd_edge_input_problem", (device, condition, where), (condition, where) in active
        )


# --- reading untrusted JSON -------------------------------------------------------------


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _number(value: object, *, allow_bool: bool = False) -> float | None:
    """A finite number as float; None for anything else (bools only with ``allow_bool``)."""
    if isinstance(value, bool):
        return float(value) if allow_bool else None
    if not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float's range
        return None
    return number if math.isfinite(number) else None


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _label(value: object) -> str | None:
    """Text usable as a label value (lone surrogates written as their escape); None for
    anything but non-empty text."""
    if not isinstance(value, str) or not value:
        return None
    return value.encode("utf-8", "backslashreplace").decode("utf-8")
