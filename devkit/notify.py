"""A unix datagram socket standing in for systemd's NOTIFY_SOCKET (tests and benchmarks)."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["NotifyListener"]


class NotifyListener:
    """Binds a datagram socket in a short private directory (unix socket paths stop at
    107 bytes) and records each sd_notify message as ``(arrival time, {KEY: value})``.

    ``address`` is what NOTIFY_SOCKET should say. Use it as a context manager, or
    ``close()`` it: that also removes the directory.
    """

    def __init__(self) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="asd-notify-"))
        self.address = str(self._folder / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, dict[str, str]]] = []
        """Every message received so far, with its ``time.monotonic()`` of arrival."""

    def receive(self, seconds: float) -> list[tuple[float, dict[str, str]]]:
        """Receive for ``seconds``; the messages that arrived meanwhile (also kept in
        ``messages``)."""
        got: list[tuple[float, dict[str, str]]] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            lines = data.decode().splitlines()
            got.append((time.monotonic(), dict(ln.split("=", 1) for ln in lines if "=" in ln)))
        self.messages.extend(got)
        return got

    def wait(
        self, key: str, value: str | None = None, timeout_s: float = 10.0
    ) -> tuple[float, dict[str, str]]:
        """The first message (received so far or within ``timeout_s``) that has ``key``
        (with ``value`` if given), and its arrival time; AssertionError if none comes."""
        deadline = time.monotonic() + timeout_s
        while True:
            for at, fields in self.messages:
                if key in fields and (value is None or fields[key] == value):
                    return at, fields
            if time.monotonic() > deadline:
                raise AssertionError(f"no {key}={value} in {self.messages}")
            self.receive(0.2)

    @staticmethod
    def times(messages: list[tuple[float, dict[str, str]]], key: str, value: str) -> list[float]:
        """Arrival times of the messages in ``messages`` that carry ``key=value``."""
        return [at for at, fields in messages if fields.get(key) == value]

    def close(self) -> None:
        """Close the socket and remove its directory."""
        self.sock.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()
