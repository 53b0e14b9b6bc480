"""The link thread: it owns the paho client and the outbox, and runs the select loop."""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import structlog
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from .. import __version__
from ..config import MqttConfig, OutboxConfig
from ..statedisk import RETRY_S, StateDisk
from .backlog import Backlog
from .client import BoundedClient, build_client
from .commands import CommandHandler, peek_id
from .connection import Connection
from .delivery import MAX_INFLIGHT, Delivery
from .messages import (
    Dialed,
    Discovery,
    LinkMessage,
    Live,
    ReleaseAlert,
    Retain,
    Score,
    Send,
    Stop,
    SubmitAlert,
)
from .topics import Topics, encode_json

__all__ = ["MAX_MESSAGE_BYTES", "WAKE_S", "LinkThread"]

log = structlog.get_logger()

MAX_MESSAGE_BYTES: Final = 1 << 20
"""The largest incoming message read whole when the caller sets none (``max_message_bytes``
gives the daemon's: its largest push)."""
WAKE_S: Final = 1.0
"""Longest sleep of the link thread (keep-alive and timers are checked at least this often)."""


class LinkThread:
    """The link thread: it owns the paho client (through Connection) and the outbox (Delivery).

    Work arrives as typed messages (``messages.LinkMessage``) through ``put`` (from
    any thread); everything else runs on the link thread. It drives paho's documented
    external-loop API (``loop_read``/``loop_write``/``loop_misc`` around its own
    ``select``) so that reconnects follow our jittered back-off, paho's callbacks run
    on this thread (no locks), and a queued message wakes it at once. Each connection
    attempt runs in a short-lived helper thread (see Connection).
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        device_id: str,
        topics: Topics,
        client_id: str,
        outbox_path: Path,
        outbox: OutboxConfig,
        on_command: CommandHandler | None,
        clock: Callable[[], float],
        seed: int | None,
        max_inflight: int = MAX_INFLIGHT,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        outbox_retry_s: float = RETRY_S,
        disk: StateDisk | None = None,
    ) -> None:
        self.config = config
        self.max_message_bytes = max_message_bytes
        self.device_id = device_id
        self.topics = topics
        self.client_id = client_id
        self.on_command = on_command
        self.backlog = Backlog(
            device_id=device_id,
            topic_prefix=topics.prefix,
            discovery_prefix=config.homeassistant.discovery_prefix,
        )
        self.delivery = Delivery(
            topic=topics.alert,
            outbox_path=outbox_path,
            outbox=outbox,
            clock=clock,
            max_inflight=max_inflight,
            retry_s=outbox_retry_s,
            disk=disk,
        )
        self.connection = Connection(
            config,
            client_id=client_id,
            clock=clock,
            seed=seed,
            report=lambda error: self.put(Dialed(error)),
        )
        self._clock = clock
        self._queue: queue.SimpleQueue[LinkMessage] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()
        self._client: Client | None = None
        # State of the link thread (only it writes these).
        self._stop_timeout_s = 5.0
        self._offline_mid: int | None = None
        self._counts = {"commands_received": 0, "commands_failed": 0, "messages_oversized": 0}

    # --- any thread -----------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """True once ``start`` has run the link thread."""
        return self._thread is not None

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the loss of that connection."""
        return self.connection.connected

    def start(self) -> None:
        """Build the client (ConfigError for unreadable credentials or TLS files) and start."""
        self._client = self._build_client()
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Ask the link thread to shut down and wait for it (see ``_shutdown``)."""
        thread = self._thread
        if thread is None:
            self._wake_r.close()
            self._wake_w.close()
            return
        self.put(Stop(timeout_s))
        if thread is not threading.current_thread():
            thread.join(timeout_s + 1.0)
            if thread.is_alive():
                log.error("mqtt_stop_timeout", timeout_s=timeout_s)

    def put(self, message: LinkMessage) -> None:
        """Queue one message and wake the link thread."""
        self._queue.put(message)
        with contextlib.suppress(OSError):  # full (the thread is awake anyway) or closed
            self._wake_w.send(b"\0")

    def held_alerts(self, timeout_s: float) -> list[tuple[str, str, dict[str, Any]]]:
        """(alert_id, phase, payload) a previous run left held, once the outbox is open."""
        return list(self.delivery.held_at_start) if self._wait_opened(timeout_s) else []

    def open_alerts(self, timeout_s: float) -> list[tuple[str, dict[str, Any]]]:
        """(alert_id, start payload) a previous run started and never ended, once the
        outbox is open."""
        return list(self.delivery.open_at_start) if self._wait_opened(timeout_s) else []

    def _wait_opened(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) for the link thread to open the outbox; False if
        the thread was never started."""
        if self._thread is None:
            return False
        self._opened.wait(timeout_s)
        return True

    def counts(self) -> dict[str, int]:
        """Every counter of the link: connection, commands, backlog and delivery."""
        return {
            **self.connection.counts,
            **self._counts,
            **self.backlog.counts,
            **self.delivery.counts,
        }

    # --- set-up ---------------------------------------------------------------------

    def _build_client(self) -> Client:
        if not self.config.enabled:  # never connects: no credentials or TLS files read
            client: Client = BoundedClient(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                max_packet_bytes=self.max_message_bytes,
            )
        else:
            client = build_client(
                self.config,
                client_id=self.client_id,
                will_topic=self.topics.status,
                will_payload=self._status("offline", reason="connection_lost"),
                max_packet_bytes=self.max_message_bytes,
            )
        self.connection.attach(client)
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _status(self, state: str, **extra: Any) -> bytes:
        return encode_json(
            {"state": state, "device_id": self.device_id, "version": __version__, **extra}
        )

    # --- the link thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.delivery.open()
        except Exception:  # supervisor boundary: the link must run even without its outbox
            log.exception("outbox_unavailable", path=str(self.delivery.outbox_path))
        finally:
            self._opened.set()
        self.delivery.ensure_open()
        while True:
            try:
                if self._step():
                    break
            except Exception:  # supervisor boundary: log, back off, go on
                log.exception("mqtt_link_error")
                time.sleep(WAKE_S)
        try:
            self._shutdown()
        finally:
            self.delivery.close()
            self._wake_r.close()
            self._wake_w.close()

    def _step(self) -> bool:
        """One turn: network I/O, queued work, connect or pump; True once asked to stop."""
        assert self._client is not None
        connection = self.connection
        self._network(connection.wait_s(self._clock(), WAKE_S))
        self._drain()
        if connection.stopping:
            return True
        self.delivery.maintain()  # an outbox in memory goes back to its file when it can
        connection.advance()
        if connection.just_connected:
            self._after_connect()
        if connection.connected:
            self.backlog.flush(self._client)
            self.delivery.pump(self._client)
        return False

    def _network(self, wait_s: float) -> None:
        """Wait for the socket or a wake-up for at most ``wait_s``, then let paho work."""
        assert self._client is not None
        client = self._client
        sock = None if self.connection.phase == "dialing" else client.socket()  # dialer owns it
        readers: list[Any] = [self._wake_r]
        writers: list[Any] = []
        tls_pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        if sock is not None:
            readers.append(sock)
            if client.want_write():
                writers.append(sock)
        try:
            readable, writable, _ = select.select(
                readers, writers, [], 0 if tls_pending else wait_s
            )
        except (OSError, ValueError):
            readable, writable = [], []
        if self._wake_r in readable:
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
        if sock is not None:
            if sock in readable or tls_pending:
                client.loop_read()
            if client.socket() is sock and sock in writable:
                client.loop_write()
            if client.socket() is sock:
                client.loop_misc()
        if sock is not None and client.socket() is None and self.connection.phase != "idle":
            self.connection.lost("connection closed")

    def _after_connect(self) -> None:
        """Status online, subscriptions, then every retained state again (the broker may be new)."""
        assert self._client is not None
        self.connection.just_connected = False
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._client.publish(self.topics.status, self._status("online", since=since), 1, True)
        subscriptions = [(self.topics.commands, 1)]
        subscriptions += [(topic, 1) for topic in self.topics.fleet_commands]
        if self.config.homeassistant.enabled:
            subscriptions.append((f"{self.config.homeassistant.discovery_prefix}/status", 1))
        self._client.subscribe(subscriptions)
        self.backlog.reconnected()
        self.delivery.replay()

    def _drain(self) -> None:
        """Apply everything queued by the API methods."""
        while True:
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                return
            live = self._client if self.connection.connected else None
            match message:
                case SubmitAlert(alert_id, phase, body, held, at_s):
                    self.delivery.store(alert_id, phase, body, held, at_s)
                case ReleaseAlert(alert_id, phase, body, at_s):
                    self.delivery.release(alert_id, phase, body, at_s)
                case Retain(topic, body):
                    self.backlog.retain(topic, body)
                case Score(body):
                    self.backlog.score(live, self.topics.score, body)
                case Live(topic, body):
                    self.backlog.score(live, topic, body, "live_dropped")
                case Send(topic, body, kind):  # now, or kept (bounded) until connected
                    self.backlog.send(live, topic, body, kind)
                case Discovery(monitors, model_names):
                    self.backlog.set_discovery(monitors, model_names)
                case Dialed(error):
                    self.connection.dialed(error)
                case Stop(timeout_s):
                    self.connection.stopping, self._stop_timeout_s = True, timeout_s

    def _on_publish(self, _c: Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        if mid == self._offline_mid:
            self._offline_mid = None
        self.delivery.acknowledged(mid, reason)

    def _on_message(self, client: Client, _u: Any, message: MQTTMessage) -> None:
        topic = message.topic
        command = self.topics.command_name(topic)
        oversized = getattr(client, "oversized", None)
        if oversized is not None:  # cut while it arrived: refuse it (paho acknowledges it)
            self._refuse_oversized(topic, command, bytes(message.payload), oversized)
            return
        if command is not None and self.on_command is not None:
            self._counts["commands_received"] += 1
            try:
                self.on_command(command, bytes(message.payload), bool(message.retain))
            except Exception as exc:  # a handler's error must not reach paho
                self._counts["commands_failed"] += 1
                log.error(
                    "command_rejected",
                    command=command[:64],
                    reason=f"{type(exc).__name__}: {exc}",
                )
        elif (
            topic == f"{self.config.homeassistant.discovery_prefix}/status"
            and message.payload == b"online"
        ):
            self.backlog.rediscover()

    def _refuse_oversized(self, topic: str, command: str | None, head: bytes, size: int) -> None:
        """An incoming message larger than ``max_message_bytes``: counted, logged, answered
        on ``cmd_result`` when it was a command; it is never run nor delivered again."""
        self._counts["messages_oversized"] += 1
        reason = (
            f"too large: {size} bytes, more than the {self.max_message_bytes} this device "
            "reads (push.max_mb sets the largest push)"
        )
        log.warning("message_oversized", topic=topic[:128], size=size, limit=self.max_message_bytes)
        if command is None:
            return
        answer = {"command": command[:64], "id": peek_id(head), "ok": False, "error": reason}
        live = self._client if self.connection.connected else None
        self.backlog.send(live, self.topics.command_result, encode_json(answer), "replies")

    def _shutdown(self) -> None:
        """Status offline (retained), wait for it and the alerts in flight, then disconnect."""
        client = self._client
        deadline = self._clock() + self._stop_timeout_s
        dial = self.connection.dial
        if dial is not None:  # let a running attempt finish, then close what it opened
            dial.join(max(0.0, deadline - self._clock()))
        if client is None or not self.connection.connected:
            if client is not None and not (dial and dial.is_alive()) and client.socket():
                client.disconnect()  # CONNECT was sent: a DISCONNECT keeps the will unsent
            return
        # What was handed over just before the stop (the end alert of an event that
        # shutdown closed, its clip) goes out before the offline status.
        self.backlog.flush(client)
        self.delivery.pump(client)
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        info = client.publish(
            self.topics.status, self._status("offline", since=since, reason="stopped"), 1, True
        )
        self._offline_mid = info.mid
        while self.connection.connected and (
            self._offline_mid is not None or self.delivery.in_flight
        ):
            left = deadline - self._clock()
            if left <= 0:
                log.warning(
                    "mqtt_stop_unacknowledged",
                    alerts_in_flight=self.delivery.in_flight,
                    status_acked=self._offline_mid is None,
                )
                break
            self._network(min(left, WAKE_S))
            self.delivery.pump(client)  # more ready rows than fit in flight at once
        if client.socket() is not None:
            client.disconnect()
            self._network(0)
