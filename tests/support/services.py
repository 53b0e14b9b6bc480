"""The real parts as tests use them (devkit's mosquitto and daemon process, the installed
commands): a timeout fails the test, a missing tool skips it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from devkit import Unavailable
from devkit import broker as _broker
from devkit import daemonproc as _daemonproc
from devkit.broker import TlsFiles
from devkit.daemonproc import DaemonProcess

if TYPE_CHECKING:
    from asd_edge.mqtt import MqttLink

__all__ = [
    "asd_edge_command",
    "asd_train",
    "connected",
    "make_tls_files",
    "start_daemon",
    "wait_until",
]


def wait_until(condition: Callable[[], Any], timeout_s: float = 10.0, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout_s``."""
    try:
        return _broker.wait_until(condition, timeout_s, what)
    except TimeoutError as exc:
        pytest.fail(str(exc))


def connected(link: MqttLink) -> MqttLink:
    """``link`` once it is connected to its broker; fails the test after 10 s."""
    wait_until(lambda: link.connected, what="the link to connect")
    return link


def make_tls_files(root: Path) -> TlsFiles:
    """A throwaway CA and certificates (``devkit.broker.make_tls_files``); skips without openssl."""
    try:
        return _broker.make_tls_files(root)
    except Unavailable as exc:
        pytest.skip(str(exc))


def asd_edge_command() -> list[str]:
    """The installed ``asd-edge`` console script, the one users run
    (``devkit.daemonproc.asd_edge_command``); skips where it is not installed."""
    try:
        return _daemonproc.asd_edge_command()
    except Unavailable as exc:
        pytest.skip(str(exc))


def asd_train(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """The installed ``asd-train`` console script, as a user runs it; skips where it is not
    installed."""
    script = Path(sys.executable).with_name("asd-train")
    if not script.exists():
        pytest.skip(f"the asd-train console script is not installed beside {sys.executable}")
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=timeout_s)


def start_daemon(config: Path, env: Mapping[str, str] | None = None) -> DaemonProcess:
    """``asd-edge run --config CONFIG`` with this environment plus ``env``; its log goes to
    ``daemon.log`` beside the configuration (kept with the test's tmp_path)."""
    return DaemonProcess(
        config, env={**os.environ, **(env or {})}, log_path=config.parent / "daemon.log"
    )
