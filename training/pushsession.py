"""The broker side of ``asd-train push``, ``rollback`` and ``reset``: address, TLS, one MQTT
session."""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Answer",
    "BrokerAddress",
    "BrokerError",
    "FileProblem",
    "MqttSession",
    "parse_broker",
]


@dataclass(frozen=True)
class BrokerAddress:
    """``--broker HOST[:PORT]``; no port: 1883, or 8883 with --tls."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def parse_broker(text: str) -> BrokerAddress:
    """``HOST``, ``HOST:PORT``, ``[IPv6]`` or ``[IPv6]:PORT``; argparse error otherwise."""
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise argparse.ArgumentTypeError(f"expected HOST[:PORT], got {text!r}")
        port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise argparse.ArgumentTypeError(f"expected HOST[:PORT], got {text!r}")
    if not port:
        return BrokerAddress(host)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 1-65535, got {port!r}")
    return BrokerAddress(host, int(port))


class BrokerError(Exception):
    """The broker cannot be reached, refused the connection or a subscription, or left."""


class FileProblem(Exception):
    """A password, CA or client certificate file cannot be used; the message names it."""


Answer = tuple[str, str | None, dict[str, Any]]
"""(``accepted`` or ``refused``, the device's reason, what it sent)."""


class MqttSession:
    """One short-lived paho connection (clean session) for one request id.

    It records the retained ``status`` of devices, their latest ``model`` message, and
    the answers that carry the request id, on whatever topics it was asked to subscribe
    to, keyed by the device's prefix (the topic less its last level).
    """

    def __init__(self, args: argparse.Namespace, *, request_id: str, command: str) -> None:
        from paho.mqtt.client import Client
        from paho.mqtt.enums import CallbackAPIVersion

        self.address: BrokerAddress = args.broker
        self.request_id = request_id
        self.command = command
        self._client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"asd-train-{uuid.uuid4().hex[:12]}",
            clean_session=True,
        )
        if args.username:
            self._client.username_pw_set(args.username, _password(args.password_file))
        self._tls = bool(args.tls)
        if self._tls:
            _set_tls(self._client, args)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._changed = threading.Condition()
        self._connack: str | None = None
        self._refused: str | None = None
        self._lost = False
        self._granted: dict[int, list[Any]] = {}
        self._published = False
        self._statuses: dict[str, tuple[str, bool]] = {}
        self._models: dict[str, dict[str, Any]] = {}
        self._answers: dict[str, Answer] = {}
        self._started = False

    def connect(self, *, timeout_s: float) -> None:
        """Connect and wait for the broker's CONNACK; BrokerError if unreachable or refused."""
        port = self.address.port or (8883 if self._tls else 1883)
        self._client.connect_timeout = timeout_s
        try:
            self._client.connect(self.address.host, port, keepalive=60)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise BrokerError(f"cannot reach the broker {self.address}: {reason}") from None
        self._client.loop_start()
        self._started = True
        with self._changed:
            self._changed.wait_for(lambda: self._connack or self._refused, timeout_s)
        if self._refused:
            raise BrokerError(f"the broker {self.address} refused the connection: {self._refused}")
        if not self._connack:
            raise BrokerError(f"the broker {self.address} did not answer within {timeout_s:g} s")

    def subscribe(self, topics: Sequence[str], *, timeout_s: float = 10.0) -> None:
        """Subscribe (QoS 1) and wait for the grant; BrokerError if refused."""
        _rc, mid = self._client.subscribe([(topic, 1) for topic in topics])
        with self._changed:
            self._changed.wait_for(lambda: mid in self._granted or self._lost, timeout_s)
            codes = self._granted.get(mid)
        if codes is None or any(code.is_failure for code in codes):
            raise BrokerError(f"the broker refused the subscription to {', '.join(topics)}")

    def devices(self, *, settle_s: float) -> dict[str, tuple[str, bool]]:
        """prefix -> (device id, online) from the retained status seen within ``settle_s``."""
        time.sleep(settle_s)
        with self._changed:
            return dict(self._statuses)

    def model(self, prefix: str) -> dict[str, Any] | None:
        """The latest ``<prefix>/model`` message seen (the retained one arrives with the
        retained status), or None."""
        with self._changed:
            found = self._models.get(prefix)
            return None if found is None else dict(found)

    def publish(self, topic: str, payload: bytes, *, timeout_s: float) -> None:
        """Publish QoS 1, not retained; BrokerError unless the broker acknowledged it."""
        with self._changed:
            self._published = True
        info = self._client.publish(topic, payload, qos=1, retain=False)
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise BrokerError(f"cannot publish on {topic}: {exc}") from None
        if not info.is_published():
            raise BrokerError(f"the broker did not acknowledge the command within {timeout_s:g} s")

    def wait(self, prefixes: Sequence[str], *, timeout_s: float) -> dict[str, Answer]:
        """Wait until every prefix answered or ``timeout_s`` passed; prefix -> answer.

        Answers from other prefixes that came in meanwhile are included."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._lost or all(p in self._answers for p in prefixes), timeout_s
            )
            if self._lost and not all(p in self._answers for p in prefixes):
                raise BrokerError(f"lost the connection to the broker {self.address}")
            return dict(self._answers)

    def close(self) -> None:
        """Disconnect and stop paho's thread."""
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self._changed:
            if reason.is_failure:
                self._refused = str(reason)
            else:
                self._connack = "ok"
            self._changed.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[Any], _p: Any) -> None:
        with self._changed:
            self._granted[mid] = list(codes)
            self._changed.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self._changed:
            self._lost = True
            if not self._connack and reason.is_failure:
                self._refused = str(reason)
            self._changed.notify_all()

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        prefix, _, leaf = message.topic.rpartition("/")
        try:
            data = json.loads(bytes(message.payload).decode("utf-8")) if message.payload else None
        except (UnicodeDecodeError, ValueError):
            return
        with self._changed:
            if leaf == "status":
                if isinstance(data, dict) and isinstance(data.get("state"), str):
                    device_id = data.get("device_id")
                    name = device_id if isinstance(device_id, str) else prefix.rsplit("/")[-1]
                    self._statuses[prefix] = (name, data["state"] == "online")
                else:
                    self._statuses.pop(prefix, None)
                return
            if leaf == "model" and isinstance(data, dict):
                self._models[prefix] = data
            answer = self._match(leaf, data)
            if answer is not None and prefix not in self._answers:
                self._answers[prefix] = answer
                self._changed.notify_all()

    def _match(self, leaf: str, data: Any) -> Answer | None:
        """The answer ``data`` gives to this request, or None if it is not one."""
        if not isinstance(data, dict):
            return None
        if leaf == "model":
            last = data.get("last_push")
            if not isinstance(last, dict) or last.get("id") != self.request_id:
                return None
            if last.get("command", self.command) != self.command:
                return None
            if last.get("ok") is True:
                return "accepted", None, last
            return "refused", str(last.get("error") or "refused without a reason"), last
        if leaf == "cmd_result" and data.get("ok") is False and self._published:
            if data.get("id") == self.request_id:
                return "refused", str(data.get("error")), data
            if data.get("id") is None and data.get("command") == self.command:
                # The router could not read the id (e.g. a payload over its size limit).
                return "refused", f"{data.get('error')} (reply without a request id)", data
        return None


def _password(path: Path | None) -> str | None:
    """The password in ``path`` less its trailing line break."""
    if path is None:
        return None
    try:
        password = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise FileProblem(f"{path}: cannot read the password file ({reason})") from None
    if not password:
        raise FileProblem(f"{path}: the password file is empty")
    return password


def _set_tls(client: Any, args: argparse.Namespace) -> None:
    """TLS with the system's CAs, or --ca-file, and a client certificate if given."""
    import ssl

    for option, path in (("--ca-file", args.ca_file), ("--cert-file", args.cert_file)):
        if path is not None and not path.is_file():
            raise FileProblem(f"{path}: no such file ({option})")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        if args.ca_file is not None:
            context.load_verify_locations(cafile=str(args.ca_file))
        if args.cert_file is not None:
            context.load_cert_chain(str(args.cert_file), args.key_file and str(args.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise FileProblem(f"cannot load the TLS files: {exc}") from None
    client.tls_set_context(context)
