"""The paho client of a link: protocol, persistent session, will, credentials and TLS."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any, Final

from paho.mqtt.client import Client, MQTTv5, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..config import MqttConfig
from ..durable import open_regular, read_regular
from ..errors import ConfigError

__all__ = [
    "HEAD_BYTES",
    "PASSWORD_FILE_MAX_BYTES",
    "RECV_CHUNK",
    "SESSION_EXPIRY_S",
    "TLS_FILE_MAX_BYTES",
    "BoundedClient",
    "build_client",
    "check_credentials",
    "read_password",
    "tls_context",
]

SESSION_EXPIRY_S: Final = 86400
"""MQTT 5: how long the broker keeps the session (subscriptions, queued commands) offline."""


RECV_CHUNK: Final = 1 << 16
"""Most bytes read from the socket at once (paho asks for a whole packet's size at once,
which allocates that much however little has arrived)."""
HEAD_BYTES: Final = 70_000
"""What is kept of an oversized PUBLISH: its topic (at most 65,535 bytes), packet id and
properties, and the start of its payload (where a command's ``id`` usually is)."""
_PUBLISH: Final = 0x30

PASSWORD_FILE_MAX_BYTES: Final = 65_535 + 2
"""The largest ``mqtt.password_file`` read: MQTT's CONNECT carries a password of at most
65,535 bytes (its length is two bytes), and the file may end with a CR LF."""
TLS_FILE_MAX_BYTES: Final = 1 << 20
"""The largest TLS file (CA, certificate, key) loaded, 1 MiB: a whole CA bundle, such as
Debian's ca-certificates.crt, is about 220 kB; a certificate or key a few kB."""


class _Head(bytearray):
    """A packet buffer that keeps its first ``HEAD_BYTES`` and only counts the rest."""

    def __iadd__(self, data: Any) -> _Head:  # type: ignore[misc]  # paho appends with +=
        room = HEAD_BYTES - len(self)
        if room > 0:
            self.extend(memoryview(data)[:room])
        return self


class BoundedClient(Client):
    """paho's client, reading in bounded chunks and never holding more than
    ``max_packet_bytes`` (plus ``HEAD_BYTES``) of one incoming packet.

    A PUBLISH larger than ``max_packet_bytes`` is read and thrown away as it arrives;
    only its head is kept, so paho still decodes its topic and packet id, calls
    ``on_message`` (whose handler must look at ``oversized``: the payload it sees is
    cut) and acknowledges it, so the broker never delivers it again. Relies on paho
    2.x's ``_sock_recv`` and ``_in_packet`` (pinned below 3 in pyproject.toml; the
    real-broker test of an oversized message guards it).
    """

    def __init__(self, *args: Any, max_packet_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_packet_bytes = max_packet_bytes
        self.oversized: int | None = None
        """The real size of the PUBLISH being delivered when it was cut; None otherwise."""

    def _sock_recv(self, bufsize: int) -> bytes:
        packet = self._in_packet
        if packet["have_remaining"] and not isinstance(packet["packet"], _Head):
            size = packet["remaining_length"]
            if size > self.max_packet_bytes and packet["command"] & 0xF0 == _PUBLISH:
                packet["packet"] = _Head(packet["packet"])
                self.oversized = size
        elif not packet["have_remaining"] and packet["command"] == 0:
            self.oversized = None  # a new packet begins
        return super()._sock_recv(min(bufsize, RECV_CHUNK))


def build_client(
    cfg: MqttConfig,
    *,
    client_id: str,
    will_topic: str,
    will_payload: bytes,
    max_packet_bytes: int,
) -> BoundedClient:
    """A client with a persistent session and a retained will, set to connect on ``reconnect``.
    No incoming packet larger than ``max_packet_bytes`` is held (``BoundedClient``); with
    MQTT 5 the broker is told so at CONNECT (Maximum Packet Size) and does not send one.

    Raises ConfigError for credentials or TLS files that cannot be read, naming the key.
    """
    v5 = cfg.protocol == "5"
    client = BoundedClient(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTv5 if v5 else MQTTv311,
        clean_session=None if v5 else False,
        max_packet_bytes=max_packet_bytes,
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
        properties.MaximumPacketSize = max_packet_bytes
    client.connect_async(
        cfg.host, cfg.port, cfg.keepalive_s, clean_start=False, properties=properties
    )
    client.on_socket_open = _no_delay
    return client


def check_credentials(cfg: MqttConfig) -> None:
    """Read and load the files ``build_client`` reads, without a client: the password file
    and, with TLS, the CA, certificate and key files. ConfigError naming the key: what
    ``check-config`` and the daemon's start run, so that a bad file stops the daemon
    with exit 78 (EX_CONFIG) before anything starts. Lists the password's problem and the
    TLS files' together."""
    checks: list[Callable[[], object]] = []
    if cfg.password_file is not None:
        password_file = cfg.password_file
        checks.append(lambda: read_password(password_file))
    if cfg.tls.enabled:
        checks.append(lambda: tls_context(cfg))
    ConfigError.check_all(*checks)


def read_password(path: str) -> str:
    """``mqtt.password_file`` less its trailing line break; ConfigError if unreadable or empty,
    not a regular file or larger than ``PASSWORD_FILE_MAX_BYTES`` (then it is not read)."""
    try:
        text = read_regular(path, PASSWORD_FILE_MAX_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"mqtt.password_file: cannot read {path}: {reason}") from exc
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigError(f"mqtt.password_file: {path} is empty")
    return password


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """The TLS context for the broker; a file that cannot be loaded is a ConfigError naming
    the key and the file. Each file must be a regular file of at most
    ``TLS_FILE_MAX_BYTES``, checked before OpenSSL reads it (it takes paths)."""
    tls = cfg.tls
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    files = {
        "mqtt.tls.ca_file": tls.ca_file,
        "mqtt.tls.cert_file": tls.cert_file,
        "mqtt.tls.key_file": tls.key_file,
    }
    for name, path in files.items():
        if path is not None:
            _check_tls_file(name, path)
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
            raise ConfigError(f"{name}: cannot load the TLS file {files[name]}: {exc}") from exc
    return context


def _check_tls_file(name: str, path: str) -> None:
    """ConfigError naming ``name`` and ``path`` unless ``path`` is a regular file of at most
    ``TLS_FILE_MAX_BYTES`` that can be opened."""
    try:
        open_regular(path, TLS_FILE_MAX_BYTES).close()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{name}: cannot load the TLS file {path}: {reason}") from exc


def _no_key_password() -> str:
    """An encrypted private key fails to load instead of prompting on the terminal."""
    return ""


def _no_delay(client: Client, userdata: Any, sock: Any) -> None:
    """Send small packets at once: Nagle plus delayed ACKs would hold an alert ~40 ms."""
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
