"""A run directory: every record of one ``asd-train`` run, written atomically; optional ClearML.

A run directory is self-contained: ``config.json`` (the effective configuration),
``metrics.json``, ``history.csv``, the plots, ``model.onnx``, ``checkpoint.pt`` and
``train.log`` (everything the run printed). ``--tracker clearml`` sends the same
to ClearML (offline when no server is configured).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from asd_edge.durable import write_atomic
from asd_edge.jsonvalues import json_safe

__all__ = [
    "ClearMLTracker",
    "NullTracker",
    "RunDir",
    "Tracker",
    "TrackerUnavailable",
    "csv_bytes",
    "finish_run",
    "make_tracker",
]


class RunDir:
    """The folder of one run; ``log`` prints a line and appends it to ``train.log``, which
    exists once something was logged (``asd-train evaluate``'s folder has none)."""

    def __init__(self, path: str | os.PathLike[str], *, quiet: bool = False) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.quiet = quiet
        self._log: TextIO | None = None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def log(self, message: str) -> None:
        """Print ``message`` (unless quiet) and keep it in ``train.log``."""
        if not self.quiet:
            print(message, file=sys.stderr)
        if self._log is None:
            self._log = (self.path / "train.log").open("a", encoding="utf-8")
        self._log.write(message + "\n")
        self._log.flush()

    def write_json(self, name: str, data: Mapping[str, Any]) -> Path:
        """Write ``name`` as indented JSON (NaN as null), atomically."""
        text = json.dumps(json_safe(data), indent=2, sort_keys=True, allow_nan=False)
        return self._write(name, (text + "\n").encode("utf-8"))

    def write_csv(self, name: str, rows: Sequence[Mapping[str, Any]]) -> Path:
        """Write rows (dicts with the same keys) as CSV, atomically."""
        return self._write(name, csv_bytes(rows))

    def _write(self, name: str, data: bytes) -> Path:
        """``name`` replaced by ``data`` atomically, mode 0644 whatever the umask: records
        are meant to be shared."""
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(target, data, mode=0o644)

    def close(self) -> None:
        """Close ``train.log``."""
        if self._log is not None:
            self._log.close()


def csv_bytes(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Rows as CSV with a header (the first row's keys)."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json_safe(v) for k, v in row.items()})
    return buf.getvalue().encode("utf-8")


def finish_run(
    run: RunDir, tracker: Tracker, metrics: Mapping[str, Any], records: Sequence[str]
) -> None:
    """A fit's last step: ``metrics.json``, the metrics and the ``records`` that exist sent
    to the tracker, and the closing log line."""
    run.write_json("metrics.json", metrics)
    tracker.log_metrics(metrics)
    for record in records:
        if (run / record).exists():
            tracker.log_file(run / record)
    run.log(f"wrote {run / 'model.onnx'}")


class TrackerUnavailable(RuntimeError):
    """The experiment tracker cannot be used (not installed, or it refused); exit 69."""


class Tracker(Protocol):
    """Where a run's parameters, scalars and files are reported besides the run directory."""

    def log_config(self, config: Mapping[str, Any]) -> None: ...

    def log_scalar(self, title: str, series: str, value: float, step: int) -> None: ...

    def log_metrics(self, metrics: Mapping[str, Any]) -> None: ...

    def log_file(self, path: Path) -> None: ...

    def close(self) -> None: ...


class NullTracker:
    """No tracker: the run directory is the record."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Nothing to do."""

    def log_scalar(self, title: str, series: str, value: float, step: int) -> None:
        """Nothing to do."""

    def log_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Nothing to do."""

    def log_file(self, path: Path) -> None:
        """Nothing to do."""

    def close(self) -> None:
        """Nothing to do."""


class ClearMLTracker:
    """ClearML task of the run; offline (a local session folder) when no server is set."""

    def __init__(self, project: str, name: str, *, offline: bool | None = None) -> None:
        try:
            from clearml import Task
        except ImportError:
            raise TrackerUnavailable(
                "--tracker clearml needs ClearML: pip install 'asd-edge[clearml]'"
            ) from None
        if offline is None:
            offline = not _clearml_server_configured()
        if offline:
            Task.set_offline(offline_mode=True)
        self.offline = offline
        # The run directory is the record of the code and config: skip ClearML's scan of
        # the repository and of every import (minutes in a checkout with a virtualenv).
        Task.force_store_standalone_script(True)
        Task.force_requirements_env_freeze(True)
        try:
            self.task = Task.init(
                project_name=project,
                task_name=name,
                auto_connect_frameworks=False,
                auto_connect_arg_parser=False,
                auto_resource_monitoring=False,
                auto_connect_streams=False,
                reuse_last_task_id=False,
            )
        except Exception as exc:  # ClearML raises many untyped errors on connection
            raise TrackerUnavailable(f"ClearML: cannot start a task ({exc})") from None
        self.logger = self.task.get_logger()

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The effective configuration as the task's parameters."""
        self.task.connect(json_safe(dict(config)), name="config")

    def log_scalar(self, title: str, series: str, value: float, step: int) -> None:
        """One point of a curve (e.g. the losses per epoch)."""
        if math.isfinite(value):
            self.logger.report_scalar(title, series, value=value, iteration=step)

    def log_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Final numbers as single values."""
        for key, value in _flatten(metrics).items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if number and math.isfinite(float(value)):
                self.logger.report_single_value(key, float(value))

    def log_file(self, path: Path) -> None:
        """A file of the run directory as an artifact."""
        self.task.upload_artifact(path.name, artifact_object=str(path))

    def close(self) -> None:
        """Finish the task (offline: the session folder is written)."""
        self.task.close()


def _clearml_server_configured() -> bool:
    if os.environ.get("CLEARML_API_HOST"):
        return True
    config = os.environ.get("CLEARML_CONFIG_FILE") or str(Path.home() / "clearml.conf")
    return Path(config).is_file()


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "/"))
        else:
            out[name] = value
    return out


def make_tracker(name: str, *, project: str, task: str) -> Tracker:
    """``none`` or ``clearml``; TrackerUnavailable when the tracker cannot be used."""
    if name == "none":
        return NullTracker()
    if name == "clearml":
        return ClearMLTracker(project, task)
    raise ValueError(f"unknown tracker {name!r}; expected none or clearml")
