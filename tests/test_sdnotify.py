"""Tests of the sd_notify client against a real unix datagram socket owned by the test."""

from __future__ import annotations

import itertools
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from asd_edge.sdnotify import STATUS_MAX_CHARS, Notifier


class Listener:
    """What systemd would be: a bound datagram socket that collects notify messages."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.settimeout(2.0)

    def receive(self) -> dict[str, str]:
        """The next message as its fields (waits up to 2 s)."""
        text = self.sock.recv(65536).decode()
        return dict(line.split("=", 1) for line in text.split("\n"))

    def pending(self) -> list[str]:
        """Every message waiting now, without waiting for more."""
        self.sock.setblocking(False)
        messages = []
        try:
            while True:
                messages.append(self.sock.recv(65536).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(2.0)
        return messages


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (unix socket paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sdn", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, short_dir: Path) -> Iterator[Listener]:
    """A notify socket in both forms systemd uses: a path and an abstract ``@name``."""
    if request.param == "path":
        address = str(short_dir / "notify")
    else:
        address = f"@asd-edge-test-{uuid.uuid4().hex}"
    lst = Listener(address)
    yield lst
    lst.sock.close()


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class TestMessages:
    """Each notice arrives on the socket with the fields systemd expects."""

    def test_ready_with_status(self, listener: Listener) -> None:
        """READY=1 and a one-line STATUS arrive in one datagram."""
        notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.address})
        assert notifier.enabled
        assert notifier.ready("capturing\n2 monitors")
        assert listener.receive() == {"READY": "1", "STATUS": "capturing 2 monitors"}
        notifier.close()

    def test_status_is_one_capped_line(self, listener: Listener) -> None:
        """A long multi-line status is sent as one line of at most STATUS_MAX_CHARS."""
        notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.address})
        notifier.status("line one\r\nline two " + "x" * 1000)
        status = listener.receive()["STATUS"]
        assert "\n" not in status and "\r" not in status
        assert status.startswith("line one line two x")
        assert len(status) == STATUS_MAX_CHARS
        notifier.close()

    def test_reloading_carries_the_monotonic_time(self, listener: Listener) -> None:
        """RELOADING=1 comes with MONOTONIC_USEC, CLOCK_MONOTONIC in µs (systemd >= 253)."""
        notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.address})
        before = time.monotonic_ns() // 1000
        notifier.reloading()
        after = time.monotonic_ns() // 1000
        fields = listener.receive()
        assert fields["RELOADING"] == "1"
        assert before <= int(fields["MONOTONIC_USEC"]) <= after
        notifier.close()

    def test_stopping_and_general_fields(self, listener: Listener) -> None:
        """STOPPING=1, then arbitrary fields through notify()."""
        notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.address})
        notifier.stopping()
        assert listener.receive() == {"STOPPING": "1"}
        notifier.notify(EXTEND_TIMEOUT_USEC=5_000_000, ERRNO=5)
        assert listener.receive() == {"EXTEND_TIMEOUT_USEC": "5000000", "ERRNO": "5"}
        with pytest.raises(ValueError, match="status"):
            notifier.notify(status="lower case is not an sd_notify variable")
        notifier.close()


class TestWatchdog:
    """WATCHDOG=1 is rate limited and only for the process systemd watches."""

    def test_sent_at_most_every_third_of_the_interval(self, listener: Listener) -> None:
        """Called 20 times a second for 10 s with a 3 s watchdog: one ping per second."""
        clock = FakeClock()
        env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "3000000"}
        notifier = Notifier.from_env(env, clock=clock)
        assert notifier.watchdog_interval_s == 3.0
        sent_at = []
        for _ in range(200):
            if notifier.watchdog():
                sent_at.append(clock.now_s)
            clock.now_s += 0.05
        messages = listener.pending()
        assert messages == ["WATCHDOG=1"] * len(sent_at)
        assert len(sent_at) == 10
        gaps = [b - a for a, b in itertools.pairwise(sent_at)]
        assert all(gap == pytest.approx(1.0, abs=0.051) for gap in gaps)
        notifier.close()

    def test_our_pid_enables_it(self, listener: Listener) -> None:
        """WATCHDOG_PID naming this process keeps the watchdog on."""
        env = {
            "NOTIFY_SOCKET": listener.address,
            "WATCHDOG_USEC": "500000",
            "WATCHDOG_PID": str(os.getpid()),
        }
        notifier = Notifier.from_env(env)
        assert notifier.watchdog_interval_s == 0.5
        assert notifier.watchdog()
        assert listener.receive() == {"WATCHDOG": "1"}
        notifier.close()

    def test_another_pid_disables_it(self, listener: Listener) -> None:
        """WATCHDOG_PID of another process (our parent's): no watchdog, other messages go."""
        env = {
            "NOTIFY_SOCKET": listener.address,
            "WATCHDOG_USEC": "500000",
            "WATCHDOG_PID": str(os.getppid()),
        }
        notifier = Notifier.from_env(env)
        assert notifier.watchdog_interval_s is None
        assert not notifier.watchdog()
        notifier.ready()
        assert listener.pending() == ["READY=1"]
        notifier.close()

    def test_unset_or_bad_interval_disables_it(self, listener: Listener) -> None:
        """No WATCHDOG_USEC, zero, or garbage: no watchdog (garbage is logged)."""
        for usec in (None, "0", "soon"):
            env = {"NOTIFY_SOCKET": listener.address}
            if usec is not None:
                env["WATCHDOG_USEC"] = usec
            with capture_logs() as logs:
                notifier = Notifier.from_env(env)
            assert notifier.watchdog_interval_s is None
            assert not notifier.watchdog()
            assert [e["event"] for e in logs] == (
                ["sd_notify_watchdog_ignored"] if usec == "soon" else []
            )
            notifier.close()
        assert listener.pending() == []


class TestDisabled:
    """Without systemd the notifier does nothing and costs nothing."""

    def test_no_socket_and_nothing_sent_without_notify_socket(self) -> None:
        """NOTIFY_SOCKET unset: no file descriptor is opened and every call is a no-op."""
        fds = open_fds()
        notifier = Notifier.from_env({"WATCHDOG_USEC": "1000000"})
        assert open_fds() == fds
        assert not notifier.enabled
        assert notifier.watchdog_interval_s is None
        assert not notifier.ready("x")
        assert not notifier.watchdog()
        assert not notifier.reloading()
        assert not notifier.stopping()
        assert notifier.sent == notifier.failures == 0

    def test_environment_is_left_alone(self, listener: Listener) -> None:
        """The variables stay set (no unset_environment): nothing is removed."""
        env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1000000"}
        before = dict(env)
        Notifier.from_env(env).close()
        assert env == before

    def test_missing_socket_logs_once_and_never_raises(self, short_dir: Path) -> None:
        """A socket path that does not exist: every send fails quietly, one log line."""
        env = {"NOTIFY_SOCKET": str(short_dir / "gone"), "WATCHDOG_USEC": "30000000"}
        clock = FakeClock()
        notifier = Notifier.from_env(env, clock=clock)
        with capture_logs() as logs:
            assert not notifier.ready("starting")
            for _ in range(5):
                assert not notifier.watchdog()
                clock.now_s += 20.0
            assert not notifier.stopping()
        assert [e["event"] for e in logs] == ["sd_notify_failed"]
        assert logs[0]["socket"] == str(short_dir / "gone")
        assert notifier.failures == 7
        notifier.close()

    def test_a_failure_after_recovery_is_logged_again(self, short_dir: Path) -> None:
        """Once systemd's socket is back, sends succeed; a later outage is logged anew."""
        path = short_dir / "notify"
        notifier = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
        with capture_logs() as logs:
            notifier.status("a")
            notifier.status("b")
            back = Listener(str(path))
            assert notifier.status("c")
            assert back.receive() == {"STATUS": "c"}
            back.sock.close()
            path.unlink()
            notifier.status("d")
        assert [e["event"] for e in logs] == ["sd_notify_failed", "sd_notify_failed"]
        assert (notifier.sent, notifier.failures) == (1, 3)
        notifier.close()
