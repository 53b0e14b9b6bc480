"""The MQTT link: alerts via the durable outbox at QoS 1, retained state, discovery, commands."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import structlog

from ..config import MqttConfig, OutboxConfig
from ..statedisk import RETRY_S, StateDisk
from .commands import CommandHandler, CommandRouter
from .delivery import MAX_INFLIGHT
from .messages import (
    Discovery,
    LinkMessage,
    Live,
    ReleaseAlert,
    Retain,
    Score,
    Send,
    SubmitAlert,
)
from .thread import MAX_MESSAGE_BYTES, LinkThread
from .topics import Topics, encode_json

__all__ = ["MqttLink"]

log = structlog.get_logger()

_COUNTERS: Final = (
    "connects",
    "disconnects",
    "connect_failures",
    "published",
    "acked",
    "refused",
    "scores_dropped",
    "live_dropped",
    "clips_dropped",
    "replies_dropped",
    "commands_received",
    "commands_failed",
    "messages_oversized",
    "outbox_depth",
    "dropped_rows",
    "dropped_age",
)
"""The counters in stats(), in this order."""
_KINDS: Final = {
    SubmitAlert: "alert",
    ReleaseAlert: "release",
    Retain: "retain",
    Score: "score",
    Live: "live",
    Send: "send",
    Discovery: "discovery",
}
"""What a dropped message is called in the log (as before the messages were typed)."""


class MqttLink:
    """One broker connection, owned by one thread that also owns the outbox.

    Every public method returns at once (it only queues work for the link thread)
    and may be called from any thread. The link thread (``thread.LinkThread``)
    runs paho's documented external-loop API (``loop_read``/``loop_write``/
    ``loop_misc`` around its own ``select``) so that reconnects follow our jittered
    back-off (``connection.Connection``), paho's callbacks (``on_command`` included)
    run on the same thread as the outbox (``delivery.Delivery``, no locks), and a
    submitted alert wakes the thread at once instead of waiting for a poll. Each
    connection attempt runs in a short-lived helper thread, since DNS, TCP and TLS
    can block for seconds, during which alerts must still reach the disk. Retained
    state, discovery, clips and replies wait for a connection in ``backlog.Backlog``.

    The outbox is ``outbox.OutboxStorage``: while the disk refuses its file (read-only,
    full) alerts are kept and delivered from memory, ``stats`` says so
    (``outbox_storage``: ``file`` or ``memory``, ``outbox_reason``), ``disk`` (the
    daemon's ``StateDisk``) is told, and every ``outbox_retry_s`` the file is tried again.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        device_id: str,
        outbox_path: Path,
        outbox: OutboxConfig,
        on_command: CommandHandler | None = None,
        fleet_prefix: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
        max_inflight: int = MAX_INFLIGHT,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        outbox_retry_s: float = RETRY_S,
        disk: StateDisk | None = None,
    ) -> None:
        self.config = config
        self.device_id = device_id
        self.topics = Topics(config.topic_prefix or f"asd/{device_id}", fleet_prefix)
        self.client_id = config.client_id or f"asd-edge-{device_id}"
        self.outbox_path = Path(outbox_path)
        self.outbox_config = outbox
        self.max_inflight = max_inflight
        self._clock = clock
        self._stopped = False
        self._score_sent_s: dict[str, float] = {}
        self._link_thread = LinkThread(
            config,
            device_id=device_id,
            topics=self.topics,
            client_id=self.client_id,
            outbox_path=self.outbox_path,
            outbox=outbox,
            on_command=on_command,
            clock=clock,
            seed=seed,
            max_inflight=max_inflight,
            max_message_bytes=max_message_bytes,
            outbox_retry_s=outbox_retry_s,
            disk=disk,
        )

    @property
    def on_command(self) -> CommandHandler | None:
        """Called on the link thread with (command, payload, retained) for each
        <prefix>/cmd/<command> (``retained``: the broker replayed a retained message)."""
        return self._link_thread.on_command

    @on_command.setter
    def on_command(self, handler: CommandHandler | None) -> None:
        self._link_thread.on_command = handler

    # --- the API (any thread) -----------------------------------------------------------

    def start(self) -> None:
        """Open the connection in the background and return at once.

        Raises ConfigError for credentials or TLS files that cannot be read.
        """
        if self._link_thread.started:
            return
        self._link_thread.start()  # with mqtt.enabled false too: it never dials, but keeps
        # the outbox, so that alerts wait there until MQTT is enabled

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publish status offline, wait up to ``timeout_s`` for acks, disconnect cleanly.

        Alerts not acknowledged by then stay in the outbox for the next start.
        """
        self._stopped = True
        self._link_thread.stop(timeout_s)

    def submit_alert(
        self, alert_id: str, payload: Mapping[str, Any], *, phase: str, held: bool = False
    ) -> None:
        """Store one alert phase durably, then publish it (QoS 1) unless ``held``."""
        body = dict(payload)
        if body.setdefault("id", alert_id) != alert_id:
            raise ValueError(f"payload id {body['id']!r} differs from alert_id {alert_id!r}")
        body.setdefault("phase", phase)
        self._put(SubmitAlert(alert_id, phase, encode_json(body), held, self._clock()))

    def release_alert(self, alert_id: str, phase: str, payload: Mapping[str, Any]) -> None:
        """Publish a held alert phase with its final payload."""
        body = {"id": alert_id, "phase": phase, **dict(payload)}
        self._put(ReleaseAlert(alert_id, phase, encode_json(body), self._clock()))

    def held_alerts(self, timeout_s: float = 5.0) -> list[tuple[str, str, dict[str, Any]]]:
        """(alert_id, phase, payload) of the alerts a previous run left held, after start."""
        return self._link_thread.held_alerts(timeout_s)

    def open_alerts(self, timeout_s: float = 5.0) -> list[tuple[str, dict[str, Any]]]:
        """(alert_id, start payload) of the alerts a previous run started and never ended
        (it was killed meanwhile), after start."""
        return self._link_thread.open_alerts(timeout_s)

    def publish_health(self, payload: Mapping[str, Any]) -> None:
        """Retained QoS 1 on <prefix>/health; offline, only the latest is kept and sent later."""
        self._put(Retain(self.topics.health, encode_json(payload)))

    def publish_model(self, payload: Mapping[str, Any]) -> None:
        """Retained QoS 1 on <prefix>/model (the active model per monitor)."""
        self._put(Retain(self.topics.model, encode_json(payload)))

    def publish_learn(self, payload: Mapping[str, Any]) -> None:
        """Retained QoS 1 on <prefix>/learn: the progress of learning normal sound."""
        self._put(Retain(self.topics.learn, encode_json(payload)))

    def publish_monitor_state(self, monitor: str, payload: Mapping[str, Any]) -> None:
        """Retained QoS 1 on <prefix>/monitor/<name>: anomaly, score, level_dbfs, at."""
        self._put(Retain(self.topics.monitor(monitor), encode_json(payload)))

    def publish_score(self, monitor: str, payload: Mapping[str, Any]) -> None:
        """QoS 0 on <prefix>/score if enabled, at most one per monitor per score_interval_s."""
        if not self.config.publish_scores:
            return
        now = self._clock()
        last = self._score_sent_s.get(monitor)
        if last is not None and now - last < self.config.score_interval_s:
            return
        self._score_sent_s[monitor] = now
        self._put(Score(encode_json({"monitor": monitor, **dict(payload)})))

    def publish_live(self, monitor: str, payload: Mapping[str, Any]) -> None:
        """QoS 0, not retained, on <prefix>/live/<monitor> (a ``cmd/live`` frame): sent now
        if connected, else dropped and counted in ``live_dropped``; never in the outbox."""
        self._put(Live(self.topics.live(monitor), encode_json(payload)))

    def send_clip(self, alert_id: str, data: bytes) -> str:
        """Queue a clip asked for by ``cmd/clip`` on <prefix>/clip/<alert_id> (QoS 1),
        whatever ``publish_clips`` says (the caller checked ``clip_max_mb``); returns the
        topic."""
        topic = self.topics.clip(alert_id)
        self._put(Send(topic, bytes(data), "clips"))
        return topic

    def publish_clip(self, alert_id: str, data: bytes) -> bool:
        """Queue a clip for <prefix>/clip/<alert_id> (QoS 1); False if disabled or too large."""
        if not self.config.publish_clips or len(data) > self.config.clip_max_mb * 1e6:
            return False
        self._put(Send(self.topics.clip(alert_id), bytes(data), "clips"))
        return True

    def publish_command_result(self, payload: Mapping[str, Any]) -> None:
        """QoS 1 on <prefix>/cmd_result: {"command", "id", "ok", "error"}."""
        self._put(Send(self.topics.command_result, encode_json(payload), "replies"))

    def set_discovery(
        self, monitors: Sequence[str], *, model_names: Mapping[str, str] | None = None
    ) -> None:
        """Publish Home Assistant discovery for these monitors now and on every (re)connect."""
        if self.config.homeassistant.enabled:
            self._put(Discovery(list(monitors), dict(model_names or {})))

    def offer_learning(self, default_s: float) -> None:
        """Before ``start``: discovery adds a "learn normal sound" button per monitor
        (``cmd/learn`` for ``default_s`` seconds) and the learning state sensor."""
        self._link_thread.backlog.learn_s = default_s

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the loss of that connection."""
        return self._link_thread.connected

    def stats(self) -> dict[str, Any]:
        """Counters for the health message and the logs."""
        counts = self._link_thread.counts()
        rejected = counts["commands_failed"]
        if isinstance(self.on_command, CommandRouter):
            rejected += self.on_command.rejected
        storage = self._link_thread.delivery.storage
        return {
            "connected": self._link_thread.connected,
            **{name: counts[name] for name in _COUNTERS},
            "commands_rejected": rejected,
            "last_ack_latency_s": self._link_thread.delivery.last_ack_latency_s,
            "outbox_storage": storage.storage,
            "outbox_reason": storage.reason,
        }

    def _put(self, message: LinkMessage) -> None:
        if self._stopped:
            log.warning("mqtt_link_stopped", dropped=_KINDS[type(message)])
            return
        self._link_thread.put(message)
