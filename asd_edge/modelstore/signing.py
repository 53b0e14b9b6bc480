"""Signed model push, rollback and reset messages: building and checking the JSON."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from ..errors import ChildFailed, Refused
from ..jsonvalues import iso_utc
from .devicekey import DeviceKey
from .keyfiles import key_id

if TYPE_CHECKING:  # cryptography is imported only when a key is used (the daemon stays light)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "PUSH_CONTEXT",
    "RESET_CONTEXT",
    "ROLLBACK_CONTEXT",
    "PushRequest",
    "ResetRequest",
    "RollbackRequest",
    "canonical_bytes",
    "format_issued_at",
    "parse_push",
    "parse_reset",
    "parse_rollback",
    "push_message",
    "reset_message",
    "rollback_message",
    "valid_issued_at",
]

PUSH_CONTEXT: Final = b"asd-edge-push/1\n"
"""Prefix of the signed bytes of a push: a push signature never verifies as anything else."""
ROLLBACK_CONTEXT: Final = b"asd-edge-rollback/1\n"
"""Prefix of the signed bytes of a rollback."""
RESET_CONTEXT: Final = b"asd-edge-reset/1\n"
"""Prefix of the signed bytes of a reset of the replay markers."""
MAX_ID_CHARS: Final = 128
"""Longest request id accepted."""

_PUSH_FIELDS: Final = frozenset(
    {"target", "monitor", "sha256", "size", "issued_at", "key_id", "signature", "model"}
)
_ROLLBACK_FIELDS: Final = frozenset({"target", "monitor", "issued_at", "key_id", "signature"})
_RESET_FIELDS: Final = _ROLLBACK_FIELDS | {"clears"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ISSUED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_ISSUED_AT_EXAMPLE: Final = "2026-11-21T10:15:00.123Z"

Precheck = Callable[[str | None, str], None]
"""The receiver's cheap checks of a push or rollback, given its ``monitor`` and
``issued_at`` once its fields check out and before its signature is verified (the
daemon's check runs in a child process): its target monitor, clock skew, replay marker.
Refused when they fail; the signature is verified only after they pass."""
ResetPrecheck = Callable[[str | None, str, str], None]
"""As ``Precheck`` for a reset, given its ``monitor``, ``issued_at`` and ``clears``."""


@dataclass(frozen=True, slots=True)
class PushRequest:
    """A checked push: the model bytes match their size and sha256, the signature verified."""

    id: str
    target: str
    """This device's id, or ``*`` (every device of the fleet)."""
    monitor: str | None
    """The monitor to load the model into; None: the device's only monitor."""
    sha256: str
    size: int
    issued_at: str
    """ISO 8601 UTC with milliseconds; later pushes compare greater as strings."""
    model: bytes
    signed: bool
    """Whether a signature was verified (False only when unsigned pushes are allowed)."""
    key_id: str | None
    """Id of the key that verified the signature; None when unsigned."""


@dataclass(frozen=True, slots=True)
class RollbackRequest:
    """A checked rollback to a monitor's previous model."""

    id: str
    target: str
    monitor: str | None
    issued_at: str
    signed: bool
    key_id: str | None


@dataclass(frozen=True, slots=True)
class ResetRequest:
    """A checked reset of replay markers (always signed: see ``parse_reset``)."""

    id: str
    target: str
    """This device's id (a reset never addresses the fleet)."""
    monitor: str | None
    """The monitor whose marker it replaces; None: the device's (the floor and every
    monitor's)."""
    issued_at: str
    """When it was signed; it becomes the new marker."""
    clears: str
    """The marker it replaces, as the device published it: any other value is refused."""
    key_id: str


def format_issued_at(moment: datetime | None = None) -> str:
    """``moment`` (default now) as the contract's ISO 8601 UTC with milliseconds."""
    return iso_utc(moment or datetime.now(UTC))


def canonical_bytes(context: bytes, fields: Mapping[str, Any]) -> bytes:
    """What is signed: ``context`` then the fields as sorted, compact, ASCII JSON."""
    text = json.dumps(dict(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return context + text.encode("ascii")


def push_message(
    model: bytes,
    *,
    request_id: str,
    target: str,
    monitor: str | None,
    private_key: Ed25519PrivateKey | None,
    issued_at: str | None = None,
) -> dict[str, Any]:
    """The JSON object of a push of ``model`` (signed when ``private_key`` is given)."""
    signed = {
        "id": request_id,
        "target": target,
        "monitor": monitor,
        "sha256": hashlib.sha256(model).hexdigest(),
        "size": len(model),
        "issued_at": issued_at or format_issued_at(),
    }
    message = _message(signed, PUSH_CONTEXT, private_key)
    message["model"] = base64.b64encode(model).decode("ascii")
    return message


def rollback_message(
    *,
    request_id: str,
    target: str,
    monitor: str | None,
    private_key: Ed25519PrivateKey | None,
    issued_at: str | None = None,
) -> dict[str, Any]:
    """The JSON object of a rollback (signed when ``private_key`` is given)."""
    signed = {
        "id": request_id,
        "target": target,
        "monitor": monitor,
        "issued_at": issued_at or format_issued_at(),
    }
    return _message(signed, ROLLBACK_CONTEXT, private_key)


def reset_message(
    *,
    request_id: str,
    target: str,
    monitor: str | None,
    clears: str,
    private_key: Ed25519PrivateKey | None,
    issued_at: str | None = None,
) -> dict[str, Any]:
    """The JSON object of a reset of the replay marker ``clears`` of ``monitor`` (None:
    of the device). A device accepts it only signed (``private_key``); unsigned, it is
    built only to be refused (tests)."""
    signed = {
        "id": request_id,
        "target": target,
        "monitor": monitor,
        "clears": clears,
        "issued_at": issued_at or format_issued_at(),
    }
    return _message(signed, RESET_CONTEXT, private_key)


def parse_push(
    args: Mapping[str, Any],
    *,
    request_id: str | None,
    device_id: str,
    max_bytes: int,
    public_key: Ed25519PublicKey | DeviceKey | None,
    allow_unsigned: bool,
    precheck: Precheck | None = None,
) -> PushRequest:
    """Check a push (``args`` is its JSON object without ``id``); Refused says why not.

    In order: the id, the target, the size limit, the base64 of the model, its length,
    its sha256, the signature's form, ``precheck`` (the receiver's cheap checks), then
    the signature itself. The model is not parsed as ONNX here.
    """
    rid, target, monitor, issued_at = _common(args, request_id, device_id, _PUSH_FIELDS)
    size = args.get("size")
    if not isinstance(size, int) or isinstance(size, bool):
        raise Refused(f"size: expected an integer number of bytes, got {_shown(size)}")
    if size > max_bytes:
        raise Refused(f"model too large: {size} bytes, at most {max_bytes} (push.max_mb)")
    if size < 1:
        raise Refused(f"size: expected at least 1 byte, got {size}")
    encoded = args.get("model")
    if not isinstance(encoded, str):
        raise Refused(f"model: expected a base64 string, got {_shown(encoded)}")
    try:
        model = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise Refused("model: not valid base64 (standard alphabet, padded)") from None
    if len(model) < size:
        raise Refused(f"truncated: got {len(model)} bytes of {size} (model)")
    if len(model) > size:
        raise Refused(f"model: got {len(model)} bytes, more than its size field {size}")
    declared = args.get("sha256")
    if not isinstance(declared, str) or not _SHA256.fullmatch(declared):
        raise Refused(f"sha256: expected 64 lowercase hex digits, got {_shown(declared)}")
    if not hmac.compare_digest(hashlib.sha256(model).hexdigest(), declared):
        raise Refused("sha256 mismatch: the model was altered or corrupted in transit")
    signed_fields = {
        "id": rid,
        "target": target,
        "monitor": monitor,
        "sha256": declared,
        "size": size,
        "issued_at": issued_at,
    }
    signed, kid = _verify(
        args,
        PUSH_CONTEXT,
        signed_fields,
        public_key,
        allow_unsigned,
        "push",
        None if precheck is None else lambda: precheck(monitor, issued_at),
    )
    return PushRequest(rid, target, monitor, declared, size, issued_at, model, signed, kid)


def parse_rollback(
    args: Mapping[str, Any],
    *,
    request_id: str | None,
    device_id: str,
    public_key: Ed25519PublicKey | DeviceKey | None,
    allow_unsigned: bool,
    precheck: Precheck | None = None,
) -> RollbackRequest:
    """Check a rollback (``args`` without ``id``) as ``parse_push`` checks a push."""
    rid, target, monitor, issued_at = _common(args, request_id, device_id, _ROLLBACK_FIELDS)
    signed_fields = {"id": rid, "target": target, "monitor": monitor, "issued_at": issued_at}
    signed, kid = _verify(
        args,
        ROLLBACK_CONTEXT,
        signed_fields,
        public_key,
        allow_unsigned,
        "rollback",
        None if precheck is None else lambda: precheck(monitor, issued_at),
    )
    return RollbackRequest(rid, target, monitor, issued_at, signed, kid)


def parse_reset(
    args: Mapping[str, Any],
    *,
    request_id: str | None,
    device_id: str,
    public_key: Ed25519PublicKey | DeviceKey | None,
    precheck: ResetPrecheck | None = None,
) -> ResetRequest:
    """Check a reset (``args`` without ``id``): the fields as for a rollback, ``target``
    this device itself (never ``*``: the marker it clears is one device's), ``clears``
    a marker, and a signature by ``push.key_file`` whatever ``push.allow_unsigned``
    says: the replay markers outlive that setting, and an unsigned reset accepted in a
    lab would let old signed pushes be replayed once signatures are required again.
    ``precheck`` (the receiver's cheap checks) runs before the signature is verified."""
    rid, target, monitor, issued_at = _common(args, request_id, device_id, _RESET_FIELDS)
    if target != device_id:
        raise Refused(
            f"target: a reset addresses one device by its id ({device_id!r}), got {target!r}"
        )
    clears = args.get("clears")
    if not isinstance(clears, str) or not valid_issued_at(clears):
        raise Refused(
            f"clears: expected the replay marker to replace, ISO 8601 UTC with milliseconds "
            f"like {_ISSUED_AT_EXAMPLE} (the device's model topic shows it), got {_shown(clears)}"
        )
    signed_fields = {
        "id": rid,
        "target": target,
        "monitor": monitor,
        "clears": clears,
        "issued_at": issued_at,
    }
    if args.get("signature") is None:
        raise Refused(
            "unsigned reset refused: a reset must be signed with push.key, even with "
            "push.allow_unsigned: true"
        )
    kid = _check_signature(
        args,
        RESET_CONTEXT,
        signed_fields,
        public_key,
        "reset",
        None if precheck is None else lambda: precheck(monitor, issued_at, clears),
    )
    return ResetRequest(rid, target, monitor, issued_at, clears, kid)


def _common(
    args: Mapping[str, Any], request_id: str | None, device_id: str, allowed: frozenset[str]
) -> tuple[str, str, str | None, str]:
    """Checks shared by push and rollback: id, target, unknown fields, monitor, issued_at."""
    if not isinstance(request_id, str) or not request_id:
        raise Refused("id: a request id is required")
    if len(request_id) > MAX_ID_CHARS:
        raise Refused(f"id: expected at most {MAX_ID_CHARS} characters, got {len(request_id)}")
    target = args.get("target")
    if not isinstance(target, str):
        raise Refused(f"target: expected a device id or '*', got {_shown(target)}")
    if target not in (device_id, "*"):
        raise Refused(f"target: addressed to {_shown(target)}, not to this device {device_id!r}")
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise Refused(f"unknown field {_shown(unknown[0])}; expected: {', '.join(sorted(allowed))}")
    monitor = args.get("monitor")
    if monitor is not None and (not isinstance(monitor, str) or not monitor):
        raise Refused(f"monitor: expected a monitor name, got {_shown(monitor)}")
    issued_at = args.get("issued_at")
    if not isinstance(issued_at, str) or not valid_issued_at(issued_at):
        raise Refused(
            f"issued_at: expected ISO 8601 UTC with milliseconds like {_ISSUED_AT_EXAMPLE}, "
            f"got {_shown(issued_at)}"
        )
    return request_id, target, monitor, issued_at


def _verify(
    args: Mapping[str, Any],
    context: bytes,
    fields: Mapping[str, Any],
    public_key: Ed25519PublicKey | DeviceKey | None,
    allow_unsigned: bool,
    what: str,
    precheck: Callable[[], None] | None,
) -> tuple[bool, str | None]:
    """(signed, key id) if the signature checks out or unsigned is allowed; Refused if not
    (or if ``precheck``, run before the signature is verified, refuses)."""
    _claimed_key_id(args)
    if args.get("signature") is None:
        if not allow_unsigned:
            raise Refused(f"unsigned {what} refused (push.allow_unsigned is false)")
        if precheck is not None:
            precheck()
        return False, None
    return True, _check_signature(args, context, fields, public_key, what, precheck)


def _check_signature(
    args: Mapping[str, Any],
    context: bytes,
    fields: Mapping[str, Any],
    public_key: Ed25519PublicKey | DeviceKey | None,
    what: str,
    precheck: Callable[[], None] | None,
) -> str:
    """The id of ``public_key`` if the message's signature verifies with it; Refused if not.
    The signature's form is checked first, then ``precheck`` (cheap: no child process),
    and only then the signature itself (the daemon's ``DeviceKey`` spawns a child)."""
    signature, claimed = args.get("signature"), _claimed_key_id(args)
    if public_key is None:
        raise Refused("push.key_file is not set: cannot check the signature")
    if not isinstance(signature, str):
        raise Refused(f"signature: expected a base64 string, got {_shown(signature)}")
    ours = key_id(public_key)
    if precheck is not None:
        precheck()
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
        valid = _verifies(public_key, raw, canonical_bytes(context, fields))
    except (ValueError, binascii.Error):
        valid = False
    except ChildFailed as exc:
        raise Refused(f"signature: cannot be checked now ({exc}); send it again") from None
    if not valid:
        named = f"the {what} names key_id {_shown(claimed)}" if claimed else "it names no key_id"
        raise Refused(
            f"bad signature: it does not verify with push.key_file (key_id {ours}; {named})"
        )
    return ours


def _verifies(public_key: Ed25519PublicKey | DeviceKey, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` verifies; a ``DeviceKey`` (the daemon's) checks in a child."""
    if isinstance(public_key, DeviceKey):
        return public_key.verify(signature, data)
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def _claimed_key_id(args: Mapping[str, Any]) -> str | None:
    """The ``key_id`` a message names (None: none); Refused when it is not a string."""
    claimed = args.get("key_id")
    if claimed is not None and not isinstance(claimed, str):
        raise Refused(f"key_id: expected a string, got {_shown(claimed)}")
    return claimed


def _message(
    signed: dict[str, Any], context: bytes, private_key: Ed25519PrivateKey | None
) -> dict[str, Any]:
    """``signed`` (monitor left out when None) plus key_id and signature when signing."""
    message = {k: v for k, v in signed.items() if not (k == "monitor" and v is None)}
    if private_key is not None:
        message["key_id"] = key_id(private_key.public_key())
        signature = private_key.sign(canonical_bytes(context, signed))
        message["signature"] = base64.b64encode(signature).decode("ascii")
    return message


def valid_issued_at(text: str) -> bool:
    """Whether ``text`` is an ``issued_at`` as the messages carry it (ISO 8601 UTC with
    milliseconds, a real date)."""
    if not _ISSUED_AT.fullmatch(text):
        return False
    try:
        datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return False
    return True


def _shown(value: object) -> str:
    """A field's value for a refusal: repr, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
