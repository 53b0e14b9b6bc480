"""A private MQTT broker: mosquitto on a free port, stoppable for outages; a subscriber."""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion

from devkit import DevkitError, Unavailable

__all__ = [
    "HOST",
    "Broker",
    "Received",
    "Subscriber",
    "TlsFiles",
    "check_tools",
    "free_port",
    "make_tls_files",
    "wait_until",
]

HOST = "127.0.0.1"


def check_tools() -> None:
    """Raise :class:`Unavailable` if mosquitto is not installed."""
    if shutil.which("mosquitto") is None:
        raise Unavailable("the private MQTT broker needs mosquitto: apt-get install mosquitto")


def wait_until(condition: Callable[[], Any], timeout_s: float = 10.0, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy and return that; raise
    :class:`TimeoutError` naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what or condition}")
        time.sleep(0.02)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(root: Path) -> TlsFiles:
    """Make the CA and certificates with openssl (EC P-256, valid one day).

    Raises :class:`Unavailable` without openssl."""
    if shutil.which("openssl") is None:
        raise Unavailable("a throwaway CA needs openssl: apt-get install openssl")
    root.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=asd-edge test CA",
    )
    (root / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "1",
            *ext,
        )
    return TlsFiles(
        root / "ca.crt",
        root / "server.crt",
        root / "server.key",
        root / "client.crt",
        root / "client.key",
    )


class Broker:
    """mosquitto on 127.0.0.1:<port>; ``stop()``/``start()`` keep the port for outage tests.

    ``users`` makes a password file (mosquitto_passwd) and refuses anonymous
    clients; ``tls`` serves TLS and requires a client certificate signed by the CA;
    ``persistence`` keeps sessions and queued messages across a stop/start.
    ``acl_file`` is used as given (mosquitto's ``acl_file``: nothing it does not
    allow is allowed); ``max_packet_size`` makes mosquitto disconnect a client that
    sends a larger packet (none by default: a test sends 200 MB on purpose to check
    the daemon's own guard); ``username_as_client_id`` is mosquitto's
    ``use_username_as_clientid`` (a client cannot take another user's client id).
    """

    host = HOST

    def __init__(
        self,
        root: Path,
        *,
        users: dict[str, str] | None = None,
        tls: TlsFiles | None = None,
        persistence: bool = False,
        acl_file: Path | None = None,
        max_packet_size: int | None = None,
        username_as_client_id: bool = False,
    ) -> None:
        check_tools()
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = root / "mosquitto.log"
        self.tls = tls
        lines = [
            f"listener {self.port} {HOST}",
            f"persistence {str(persistence).lower()}",
            "log_dest stderr",
            "log_type all",
            f"user {getpass.getuser()}",
        ]
        if persistence:
            lines.append(f"persistence_location {root}/")
        if users:
            if shutil.which("mosquitto_passwd") is None:
                raise Unavailable("broker users need mosquitto_passwd: apt-get install mosquitto")
            passwd = root / "passwd"
            passwd.touch()
            for user, password in users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(passwd), user, password],
                    check=True,
                    capture_output=True,
                )
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if tls is not None:
            lines += [
                f"cafile {tls.ca}",
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
                "require_certificate true",
            ]
        if acl_file is not None:
            lines.append(f"acl_file {acl_file}")
        if max_packet_size is not None:
            lines.append(f"max_packet_size {max_packet_size}")
        if username_as_client_id:
            lines.append("use_username_as_clientid true")
        self.config_path = root / "mosquitto.conf"
        self.config_path.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None
        self._subscribers: list[Subscriber] = []

    def start(self, timeout_s: float = 10.0) -> None:
        """Start mosquitto and wait until it accepts TCP connections; :class:`DevkitError`
        with its log if it exits or does not listen within ``timeout_s``."""
        assert self._proc is None, "already running"
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                ["mosquitto", "-c", str(self.config_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                raise DevkitError(f"mosquitto exited at start:\n{self.log_text()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise DevkitError(
                        f"mosquitto not listening on port {self.port} after {timeout_s} s:\n"
                        f"{self.log_text()}"
                    ) from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop cleanly (SIGTERM): clients see the connection drop."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Kill (SIGKILL), as in a crash."""
        self._end(signal.SIGKILL)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open, nothing is acknowledged."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused broker (SIGCONT)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def _end(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        if sig != signal.SIGKILL:
            self._proc.send_signal(signal.SIGCONT)  # a paused broker must run to stop cleanly
        self._proc.send_signal(sig)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    @property
    def running(self) -> bool:
        """Whether mosquitto is up."""
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """Everything mosquitto logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, client_id: str | None = None, **kw: Any) -> Client:
        """A paho client set up for this broker (TLS and credentials as given), not connected."""
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
            clean_session=kw.pop("clean_session", True),
        )
        if self.tls is not None:
            client.tls_set(
                ca_certs=str(self.tls.ca),
                certfile=str(self.tls.client_cert),
                keyfile=str(self.tls.client_key),
            )
        if "username" in kw:
            client.username_pw_set(kw.pop("username"), kw.pop("password", None))
        return client

    def subscriber(self, *topics: str, persistent: bool = False, **kw: Any) -> Subscriber:
        """A connected subscriber (QoS 1) collecting every message on ``topics``."""
        sub = Subscriber(self, topics, persistent=persistent, **kw)
        self._subscribers.append(sub)
        return sub

    def publish(
        self, topic: str, payload: bytes | str, *, retain: bool = False, qos: int = 1, **kw: Any
    ) -> None:
        """Publish one message from a short-lived client and wait until it is acknowledged."""
        client = self.client(**kw)
        client.connect(HOST, self.port)
        client.loop_start()
        try:
            client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(timeout=10)
        finally:
            client.disconnect()
            client.loop_stop()

    def close(self) -> None:
        """Close every subscriber made here and kill the broker; idempotent."""
        for sub in self._subscribers:
            sub.close()
        self.kill()


@dataclass(frozen=True)
class Received:
    """One message a Subscriber got."""

    topic: str
    payload: bytes
    retain: bool
    qos: int
    received_at: float = 0.0
    """Wall-clock time (epoch seconds) at which the subscriber got it."""


class Subscriber:
    """A paho client that subscribes (again after every reconnect) and records what arrives.

    ``listener``, if given, is called with each message as it arrives, on paho's thread.
    """

    def __init__(
        self,
        broker: Broker,
        topics: tuple[str, ...],
        *,
        persistent: bool,
        listener: Callable[[Received], None] | None = None,
        **kw: Any,
    ) -> None:
        self.topics = topics
        self.messages: list[Received] = []
        self._listener = listener
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = broker.client(clean_session=not persistent, **kw)
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(HOST, broker.port)
        self.client.loop_start()
        wait_until(self._subscribed.is_set, what=f"subscription to {topics}")

    def _on_connect(self, client: Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(topic, 1) for topic in self.topics])

    def _on_subscribe(self, _c: Client, _u: Any, _mid: int, _codes: Any, _p: Any) -> None:
        self._subscribed.set()

    def _on_message(self, _c: Client, _u: Any, message: MQTTMessage) -> None:
        received = Received(
            message.topic, bytes(message.payload), bool(message.retain), message.qos, time.time()
        )
        with self._lock:
            self.messages.append(received)
        if self._listener is not None:
            self._listener(received)

    def on(self, topic: str) -> list[Received]:
        """What arrived on ``topic`` so far, in order."""
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def clear(self) -> None:
        """Forget what arrived so far."""
        with self._lock:
            self.messages.clear()

    def wait_for(self, topic: str, count: int = 1, timeout_s: float = 10.0) -> list[Received]:
        """Wait until at least ``count`` messages arrived on ``topic``; return them all."""
        got: list[Received] = wait_until(
            lambda: (got := self.on(topic)) and len(got) >= count and got,
            timeout_s,
            what=f"{count} message(s) on {topic}",
        )
        return got

    def close(self) -> None:
        """Disconnect and stop paho's thread."""
        self.client.disconnect()
        self.client.loop_stop()
