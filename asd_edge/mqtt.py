"""The MQTT link: alerts via the durable outbox at QoS 1, retained state, discovery, commands."""

from __future__ import annotations

import contextlib
import json
import queue
import random
import select
import socket
import sqlite3
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import structlog
from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage, MQTTv5, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from . import __version__
from .commands import CommandRouter
from .config import MqttConfig, OutboxConfig
from .errors import ConfigError
from .homeassistant import discovery_messages, monitor_topic, status_topic
from .logs import json_safe
from .outbox import MEMORY, Outbox, OutboxError

__all__ = ["MAX_INFLIGHT", "Backoff", "MqttLink", "Topics", "encode_json"]

log = structlog.get_logger()

MAX_INFLIGHT: Final = 10
"""Alerts handed to the broker and not yet acknowledged, at most."""
CONNACK_TIMEOUT_S: Final = 10.0
"""A connection whose CONNACK has not come after this long is dropped and retried."""
STABLE_S: Final = 10.0
"""A connection that lasted this long resets the reconnect back-off."""
WAKE_S: Final = 1.0
"""Longest sleep of the link thread (keep-alive and timers are checked at least this often)."""
SESSION_EXPIRY_S: Final = 86400
"""MQTT 5: how long the broker keeps the session (subscriptions, queued commands) offline."""
CLIP_BACKLOG: Final = 4
"""Clips kept in memory while offline; the oldest beyond this are dropped and counted."""
REPLY_BACKLOG: Final = 100
"""Command replies kept while offline."""


class Topics:
    """The topics of one device, all under ``prefix`` (see ARCHITECTURE.md)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.status = status_topic(prefix)
        self.alert, self.health, self.score = (
            f"{prefix}/alert",
            f"{prefix}/health",
            f"{prefix}/score",
        )
        self.model, self.command_result = f"{prefix}/model", f"{prefix}/cmd_result"
        self.commands = f"{prefix}/cmd/#"
        """Subscribed: every command topic."""

    def monitor(self, name: str) -> str:
        """``<prefix>/monitor/<name>``, retained state of one monitor."""
        return monitor_topic(self.prefix, _level(name, "monitor"))

    def clip(self, alert_id: str) -> str:
        """``<prefix>/clip/<alert id>``, the clip's bytes."""
        return f"{self.prefix}/clip/{_level(alert_id, 'alert_id')}"


class Backoff:
    """Capped, jittered, doubling delays: attempt k waits in [max(lo, hi/2), hi], hi=lo*2^(k+1)."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random) -> None:
        self.min_s, self.max_s, self._rng, self._attempt = min_s, max(min_s, max_s), rng, 0

    def next(self) -> float:
        """The delay before the next attempt, in seconds, within [min_s, max_s]."""
        high = min(self.max_s, self.min_s * 2.0 ** min(self._attempt + 1, 60))
        self._attempt += 1
        return self._rng.uniform(max(self.min_s, high / 2.0), high)

    def reset(self) -> None:
        """Start again from min_s (after a connection that held)."""
        self._attempt = 0


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """Standard JSON (UTF-8, NaN as null, numpy scalars as numbers) for a message body."""
    return json.dumps(
        json_safe(dict(payload)),
        ensure_ascii=False,
        allow_nan=False,
        separators=(",", ":"),
        default=_plain,
    ).encode("utf-8")


@dataclass(frozen=True, slots=True)
class _Flight:
    rowid: int
    alert_id: str
    phase: str
    since_s: float


class MqttLink:
    """One broker connection, owned by one thread that also owns the outbox.

    Every public method returns at once (it only queues work for the link thread)
    and may be called from any thread. The link thread runs paho's documented
    external-loop API (``loop_read``/``loop_write``/``loop_misc`` around its own
    ``select``) so that reconnects follow our jittered back-off, paho's callbacks
    (``on_command`` included) run on the same thread as the outbox (no locks), and
    a submitted alert wakes the thread at once instead of waiting for a poll. Each
    connection attempt runs in a short-lived helper thread, since DNS, TCP and TLS
    can block for seconds, during which alerts must still reach the disk.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        device_id: str,
        outbox_path: Path,
        outbox: OutboxConfig,
        on_command: Callable[[str, bytes], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
        max_inflight: int = MAX_INFLIGHT,
    ) -> None:
        self.config = config
        self.device_id = device_id
        self.topics = Topics(config.topic_prefix or f"asd/{device_id}")
        self.client_id = config.client_id or f"asd-edge-{device_id}"
        self.outbox_path = Path(outbox_path)
        self.outbox_config = outbox
        self.on_command = on_command
        self.max_inflight = max_inflight
        self._clock = clock
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s, random.Random(seed))
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._opened = threading.Event()
        self._client: Client | None = None
        self._outbox: Outbox | None = None
        self._held_at_start: list[tuple[str, str, dict[str, Any]]] = []
        self._score_sent_s: dict[str, float] = {}
        # State of the link thread (only it writes these).
        self._phase = "idle"  # idle | dialing | connecting | connected
        self._dial: threading.Thread | None = None
        self._connected = False
        self._stopping = False
        self._stop_timeout_s = 5.0
        self._just_connected = False
        self._next_attempt_s = 0.0
        self._attempt_s = 0.0
        self._connected_s = 0.0
        self._inflight: dict[int, _Flight] = {}
        self._sent: set[int] = set()
        self._refused: set[int] = set()
        self._cursor = 0
        self._submitted_s: dict[int, float] = {}
        self._unstored: deque[tuple[str, bytes]] = deque(maxlen=outbox.max_rows)
        self._retained: dict[str, bytes] = {}
        self._dirty: set[str] = set()
        self._backlog: dict[str, deque[tuple[str, bytes]]] = {
            "clips": deque(maxlen=CLIP_BACKLOG),
            "replies": deque(maxlen=REPLY_BACKLOG),
        }
        self._discovery: tuple[list[str], dict[str, str]] | None = None
        self._discovery_topics: set[str] = set()
        self._offline_mid: int | None = None
        counters = "connects disconnects connect_failures published acked refused scores_dropped"
        counters += " clips_dropped replies_dropped commands_received commands_failed"
        counters += " outbox_depth dropped_rows dropped_age"
        self._counts = dict.fromkeys(counters.split(), 0)
        self._last_ack_latency_s: float | None = None

    # --- the API (any thread) -----------------------------------------------------------

    def start(self) -> None:
        """Open the connection in the background and return at once.

        Raises ConfigError for credentials or TLS files that cannot be read.
        """
        if self._thread is not None or not self.config.enabled:
            return
        self._client = self._build_client()
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publish status offline, wait up to ``timeout_s`` for acks, disconnect cleanly.

        Alerts not acknowledged by then stay in the outbox for the next start.
        """
        thread, self._stopped = self._thread, True
        if thread is None:
            self._wake_r.close()
            self._wake_w.close()
            return
        self._put(("stop", timeout_s))
        if thread is not threading.current_thread():
            thread.join(timeout_s + 1.0)
            if thread.is_alive():
                log.error("mqtt_stop_timeout", timeout_s=timeout_s)

    def submit_alert(
        self, alert_id: str, payload: Mapping[str, Any], *, phase: str, held: bool = False
    ) -> None:
        """Store one alert phase durably, then publish it (QoS 1) unless ``held``."""
        body = dict(payload)
        if body.setdefault("id", alert_id) != alert_id:
            raise ValueError(f"payload id {body['id']!r} differs from alert_id {alert_id!r}")
        body.setdefault("phase", phase)
        self._put(("alert", alert_id, phase, encode_json(body), held, self._clock()))

    def release_alert(self, alert_id: str, phase: str, payload: Mapping[str, Any]) -> None:
        """Publish a held alert phase with its final payload."""
        body = {"id": alert_id, "phase": phase, **dict(payload)}
        self._put(("release", alert_id, phase, encode_json(body), self._clock()))

    def held_alerts(self, timeout_s: float = 5.0) -> list[tuple[str, str, dict[str, Any]]]:
        """(alert_id, phase, payload) of the alerts a previous run left held, after start."""
        if self._thread is None:
            return []
        self._opened.wait(timeout_s)
        return list(self._held_at_start)

    def publish_health(self, payload: Mapping[str, Any]) -> None:
        """Retained QoS 1 on <prefix>/health; offline, only the latest is kept and sent later."""
        self._put(("retain", self.topics.health, encode_json(payload)))

    def publish_model(self, payload: Mapping[str, Any]) -> None:
        """Retained QoS 1 on <prefix>/model (the active model per monitor)."""
        self._put(("retain", self.topics.model, encode_json(payload)))

    def publish_monitor_state(self, monitor: str, payload: Mapping[str, Any]) -> None:
        """Retained QoS 1 on <prefix>/monitor/<name>: anomaly, score, level_dbfs, at."""
        self._put(("retain", self.topics.monitor(monitor), encode_json(payload)))

    def publish_score(self, monitor: str, payload: Mapping[str, Any]) -> None:
        """QoS 0 on <prefix>/score if enabled, at most one per monitor per score_interval_s."""
        if not self.config.publish_scores:
            return
        now = self._clock()
        last = self._score_sent_s.get(monitor)
        if last is not None and now - last < self.config.score_interval_s:
            return
        self._score_sent_s[monitor] = now
        self._put(("score", encode_json({"monitor": monitor, **dict(payload)})))

    def publish_clip(self, alert_id: str, data: bytes) -> bool:
        """Queue a clip for <prefix>/clip/<alert_id> (QoS 1); False if disabled or too large."""
        if not self.config.publish_clips or len(data) > self.config.clip_max_mb * 1e6:
            return False
        self._put(("send", self.topics.clip(alert_id), bytes(data), "clips"))
        return True

    def publish_command_result(self, payload: Mapping[str, Any]) -> None:
        """QoS 1 on <prefix>/cmd_result: {"command", "id", "ok", "error"}."""
        self._put(("send", self.topics.command_result, encode_json(payload), "replies"))

    def set_discovery(
        self, monitors: Sequence[str], *, model_names: Mapping[str, str] | None = None
    ) -> None:
        """Publish Home Assistant discovery for these monitors now and on every (re)connect."""
        if self.config.homeassistant.enabled:
            self._put(("discovery", list(monitors), dict(model_names or {})))

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the loss of that connection."""
        return self._connected

    def stats(self) -> dict[str, Any]:
        """Counters for the health message and the logs."""
        rejected = self._counts["commands_failed"]
        if isinstance(self.on_command, CommandRouter):
            rejected += self.on_command.rejected
        return {
            "connected": self._connected,
            **self._counts,
            "commands_rejected": rejected,
            "last_ack_latency_s": self._last_ack_latency_s,
        }

    def _put(self, item: tuple[Any, ...], *, internal: bool = False) -> None:
        if not self.config.enabled:
            return
        if self._stopped and not internal and item[0] != "stop":
            log.warning("mqtt_link_stopped", dropped=item[0])
            return
        self._queue.put(item)
        with contextlib.suppress(OSError):  # full (the thread is awake anyway) or closed
            self._wake_w.send(b"\0")

    # --- set-up ---------------------------------------------------------------------

    def _build_client(self) -> Client:
        cfg = self.config
        v5 = cfg.protocol == "5"
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTv5 if v5 else MQTTv311,
            clean_session=None if v5 else False,
        )
        client.will_set(
            self.topics.status,
            self._status("offline", reason="connection_lost"),
            qos=1,
            retain=True,
        )
        password = cfg.password
        if cfg.password_file is not None:
            password = _read_password(cfg.password_file)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, password)
        elif password is not None:
            raise ConfigError("mqtt.username: expected a user name to go with the password")
        if cfg.tls.enabled:
            client.tls_set_context(_tls_context(cfg))
            client.tls_insecure_set(cfg.tls.insecure)
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
        client.connect_async(
            cfg.host, cfg.port, cfg.keepalive_s, clean_start=False, properties=properties
        )
        client.on_socket_open = _no_delay
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
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
            self._open_outbox()
        except Exception:  # supervisor boundary: the link must run even without its outbox
            log.exception("outbox_unavailable", path=str(self.outbox_path), fallback="memory")
        finally:
            self._opened.set()
        if self._outbox is None:
            self._outbox = self._memory_outbox()
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
            if self._outbox is not None:
                self._outbox.close()
            self._wake_r.close()
            self._wake_w.close()

    def _open_outbox(self) -> None:
        max_rows, max_age_s = self.outbox_config.max_rows, self.outbox_config.max_age_days * 86400
        try:
            self._outbox = Outbox(self.outbox_path, max_rows=max_rows, max_age_s=max_age_s)
        except (OutboxError, sqlite3.Error) as exc:
            log.error(
                "outbox_unavailable", path=str(self.outbox_path), error=str(exc), fallback="memory"
            )
            self._outbox = self._memory_outbox()
        for row in self._outbox.held():
            try:
                body = json.loads(row.payload)
            except ValueError as exc:
                log.error("outbox_row_unreadable", alert_id=row.alert_id, error=str(exc))
                continue
            self._held_at_start.append((row.alert_id, row.key, body))
        self._refresh_counts()

    def _memory_outbox(self) -> Outbox:
        """The fallback when the file cannot be used: alerts kept while the process lives."""
        config = self.outbox_config
        return Outbox(MEMORY, max_rows=config.max_rows, max_age_s=config.max_age_days * 86400)

    def _step(self) -> bool:
        """One turn: network I/O, queued work, connect or pump; True once asked to stop."""
        assert self._client is not None
        now = self._clock()
        wait_s = WAKE_S
        if self._phase == "idle":
            wait_s = min(WAKE_S, max(0.0, self._next_attempt_s - now))
        self._network(wait_s)
        self._drain()
        if self._stopping:
            return True
        now = self._clock()
        if self._phase == "idle" and now >= self._next_attempt_s:
            self._connect()
        elif self._phase == "connecting" and now - self._attempt_s > CONNACK_TIMEOUT_S:
            self._failed(f"no CONNACK within {CONNACK_TIMEOUT_S:g} s")
            self._client.disconnect()
        if self._just_connected:
            self._after_connect()
        if self._connected:
            self._flush()
            self._pump()
        return False

    def _network(self, wait_s: float) -> None:
        """Wait for the socket or a wake-up for at most ``wait_s``, then let paho work."""
        assert self._client is not None
        client = self._client
        sock = None if self._phase == "dialing" else client.socket()  # the dialer owns it
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
        if sock is not None and client.socket() is None and self._phase != "idle":
            self._lost("connection closed")

    def _connect(self) -> None:
        """Dial in a helper thread (DNS, TCP, TLS may block for seconds) while this one
        keeps storing alerts; the helper reports back through the queue."""
        self._phase = "dialing"
        self._dial = threading.Thread(target=self._dial_broker, name="mqtt-dial", daemon=True)
        self._dial.start()

    def _dial_broker(self) -> None:
        """In the helper thread: open the socket and send CONNECT; nothing else touches the
        client meanwhile."""
        assert self._client is not None
        error = None
        try:
            self._client.reconnect()
        except (OSError, ValueError) as exc:
            error = str(exc) or type(exc).__name__
        except Exception as exc:  # reported, never lost with the thread
            error = f"{type(exc).__name__}: {exc}"
        self._put(("dialed", error), internal=True)

    def _dialed(self, error: str | None) -> None:
        """The helper thread is done: the attempt failed, or CONNACK is now awaited."""
        assert self._client is not None
        self._dial = None
        if error is None and self._client.socket() is None:
            error = "connection closed while connecting"
        self._phase, self._attempt_s = "connecting", self._clock()
        if error is not None:
            self._failed(error)

    def _failed(self, error: str) -> None:
        """A connection attempt failed: back off and say so."""
        self._phase = "idle"
        self._counts["connect_failures"] += 1
        delay = self._backoff.next()
        self._next_attempt_s = self._clock() + delay
        log.warning(
            "mqtt_connect_failed",
            host=self.config.host,
            port=self.config.port,
            error=error,
            retry_in_s=round(delay, 3),
        )

    def _on_connect(
        self, _c: Client, _u: Any, flags: ConnectFlags, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            self._phase = "idle"
            self._counts["connect_failures"] += 1
            delay = self._backoff.next()
            self._next_attempt_s = self._clock() + delay
            log.error(
                "mqtt_connect_refused",
                host=self.config.host,
                port=self.config.port,
                username=self.config.username,
                reason=str(reason),
                retry_in_s=round(delay, 3),
            )
            return
        self._phase, self._connected, self._just_connected = "connected", True, True
        self._connected_s = self._clock()
        self._counts["connects"] += 1
        log.info(
            "mqtt_connected",
            host=self.config.host,
            port=self.config.port,
            client_id=self.client_id,
            protocol=self.config.protocol,
            session_present=flags.session_present,
        )

    def _on_disconnect(
        self, _c: Client, _u: Any, _f: DisconnectFlags, reason: ReasonCode, _p: Any
    ) -> None:
        self._lost(str(reason))

    def _lost(self, reason: str) -> None:
        """The socket is gone: while connecting, a failed attempt; while connected, a drop."""
        if self._phase == "dialing":
            return  # called from the dialer thread: its own failure comes back as "dialed"
        was, self._phase, self._connected = self._phase, "idle", False
        if was == "connecting":
            self._failed(f"connection closed before CONNACK: {reason}")
        elif was == "connected":
            self._counts["disconnects"] += 1
            if self._stopping:
                log.info("mqtt_disconnected", reason="stopped")
                return
            if self._clock() - self._connected_s >= STABLE_S:
                self._backoff.reset()
            delay = self._backoff.next()
            self._next_attempt_s = self._clock() + delay
            log.warning("mqtt_disconnected", reason=reason, retry_in_s=round(delay, 3))

    def _after_connect(self) -> None:
        """Status online, subscriptions, then every retained state again (the broker may be new)."""
        assert self._client is not None and self._outbox is not None
        self._just_connected = False
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._client.publish(self.topics.status, self._status("online", since=since), 1, True)
        subscriptions = [(self.topics.commands, 1)]
        if self.config.homeassistant.enabled:
            subscriptions.append((f"{self.config.homeassistant.discovery_prefix}/status", 1))
        self._client.subscribe(subscriptions)
        self._dirty.update(self._retained)
        if self._discovery is not None:
            self._dirty.add("discovery")
        self._cursor = 0  # rows in flight are re-sent by paho; _sent skips them
        self._refused.clear()
        self._outbox_call(self._outbox.prune)

    def _drain(self) -> None:
        """Apply everything queued by the API methods."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            kind = item[0]
            if kind == "alert":
                self._store(*item[1:])
            elif kind == "release":
                self._release(*item[1:])
            elif kind == "retain":
                self._retained[item[1]] = item[2]
                self._dirty.add(item[1])
            elif kind == "score":
                if self._connected and self._client is not None:
                    self._client.publish(self.topics.score, item[1], 0)
                else:
                    self._counts["scores_dropped"] += 1
            elif kind == "send":  # a clip or a reply: now, or kept (bounded) until connected
                _, topic, body, backlog = item
                if self._connected and self._client is not None:
                    self._client.publish(topic, body, 1)
                    continue
                if len(self._backlog[backlog]) == self._backlog[backlog].maxlen:
                    self._counts[f"{backlog}_dropped"] += 1
                self._backlog[backlog].append((topic, body))
            elif kind == "discovery":
                self._discovery = (item[1], item[2])
                self._dirty.add("discovery")
            elif kind == "dialed":
                self._dialed(item[1])
            elif kind == "stop":
                self._stopping, self._stop_timeout_s = True, float(item[1])

    def _store(self, alert_id: str, phase: str, body: bytes, held: bool, at_s: float) -> None:
        assert self._outbox is not None
        try:
            rowid = self._outbox.add(alert_id, self.topics.alert, body, ready=not held, key=phase)
        except sqlite3.Error as exc:
            log.error("outbox_write_failed", alert_id=alert_id, phase=phase, error=str(exc))
            self._unstored.append((alert_id, body))
            return
        self._submitted_s[rowid] = at_s
        while len(self._submitted_s) > self.outbox_config.max_rows:
            del self._submitted_s[next(iter(self._submitted_s))]
        self._refresh_counts()

    def _release(self, alert_id: str, phase: str, body: bytes, at_s: float) -> None:
        assert self._outbox is not None
        try:
            row = self._outbox.find(alert_id, self.topics.alert, phase)
            if row is None or not self._outbox.release(row.rowid, body):
                log.warning("alert_release_unknown", alert_id=alert_id, phase=phase)
                self._store(alert_id, phase, body, False, at_s)
                return
        except sqlite3.Error as exc:
            log.error("outbox_write_failed", alert_id=alert_id, phase=phase, error=str(exc))
            self._unstored.append((alert_id, body))
            return
        self._cursor = min(self._cursor, row.rowid - 1)

    def _flush(self) -> None:
        """Publish the latest retained states, discovery, clips and replies (connected)."""
        assert self._client is not None
        publish = self._client.publish
        for topic in sorted(self._dirty - {"discovery"}):
            publish(topic, self._retained[topic], 1, True)
        if "discovery" in self._dirty and self._discovery is not None:
            self._publish_discovery()
        self._dirty.clear()
        for backlog in self._backlog.values():
            while backlog:
                publish(*backlog.popleft(), qos=1)

    def _publish_discovery(self) -> None:
        assert self._client is not None and self._discovery is not None
        monitors, models = self._discovery
        messages = discovery_messages(
            device_id=self.device_id,
            topic_prefix=self.topics.prefix,
            monitors=monitors,
            discovery_prefix=self.config.homeassistant.discovery_prefix,
            model_names=models,
        )
        topics = {topic for topic, _ in messages}
        for topic in sorted(self._discovery_topics - topics):  # entities of removed monitors
            self._client.publish(topic, b"", 1, True)
        for topic, config in messages:
            self._client.publish(topic, encode_json(config), 1, True)
        self._discovery_topics = topics
        log.info("discovery_published", entities=len(messages), monitors=len(monitors))

    def _pump(self) -> None:
        """Publish ready outbox rows in order while fewer than max_inflight are unacknowledged."""
        assert self._client is not None and self._outbox is not None
        while self._unstored and len(self._inflight) < self.max_inflight:
            self._client.publish(self.topics.alert, self._unstored.popleft()[1], 1)
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return
        rows = (
            self._outbox_call(
                self._outbox.pending,
                after_rowid=self._cursor,
                limit=room + len(self._sent) + len(self._refused),
            )
            or []
        )
        for row in rows:
            self._cursor = max(self._cursor, row.rowid)
            if row.rowid in self._sent or row.rowid in self._refused:
                continue
            info = self._client.publish(row.topic, row.payload, 1)
            since_s = self._submitted_s.pop(row.rowid, self._clock())
            self._inflight[info.mid] = _Flight(row.rowid, row.alert_id, row.key, since_s)
            self._sent.add(row.rowid)
            self._counts["published"] += 1
            log.debug("alert_published", alert_id=row.alert_id, phase=row.key, mid=info.mid)
            room -= 1
            if room == 0:
                return

    def _on_publish(self, _c: Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        if mid == self._offline_mid:
            self._offline_mid = None
        flight = self._inflight.pop(mid, None)
        if flight is None or self._outbox is None:
            return
        self._sent.discard(flight.rowid)
        if reason.is_failure:
            self._refused.add(flight.rowid)
            self._counts["refused"] += 1
            log.error(
                "alert_refused", alert_id=flight.alert_id, phase=flight.phase, reason=str(reason)
            )
            return
        self._outbox_call(self._outbox.ack, flight.rowid)
        self._counts["acked"] += 1
        latency_s = self._clock() - flight.since_s
        self._last_ack_latency_s = latency_s
        log.info(
            "alert_acknowledged",
            alert_id=flight.alert_id,
            phase=flight.phase,
            latency_s=round(latency_s, 4),
        )
        self._refresh_counts()

    def _on_message(self, _c: Client, _u: Any, message: MQTTMessage) -> None:
        topic = message.topic
        command_prefix = self.topics.commands[:-1]
        if topic.startswith(command_prefix) and self.on_command is not None:
            self._counts["commands_received"] += 1
            try:
                self.on_command(topic[len(command_prefix) :], bytes(message.payload))
            except Exception as exc:  # a handler's error must not reach paho
                self._counts["commands_failed"] += 1
                log.error(
                    "command_rejected",
                    command=topic[len(command_prefix) :][:64],
                    reason=f"{type(exc).__name__}: {exc}",
                )
        elif (
            topic == f"{self.config.homeassistant.discovery_prefix}/status"
            and message.payload == b"online"
            and self._discovery is not None
        ):
            self._dirty.add("discovery")

    def _shutdown(self) -> None:
        """Status offline (retained), wait for it and the alerts in flight, then disconnect."""
        client = self._client
        deadline = self._clock() + self._stop_timeout_s
        dial = self._dial
        if dial is not None:  # let a running attempt finish, then close what it opened
            dial.join(max(0.0, deadline - self._clock()))
        if client is None or not self._connected:
            if client is not None and not (dial and dial.is_alive()) and client.socket():
                client.disconnect()  # CONNECT was sent: a DISCONNECT keeps the will unsent
            return
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        info = client.publish(
            self.topics.status, self._status("offline", since=since, reason="stopped"), 1, True
        )
        self._offline_mid = info.mid
        while self._connected and (self._offline_mid is not None or self._inflight):
            left = deadline - self._clock()
            if left <= 0:
                log.warning(
                    "mqtt_stop_unacknowledged",
                    alerts_in_flight=len(self._inflight),
                    status_acked=self._offline_mid is None,
                )
                break
            self._network(min(left, WAKE_S))
        if client.socket() is not None:
            client.disconnect()
            self._network(0)

    def _outbox_call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one outbox operation; a database error is logged, never raised."""
        try:
            return method(*args, **kwargs)
        except sqlite3.Error as exc:
            log.error("outbox_error", operation=method.__name__, error=str(exc))
            return None

    def _refresh_counts(self) -> None:
        if self._outbox is None:
            return
        try:
            stats = self._outbox.stats
            self._counts.update(
                outbox_depth=self._outbox.depth(),
                dropped_rows=stats.dropped_rows,
                dropped_age=stats.dropped_age,
            )
        except sqlite3.Error as exc:
            log.error("outbox_error", operation="stats", error=str(exc))


def _level(name: str, what: str) -> str:
    """``name`` if it is usable as one topic level; ValueError otherwise."""
    if not name or any(c in name for c in "/+#\x00"):
        raise ValueError(f"{what}: expected a non-empty name without / + # or NUL, got {name!r}")
    return name


def _read_password(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"mqtt.password_file: cannot read {path}: {reason}") from exc
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigError(f"mqtt.password_file: {path} is empty")
    return password


def _tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """The TLS context for the broker; a file that cannot be loaded is a ConfigError naming it."""
    tls = cfg.tls
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    steps: list[tuple[str, Callable[[], None]]] = []
    if tls.ca_file is not None:
        ca_file = tls.ca_file
        steps.append(("mqtt.tls.ca_file", lambda: context.load_verify_locations(cafile=ca_file)))
    if tls.cert_file is not None:
        cert_file, key_file = tls.cert_file, tls.key_file
        steps.append(
            (
                "mqtt.tls.cert_file",
                lambda: context.load_cert_chain(cert_file, key_file, password=_no_key_password),
            )
        )
    for name, step in steps:
        try:
            step()
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"{name}: cannot load the TLS file: {exc}") from exc
    return context


def _no_delay(client: Client, userdata: Any, sock: Any) -> None:
    """Send small packets at once: Nagle plus delayed ACKs would hold an alert ~40 ms."""
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _no_key_password() -> str:
    """An encrypted private key fails to load instead of prompting on the terminal."""
    return ""


def _plain(value: Any) -> Any:
    """json.dumps fallback: numpy scalars and arrays as Python numbers and lists."""
    for method in ("item", "tolist"):
        if hasattr(value, method):
            return json_safe(getattr(value, method)())
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
