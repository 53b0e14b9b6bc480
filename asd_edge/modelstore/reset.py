"""A signed reset of the replay state (``cmd/model/reset``): checked, then stored.

Once a push dated far ahead was accepted (by a version without the clock check, or
while the device's clock was wrong), every later push and rollback of its monitor is
a "replay" until the marker is replaced. A reset does that without a shell:

- ``monitor`` named: that monitor's marker (its own, or the floor it is held to) is
  replaced by the reset's ``issued_at``;
- no ``monitor``: the device's, i.e. the floor and every configured monitor's marker.

It is accepted only when signed by ``push.key_file`` (never unsigned), addressed to
this device by id, ``clears`` equal to the marker it replaces (as the ``model`` topic
shows it: ``replay_marker`` per monitor, ``replay_floor`` for the device), and its
``issued_at`` within ``push.max_clock_skew_s`` of the device's clock both ways. The
same reset sent again no longer matches ``clears`` (or is too old) and is refused.

What it allows, honestly: afterwards a push is accepted if it was signed after the
reset's ``issued_at``, including one signed (and refused as a replay) between the
reset's signing and its arrival. A request accepted before it and dated after it
could be replayed: the push dated far ahead itself (the clock check refuses it until
its date comes near), or one whose signer's clock ran at most
``push.max_clock_skew_s`` ahead. A device reset also raises a monitor's marker that
was below the reset's ``issued_at`` to it (harmless: it refuses only requests signed
before the reset). No model is loaded, swapped or removed; nothing else in
state.json changes.
"""

from __future__ import annotations

import dataclasses

import structlog

from ..errors import Refused
from .files import SlotState
from .replay import ReplayFloor, check_fresh, marker, write_floor
from .requests import pick_monitor
from .shared import ReplayReset, SharedState, _Command
from .slot import ModelSlot

__all__ = ["apply_reset"]

log = structlog.get_logger()


def apply_reset(shared: SharedState, item: _Command, device_id: str) -> ReplayReset:
    """Check the reset ``item`` and store the markers it sets (replay.json first, then
    each state.json, atomically); Refused naming the field when it is not accepted or
    cannot be stored. A monitor whose swap still waits to be written gets the new
    marker in memory only: the worker's write of that swap stores it."""
    from .signing import parse_reset

    with shared.lock:
        config, key, names = shared.config, shared.key, list(shared.slots)
    if config is None:
        raise Refused("the daemon has no models loaded yet")
    request = parse_reset(
        item.args, request_id=item.request_id, device_id=device_id, public_key=key
    )
    monitor = None if request.monitor is None else pick_monitor(request.monitor, names)
    check_fresh(request.issued_at, shared.wall(), config.push.max_clock_skew_s, monitor)
    new, rid = request.issued_at, request.id
    with shared.disk_lock:  # the worker's own thread: no swap is written meanwhile
        with shared.lock:
            if monitor is not None:
                known = marker(shared.slots[monitor].last_issued_at, shared.floor)
                slots = [shared.slots[monitor]]
            else:
                known, slots = shared.floor.issued_at, list(shared.slots.values())
            current = _check_clears(request.clears, known, monitor)
            waiting = {job.slot.name for job in shared.jobs}
            writes = [(slot, slot.state) for slot in slots if slot.name not in waiting]
        try:
            if monitor is None:
                floor = ReplayFloor(new, rid)
                write_floor(shared.root, floor)
                with shared.lock:
                    shared.floor = shared.floor_stored = floor
            for slot, state in writes:
                written = dataclasses.replace(state, last_issued_at=new, last_request_id=rid)
                slot.files.write_state(written)
                with shared.lock:
                    _set(slot, new, rid, state, written)
        except OSError as exc:
            raise Refused(f"the reset cannot be stored: {exc}", monitor=monitor) from None
        with shared.lock:
            for slot in slots:
                if slot.name in waiting:
                    _set(slot, new, rid, None, None)
    log.info(
        "replay_marker_reset",
        monitor=monitor,
        id=rid,
        key_id=request.key_id,
        cleared=current,
        marker=new,
    )
    return ReplayReset(rid, monitor, current, new)


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
