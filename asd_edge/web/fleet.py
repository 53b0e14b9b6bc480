"""What the dashboard knows about every device: the retained topics of the broker, the
alerts seen since it started and the newest live frames, updated on paho's thread and
read by the HTTP server."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from .metrics import DeviceSnapshot

__all__ = [
    "MAX_ALERTS",
    "MAX_DEVICES",
    "MAX_PAYLOAD_BYTES",
    "Device",
    "Fleet",
    "Update",
    "fleet_root",
]

log = structlog.get_logger()

MAX_DEVICES: Final = 256
"""Most devices tracked; beyond it, messages of new devices are ignored (and counted)."""
MAX_ALERTS: Final = 200
"""Alerts kept per device, newest first (older ones stay in the daemons' clips)."""
MAX_PAYLOAD_BYTES: Final = 64 * 1024
"""Largest state, monitor or live message read (a health message is a few kB); a bigger
one is dropped and counted (clips arrive apart, through the bridge)."""
MAX_ALERT_BYTES: Final = 16 * 1024
"""Largest alert kept, its start and end merged (an alert is about 1 kB)."""
MAX_STORED_BYTES: Final = 32 * 1024 * 1024
"""What all devices' stored messages may take together (their JSON size); a message that
would pass it is dropped and counted, whoever sends it."""
LOW_DISK_MB: Final = 200.0
"""Free space on the clips' filesystem below which the fleet page says ``disk``."""
MAX_MONITORS: Final = 32
"""Most monitors tracked per device."""

# The retained or streamed topics under a device's prefix that the dashboard reads.
_STATE_TOPICS: Final = ("status", "health", "model", "learn")

Update = tuple[str, str, dict[str, Any]]
"""(device key, kind, payload) handed to watchers: kind is ``status``, ``health``,
``model``, ``learn``, ``monitor``, ``alert``, ``live`` or ``answer``."""


def fleet_root(prefix: str) -> str | None:
    """The level above a device prefix (``asd`` for ``asd/pump-1``); None without one."""
    root, sep, _ = prefix.rpartition("/")
    return root if sep else None


@dataclass(slots=True)
class Device:
    """One device as its topics describe it."""

    key: str
    """The last level of its prefix (its device id with the default prefix)."""
    prefix: str
    status: dict[str, Any] | None = None
    health: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    learn: dict[str, Any] | None = None
    monitors: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The retained ``monitor/<name>`` payloads."""
    bands: dict[str, list[float]] = field(default_factory=dict)
    """Each monitor's live spectrum band edges in Hz (sent with the first frame of a lease);
    the frames themselves are passed on to the pages, not kept."""
    alerts: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    """Alert id -> the alert (its start and end merged), oldest first."""
    received_at: dict[str, float] = field(default_factory=dict)
    """Unix time each kind of message last arrived."""

    @property
    def online(self) -> bool:
        return bool(self.status and self.status.get("state") == "online")

    def summary(self) -> dict[str, Any]:
        """What the fleet page shows of it."""
        health = self.health or {}
        problems = _problems(health)
        last = next(reversed(self.alerts.values()), None) if self.alerts else None
        return {
            "key": self.key,
            "device_id": (self.status or {}).get("device_id", self.key),
            "online": self.online,
            "version": (self.status or {}).get("version"),
            "monitors": {name: _monitor_brief(m) for name, m in sorted(self.monitors.items())},
            "models": _models_brief(self.model),
            "last_alert": last,
            "problems": problems,
            "received_at": dict(self.received_at),
        }

    def detail(self) -> dict[str, Any]:
        """Everything the device page starts from (then follows the updates)."""
        return {
            **self.summary(),
            "prefix": self.prefix,
            "status": self.status,
            "health": self.health,
            "model": self.model,
            "learn": self.learn,
            "monitor_states": self.monitors,
            "band_edges_hz": self.bands,
            "alerts": list(reversed(self.alerts.values())),
        }


class Fleet:
    """The devices under one topic root (or one prefix), fed by ``handle(topic, payload)``.

    Thread-safe: paho's thread writes, the server's event loop reads. Every accepted
    message is also handed to ``on_update`` (on paho's thread; it must not block).
    """

    def __init__(
        self,
        prefix: str,
        *,
        fleet: bool = True,
        on_update: Callable[[Update], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.own_prefix = prefix
        self.root = fleet_root(prefix) if fleet else None
        self.on_update = on_update
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._devices: dict[str, Device] = {}
        self._sizes: dict[tuple[str, str, str], int] = {}
        self._stored = 0
        self.dropped = {"oversized": 0, "malformed": 0, "devices": 0, "budget": 0}

    # --- subscriptions -------------------------------------------------------------------

    def subscriptions(self) -> list[str]:
        """The topic filters to subscribe to."""
        base = f"{self.root}/+" if self.root is not None else self.own_prefix
        filters = [f"{base}/{kind}" for kind in _STATE_TOPICS]
        return [
            *filters,
            f"{base}/monitor/+",
            f"{base}/alert",
            f"{base}/live/+",
            f"{base}/cmd_result",
        ]

    def device_id(self, key: str) -> str:
        """The device id its status message gives (the key until one arrives)."""
        with self._lock:
            device = self._devices.get(key)
            return str((device.status or {}).get("device_id") or key) if device else key

    def prefix_of(self, key: str) -> str | None:
        """The topic prefix of a known device."""
        with self._lock:
            device = self._devices.get(key)
            return device.prefix if device is not None else None

    def own_key(self) -> str:
        return self.own_prefix.rpartition("/")[2]

    # --- reading -------------------------------------------------------------------------

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._devices)

    def summaries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._devices[k].summary() for k in sorted(self._devices)]

    def detail(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            device = self._devices.get(key)
            return json.loads(json.dumps(device.detail())) if device is not None else None

    def snapshots(self) -> dict[str, DeviceSnapshot]:
        """Every device's latest payloads, as ``/metrics`` reads them. A stored payload is
        never changed in place (a new message replaces it), so sharing it is safe."""
        with self._lock:
            return {
                d.key: DeviceSnapshot(
                    device_id=d.key,
                    status=d.status,
                    health=d.health,
                    model=d.model,
                    monitors=dict(d.monitors),
                    learn=d.learn,
                    received_at=dict(d.received_at),
                )
                for d in self._devices.values()
            }

    # --- writing -------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> None:
        """Fold in one message; never raises (a bad message is dropped, logged, counted)."""
        where = self._split(topic)
        if where is None:
            return
        prefix, kind, name = where
        limit = MAX_ALERT_BYTES if kind == "alert" else MAX_PAYLOAD_BYTES
        if len(payload) > limit:
            self._drop("oversized", topic, f"{len(payload)} bytes, at most {limit}")
            return
        if not payload:  # a retained message cleared
            self._clear(prefix, kind, name)
            return
        body = _object(payload)
        if body is None:
            self._drop("malformed", topic, "not a JSON object of finite numbers")
            return
        key = prefix.rpartition("/")[2]
        with self._lock:
            device = self._devices.get(key)
            if device is None:
                if len(self._devices) >= MAX_DEVICES:
                    self.dropped["devices"] += 1
                    return
                device = self._devices[key] = Device(key=key, prefix=prefix)
            folded = self._fold(device, kind, name, body, len(payload))
            if folded is not None:
                device.received_at[kind] = self._wall()
        if folded is None:
            self._drop("budget", topic, "over the dashboard's memory budget")
        elif folded and self.on_update is not None:
            self.on_update((key, kind, body))

    def _drop(self, why: str, topic: str, detail: str) -> None:
        self.dropped[why] += 1
        log.warning("web_message_dropped", topic=topic[:200], why=detail)

    def _account(self, slot: tuple[str, str, str], size: int) -> bool:
        """Reserve ``size`` bytes for ``slot`` (replacing what it held); False when the
        whole would pass MAX_STORED_BYTES. Called with the lock held."""
        old = self._sizes.get(slot, 0)
        if self._stored - old + size > MAX_STORED_BYTES:
            return False
        self._stored += size - old
        if size:
            self._sizes[slot] = size
        else:
            self._sizes.pop(slot, None)
        return True

    def _split(self, topic: str) -> tuple[str, str, str | None] | None:
        """(device prefix, kind, monitor name) of a topic the dashboard reads."""
        levels = topic.split("/")
        for tail in (1, 2):
            if len(levels) <= tail:
                continue
            prefix = "/".join(levels[:-tail])
            if self.root is None and prefix != self.own_prefix:
                continue
            if self.root is not None and fleet_root(prefix) != self.root:
                continue
            kind = levels[-tail]
            if tail == 1 and kind in (*_STATE_TOPICS, "alert", "cmd_result"):
                return prefix, "answer" if kind == "cmd_result" else kind, None
            if tail == 2 and kind in ("monitor", "live") and levels[-1]:
                return prefix, kind, levels[-1]
        return None

    def _fold(
        self, device: Device, kind: str, name: str | None, body: dict[str, Any], size: int
    ) -> bool | None:
        """Store the message (True), pass it on without storing (False for nothing to
        pass on), or None when the budget refuses it. Called with the lock held."""
        key = device.key
        if kind in _STATE_TOPICS:
            if not self._account((key, kind, ""), size):
                return None
            setattr(device, kind, body)
        elif kind == "monitor" and name is not None:
            if name not in device.monitors and len(device.monitors) >= MAX_MONITORS:
                return False
            if not self._account((key, kind, name), size):
                return None
            body["monitor"] = name  # the topic's name, whatever the payload says
            device.monitors[name] = body
        elif kind == "live" and name is not None:
            if name not in device.monitors:
                return False  # frames only of the monitors the device announced
            body["monitor"] = name
            edges = body.get("band_edges_hz")
            if isinstance(edges, list) and len(edges) <= 257:
                device.bands[name] = [float(e) for e in edges if _finite_number(e)]
        elif kind == "alert":
            alert_id = body.get("id")
            if not isinstance(alert_id, str) or not alert_id or len(alert_id) > 200:
                return False
            merged = {**device.alerts.get(alert_id, {}), **body}
            merged_size = len(json.dumps(merged))
            if merged_size > MAX_ALERT_BYTES:
                return False
            if not self._account((key, kind, alert_id), merged_size):
                return None
            device.alerts.pop(alert_id, None)
            device.alerts[alert_id] = merged
            while len(device.alerts) > MAX_ALERTS:
                oldest, _ = device.alerts.popitem(last=False)
                self._account((key, kind, oldest), 0)
            body.clear()
            body.update(merged)
        return True

    def _clear(self, prefix: str, kind: str, name: str | None) -> None:
        key = prefix.rpartition("/")[2]
        with self._lock:
            device = self._devices.get(key)
            if device is None:
                return
            if kind in _STATE_TOPICS:
                setattr(device, kind, None)
                self._account((key, kind, ""), 0)
            elif kind == "monitor" and name is not None:
                device.monitors.pop(name, None)
                device.bands.pop(name, None)
                self._account((key, kind, name), 0)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _object(payload: bytes) -> dict[str, Any] | None:
    """The JSON object of a payload, or None: not UTF-8, not JSON, NaN or Infinity (a page
    could not be served with them), nested past what Python parses, or not an object."""
    try:
        body = json.loads(payload, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


def _finite_number(value: object) -> bool:
    return _number(value) is not None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _monitor_brief(state: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: state.get(k)
        for k in ("anomaly", "machine", "score", "threshold", "index", "level_dbfs", "at")
    }


def _models_brief(model: Mapping[str, Any] | None) -> dict[str, Any]:
    """Monitor name -> its model's name, version, source, load time and last error."""
    monitors = (model or {}).get("monitors")
    if not isinstance(monitors, dict):
        return {}
    return {
        str(name): {
            k: entry.get(k) for k in ("name", "version", "source", "loaded_at", "last_error")
        }
        for name, entry in monitors.items()
        if isinstance(entry, dict)
    }


def _problems(health: Mapping[str, Any]) -> list[str]:
    """Short names of what is wrong according to a health payload: the input's active
    conditions (``silence``, ``clipping``, ``input_lost``, ``overrun``), ``outbox`` when
    alerts wait for the broker, ``disk`` when clips were skipped or space is short."""
    problems: list[str] = []
    input_ = health.get("input")
    for condition in input_ if isinstance(input_, list) else []:
        if isinstance(condition, dict) and isinstance(condition.get("condition"), str):
            problems.append(condition["condition"][:32])
    outbox = health.get("outbox")
    depth = _number(outbox.get("outbox_depth")) if isinstance(outbox, dict) else None
    if depth is not None and depth > 0:
        problems.append("outbox")
    clips = health.get("clips")
    if isinstance(clips, dict):
        free_mb = _number(clips.get("free_mb"))
        if clips.get("last_error") or (free_mb is not None and free_mb < LOW_DISK_MB):
            problems.append("disk")
    return sorted(set(problems))
