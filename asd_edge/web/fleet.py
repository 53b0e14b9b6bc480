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
MAX_PAYLOAD_BYTES: Final = 256 * 1024
"""Largest state message read; a bigger one is dropped and counted (clips arrive apart)."""
LOW_DISK_MB: Final = 200.0
"""Free space on the clips' filesystem below which the fleet page says ``disk``."""
MAX_MONITORS: Final = 64
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
    live: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The newest ``live/<monitor>`` frame of each monitor."""
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
        self.dropped = {"oversized": 0, "malformed": 0, "devices": 0}

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

    def alert(self, key: str, alert_id: str) -> dict[str, Any] | None:
        with self._lock:
            device = self._devices.get(key)
            found = device.alerts.get(alert_id) if device is not None else None
            return dict(found) if found is not None else None

    def snapshot(self) -> list[Device]:
        """Copies of every device (for the metrics)."""
        with self._lock:
            return [
                Device(
                    key=d.key,
                    prefix=d.prefix,
                    status=d.status,
                    health=d.health,
                    model=d.model,
                    learn=d.learn,
                    monitors=dict(d.monitors),
                    received_at=dict(d.received_at),
                )
                for d in self._devices.values()
            ]

    # --- writing -------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> None:
        """Fold in one message; never raises (a bad message is dropped and counted)."""
        where = self._split(topic)
        if where is None:
            return
        prefix, kind, name = where
        if len(payload) > MAX_PAYLOAD_BYTES:
            self.dropped["oversized"] += 1
            log.warning("web_message_dropped", topic=topic[:200], bytes=len(payload), why="size")
            return
        if not payload:  # a retained message cleared
            self._clear(prefix, kind, name)
            return
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            body = None
        if not isinstance(body, dict):
            self.dropped["malformed"] += 1
            log.warning("web_message_dropped", topic=topic[:200], why="not a JSON object")
            return
        key = prefix.rpartition("/")[2]
        with self._lock:
            device = self._devices.get(key)
            if device is None:
                if len(self._devices) >= MAX_DEVICES:
                    self.dropped["devices"] += 1
                    return
                device = self._devices[key] = Device(key=key, prefix=prefix)
            if not self._fold(device, kind, name, body):
                return
            device.received_at[kind] = self._wall()
        if self.on_update is not None:
            self.on_update((key, kind, body))

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

    def _fold(self, device: Device, kind: str, name: str | None, body: dict[str, Any]) -> bool:
        if kind in _STATE_TOPICS:
            setattr(device, kind, body)
        elif kind in ("monitor", "live") and name is not None:
            table = device.monitors if kind == "monitor" else device.live
            if name not in table and len(table) >= MAX_MONITORS:
                return False
            body.setdefault("monitor", name)
            table[name] = body
        elif kind == "alert":
            alert_id = body.get("id")
            if not isinstance(alert_id, str) or not alert_id:
                return False
            merged = {**device.alerts.pop(alert_id, {}), **body}
            device.alerts[alert_id] = merged
            while len(device.alerts) > MAX_ALERTS:
                device.alerts.popitem(last=False)
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
            elif kind == "monitor" and name is not None:
                device.monitors.pop(name, None)


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
