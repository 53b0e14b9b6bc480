"""sd_notify(3) in pure Python: readiness, status, watchdog and reload notices to systemd."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from typing import Final

import structlog

__all__ = ["STATUS_MAX_CHARS", "Liveness", "Notifier"]

log = structlog.get_logger()

STATUS_MAX_CHARS = 200
"""Longest ``STATUS=`` text sent; longer text is cut (systemctl shows one line)."""
WATCHDOG_DIVISOR = 3
"""``WATCHDOG=1`` is sent at most once per watchdog interval / this."""

_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")


def _one_line(text: str, max_chars: int) -> str:
    """``text`` with every run of whitespace (newlines included) as one space, cut to size."""
    line = " ".join(text.split())
    return line if len(line) <= max_chars else line[: max_chars - 3] + "..."


class Notifier:
    """Sends sd_notify messages to systemd over ``NOTIFY_SOCKET``; a no-op without one.

    One ``AF_UNIX``/``SOCK_DGRAM`` socket (close-on-exec, non-blocking) is kept open
    while enabled; none is created when disabled. No method ever raises because of the
    socket: a failed send is counted in ``failures`` and logged once per run of
    failures (``sd_notify_failed``), so the daemon keeps running if systemd goes away.
    Build it with ``from_env()``; the constructor takes the parsed values (tests).
    """

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``address``: a filesystem path, ``@name`` for the abstract namespace, or None.

        ``watchdog_usec``: the watchdog interval in µs (None or 0: no watchdog);
        ``clock``: monotonic seconds, used only to rate-limit ``watchdog()``.
        """
        self._display = address
        self._address: bytes | None = None
        self._sock: socket.socket | None = None
        self._clock = clock
        self._watchdog_s = watchdog_usec / 1e6 if watchdog_usec else None
        self._last_watchdog_s: float | None = None
        self._failing = False
        self.sent = 0
        """Messages handed to the socket."""
        self.failures = 0
        """Messages that could not be sent."""
        if not address:
            return
        if address.startswith("@"):
            self._address = b"\0" + os.fsencode(address[1:])
        elif address.startswith("/"):
            self._address = os.fsencode(address)
        else:  # systemd only ever sets an absolute path or an abstract name here
            log.warning("sd_notify_disabled", socket=address, error="not an absolute path or @name")
            return
        try:
            self._sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            )
        except OSError as e:
            log.warning("sd_notify_disabled", socket=address, error=str(e))

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] = os.environ,
        *,
        clock: Callable[[], float] = time.monotonic,
        pid: int | None = None,
    ) -> Notifier:
        """A notifier set up from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        The watchdog is on only when ``WATCHDOG_USEC`` is a positive integer and
        ``WATCHDOG_PID`` is unset or this process's id (``pid``, default ours). The
        environment is read, never changed.
        """
        address = environ.get("NOTIFY_SOCKET") or None
        watchdog_usec: int | None = None
        usec_text = environ.get("WATCHDOG_USEC")
        pid_text = environ.get("WATCHDOG_PID")
        if address is not None and usec_text:
            our_pid = os.getpid() if pid is None else pid
            try:
                usec = int(usec_text)
                for_us = pid_text is None or pid_text == "" or int(pid_text) == our_pid
            except ValueError:
                log.warning("sd_notify_watchdog_ignored", usec=usec_text, pid=pid_text)
            else:
                watchdog_usec = usec if usec > 0 and for_us else None
        return cls(address, watchdog_usec=watchdog_usec, clock=clock)

    @property
    def enabled(self) -> bool:
        """Whether messages are sent at all (``NOTIFY_SOCKET`` was usable)."""
        return self._sock is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """systemd's watchdog interval in seconds, or None when there is no watchdog for us."""
        return self._watchdog_s if self._sock is not None else None

    def send(self, text: str) -> bool:
        """Send a raw message (``KEY=value`` lines); True if it was handed to the socket."""
        sock, address = self._sock, self._address
        if sock is None or address is None:
            return False
        try:
            sock.sendto(text.encode("utf-8", "replace"), address)
        except OSError as e:  # gone, refused, queue full: count it, never raise
            self.failures += 1
            if not self._failing:
                self._failing = True
                log.warning(
                    "sd_notify_failed",
                    socket=self._display,
                    error=str(e),
                    message=text.split("\n", 1)[0],
                )
            return False
        self._failing = False
        self.sent += 1
        return True

    def notify(self, **fields: str | int | bool) -> bool:
        """Send ``NAME=value`` fields (``notify(READY=1, STATUS="...")``).

        Names must be upper-case sd_notify variables (else ``ValueError``, a bug in the
        caller); newlines in values become spaces, booleans 1/0.
        """
        lines = []
        for name, value in fields.items():
            if not _FIELD_NAME.match(name):
                raise ValueError(f"sd_notify field {name!r}: expected an upper-case name")
            text = str(int(value)) if isinstance(value, bool) else str(value)
            lines.append(f"{name}={' '.join(text.splitlines())}")
        return self.send("\n".join(lines))

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (start-up or reload finished), with an optional status line."""
        return self._with_status({"READY": 1}, status)

    def status(self, text: str) -> bool:
        """``STATUS=`` one line of at most ``STATUS_MAX_CHARS`` (shown by systemctl status)."""
        return self.notify(STATUS=_one_line(text, STATUS_MAX_CHARS))

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (systemd >= 253); send ``ready()`` after."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._with_status({"RELOADING": 1, "MONOTONIC_USEC": usec}, status)

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: the daemon has begun to shut down."""
        return self._with_status({"STOPPING": 1}, status)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``, at most once per watchdog interval / 3 however often called.

        Call it from the tick loop only while ticks really happen (and the input is
        healthy enough): when it stops being called, systemd kills and restarts us.
        True only when a message was sent by this call.
        """
        interval_s = self.watchdog_interval_s
        if interval_s is None:
            return False
        now_s = self._clock()
        last_s = self._last_watchdog_s
        if last_s is not None and now_s - last_s < interval_s / WATCHDOG_DIVISOR:
            return False
        self._last_watchdog_s = now_s  # even after a failure: retry in a third, not every wake
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket; later messages are not sent. Idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _with_status(self, fields: dict[str, str | int | bool], status: str | None) -> bool:
        if status is not None:
            fields["STATUS"] = _one_line(status, STATUS_MAX_CHARS)
        return self.notify(**fields)


class Liveness:
    """What systemd hears from the tick loop: WATCHDOG=1 only while ticks run and audio
    arrives (or a dead stream is being reopened by the capture supervisor, which exits
    non-zero when that keeps failing), and a STATUS= line when it changes.

    A stuck tick sends nothing, and neither does a stream that is dead without anyone
    reopening it, so systemd's watchdog fires and restarts the service.
    """

    STATUS_EVERY_S: Final = 10.0
    """How often the status line is rebuilt (it is sent only when it changed)."""

    def __init__(
        self,
        notifier: Notifier,
        *,
        stall_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        self._grace_s = stall_timeout_s + 0.1
        self._written = -1
        self._progress_at_s = clock()
        self._status = ""
        self._status_at_s = -self.STATUS_EVERY_S

    def start(self, now_s: float) -> None:
        """The loop begins: audio counts as fresh from now."""
        self._progress_at_s = now_s

    def tick(self, now_s: float, written: int, recovering: bool, line: Callable[[], str]) -> None:
        """One wake of the loop: ``written`` is a capture ring's sample count."""
        if written != self._written:
            self._written, self._progress_at_s = written, now_s
        if now_s - self._progress_at_s <= self._grace_s or recovering:
            self._notifier.watchdog()
        self.status(now_s, line)

    def status(self, now_s: float, line: Callable[[], str], *, force: bool = False) -> None:
        """Send the status line if it changed (checked every STATUS_EVERY_S, or now)."""
        if not force and now_s - self._status_at_s < self.STATUS_EVERY_S:
            return
        self._status_at_s = now_s
        text = line()
        if text != self._status:
            self._status = text
            self._notifier.status(text)
