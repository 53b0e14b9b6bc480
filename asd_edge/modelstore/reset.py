"""A signed reset of the replay state (``cmd/model/reset``): checked, then stored.

Once a push dated far ahead was accepted (by a version without the clock check, or
while the device's clock was wrong), every later push and rollback of its monitor is
a "replay" until the marker is replaced. A reset does that without a shell. It
replaces only a *wedged* marker, one that lies more than ``push.max_clock_skew_s``
ahead of the device's clock (no request signed since could pass it); a marker that
is not wedged is kept, raised to the reset's ``issued_at`` if it was below it:

- ``monitor`` named: that monitor's marker (its own, or the floor it is held to);
- no ``monitor``: the device's, i.e. the floor and every configured monitor's marker,
  each by that rule (a monitor that accepted a push after the reset was signed keeps
  that push's marker).

It is accepted only when signed by ``push.key_file`` (never unsigned), addressed to
this device by id, ``clears`` equal to the marker it replaces (as the ``model`` topic
shows it: ``replay_marker`` per monitor, ``replay_floor`` for the device), that marker
wedged (otherwise: "nothing to reset", since nothing would be lowered), and its
``issued_at`` within ``push.max_clock_skew_s`` of the device's clock both ways. The
same reset sent again no longer matches ``clears`` (or is too old) and is refused.
Every one of these checks runs before the signature is verified (a child process).

What it gives up, honestly: afterwards a push is accepted if it was signed after the
reset's ``issued_at``, including one signed (and refused as a replay) between the
reset's signing and its arrival. Of the requests accepted before it, only those that
set a wedged marker can be replayed: the push dated far ahead itself (the clock
check refuses it until its date comes near), and, on a monitor whose own marker was
wedged (or held to a wedged floor), one accepted there dated after the reset. A
marker that is not wedged is never lowered, so a request to another monitor accepted
meanwhile stays refused. No model is loaded, swapped or removed; nothing else in
state.json changes.

The markers are written first (replay.json, then each state.json that changes) and
take effect in memory only once every write succeeded: a reset that cannot be stored
is refused and changes nothing the device checks against, so a redelivery of it is
checked again, not dropped as a duplicate. (The files written before the failure
hold what the reset would have set, which is safe; the worker writes the floor in
memory back with the next swap.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import structlog

from ..errors import Refused
from ..jsonvalues import iso_utc
from .files import SlotState
from .replay import ReplayFloor, check_fresh, epoch_s, marker, write_floor
from .requests import pick_monitor
from .shared import ReplayReset, SharedState, _Command
from .slot import ModelSlot

__all__ = ["apply_reset"]

log = structlog.get_logger()


def apply_reset(shared: SharedState, item: _Command, device_id: str) -> ReplayReset:
    """Check the reset ``item`` and store the markers it sets (replay.json first, then
    each state.json that changes, atomically; in memory once all are written); Refused
    naming the field when it is not accepted or cannot be stored. A monitor whose swap
    still waits to be written gets the new marker in memory only: the worker's write of
    that swap stores it."""
    from .signing import parse_reset

    with shared.lock:
        config, key, names = shared.config, shared.key, list(shared.slots)
    if config is None:
        raise Refused("the daemon has no models loaded yet")
    skew_s = config.push.max_clock_skew_s

    def cheap(named: str | None, issued_at: str, clears: str) -> None:
        """Every check but the signature's, before it is verified (a child process)."""
        monitor = None if named is None else pick_monitor(named, names)
        now_s = shared.wall()
        check_fresh(issued_at, now_s, skew_s, monitor)
        with shared.lock:
            _plan(shared, monitor, clears, issued_at, "", now_s, skew_s)

    request = parse_reset(
        item.args,
        request_id=item.request_id,
        device_id=device_id,
        public_key=key,
        precheck=cheap,
    )
    monitor = None if request.monitor is None else pick_monitor(request.monitor, names)
    now_s = shared.wall()
    check_fresh(request.issued_at, now_s, skew_s, monitor)
    new, rid = request.issued_at, request.id
    with shared.disk_lock:  # the worker's own thread: no swap is written meanwhile
        with shared.lock:
            plan = _plan(shared, monitor, request.clears, new, rid, now_s, skew_s)
            waiting = {job.slot.name for job in shared.jobs}
            writes = [
                (slot, slot.state, value)
                for slot, value in plan.markers
                if slot.name not in waiting
            ]
        stored: ReplayFloor | None = None
        written: dict[str, tuple[SlotState, SlotState]] = {}
        try:
            if plan.floor is not None:
                write_floor(shared.root, plan.floor)
                stored = plan.floor
            for slot, state, value in writes:
                done = dataclasses.replace(state, last_issued_at=value, last_request_id=rid)
                slot.files.write_state(done)
                written[slot.name] = (state, done)
        except OSError as exc:
            if stored is not None:  # replay.json differs from the floor in memory
                with shared.lock:
                    shared.floor_stored = stored
            raise Refused(f"the reset cannot be stored: {exc}", monitor=monitor) from None
        with shared.lock:  # every write succeeded: the reset takes effect
            if plan.floor is not None:
                shared.floor = shared.floor_stored = plan.floor
            for slot, value in plan.markers:
                pair = written.get(slot.name)  # None: its swap's write stores it
                _set(slot, value, rid, *(pair or (None, None)))
    log.info(
        "replay_marker_reset",
        monitor=monitor,
        id=rid,
        key_id=request.key_id,
        cleared=plan.current,
        issued_at=new,
        marker=plan.marker,
        kept=plan.kept,
    )
    return ReplayReset(rid, monitor, plan.current, plan.marker)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a reset changes."""

    current: str
    """The marker it clears (the floor, or the named monitor's marker)."""
    marker: str
    """That marker after it: the reset's issued_at (the floor: the latest marker of a
    monitor kept, if any is later)."""
    floor: ReplayFloor | None
    """The device's new floor; None: unchanged (a monitor's reset)."""
    markers: list[tuple[ModelSlot, str]]
    """Each monitor whose own marker changes, with its new marker."""
    kept: list[str]
    """The monitors in its scope whose marker was not wedged, kept."""


def _plan(
    shared: SharedState,
    monitor: str | None,
    clears: str,
    new: str,
    rid: str,
    now_s: float,
    skew_s: float,
) -> _Plan:
    """The markers a reset to ``new`` sets (lock held); Refused unless ``clears`` is the
    marker it replaces and that marker is wedged (``_wedged``)."""
    if monitor is not None:
        slot_now = shared.slots.get(monitor)
        if slot_now is None:  # removed by a reload since the request was read
            raise Refused(f"monitor: {monitor!r} is no longer configured", monitor=monitor)
        known = marker(slot_now.last_issued_at, shared.floor)
        slots = [slot_now]
    else:
        known, slots = shared.floor.issued_at, list(shared.slots.values())
    current = _check_clears(clears, known, monitor)
    if not _wedged(current, now_s, skew_s):
        whose = "the device" if monitor is None else f"monitor {monitor!r}"
        raise Refused(
            f"nothing to reset: no marker is ahead of this device's clock ({iso_utc(now_s)}) "
            f"by more than push.max_clock_skew_s ({skew_s:g} s): the replay marker of {whose} "
            f"is {current}; a push or rollback signed after it is accepted",
            monitor=monitor,
        )
    markers, kept, values = [], [], [_replaced(current, new, now_s, skew_s)]
    for slot in slots:
        was = marker(slot.last_issued_at, shared.floor)
        value = _replaced(was, new, now_s, skew_s)
        values.append(value)
        if was is not None and not _wedged(was, now_s, skew_s):
            kept.append(slot.name)
        if value != slot.last_issued_at:
            markers.append((slot, value))
    if monitor is not None:
        return _Plan(current, values[0], None, markers, kept)
    floor = ReplayFloor(max(values), rid)  # never below a monitor's marker
    return _Plan(current, max(values), floor, markers, kept)


def _wedged(issued_at: str, now_s: float, skew_s: float) -> bool:
    """Whether a marker lies beyond what the device accepts now (its clock plus
    ``push.max_clock_skew_s``): no request signed since can pass it."""
    try:
        return epoch_s(issued_at) > now_s + skew_s
    except ValueError:  # a marker that is not a time (a hand-edited state.json): replace it
        return True


def _replaced(was: str | None, new: str, now_s: float, skew_s: float) -> str:
    """A marker ``was`` after a reset to ``new``: ``new`` if it was wedged (or none),
    else the later of the two (a marker not wedged is never lowered)."""
    if was is None or _wedged(was, now_s, skew_s):
        return new
    return max(was, new)


def _check_clears(clears: str, current: str | None, monitor: str | None) -> str:
    """``current``, the marker the reset replaces; Refused unless ``clears`` is it."""
    whose = "the device" if monitor is None else f"monitor {monitor!r}"
    if current is None:
        raise Refused(f"clears: {whose} has no replay marker: nothing to reset", monitor=monitor)
    if clears != current:
        raise Refused(
            f"clears: {clears} is not the replay marker of {whose} ({current}): the reset "
            "was made for another state, or is a replay; read the model topic and sign a "
            "new one (asd-train reset)",
            monitor=monitor,
        )
    return current


def _set(
    slot: ModelSlot, new: str, rid: str, before: SlotState | None, written: SlotState | None
) -> None:
    """The slot's marker in memory (lock held); its state, if it is still ``before``."""
    slot.last_issued_at, slot.last_request_id = new, rid
    if written is not None and slot.state is before:
        slot.state = written
