"""The device's replay state: each monitor's marker, the device-wide floor, their checks.

A signed push or rollback is accepted only if its ``issued_at`` is later than its
monitor's replay marker (``state.json``'s ``last_issued_at``). Beside those markers the
device keeps one floor, ``state_dir/models/replay.json``: the latest ``issued_at`` it
ever accepted (or a reset set). A monitor without a marker of its own (new, renamed,
or its state.json lost or damaged) is held to the floor, so that no old signed
message can be replayed onto it; the floor survives a reinstall that keeps
``state_dir``. A signed reset (``cmd/model/reset``, ``reset.py``) replaces a marker
that lies in the future (accepted while a clock was wrong).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import structlog

from ..durable import read_regular, write_atomic
from ..errors import Refused
from ..jsonvalues import iso_utc
from .files import STATE_NAME, MonitorFiles, schema_object
from .signing import valid_issued_at

__all__ = [
    "REPLAY_NAME",
    "RESET_MIN_AGE_S",
    "ReplayFloor",
    "check_fresh",
    "check_not_ahead",
    "check_replay",
    "epoch_s",
    "marker",
    "read_floor",
    "write_floor",
]

log = structlog.get_logger()

REPLAY_NAME: Final = "replay.json"
"""The device-wide replay floor, in ``state_dir/models/`` (no monitor name has a dot)."""
REPLAY_SCHEMA: Final = 1
REPLAY_MAX_BYTES: Final = 4096
"""The largest replay.json read: it holds two short strings; a larger one is damaged."""
RESET_MIN_AGE_S: Final = 60.0
"""However small ``push.max_clock_skew_s`` is, a reset may be this old when it arrives
(its time on the way through the broker)."""


@dataclass(frozen=True, slots=True)
class ReplayFloor:
    """The contents of replay.json."""

    issued_at: str | None = None
    """The latest issued_at the device accepted (or the last device reset's); None: none
    yet."""
    request_id: str | None = None
    """The request that set it."""

    def as_dict(self) -> dict[str, Any]:
        """The floor as JSON data."""
        return {"schema": REPLAY_SCHEMA, "floor": self.issued_at, "request_id": self.request_id}

    @classmethod
    def from_dict(cls, data: object) -> ReplayFloor:
        """The floor in ``data``; ValueError naming the field when malformed."""
        data = schema_object(data, REPLAY_SCHEMA)
        floor, request_id = data.get("floor"), data.get("request_id")
        if floor is not None and not (isinstance(floor, str) and valid_issued_at(floor)):
            raise ValueError(f"floor: expected an ISO 8601 UTC time or null, got {floor!r}")
        if request_id is not None and not isinstance(request_id, str):
            raise ValueError(f"request_id: expected a string or null, got {request_id!r}")
        return cls(floor, request_id)

    def raised(self, issued_at: str, request_id: str | None) -> ReplayFloor:
        """This floor, or ``issued_at`` if that is later."""
        if self.issued_at is not None and self.issued_at >= issued_at:
            return self
        return ReplayFloor(issued_at, request_id)


def marker(own: str | None, floor: ReplayFloor) -> str | None:
    """A monitor's replay marker: its own, or the device's floor when it has none."""
    return own if own is not None else floor.issued_at


def read_floor(root: Path, *, skip: Collection[str] = ()) -> tuple[ReplayFloor, bool]:
    """The floor in ``root`` (``state_dir/models``) and whether it must be written.

    Without a readable replay.json (first start of a version that keeps one, or the file
    damaged) the floor is the latest marker of every monitor folder under ``root``,
    configured or not, but those in ``skip`` (read already; the caller raises the floor
    to their markers): the safe side (a reset lowers it), to be written back if there
    is one. Reads, never writes."""
    path = root / REPLAY_NAME
    try:
        return ReplayFloor.from_dict(json.loads(read_regular(path, REPLAY_MAX_BYTES))), False
    except FileNotFoundError:
        pass
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        log.warning("replay_floor_unreadable", path=str(path), error=str(exc))
    floor = ReplayFloor()
    for state in sorted(root.glob(f"*/{STATE_NAME}")):
        if state.parent.name in skip:
            continue
        slot = MonitorFiles(root, state.parent.name).read_state()
        if slot.last_issued_at is not None and valid_issued_at(slot.last_issued_at):
            floor = floor.raised(slot.last_issued_at, slot.last_request_id)
    return floor, floor.issued_at is not None


def write_floor(root: Path, floor: ReplayFloor) -> None:
    """Replace replay.json atomically (OSError when the disk refuses)."""
    root.mkdir(parents=True, exist_ok=True)
    text = json.dumps(floor.as_dict(), indent=2, sort_keys=True) + "\n"
    write_atomic(root / REPLAY_NAME, text.encode("utf-8"))


def check_replay(monitor: str, issued_at: str, own: str | None, floor: ReplayFloor) -> None:
    """Refused unless ``issued_at`` is later than the monitor's replay marker (``marker``).
    (No exception for a marker in the future: trusting the device's clock to lower it
    would let an old signed request be replayed whenever that clock runs behind; a
    signed reset lowers it.)"""
    last = marker(own, floor)
    if last is None or issued_at > last:
        return
    whose = (
        f"the last accepted push or rollback of monitor {monitor!r} ({last})"
        if own is not None
        else f"the device's replay floor ({last}; monitor {monitor!r} has no marker of its own)"
    )
    raise Refused(
        f"issued_at: {issued_at} is not later than {whose}: a replay is refused",
        monitor=monitor,
    )


def check_not_ahead(
    issued_at: str, now_s: float, max_ahead_s: float, monitor: str | None, *, what: str = "push"
) -> None:
    """Refused when ``issued_at`` lies more than ``max_ahead_s`` ahead of the device's clock
    (``now_s``, epoch seconds): the signer's clock or this device's is wrong. (Accepted,
    it would make every later request look like a replay.)"""
    ahead_s = epoch_s(issued_at) - now_s
    if ahead_s > max_ahead_s:
        raise Refused(
            f"issued_at: {issued_at} is {ahead_s:.0f} s ahead of this device's clock "
            f"({iso_utc(now_s)}), more than push.max_clock_skew_s ({max_ahead_s:g} s): "
            f"set the clock of the signer or of the device (NTP) and {what} again",
            monitor=monitor,
        )


def check_fresh(issued_at: str, now_s: float, max_skew_s: float, monitor: str | None) -> None:
    """A reset's ``issued_at`` must lie within ``max_skew_s`` of the device's clock both
    ways (behind: at least ``RESET_MIN_AGE_S``), so that a signed reset kept from the
    broker cannot be used later; Refused naming the field otherwise."""
    check_not_ahead(issued_at, now_s, max_skew_s, monitor, what="reset")
    behind_s = now_s - epoch_s(issued_at)
    allowed_s = max(max_skew_s, RESET_MIN_AGE_S)
    if behind_s > allowed_s:
        raise Refused(
            f"issued_at: {issued_at} is {behind_s:.0f} s behind this device's clock "
            f"({iso_utc(now_s)}), more than {allowed_s:g} s (push.max_clock_skew_s): a reset "
            "must be fresh; sign a new one (asd-train reset), or set the device's clock (NTP)",
            monitor=monitor,
        )


def epoch_s(issued_at: str) -> float:
    """Epoch seconds of an ``issued_at`` (ISO 8601 UTC with milliseconds, as checked)."""
    return datetime.strptime(issued_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
