"""The dashboard's MQTT client: follows the fleet's topics into a ``Fleet``, sends the
daemons' commands and waits for their answers, fetches clips over ``cmd/clip``."""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import threading
from collections.abc import Mapping
from typing import Any, Final

import structlog
from paho.mqtt.client import Client, MQTTMessage, MQTTv5, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion

from ..config import Config
from ..mqtt.client import BoundedClient, read_password, tls_context
from ..mqtt.topics import encode_json
from .fleet import MAX_PAYLOAD_BYTES, Fleet

__all__ = ["ANSWER_TIMEOUT_S", "Bridge", "BridgeError"]

log = structlog.get_logger()

ANSWER_TIMEOUT_S: Final = 10.0
"""How long an action waits for the daemon's ``cmd_result``."""
CLIP_TIMEOUT_S: Final = 15.0
"""How long a clip fetched over ``cmd/clip`` may take to arrive."""
_PACKET_ROOM: Final = 64 * 1024


class BridgeError(Exception):
    """A command could not be sent or was not answered in time."""


class Bridge:
    """One paho client (clean session, no will) on the daemon's broker settings.

    ``request`` and ``fetch_clip`` are coroutines for the server's event loop; the
    answers arrive on paho's thread and are handed over with ``call_soon_threadsafe``.
    """

    def __init__(self, config: Config, fleet: Fleet, *, client_id: str | None = None) -> None:
        self.config = config
        self.fleet = fleet
        mqtt = config.mqtt
        self.clip_max_bytes = int(mqtt.clip_max_mb * 1e6)
        client = BoundedClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"asd-edge-web-{config.device_id}-{secrets.token_hex(3)}",
            protocol=MQTTv5 if mqtt.protocol == "5" else MQTTv311,
            clean_session=None if mqtt.protocol == "5" else True,
            max_packet_bytes=max(self.clip_max_bytes, MAX_PAYLOAD_BYTES) + _PACKET_ROOM,
        )
        web = config.web
        if web.mqtt_username is not None:
            password = read_password(web.mqtt_password_file) if web.mqtt_password_file else None
            client.username_pw_set(web.mqtt_username, password)
        elif mqtt.username is not None:
            password = mqtt.password
            if mqtt.password_file is not None:
                password = read_password(mqtt.password_file)
            client.username_pw_set(mqtt.username, password)
            log.warning(
                "web_shares_broker_login",
                user=mqtt.username,
                hint="a broker that uses the user name as client id or gives each device "
                "its own ACL needs web.mqtt_username for the dashboard",
            )
        if mqtt.tls.enabled:
            client.tls_set_context(tls_context(mqtt))
            client.tls_insecure_set(mqtt.tls.insecure)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(max(1, round(mqtt.reconnect_min_s)), round(mqtt.reconnect_max_s))
        self._client: BoundedClient = client
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        self._clips: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        self._ids = itertools.count(1)
        self._tag = secrets.token_hex(4)
        self.connected = threading.Event()
        self._fetching = asyncio.Lock()
        """One clip fetched at a time: each may be megabytes, and the daemon sends one."""

    # --- life ----------------------------------------------------------------------------

    def start(self) -> None:
        mqtt = self.config.mqtt
        self._client.connect_async(mqtt.host, mqtt.port, mqtt.keepalive_s)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("web_broker_refused", reason=str(reason))
            return
        client.subscribe([(topic, 0) for topic in self.fleet.subscriptions()])
        self.connected.set()
        log.info("web_broker_connected", host=self.config.mqtt.host, port=self.config.mqtt.port)

    def _on_disconnect(self, _c: Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected.clear()
        log.warning("web_broker_lost", reason=str(reason))

    def _on_message(self, _c: Client, _u: Any, message: MQTTMessage) -> None:
        try:
            if self._client.oversized is not None:
                log.warning("web_message_dropped", topic=message.topic[:200], why="size")
                return
            topic, payload = message.topic, bytes(message.payload)
            with self._lock:
                fetching = topic in self._clips
            if fetching:
                self._clip_arrived(topic, payload)
                return
            if topic.endswith("/cmd_result"):
                self._answer_arrived(payload)
            self.fleet.handle(topic, payload)
        except Exception:  # supervisor boundary: nothing reaches paho
            log.exception("web_message_failed", topic=message.topic[:200])

    # --- commands ------------------------------------------------------------------------

    def new_id(self, what: str) -> str:
        return f"web-{self._tag}-{what}-{next(self._ids)}"

    def send(self, prefix: str, command: str, body: Mapping[str, Any]) -> None:
        """Publish ``<prefix>/cmd/<command>`` (QoS 1, not retained) without waiting."""
        self._client.publish(f"{prefix}/cmd/{command}", encode_json(body), qos=1)

    async def request(
        self,
        prefix: str,
        command: str,
        body: Mapping[str, Any],
        timeout_s: float = ANSWER_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Send a command and return the daemon's answer (``ok``, ``error``, ``result``)."""
        request_id = str(body.get("id") or self.new_id(command.replace("/", "-")))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            self._waiting[request_id] = (loop, future)
        try:
            if not self.connected.is_set():
                raise BridgeError("the dashboard is not connected to the broker")
            self.send(prefix, command, {**body, "id": request_id})
            answer = await asyncio.wait_for(future, timeout_s)
        except TimeoutError as exc:
            raise BridgeError(f"no answer from the device within {timeout_s:g} s") from exc
        finally:
            with self._lock:
                self._waiting.pop(request_id, None)
        return dict(answer)

    def _answer_arrived(self, payload: bytes) -> None:
        try:
            answer = json.loads(payload)
        except ValueError:
            return
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
            return
        with self._lock:
            waiting = self._waiting.get(answer["id"])
        if waiting is not None:
            loop, future = waiting
            loop.call_soon_threadsafe(_settle, future, answer)

    # --- clips ---------------------------------------------------------------------------

    async def fetch_clip(self, prefix: str, alert_id: str) -> bytes:
        """The clip of ``alert_id`` from another device (``cmd/clip``), at most
        ``mqtt.clip_max_mb``, one fetch at a time. BridgeError with the device's reason
        when refused."""
        topic = f"{prefix}/clip/{alert_id}"
        async with self._fetching:
            return await self._fetch(prefix, alert_id, topic)

    async def _fetch(self, prefix: str, alert_id: str, topic: str) -> bytes:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            self._clips[topic] = (loop, future)
        self._client.subscribe(topic, 1)
        try:
            answer = await self.request(prefix, "clip", {"alert_id": alert_id})
            if not answer.get("ok"):
                raise BridgeError(str(answer.get("error") or "refused"))
            data: bytes = await asyncio.wait_for(future, CLIP_TIMEOUT_S)
            return data
        except TimeoutError as exc:
            raise BridgeError(f"the clip did not arrive within {CLIP_TIMEOUT_S:g} s") from exc
        finally:
            with self._lock:
                self._clips.pop(topic, None)
            self._client.unsubscribe(topic)

    def _clip_arrived(self, topic: str, payload: bytes) -> None:
        with self._lock:
            waiting = self._clips.get(topic)
        if waiting is not None and len(payload) <= self.clip_max_bytes:
            loop, future = waiting
            loop.call_soon_threadsafe(_settle, future, payload)


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
