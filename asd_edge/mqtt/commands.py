"""Runtime control over MQTT: ``<prefix>/cmd/<name>`` messages parsed, checked and dispatched."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from ..config import PushConfig
from ..errors import CommandError

__all__ = [
    "COMMANDS",
    "MAX_COMMAND_BYTES",
    "Command",
    "CommandHandler",
    "CommandRouter",
    "CommandSpec",
    "Handler",
    "command_specs",
    "max_message_bytes",
    "parse_command",
    "peek_id",
]

log = structlog.get_logger()

MAX_COMMAND_BYTES: Final = 64 * 1024
"""No command payload may be larger than this, whatever its spec says."""
MAX_ID_CHARS: Final = 128
"""Longest request id echoed back in a reply."""
_SHOWN_CHARS: Final = 64
"""How much of an unknown command name is repeated in logs and replies."""
RETAINED_REASON: Final = (
    "retained: a command published with the retain flag is never executed (the broker "
    "would replay it at every reconnect); publish it without retain, and clear the "
    "retained one with an empty retained message on its topic"
)
"""The answer to a retained command (given once per message while the daemon runs)."""
TOPIC_ROOM_BYTES: Final = 64 * 1024
"""Room for a message's topic and properties beside its payload (``max_message_bytes``)."""
RETAINED_REMEMBERED: Final = 256
"""Retained commands remembered as answered (the oldest is forgotten beyond this)."""


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed, checked command."""

    name: str
    """The topic suffix after ``cmd/``, e.g. ``ping`` or ``model/rollback``."""
    id: str | None = None
    """The sender's request id, echoed in the reply; None if it sent none."""
    args: Mapping[str, Any] = field(default_factory=dict)
    """The other fields of the JSON object, checked against the command's spec."""


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """What a command accepts: its fields (besides ``id``) and its largest payload."""

    fields: Mapping[str, tuple[type, ...]] = field(default_factory=dict)
    """Allowed fields and their JSON types (``bool`` is not an ``int`` here)."""
    required: frozenset[str] = frozenset()
    """Fields that must be present."""
    max_bytes: int = 4096
    """Largest payload accepted, in bytes (at most MAX_COMMAND_BYTES unless ``bulk``)."""
    bulk: bool = False
    """The payload carries a file (a model push): only ``max_bytes`` limits its size."""


COMMANDS: Final[Mapping[str, CommandSpec]] = {
    "health": CommandSpec(),
    "ping": CommandSpec(),
}
"""The control commands: ``health`` (publish health now) and ``ping`` (reply at once)."""

_SIGNED = {"target": (str,), "monitor": (str, type(None)), "issued_at": (str,)}
_SIGNATURE = {"key_id": (str,), "signature": (str,)}
LEARN_FIELDS: Final = {
    "monitor": (str, type(None)),
    "seconds": (int, float, type(None)),
    "append": (bool,),
    "cancel": (bool,),
}
"""``cmd/learn``: learn ``monitor``'s normal sound for ``seconds`` (``append``: add to its
normal data), or ``cancel`` the learning in progress (``asd_edge.learning.learner``)."""
FEEDBACK_FIELDS: Final = {"alert_id": (str,), "verdict": (str,), "monitor": (str, type(None))}
"""``cmd/feedback``: the alert (or ``"last"`` of ``monitor``) was a false alarm
(``verdict: "normal"``): its clip is learned as normal."""
LIVE_FIELDS: Final = {"seconds": (int, float, type(None))}
"""``cmd/live``: publish ``<prefix>/live/<monitor>`` frames for ``seconds`` (1-300, default
30) from now (``asd_edge.live``)."""
CLIP_FIELDS: Final = {"alert_id": (str,)}
"""``cmd/clip``: publish the alert's saved clip once on ``<prefix>/clip/<alert_id>``."""
PUSH_OVERHEAD_BYTES: Final = 4096
"""Room for a push message's fields besides the base64 model."""


def command_specs(push: PushConfig) -> dict[str, CommandSpec]:
    """Every command the daemon understands, with ``model`` sized for ``push.max_mb``.

    ``model`` (a push, see ``asd_edge.modelstore.signing``) carries the model as base64, 4/3 of
    its size; ``model/rollback`` returns a monitor to its previous model; ``model/reset``
    replaces replay markers (``asd_edge.modelstore.reset``); ``learn`` learns
    a monitor's normal sound on the device; ``feedback`` learns a false alarm's clip as
    normal; ``live`` leases the live feed; ``clip`` publishes an alert's saved clip.
    """
    max_model_bytes = math.ceil(push.max_mb * 1e6)
    return {
        **COMMANDS,
        "model": CommandSpec(
            fields={**_SIGNED, **_SIGNATURE, "sha256": (str,), "size": (int,), "model": (str,)},
            required=frozenset({"target", "issued_at", "sha256", "size", "model"}),
            max_bytes=4 * math.ceil(max_model_bytes / 3) + PUSH_OVERHEAD_BYTES,
            bulk=True,
        ),
        "model/rollback": CommandSpec(
            fields={**_SIGNED, **_SIGNATURE},
            required=frozenset({"target", "issued_at"}),
        ),
        "model/reset": CommandSpec(
            fields={**_SIGNED, **_SIGNATURE, "clears": (str,)},
            required=frozenset({"target", "issued_at", "clears"}),
        ),
        "learn": CommandSpec(fields=LEARN_FIELDS),
        "feedback": CommandSpec(
            fields=FEEDBACK_FIELDS, required=frozenset({"alert_id", "verdict"})
        ),
        "live": CommandSpec(fields=LIVE_FIELDS),
        "clip": CommandSpec(fields=CLIP_FIELDS, required=frozenset({"alert_id"})),
    }


def max_message_bytes(commands: Mapping[str, CommandSpec]) -> int:
    """The largest message the link reads whole: the largest command payload plus room
    for its topic and MQTT 5 properties."""
    return max(spec.max_bytes for spec in commands.values()) + TOPIC_ROOM_BYTES


Handler = Callable[[Command], Mapping[str, Any] | None]
"""Carries out one command; may return a result mapping that goes into the reply."""


def parse_command(
    suffix: str, payload: bytes, *, commands: Mapping[str, CommandSpec] = COMMANDS
) -> Command:
    """Check one ``cmd/<suffix>`` message and return the Command it asks for.

    The payload is a UTF-8 JSON object (an empty payload counts as ``{}``) with an
    optional string ``id`` and the fields the command's spec allows. Raises
    CommandError naming what is wrong: unknown command, oversized, not UTF-8, not
    JSON, not an object, an unknown field, a missing field or a field of the wrong type.
    """
    shown = _shown(suffix)
    spec = commands.get(suffix)
    if spec is None:
        known = ", ".join(sorted(commands))
        raise CommandError(
            f"unknown command {shown!r}; known: {known}", command=shown, id=peek_id(payload)
        )
    limit = spec.max_bytes if spec.bulk else min(spec.max_bytes, MAX_COMMAND_BYTES)
    if len(payload) > limit:
        raise CommandError(
            f"payload too large: {len(payload)} bytes, at most {limit}",
            command=suffix,
            id=peek_id(payload),
        )
    if not payload.strip():
        data: object = {}
    else:
        try:
            text = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CommandError(
                f"payload is not UTF-8: {exc.reason} at byte {exc.start}", command=suffix
            ) from exc
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except json.JSONDecodeError as exc:
            raise CommandError(f"payload is not JSON: {exc}", command=suffix) from exc
        except RecursionError as exc:
            raise CommandError("payload is not JSON: nested too deeply", command=suffix) from exc
        except ValueError as exc:
            raise CommandError(f"payload is not standard JSON: {exc}", command=suffix) from exc
    if not isinstance(data, dict):
        raise CommandError(
            f"payload: expected a JSON object, got {_json_type(data)}", command=suffix
        )
    request_id = data.get("id")
    if request_id is not None and (not isinstance(request_id, str) or not request_id):
        raise CommandError(
            f"id: expected a non-empty string, got {_json_type(request_id)}", command=suffix
        )
    if isinstance(request_id, str) and len(request_id) > MAX_ID_CHARS:
        raise CommandError(
            f"id: expected at most {MAX_ID_CHARS} characters, got {len(request_id)}",
            command=suffix,
        )
    if isinstance(request_id, str) and not _encodable(request_id):
        raise CommandError(  # a lone UTF-16 surrogate ("\ud800"): no reply could carry it
            "id: expected Unicode text, got a lone surrogate (\\ud800-\\udfff)",
            command=suffix,
        )
    args = {key: value for key, value in data.items() if key != "id"}
    for key, value in args.items():
        types = spec.fields.get(key)
        if types is None:
            allowed = ", ".join(["id", *sorted(spec.fields)])
            raise CommandError(
                f"unknown field {_shown(key)!r}; expected one of: {allowed}",
                command=suffix,
                id=request_id,
            )
        if not _is_json_type(value, types):
            expected = " or ".join(t.__name__ for t in types)
            raise CommandError(
                f"{key}: expected {expected}, got {_json_type(value)}",
                command=suffix,
                id=request_id,
            )
    missing = sorted(spec.required - args.keys())
    if missing:
        raise CommandError(f"missing field(s): {', '.join(missing)}", command=suffix, id=request_id)
    return Command(name=suffix, id=request_id, args=args)


CommandHandler = Callable[[str, bytes, bool], None]
"""What the link calls for each ``<prefix>/cmd/<suffix>`` message: (suffix, payload,
retained); ``CommandRouter`` is the daemon's."""


class CommandRouter:
    """Parses each ``cmd/...`` message, runs its handler and replies; nothing ever escapes.

    Call it as ``router(suffix, payload, retained)`` (MqttLink's ``on_command``). Every
    message gets one reply through ``reply`` (e.g. ``MqttLink.publish_command_result``):
    ``{"command", "id", "ok", "error"}`` plus ``"result"`` when the handler returns one.
    A malformed message or a failing handler is logged as ``command_rejected`` and
    counted in ``rejected``. ``ping`` is built in unless ``handlers`` overrides it.
    A message the broker replays from its retained store (at every subscription) is
    never run: it is refused with ``RETAINED_REASON`` the first time this router sees
    it, and passed over silently when the broker replays it again. (A retained message
    published while subscribed arrives with the flag cleared, as MQTT requires, and
    runs once.)
    """

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        *,
        reply: Callable[[dict[str, Any]], None] | None = None,
        commands: Mapping[str, CommandSpec] = COMMANDS,
    ) -> None:
        self.handlers: dict[str, Handler] = {"ping": _pong, **handlers}
        self.reply = reply
        """Where replies go; may be set after construction (the link is made after the router)."""
        self.commands = commands
        self.received = 0
        self.handled = 0
        self.rejected = 0
        self._retained_seen: dict[bytes, None] = {}  # digests, oldest first

    def __call__(self, suffix: str, payload: bytes, retained: bool = False) -> None:
        """Handle one message from ``<prefix>/cmd/<suffix>``; never raises."""
        self.received += 1
        try:
            if retained:
                self._refuse_retained(suffix, payload)
                return
            self._handle(suffix, payload)
        except Exception as exc:  # supervisor boundary: nothing reaches paho
            self._reject(
                _shown(suffix),
                None,
                f"internal error: {type(exc).__name__}: {exc}",
                size=len(payload),
                unexpected=True,
            )

    def _handle(self, suffix: str, payload: bytes) -> None:
        try:
            command = parse_command(suffix, payload, commands=self.commands)
        except CommandError as exc:
            self._reject(exc.command or _shown(suffix), exc.id, exc.reason, size=len(payload))
            return
        handler = self.handlers.get(command.name)
        if handler is None:
            self._reject(
                command.name,
                command.id,
                f"command {command.name!r} is not available",
                size=len(payload),
            )
            return
        try:
            result = handler(command)
        except CommandError as exc:
            self._reject(command.name, command.id, exc.reason, size=len(payload))
            return
        except Exception as exc:  # a handler's bug must not stop the others
            self._reject(
                command.name,
                command.id,
                f"{type(exc).__name__}: {exc}",
                size=len(payload),
                unexpected=True,
            )
            return
        self.handled += 1
        log.info("command_handled", command=command.name, id=command.id)
        answer: dict[str, Any] = {
            "command": command.name,
            "id": command.id,
            "ok": True,
            "error": None,
        }
        if result is not None:
            answer["result"] = dict(result)
        self._send(answer)

    def _refuse_retained(self, suffix: str, payload: bytes) -> None:
        key = hashlib.sha256(suffix.encode("utf-8", "replace") + b"\0" + payload).digest()
        if key in self._retained_seen:
            log.debug("command_retained_again", command=_shown(suffix))
            return
        self._retained_seen[key] = None
        if len(self._retained_seen) > RETAINED_REMEMBERED:
            del self._retained_seen[next(iter(self._retained_seen))]
        self._reject(_shown(suffix), peek_id(payload), RETAINED_REASON, size=len(payload))

    def _reject(
        self,
        command: str,
        request_id: str | None,
        reason: str,
        *,
        size: int,
        unexpected: bool = False,
    ) -> None:
        self.rejected += 1
        log.warning(
            "command_rejected",
            command=command,
            id=request_id,
            reason=reason,
            size=size,
            exc_info=unexpected,
        )
        self._send({"command": command, "id": request_id, "ok": False, "error": reason})

    def _send(self, answer: dict[str, Any]) -> None:
        if self.reply is None:
            return
        try:
            self.reply(answer)
        except Exception as exc:  # a failed reply must not escape into paho
            log.error("command_reply_failed", command=answer.get("command"), error=str(exc))


def _pong(_command: Command) -> None:
    """``ping``: nothing to do; the reply is the answer."""
    return None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _shown(text: str) -> str:
    """``text`` cut to a length fit for logs and replies."""
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _is_json_type(value: object, types: tuple[type, ...]) -> bool:
    """isinstance, except that a boolean is never accepted as a number."""
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


_LEADING_ID = re.compile(rb'^\s*\{\s*"id"\s*:\s*"([^"\\]{1,128})"')
"""An ``id`` written first in a JSON object (``asd-train push`` does): found without parsing."""


def peek_id(payload: bytes) -> str | None:
    """The request id of a payload that will be refused anyway, so that the reply can
    still name it; None when there is no usable one. A payload too large to parse is
    searched for a leading ``"id"`` only."""
    if len(payload) > MAX_COMMAND_BYTES:
        match = _LEADING_ID.match(payload[:512])
        try:
            return match.group(1).decode("utf-8") if match else None
        except UnicodeDecodeError:
            return None
    try:
        data = json.loads(bytes(payload).decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    request_id = data.get("id") if isinstance(data, dict) else None
    if isinstance(request_id, str) and 0 < len(request_id) <= MAX_ID_CHARS:
        return request_id if _encodable(request_id) else None
    return None


def _encodable(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (JSON's ``\\ud800`` escapes decode to lone
    surrogates, which cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
