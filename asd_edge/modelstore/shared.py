"""What the model manager's API and its worker thread share: one lock and what it guards."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import structlog

from ..config import Config
from ..detector import Detector
from ..errors import Refused
from ..jsonvalues import iso_utc
from .checks import CaptureFacts
from .devicekey import DeviceKey
from .files import HeldFile, ModelRecord, MonitorFiles, SlotState, close_held
from .replay import ReplayFloor
from .requests import outcome
from .slot import ModelSlot

__all__ = ["SUPERSEDED", "ReplayReset", "Result", "SharedState", "Swap", "SwapSource"]

log = structlog.get_logger()

SwapSource = Literal["file", "push", "rollback", "learn"]


@dataclass(frozen=True, slots=True)
class Swap:
    """A validated model, ready to replace a monitor's detector between two ticks."""

    monitor: str
    """The monitor whose model it replaces."""
    detector: Detector
    """The new model, loaded and checked; the old one keeps running until the swap."""
    source: SwapSource
    """file (the config's model file was replaced), push or rollback."""
    request_id: str | None
    """The push or rollback request id; None for a file swap."""
    command: str | None
    """``model`` or ``model/rollback``; None for a file swap."""
    ticket: int
    """Identifies the swap to ``ModelManager.applied`` and ``discard``."""


@dataclass(frozen=True, slots=True)
class ReplayReset:
    """A signed reset accepted (``reset.py``): replay markers replaced, no model changed.
    The daemon passes it over (it only republishes the ``model`` topic)."""

    request_id: str
    monitor: str | None
    """The monitor whose marker it replaced; None: the device's (the floor and every
    configured monitor's)."""
    cleared: str
    """The marker it replaced."""
    marker: str
    """The marker now: the reset's issued_at (the device's floor: later if a monitor's
    marker that was not wedged is later, see ``reset.py``)."""


Result = Swap | Refused | ReplayReset
"""What ``ModelManager.take_results`` hands the daemon."""


# What the two threads pass each other (queue items, swaps pending, swaps to write),
# private to the wing.


@dataclass(slots=True)
class _Pending:
    """A swap handed over and not yet applied."""

    swap: Swap
    generation: int
    record: ModelRecord
    files: MonitorFiles
    held: HeldFile | None = None
    issued_at: str | None = None


@dataclass(frozen=True, slots=True)
class _Command:
    name: str
    args: dict[str, Any]
    request_id: str | None


@dataclass(frozen=True, slots=True)
class _Discard:
    files: MonitorFiles


@dataclass(frozen=True, slots=True)
class _Job:
    """A swap in service, to be written to disk by the worker."""

    slot: ModelSlot
    new: ModelRecord
    state: SlotState
    outgoing: ModelRecord
    held: HeldFile | None
    detector: Detector


SUPERSEDED: Final = "superseded: the configuration was reloaded while it was validated"
"""Why a candidate validated across a ``load`` (SIGHUP) is refused."""

_NUDGE: Final = object()


class SharedState:
    """What ``ModelManager`` (the daemon's and the MQTT thread's calls) and its worker
    (``worker.ModelWorker``) share. Every field is guarded by ``lock``, except the task
    queue (thread-safe itself); ``disk_lock`` serialises the store's files and is taken
    before ``lock``, never after it."""

    def __init__(self, root: Path, wall_clock: Callable[[], float]) -> None:
        self.root = root
        """``state_dir/models``: the monitors' folders and replay.json."""
        self.wall = wall_clock
        """Wall-clock seconds, for ``adopted_at`` and ``last_push``'s ``at``."""
        self.lock = threading.Lock()
        self.disk_lock = threading.Lock()  # taken before lock, never after it
        self.persisted = threading.Condition(self.lock)
        """Notified when ``jobs`` is empty (the worker has written every swap in service)."""
        self.tasks: queue.Queue[object] = queue.Queue()
        """The worker's work: commands, discards of incoming.onnx, nudges, its stop."""
        self.jobs: deque[_Job] = deque()
        """Swaps in service, still to be written to the store."""
        self.results: list[Result] = []
        """What ``take_results`` hands the daemon next."""
        self.pending: dict[int, _Pending] = {}
        """Swaps handed over and not yet applied, by ticket."""
        self.slots: dict[str, ModelSlot] = {}
        """Each monitor's slot, by name."""
        self.config: Config | None = None
        """The configuration of the last ``load``."""
        self.key: DeviceKey | None = None
        """The public key pushes are checked with (None: ``push.key_file`` unset)."""
        self.capture: CaptureFacts | None = None
        """The audio input's facts, once it is open."""
        self.generation = 0
        """Counts the ``load``s; a candidate picked up under an older one is superseded."""
        self.tickets = 0
        """The last ticket given to a Swap."""
        self.in_flight = 0
        """Pushes and rollbacks from submission until in service or refused."""
        self.flight: _Command | None = None
        """The push or rollback in flight."""
        self.last_push: dict[str, Any] | None = None
        """The outcome of the last push or rollback."""
        self.floor = ReplayFloor()
        """The device's replay floor (``replay.py``) as it stands."""
        self.floor_stored = ReplayFloor()
        """The floor as replay.json holds it (the worker writes ``floor`` when they differ)."""

    def nudge(self) -> None:
        """Wake the worker (it writes the swaps in service and takes up the watch period)."""
        self.tasks.put(_NUDGE)

    def release(self) -> None:
        """The push or rollback in flight has ended (lock held)."""
        self.in_flight -= 1
        self.flight = None

    def refuse(
        self,
        command: str | None,
        source: str,
        request_id: str | None,
        monitor: str | None,
        reason: str,
    ) -> None:
        """Hand the daemon a refusal of a candidate never handed over (takes the lock)."""
        with self.lock:
            self.results.append(
                Refused(
                    reason,
                    monitor=monitor,
                    request_id=request_id,
                    command=command,
                    source=source,
                )
            )
            slot = self.slots.get(monitor) if monitor is not None else None
            if slot is not None:
                slot.last_error = reason
            if command is not None:
                self.release()
                at = iso_utc(self.wall())
                self.last_push = outcome(command, request_id, monitor, at, None, reason)
        log.debug("model_candidate_refused", monitor=monitor, id=request_id, reason=reason)

    def drop(self, pending: _Pending, reason: str) -> Refused:
        """Turn a pending swap into a refusal (with the lock held)."""
        swap = pending.swap
        self.pending.pop(swap.ticket, None)
        close_held(pending.held)
        slot = self.slots.get(swap.monitor)
        if slot is not None:
            slot.last_error = reason
        if swap.command is not None:
            self.release()
            at = iso_utc(self.wall())
            self.last_push = outcome(swap.command, swap.request_id, swap.monitor, at, None, reason)
            self.tasks.put(_Discard(pending.files))
        log.debug(
            "model_candidate_refused", monitor=swap.monitor, id=swap.request_id, reason=reason
        )
        return Refused(
            reason,
            monitor=swap.monitor,
            request_id=swap.request_id,
            command=swap.command,
            source=swap.source,
        )
