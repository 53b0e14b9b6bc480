"""The daemon as a subprocess for end-to-end tests: its JSON log lines, waited for by event."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from conftest import asd_edge_command

__all__ = ["DaemonProcess"]


class DaemonProcess:
    """``asd-edge run`` in the background, its JSON log lines on a queue."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [*asd_edge_command(), "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        self.lines: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put((time.monotonic(), json.loads(line)))
            except json.JSONDecodeError:
                self.lines.put((time.monotonic(), {"event": "not_json", "line": line}))

    def wait_for(self, event: str, timeout_s: float) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                at, record = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(record)
            if record.get("event") == event:
                return at, record
        stderr = (
            self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        )
        raise AssertionError(
            f"no {event!r} within {timeout_s} s; saw {self.seen}; stderr: {stderr}"
        )

    def events(self, event: str) -> list[dict[str, Any]]:
        """Every record of ``event`` read so far (drains the queue without waiting)."""
        while True:
            try:
                self.seen.append(self.lines.get_nowait()[1])
            except queue.Empty:
                break
        return [r for r in self.seen if r.get("event") == event]

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        self.proc.kill()
        self.proc.wait(timeout=15)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)
