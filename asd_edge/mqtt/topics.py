"""The MQTT topics of one device and the JSON body of every message (see ARCHITECTURE.md)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..jsonvalues import json_safe
from .homeassistant import monitor_topic, status_topic

__all__ = ["Topics", "encode_json"]


class Topics:
    """The topics of one device, all under ``prefix`` (see ARCHITECTURE.md)."""

    FLEET_COMMANDS = ("model", "model/rollback")
    """The commands a fleet prefix carries (``asd-train push --all``)."""

    def __init__(self, prefix: str, fleet_prefix: str | None = None) -> None:
        self.prefix = prefix
        self.status = status_topic(prefix)
        self.alert, self.health, self.score = (
            f"{prefix}/alert",
            f"{prefix}/health",
            f"{prefix}/score",
        )
        self.model, self.command_result = f"{prefix}/model", f"{prefix}/cmd_result"
        self.learn = f"{prefix}/learn"
        """Retained: the progress of learning normal sound on the device."""
        self.commands = f"{prefix}/cmd/#"
        """Subscribed: every command topic."""
        self.fleet_commands = tuple(
            f"{fleet_prefix}/cmd/{name}" for name in self.FLEET_COMMANDS if fleet_prefix
        )
        """Subscribed too: the fleet-wide model commands."""

    def command_name(self, topic: str) -> str | None:
        """The command a message on ``topic`` carries (``ping``, ``model/rollback``...), or
        None when ``topic`` is not a command topic of this device or of its fleet."""
        own = self.commands[:-1]
        if topic.startswith(own):
            return topic[len(own) :]
        if topic in self.fleet_commands:
            return self.FLEET_COMMANDS[self.fleet_commands.index(topic)]
        return None

    def monitor(self, name: str) -> str:
        """``<prefix>/monitor/<name>``, retained state of one monitor."""
        return monitor_topic(self.prefix, _level(name, "monitor"))

    def live(self, name: str) -> str:
        """``<prefix>/live/<name>``: a monitor's live frames (QoS 0, not retained), only
        while a ``cmd/live`` lease runs (``asd_edge.live``)."""
        return f"{self.prefix}/live/{_level(name, 'monitor')}"

    def clip(self, alert_id: str) -> str:
        """``<prefix>/clip/<alert id>``, the clip's bytes (``mqtt.publish_clips``, or once
        on ``cmd/clip``)."""
        return f"{self.prefix}/clip/{_level(alert_id, 'alert_id')}"


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """Standard JSON (UTF-8, NaN as null, numpy scalars as numbers) for a message body.
    Text no UTF-8 can carry (a lone surrogate a client sent) is written as its escape
    (``\\ud800``) rather than refused: a message must never fail to encode."""
    return json.dumps(
        json_safe(dict(payload)),
        ensure_ascii=False,
        allow_nan=False,
        separators=(",", ":"),
    ).encode("utf-8", "backslashreplace")


def _level(name: str, what: str) -> str:
    """``name`` if it is usable as one topic level; ValueError otherwise."""
    if not name or any(c in name for c in "/+#\x00"):
        raise ValueError(f"{what}: expected a non-empty name without / + # or NUL, got {name!r}")
    return name
