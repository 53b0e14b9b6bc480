"""Pushes, rollbacks and resets as the device checks them: signature, target monitor."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from ..config import Config, PushConfig
from ..errors import ConfigError, KeyFileError, Refused
from .devicekey import DeviceKey, load_device_key
from .files import ModelRecord
from .replay import ReplayFloor
from .slot import ModelSlot

if TYPE_CHECKING:
    from .signing import Precheck

__all__ = [
    "COMMAND_SOURCES",
    "RESET_COMMAND",
    "CheckedRequest",
    "check_request",
    "is_duplicate",
    "load_key",
    "outcome",
    "pick_monitor",
]


COMMAND_SOURCES: Final[Mapping[str, Literal["push", "rollback", "learn"]]] = {
    "model": "push",
    "model/rollback": "rollback",
    "learn": "learn",
}
"""The commands that change a model, and the source they give it."""
RESET_COMMAND: Final = "model/reset"
"""The command that replaces replay markers (``reset.py``); it changes no model."""


@dataclass(frozen=True, slots=True)
class CheckedRequest:
    """A push or rollback whose fields, size, hash and signature checked out."""

    command: str
    """``model`` or ``model/rollback``."""
    request_id: str
    """The sender's id."""
    monitor: str | None
    """The monitor it names; None: the device's only one."""
    issued_at: str
    """ISO 8601 UTC with milliseconds (compares as a string)."""
    model: bytes | None
    """The pushed model's bytes; None for a rollback."""


def check_request(
    command: str,
    args: Mapping[str, Any],
    request_id: str | None,
    *,
    device_id: str,
    push: PushConfig,
    key: DeviceKey | None,
    precheck: Precheck | None = None,
) -> CheckedRequest:
    """``signing.parse_push`` or ``parse_rollback`` with the device's settings; Refused
    (monitor unknown yet) with signing's reason when it refuses. ``precheck`` (the
    device's cheap checks) runs before the signature is verified."""
    from . import signing

    if command == "model":
        req = signing.parse_push(
            args,
            request_id=request_id,
            device_id=device_id,
            max_bytes=math.ceil(push.max_mb * 1e6),
            public_key=key,
            allow_unsigned=push.allow_unsigned,
            precheck=precheck,
        )
        return CheckedRequest(command, req.id, req.monitor, req.issued_at, req.model)
    back = signing.parse_rollback(
        args,
        request_id=request_id,
        device_id=device_id,
        public_key=key,
        allow_unsigned=push.allow_unsigned,
        precheck=precheck,
    )
    return CheckedRequest(command, back.id, back.monitor, back.issued_at, None)


def pick_monitor(name: str | None, monitors: Sequence[str]) -> str:
    """The monitor a request is for: the one named, or the device's only one."""
    names = ", ".join(sorted(monitors))
    if name is None:
        if len(monitors) == 1:
            return monitors[0]
        raise Refused(f"monitor: the device runs several monitors ({names}): name one")
    if name not in monitors:
        raise Refused(f"monitor: no monitor named {name!r} on this device ({names})")
    return name


def is_duplicate(
    request_id: str | None,
    args: Mapping[str, Any],
    in_flight_id: str | None,
    slots: Mapping[str, ModelSlot],
    *,
    command: str = "model",
    floor: ReplayFloor | None = None,
) -> bool:
    """A second delivery (MQTT QoS 1) of the command in flight (``in_flight_id``) or of
    the monitor's last accepted one: same id (and, for the latter, same issued_at). A
    reset of the device's markers (``RESET_COMMAND`` naming no monitor) is compared
    with the request that set the device's ``floor`` (which a reset may set later than
    its own issued_at: a monitor's marker it kept, ``reset.py``)."""
    if request_id is None:
        return False
    if in_flight_id is not None and in_flight_id == request_id:
        return True
    named = args.get("monitor")
    if command == RESET_COMMAND and named is None:
        issued_at = args.get("issued_at")
        return (
            floor is not None
            and floor.request_id == request_id
            and floor.issued_at is not None
            and isinstance(issued_at, str)
            and floor.issued_at >= issued_at
        )
    if named is None and len(slots) == 1:
        slot: ModelSlot | None = next(iter(slots.values()))
    else:
        slot = slots.get(named) if isinstance(named, str) else None
    return (
        slot is not None
        and slot.last_request_id == request_id
        and slot.last_issued_at is not None
        and slot.last_issued_at == args.get("issued_at")
    )


def load_key(config: Config) -> DeviceKey | None:
    """The public key ``push.key_file`` names (None if unset), read in a child process so
    that the daemon never loads cryptography (``devicekey``); ConfigError naming the key
    when it cannot be used."""
    if config.push.key_file is None:
        return None
    try:
        return load_device_key(config.push.key_file)
    except KeyFileError as exc:
        raise ConfigError(f"push.key_file: {exc}") from None


def outcome(
    command: str,
    request_id: str | None,
    monitor: str | None,
    at: str,
    record: ModelRecord | None,
    error: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``last_push`` object of the ``model`` topic (``extra``: a reset's markers)."""
    return {
        "id": request_id,
        "command": command,
        "monitor": monitor,
        "ok": error is None,
        "error": error,
        "name": None if record is None else record.name,
        "version": None if record is None else record.version,
        "sha256": None if record is None else record.sha256,
        "at": at,
        **(extra or {}),
    }
