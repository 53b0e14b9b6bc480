"""The paho client of a link: protocol, persistent session, will, credentials and TLS."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from paho.mqtt.client import Client, MQTTv5, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..config import MqttConfig
from ..errors import ConfigError

__all__ = ["SESSION_EXPIRY_S", "build_client", "read_password", "tls_context"]

SESSION_EXPIRY_S: Final = 86400
"""MQTT 5: how long the broker keeps the session (subscriptions, queued commands) offline."""


def build_client(
    cfg: MqttConfig, *, client_id: str, will_topic: str, will_payload: bytes
) -> Client:
    """A client with a persistent session and a retained will, set to connect on ``reconnect``.

    Raises ConfigError for credentials or TLS files that cannot be read, naming the key.
    """
    v5 = cfg.protocol == "5"
    client = Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTv5 if v5 else MQTTv311,
        clean_session=None if v5 else False,
    )
    client.will_set(will_topic, will_payload, qos=1, retain=True)
    password = cfg.password
    if cfg.password_file is not None:
        password = read_password(cfg.password_file)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, password)
    elif password is not None:
        raise ConfigError("mqtt.username: expected a user name to go with the password")
    if cfg.tls.enabled:
        client.tls_set_context(tls_context(cfg))
        client.tls_insecure_set(cfg.tls.insecure)
    properties = None
    if v5:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
    client.connect_async(
        cfg.host, cfg.port, cfg.keepalive_s, clean_start=False, properties=properties
    )
    client.on_socket_open = _no_delay
    return client


def read_password(path: str) -> str:
    """``mqtt.password_file`` less its trailing line break; ConfigError if unreadable or empty."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"mqtt.password_file: cannot read {path}: {reason}") from exc
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigError(f"mqtt.password_file: {path} is empty")
    return password


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
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


def _no_key_password() -> str:
    """An encrypted private key fails to load instead of prompting on the terminal."""
    return ""


def _no_delay(client: Client, userdata: Any, sock: Any) -> None:
    """Send small packets at once: Nagle plus delayed ACKs would hold an alert ~40 ms."""
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
