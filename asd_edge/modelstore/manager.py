"""The model manager: which model each monitor runs, hot-swaps, pushes, rollbacks, resets."""

# The API every thread calls; the worker thread (worker.ModelWorker) does the slow work,
# and what the two share is in shared.SharedState, behind one lock.

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import structlog

from ..config import Config, MonitorConfig
from ..detector import Detector
from ..errors import CommandError, ConfigError, ModelError, Unfit
from ..jsonvalues import iso_utc
from .checks import CaptureFacts, check_fit
from .files import SlotState, close_held
from .replay import ReplayFloor, marker, read_floor, write_floor
from .requests import RESET_COMMAND, is_duplicate, load_key, outcome
from .shared import SUPERSEDED, Result, SharedState, Swap, _Command, _Job
from .slot import ModelSlot, load_slot
from .worker import ModelWorker

__all__ = ["MAX_IN_FLIGHT", "ModelManager"]

log = structlog.get_logger()

MAX_IN_FLIGHT: Final = 1
"""Pushes and rollbacks handled at once, from submission until in service or refused."""
PERSIST_WAIT_S: Final = 30.0
"""How long ``load`` waits for swaps already in service to be written."""


class ModelManager:
    """Which model each monitor runs, and every change to it. Thread-safe.

    ``load`` (start, SIGHUP) picks each monitor's model: the stored one (pushed or
    rolled back) while the config's model file is what it was when that was adopted,
    else the config's. A worker thread (``worker.ModelWorker``, ``start``/``stop``)
    does everything slow: pushes and rollbacks (``submit_push``/``submit_rollback``
    return at once), watching the config's model files every ``detector.watch_s``,
    validating candidates beside the running model, and writing
    ``state_dir/models/<monitor>/``. Between two ticks the daemon collects
    ``take_results``, puts each Swap's detector in service and calls ``applied``.
    Nothing is written while nothing changes.

    Replay state: each monitor's marker (state.json) and the device's floor
    (``state_dir/models/replay.json``, ``replay.py``), which holds a monitor without a
    marker of its own; ``submit_reset`` replaces them (``reset.py``).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        device_id: str,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(state_dir) / "models"
        """Where each monitor's models and state live (``state_dir/models/<monitor>``)."""
        self.device_id = device_id
        self._shared = SharedState(self.root, wall_clock)
        self._worker = ModelWorker(self._shared, device_id=device_id)

    # --- the daemon's thread -------------------------------------------------------

    def load(self, config: Config) -> dict[str, Detector]:
        """Load every monitor's model (see the class); the watcher follows ``config``.

        Raises ConfigError listing every failing ``monitors[i].model``, or naming
        ``push.key_file``; the store is then unchanged (a failed SIGHUP changes nothing).
        Once ``set_capture`` was called (a reload), each model must also fit the running
        capture (``check_capture``).
        """
        shared = self._shared
        key = load_key(config)
        self._wait_persisted()
        root = self.root
        slots: dict[str, ModelSlot] = {}
        detectors: dict[str, Detector] = {}
        problems: list[str] = []
        demotions: list[tuple[ModelSlot, bool]] = []
        with shared.disk_lock:
            for index, cfg in enumerate(config.monitors):
                try:
                    slot, detector, demote = load_slot(cfg, config.detector.threads, root)
                except ModelError as exc:
                    problems.append(f"monitors[{index}].model: {exc}")
                    continue
                slots[cfg.name], detectors[cfg.name] = slot, detector
                unfit = self.check_capture(detector, cfg)
                if unfit is not None:
                    problems.append(f"monitors[{index}].model: {unfit}")
                    continue
                if demote is not None:
                    demotions.append((slot, demote))
            if problems:
                for slot in slots.values():
                    close_held(slot.held)
                raise ConfigError(problems)
            for slot, keep in demotions:
                try:
                    slot.state = slot.files.demote_active(slot.state, slot.running, keep=keep)
                except OSError as exc:
                    log.error("model_store_write_failed", monitor=slot.config.name, error=str(exc))
            floor, stored = self._load_floor(slots)
        with shared.lock:
            shared.floor, shared.floor_stored = floor, stored
            for name, old in shared.slots.items():
                new = slots.get(name)
                if new is not None and (old.last_issued_at or "") > (new.last_issued_at or ""):
                    new.last_issued_at, new.last_request_id = (
                        old.last_issued_at,
                        old.last_request_id,
                    )
                close_held(old.held)
            shared.slots, shared.config, shared.key = slots, config, key
            shared.generation += 1
        shared.nudge()  # the worker takes up the new watch period
        return detectors

    def _load_floor(self, slots: Mapping[str, ModelSlot]) -> tuple[ReplayFloor, ReplayFloor]:
        """The device's replay floor at ``load`` (disk lock held) and what replay.json
        holds after it: replay.json's (or, without one, every monitor folder's latest
        marker), raised to each configured monitor's marker and to a floor a failed
        write left in memory; written back when that changed it."""
        floor, rewrite = read_floor(self.root, skip=slots.keys())
        with self._shared.lock:
            known = self._shared.floor
        raised = [(known.issued_at, known.request_id)]
        raised += [(slot.last_issued_at, slot.last_request_id) for slot in slots.values()]
        for issued_at, request_id in raised:
            if issued_at is not None and issued_at > (floor.issued_at or ""):
                floor, rewrite = floor.raised(issued_at, request_id), True
        if not rewrite:
            return floor, floor
        try:
            write_floor(self.root, floor)
        except OSError as exc:
            log.error("replay_floor_write_failed", path=str(self.root), error=str(exc))
            return floor, ReplayFloor()
        return floor, floor

    def set_capture(self, sample_rate: int, ring_s: float) -> None:
        """The audio input's facts, once it is open: a candidate must be servable at
        ``sample_rate`` and its window must fit in ``ring_s`` seconds with room."""
        with self._shared.lock:
            self._shared.capture = CaptureFacts(int(sample_rate), float(ring_s))

    def check_capture(self, detector: Detector, cfg: MonitorConfig) -> str | None:
        """Why ``detector`` cannot serve monitor ``cfg`` on the running capture (rate
        servable, window fits ``ring_s`` with room, noise through the monitor's pipeline
        scores finitely), as pushes and file swaps are checked; None when it can. Before
        ``set_capture`` only the noise check runs, at the model's own rate."""
        with self._shared.lock:
            capture = self._shared.capture
        try:
            check_fit(detector, cfg, capture)
        except Unfit as exc:
            return str(exc)
        return None

    def take_results(self) -> list[Result]:
        """Swaps ready to be put in service and refusals to report; never waits on work.

        Each Swap must get ``applied`` (or ``discard``) before the next ``load``; a
        swap validated under a configuration since reloaded comes back as a Refused.
        """
        shared = self._shared
        with shared.lock:
            items, shared.results = shared.results, []
            out: list[Result] = []
            for item in items:
                pending = shared.pending.get(item.ticket) if isinstance(item, Swap) else None
                if pending is None or (
                    pending.generation == shared.generation and pending.swap.monitor in shared.slots
                ):
                    out.append(item)
                else:
                    out.append(shared.drop(pending, SUPERSEDED))
            return out

    def applied(self, swap: Swap) -> None:
        """The daemon has put ``swap``'s detector in service: the facts change now, the
        worker writes the store (previous.onnx, active.onnx, state.json) and the
        detector's ``path`` names active.onnx (the config's file for a file swap)."""
        shared = self._shared
        with shared.lock:
            pending = shared.pending.pop(swap.ticket, None)
            slot = shared.slots.get(swap.monitor)
            if pending is None or slot is None or pending.generation != shared.generation:
                log.warning("model_swap_unknown", monitor=swap.monitor, ticket=swap.ticket)
                if pending is not None:  # its command ends here: the in-flight slot is free
                    gone = slot is None
                    shared.drop(
                        pending, f"monitor {swap.monitor!r} is gone" if gone else SUPERSEDED
                    )
                return
            now = iso_utc(shared.wall())
            config_sha = pending.record.config_sha256 or slot.config_sha256
            new = dataclasses.replace(pending.record, adopted_at=now, config_sha256=config_sha)
            outgoing, held = slot.running, slot.held
            slot.config_sha256 = config_sha
            if pending.issued_at is not None:
                slot.last_issued_at, slot.last_request_id = pending.issued_at, swap.request_id
                shared.floor = shared.floor.raised(pending.issued_at, swap.request_id)
            state = SlotState(
                active=new,
                previous=dataclasses.replace(outgoing, stored=True),
                last_issued_at=slot.last_issued_at,
                last_request_id=slot.last_request_id,
            )
            slot.running, slot.state, slot.held, slot.last_error = new, state, pending.held, None
            if new.stored:
                swap.detector.path = str(slot.files.active)
            if swap.command is not None:
                shared.release()
                shared.last_push = outcome(swap.command, swap.request_id, swap.monitor, now, new)
            shared.jobs.append(_Job(slot, new, state, outgoing, held, swap.detector))
        shared.nudge()

    def discard(self, swap: Swap, reason: str) -> None:
        """The daemon will not put ``swap`` in service: it is reported as refused."""
        with self._shared.lock:
            pending = self._shared.pending.get(swap.ticket)
            if pending is not None:
                self._shared.drop(pending, reason)

    def facts(self, monitor: str) -> dict[str, Any]:
        """For the ``model`` topic: ``source``, ``previous`` ({name, version, sha256} or
        None) and ``last_error`` of a loaded monitor's model, and its ``replay_marker``
        (the issued_at a push or rollback must be later than: its own marker, or the
        device's floor; None: any; what ``asd-train reset --monitor`` clears)."""
        with self._shared.lock:
            slot = self._shared.slots[monitor]
            previous = slot.state.previous
            return {
                "source": slot.running.source,
                "previous": None if previous is None else previous.facts(),
                "last_error": slot.last_error,
                "replay_marker": marker(slot.last_issued_at, self._shared.floor),
            }

    def replay_floor(self) -> str | None:
        """The device's replay floor (the ``model`` topic's ``replay_floor``: the latest
        issued_at accepted on the device, or set by a reset; what ``asd-train reset``
        without ``--monitor`` clears); None: none yet."""
        with self._shared.lock:
            return self._shared.floor.issued_at

    def last_push(self) -> dict[str, Any] | None:
        """The outcome of the last push or rollback (the ``model`` topic's ``last_push``)."""
        with self._shared.lock:
            last = self._shared.last_push
            return None if last is None else dict(last)

    # --- the MQTT thread -----------------------------------------------------------

    def submit_push(self, args: Mapping[str, Any], request_id: str | None) -> None:
        """Queue a ``cmd/model`` push (its JSON object without ``id``); returns at once.

        Raises CommandError ("busy: ...") while another push or rollback is in flight.
        """
        self._submit("model", args, request_id)

    def submit_rollback(self, args: Mapping[str, Any], request_id: str | None) -> None:
        """Queue a ``cmd/model/rollback``; returns at once (CommandError when busy)."""
        self._submit("model/rollback", args, request_id)

    def submit_reset(self, args: Mapping[str, Any], request_id: str | None) -> None:
        """Queue a ``cmd/model/reset`` (``reset.py``): replay markers replaced, no model
        changed; returns at once (CommandError when busy)."""
        self._submit(RESET_COMMAND, args, request_id)

    def submit_learned(self, monitor: str, model: bytes, request_id: str | None) -> None:
        """Queue a model learned on the device (``asd_edge.learning``) for ``monitor``:
        validated like a push (no signature: the daemon made it), stored like one, and
        put in service with ``source: "learn"``. CommandError ("busy: ...") while a push
        or rollback is in flight."""
        self._submit("learn", {"monitor": monitor, "model": model}, request_id)

    def _submit(self, command: str, args: Mapping[str, Any], request_id: str | None) -> None:
        shared = self._shared
        item = _Command(command, dict(args), request_id)
        with shared.lock:
            flight_id = None if shared.flight is None else shared.flight.request_id
            if is_duplicate(
                request_id,
                item.args,
                flight_id,
                shared.slots,
                command=command,
                floor=shared.floor,
            ):
                log.debug("model_command_duplicate", command=command, id=request_id)
                return
            if shared.in_flight >= MAX_IN_FLIGHT:
                raise CommandError(
                    "busy: a model push is already being processed", command=command, id=request_id
                )
            shared.in_flight += 1
            shared.flight = item
        shared.tasks.put(item)

    # --- the worker ----------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (after ``load`` and ``set_capture``)."""
        self._worker.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the worker once the swaps already in service are written, and let go
        of the files held open."""
        if not self._worker.stop(timeout_s):
            return
        with self._shared.lock:
            for slot in self._shared.slots.values():
                close_held(slot.held)
            for pending in self._shared.pending.values():
                close_held(pending.held)

    def _wait_persisted(self) -> None:
        """Swaps already in service reach the disk before ``load`` reads it."""
        if not self._worker.alive:
            self._worker.write_jobs()
            return
        shared = self._shared
        shared.nudge()
        with shared.persisted:
            if not shared.persisted.wait_for(lambda: not shared.jobs, PERSIST_WAIT_S):
                log.warning("model_store_write_slow", waited_s=PERSIST_WAIT_S)
