"""``asd-edge run`` as a subprocess: its JSON log kept in a file and waited for by event."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from devkit import DevkitError, Unavailable

__all__ = ["DaemonProcess", "asd_edge_command"]


def asd_edge_command() -> list[str]:
    """The ``asd-edge`` console script beside this Python (the one ``make dev`` installs)."""
    script = Path(sys.executable).with_name("asd-edge")
    if not script.exists():
        raise Unavailable(
            f"the demo needs the asd-edge console script beside {sys.executable}: make dev"
        )
    return [str(script)]


class DaemonProcess:
    """The daemon in its own process group (a Ctrl-C meant for us does not reach it; we
    stop it), stdout and stderr appended to ``log_path`` and parsed as JSON lines."""

    def __init__(self, config: Path, *, env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.records: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        """``time.monotonic()`` at which each record was read, for latency measurements."""
        self._cond = threading.Condition()
        self._log: TextIO = log_path.open("a", encoding="utf-8")
        self.proc = subprocess.Popen(
            [*asd_edge_command(), "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env={**env, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name="daemon-log", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = {"event": "not_json", "line": line.rstrip("\n")}
            if not isinstance(record, dict):
                record = {"event": "not_json", "line": line.rstrip("\n")}
            with self._cond:
                self.records.append(record)
                self.arrivals.append(time.monotonic())
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every log record with ``event == name`` so far."""
        with self._cond:
            return [r for r in self.records if r.get("event") == name]

    def wait_for(self, name: str, timeout_s: float) -> dict[str, Any]:
        """The first log record ``name``; :class:`DevkitError` if the daemon exits first
        or ``timeout_s`` passes (the message quotes the end of its log)."""
        return self.wait_for_at(name, timeout_s)[1]

    def wait_for_at(self, name: str, timeout_s: float) -> tuple[float, dict[str, Any]]:
        """Like ``wait_for``, with the ``time.monotonic()`` at which the record was read."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for at, record in zip(self.arrivals, self.records, strict=True):
                    if record.get("event") == name:
                        return at, record
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise DevkitError(
                        f"the daemon exited with {self.proc.returncode} before {name}:\n"
                        f"{self.log_tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DevkitError(
                        f"no {name} from the daemon in {timeout_s} s:\n{self.log_tail()}"
                    )
                self._cond.wait(min(left, 0.2))

    def log_tail(self, lines: int = 15) -> str:
        """The daemon's last log lines."""
        with self._cond:
            tail = self.records[-lines:]
        return "\n".join(r.get("line") or json.dumps(r) for r in tail) or "(no output)"

    def kill(self) -> int:
        """SIGKILL, with no clean-up of any kind (a power cut, an OOM kill); the exit code."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait()
        self._reader.join(timeout=5)
        return code

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, wait up to ``timeout_s`` (then SIGKILL); return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        self._reader.join(timeout=5)
        if not self._reader.is_alive():
            self._log.close()
        return code
