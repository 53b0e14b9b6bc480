"""The daemon as a subprocess for end-to-end tests (``devkit.daemonproc``), set up for pytest."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from devkit.daemonproc import DaemonProcess

__all__ = ["DaemonProcess", "start_daemon"]


def start_daemon(config: Path, env: Mapping[str, str] | None = None) -> DaemonProcess:
    """``asd-edge run --config CONFIG`` with this environment plus ``env``; its log goes to
    ``daemon.log`` beside the configuration (kept with the test's tmp_path)."""
    return DaemonProcess(
        config, env={**os.environ, **(env or {})}, log_path=config.parent / "daemon.log"
    )
