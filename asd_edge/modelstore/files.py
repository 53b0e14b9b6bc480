"""The on-disk model store: each monitor's active and previous model and its state.json."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal, cast

import structlog

from ..detector import MODEL_MAX_BYTES
from ..durable import fsync_dir, open_regular, read_regular, write_atomic
from ..errors import FileRejected, Refused

__all__ = [
    "ACTIVE_NAME",
    "INCOMING_NAME",
    "PREVIOUS_NAME",
    "STATE_NAME",
    "HeldFile",
    "ModelRecord",
    "MonitorFiles",
    "SlotState",
    "Source",
    "StatKey",
    "close_held",
    "schema_object",
    "stat_key",
]

log = structlog.get_logger()

Source = Literal["config", "file", "push", "rollback", "learn"]
"""Where a running model came from: the config's file at start or reload, that file
replaced on disk, an MQTT push, a rollback to the previous model, or normal sound
learned on the device."""
StatKey = tuple[int, int, int, int]
"""What the file watcher compares: (st_mtime_ns, st_size, st_ino, st_dev)."""

ACTIVE_NAME: Final = "active.onnx"
"""The pushed or rolled-back model that runs instead of the config's."""
PREVIOUS_NAME: Final = "previous.onnx"
"""The model that ran before the active one (what a rollback returns to)."""
INCOMING_NAME: Final = "incoming.onnx"
"""A candidate being validated, or validated and waiting to be put in service."""
STATE_NAME: Final = "state.json"
"""What the model files are, and the replay marker of pushes and rollbacks."""
STATE_SCHEMA: Final = 1
STATE_MAX_BYTES: Final = 1 << 16
"""The largest state.json read (64 KiB): it holds two records and a replay marker, under
2 kB; a larger one is damaged and read as empty, unread."""
_SOURCES: Final = ("config", "file", "push", "rollback", "learn")


def stat_key(st: os.stat_result) -> StatKey:
    """The fields of a stat that change when a file is rewritten or replaced."""
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """What one model is and how it came to run."""

    source: Source
    """config, file, push or rollback."""
    name: str
    """The model's metadata name."""
    version: str
    """The model's metadata version."""
    sha256: str
    """sha256 of the model file's bytes."""
    adopted_at: str
    """When it was put in service (ISO 8601 UTC)."""
    config_sha256: str | None
    """sha256 of the config's model file when this one was adopted: a stored model is
    used at start only while the config's file still has it (a user's edit wins)."""
    stored: bool
    """True: its bytes are in the store (active.onnx / previous.onnx); False: it is the
    config's model file itself."""
    request_id: str | None = None
    """The push or rollback request that brought it, if any."""

    def facts(self) -> dict[str, str]:
        """name, version and sha256, as the ``model`` topic shows a model."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> ModelRecord | None:
        """The record in ``data``; None for null. Raises ValueError when malformed."""
        if data is None:
            return None
        if not isinstance(data, dict):
            raise ValueError(f"expected an object or null, got {type(data).__name__}")
        text = ("name", "version", "sha256", "adopted_at")
        for key in text:
            if not isinstance(data.get(key), str):
                raise ValueError(f"{key}: expected a string, got {data.get(key)!r}")
        if data.get("source") not in _SOURCES:
            raise ValueError(f"source: expected one of {_SOURCES}, got {data.get('source')!r}")
        for key in ("config_sha256", "request_id"):
            if data.get(key) is not None and not isinstance(data.get(key), str):
                raise ValueError(f"{key}: expected a string or null, got {data.get(key)!r}")
        if not isinstance(data.get("stored"), bool):
            raise ValueError(f"stored: expected true or false, got {data.get('stored')!r}")
        return cls(
            source=cast(Source, data["source"]),
            name=data["name"],
            version=data["version"],
            sha256=data["sha256"],
            adopted_at=data["adopted_at"],
            config_sha256=data.get("config_sha256"),
            stored=data["stored"],
            request_id=data.get("request_id"),
        )


def schema_object(data: object, schema: int) -> dict[str, Any]:
    """``data`` if it is a JSON object of version ``schema`` (the store's files:
    state.json, replay.json); ValueError naming what is wrong otherwise."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != schema:
        raise ValueError(f"schema: expected {schema}, got {data.get('schema')!r}")
    return data


@dataclass(frozen=True, slots=True)
class SlotState:
    """The contents of one monitor's state.json."""

    active: ModelRecord | None = None
    """The model in service when this was written (None: never swapped, the config's)."""
    previous: ModelRecord | None = None
    """The model previous.onnx holds (None: there is none)."""
    last_issued_at: str | None = None
    """issued_at of the last accepted push or rollback: an older or equal one is a replay."""
    last_request_id: str | None = None
    """id of that push or rollback."""

    def as_dict(self) -> dict[str, Any]:
        """The state as JSON data."""
        return {
            "schema": STATE_SCHEMA,
            "active": None if self.active is None else self.active.as_dict(),
            "previous": None if self.previous is None else self.previous.as_dict(),
            "last_issued_at": self.last_issued_at,
            "last_request_id": self.last_request_id,
        }

    @classmethod
    def from_dict(cls, data: object) -> SlotState:
        """The state in ``data``; ValueError naming the field when malformed."""
        data = schema_object(data, STATE_SCHEMA)
        records: dict[str, ModelRecord | None] = {}
        for key in ("active", "previous"):
            try:
                records[key] = ModelRecord.from_dict(data.get(key))
            except ValueError as exc:
                raise ValueError(f"{key}.{exc}") from None
        for key in ("last_issued_at", "last_request_id"):
            if data.get(key) is not None and not isinstance(data.get(key), str):
                raise ValueError(f"{key}: expected a string or null, got {data.get(key)!r}")
        return cls(
            active=records["active"],
            previous=records["previous"],
            last_issued_at=data.get("last_issued_at"),
            last_request_id=data.get("last_request_id"),
        )


class HeldFile:
    """A model file kept open as it was read, so that its bytes stay readable after the
    file is replaced by a rename (the watcher's "keep the replaced model as previous").

    An in-place overwrite changes what it reads; ``read`` notices by the sha256. Only a
    regular file of at most ``MODEL_MAX_BYTES`` is opened (OSError ``FileRejected``
    otherwise, before a byte is read), and no read takes more than one byte beyond that.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._file: BinaryIO | None = open_regular(path, MODEL_MAX_BYTES)
        try:
            data = self._file.read(MODEL_MAX_BYTES + 1)
            self.stat: StatKey = stat_key(os.fstat(self._file.fileno()))
        except OSError:
            self.close()
            raise
        self.sha256 = hashlib.sha256(data).hexdigest()
        """sha256 of the bytes when it was opened."""
        self.size = len(data)

    def read(self) -> bytes | None:
        """The bytes as they were when opened; None if the file was overwritten in place
        (or is closed) and they are gone."""
        if self._file is None:
            return None
        try:
            self._file.seek(0)
            data = self._file.read(MODEL_MAX_BYTES + 1)
        except OSError:
            return None
        return data if hashlib.sha256(data).hexdigest() == self.sha256 else None

    def close(self) -> None:
        """Let the file go (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def close_held(held: HeldFile | None) -> None:
    """Let ``held`` go, if there is one."""
    if held is not None:
        held.close()


class MonitorFiles:
    """The folder ``state_dir/models/<monitor>``: its files and every write to them.

    Nothing is created until a candidate arrives or a swap is persisted; every file
    appears atomically (temporary name, fsync, rename, directory fsync).
    """

    def __init__(self, root: str | os.PathLike[str], monitor: str) -> None:
        self.monitor = monitor
        self.dir = Path(root) / monitor
        self.active = self.dir / ACTIVE_NAME
        self.previous = self.dir / PREVIOUS_NAME
        self.incoming = self.dir / INCOMING_NAME
        self.state = self.dir / STATE_NAME

    def read_state(self) -> SlotState:
        """state.json, or an empty state when there is none; a damaged one is logged
        and read as empty (its models are then not used), as is one that is not a regular
        file or is larger than ``STATE_MAX_BYTES``."""
        try:
            raw = read_regular(self.state, STATE_MAX_BYTES)
        except FileNotFoundError:
            return SlotState()
        except OSError as exc:
            log.warning("model_state_unreadable", path=str(self.state), error=str(exc))
            return SlotState()
        try:
            return SlotState.from_dict(json.loads(raw))
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            log.warning("model_state_unreadable", path=str(self.state), error=str(exc))
            return SlotState()

    def write_state(self, state: SlotState) -> None:
        """Replace state.json atomically."""
        self.dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(state.as_dict(), indent=2, sort_keys=True) + "\n"
        write_atomic(self.state, text.encode("utf-8"))

    def write_incoming(self, data: bytes) -> Path:
        """Write a candidate's bytes to incoming.onnx; return its path."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.incoming, data)
        return self.incoming

    def read_previous(self, previous: ModelRecord | None) -> bytes:
        """The bytes of previous.onnx, checked against its record ``previous``; Refused
        when there is none or it is damaged (a rollback's model): not a regular file, or
        larger than ``MODEL_MAX_BYTES`` (unread) or not the recorded sha256."""
        path = self.previous
        if previous is None or not path.is_file():
            raise Refused("no previous model to roll back to", monitor=self.monitor)
        try:
            data = read_regular(path, MODEL_MAX_BYTES)
        except FileRejected as exc:
            raise Refused(
                f"previous.onnx: {exc.problem}: the previous model is damaged", monitor=self.monitor
            ) from None
        if hashlib.sha256(data).hexdigest() != previous.sha256:
            raise Refused(
                "previous.onnx does not match its record (sha256): the previous model is damaged",
                monitor=self.monitor,
            )
        return data

    def discard_incoming(self) -> None:
        """Remove incoming.onnx, if any."""
        try:
            self.incoming.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("model_incoming_not_removed", path=str(self.incoming), error=str(exc))
            return
        fsync_dir(self.dir)

    def demote_active(self, state: SlotState, running: ModelRecord, *, keep: bool) -> SlotState:
        """The config's model won over the stored active one at start: keep the stored
        model as previous.onnx (``keep``) or drop it (it no longer loads), and record
        ``running`` as active; the replay marker stays. Returns the state written."""
        previous: ModelRecord | None
        if keep and state.active is not None:
            os.replace(self.active, self.previous)
            previous = state.active
        else:
            self.active.unlink(missing_ok=True)
            previous = state.previous
        fsync_dir(self.dir)
        written = dataclasses.replace(state, active=running, previous=previous)
        self.write_state(written)
        return written

    def adopt(
        self, new: ModelRecord, state: SlotState, outgoing: ModelRecord, held: HeldFile | None
    ) -> SlotState:
        """Persist a swap the daemon has put in service: the ``outgoing`` model becomes
        previous.onnx (moved if stored, else copied from ``held``, the config file as it
        was loaded), incoming.onnx becomes active.onnx when ``new`` is stored, and
        ``state`` (with ``previous`` = outgoing) is written. Returns the state written:
        without a previous model when the outgoing bytes were lost (the config's file
        was overwritten in place). OSError when the disk refuses."""
        self.dir.mkdir(parents=True, exist_ok=True)
        previous: ModelRecord | None = outgoing
        if outgoing.stored and self.active.is_file():
            os.replace(self.active, self.previous)
        else:
            data = held.read() if held is not None else None
            if data is None:
                log.warning(
                    "previous_model_lost",
                    monitor=self.monitor,
                    sha256=outgoing.sha256,
                    reason="its file was changed in place before it could be kept",
                )
                self.previous.unlink(missing_ok=True)
                previous = None
            else:
                write_atomic(self.previous, data)
        if new.stored:
            os.replace(self.incoming, self.active)
        else:
            self.active.unlink(missing_ok=True)
        fsync_dir(self.dir)
        written = dataclasses.replace(state, active=new, previous=previous)
        self.write_state(written)
        return written
