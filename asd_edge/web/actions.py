"""What an authenticated user may ask a device to do from the dashboard, each through the
daemon's own MQTT command: roll a monitor back, learn its normal sound, mark an alert as a
false alarm, cancel a learning."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from ..config import Config
from ..modelstore import load_private_key, rollback_message
from .bridge import Bridge, BridgeError
from .fleet import Fleet

__all__ = ["ACTIONS", "Actions"]

ACTIONS: Final = ("rollback", "learn", "learn/cancel", "feedback")


class Actions:
    """Turns an action's JSON body into the daemon's command and returns its answer."""

    def __init__(self, config: Config, bridge: Bridge, fleet: Fleet) -> None:
        self.config = config
        self.bridge = bridge
        self.fleet = fleet
        key_file = config.web.signing_key_file
        self._key = load_private_key(key_file) if key_file is not None else None

    async def run(self, key: str, name: str, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, answer): the daemon's ``cmd_result`` (``ok``, ``error``, ``result``)."""
        prefix = self.fleet.prefix_of(key)
        if prefix is None:
            return 404, {"ok": False, "error": f"unknown device {key!r}"}
        monitor = body.get("monitor")
        if monitor is not None and not isinstance(monitor, str):
            return 400, {"ok": False, "error": "monitor: expected a name"}
        try:
            command, message = self._command(key, name, monitor, body)
        except ValueError as exc:
            return 400, {"ok": False, "error": str(exc)}
        try:
            answer = await self.bridge.request(prefix, command, message)
        except BridgeError as exc:
            return 504, {"ok": False, "error": str(exc)}
        return 200, {k: answer.get(k) for k in ("command", "id", "ok", "error", "result")}

    def _command(
        self, key: str, name: str, monitor: str | None, body: Mapping[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        if name == "rollback":
            message = rollback_message(
                request_id=self.bridge.new_id("rollback"),
                target=self.fleet.device_id(key),
                monitor=monitor,
                private_key=self._key,
            )
            return "model/rollback", message
        if name == "learn":
            seconds = body.get("seconds")
            if seconds is not None and (
                isinstance(seconds, bool)
                or not isinstance(seconds, int | float)
                or not math.isfinite(seconds)
            ):
                raise ValueError("seconds: expected a number")
            return "learn", {
                "monitor": monitor,
                "seconds": seconds,
                "append": bool(body.get("append")),
            }
        if name == "learn/cancel":
            return "learn", {"monitor": monitor, "cancel": True}
        if name == "feedback":
            alert_id = body.get("alert_id")
            if not isinstance(alert_id, str) or not alert_id:
                raise ValueError("alert_id: expected the alert's id")
            return "feedback", {"alert_id": alert_id, "verdict": "normal", "monitor": monitor}
        raise ValueError(f"unknown action {name!r}; expected one of {', '.join(ACTIONS)}")
