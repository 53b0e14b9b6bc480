"""The model manager: which model each monitor runs, hot-swaps, pushes and rollbacks."""

# One class behind one lock, so it runs past the usual ~400 lines; its pure parts live
# in files (disk), slot (start-up choice), requests and checks.

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import structlog

from ..config import Config, MonitorConfig
from ..detector import Detector
from ..errors import CommandError, ConfigError, ModelError, Refused, Unfit
from ..jsonvalues import iso_utc
from .checks import CaptureFacts, check_fit, validate_candidate
from .files import (
    HeldFile,
    ModelRecord,
    MonitorFiles,
    SlotState,
    StatKey,
    close_held,
    stat_key,
)
from .requests import (
    COMMAND_SOURCES,
    check_replay,
    check_request,
    is_duplicate,
    load_key,
    outcome,
    pick_monitor,
)
from .slot import ModelSlot, load_slot, new_record

if TYPE_CHECKING:  # cryptography loads only when a key is used (the daemon stays light)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["MAX_IN_FLIGHT", "ModelManager", "Swap", "SwapSource"]

log = structlog.get_logger()

MAX_IN_FLIGHT: Final = 1
"""Pushes and rollbacks handled at once, from submission until in service or refused."""
PERSIST_WAIT_S: Final = 30.0
"""How long ``load`` waits for swaps already in service to be written."""

SwapSource = Literal["file", "push", "rollback"]


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

_STOP: Final = object()
_NUDGE: Final = object()


class ModelManager:
    """Which model each monitor runs, and every change to it. Thread-safe.

    ``load`` (start, SIGHUP) picks each monitor's model: the stored one (pushed or
    rolled back) while the config's model file is what it was when that was adopted,
    else the config's. A worker thread (``start``/``stop``) does everything slow:
    pushes and rollbacks (``submit_push``/``submit_rollback`` return at once), watching
    the config's model files every ``detector.watch_s``, validating candidates beside
    the running model, and writing ``state_dir/models/<monitor>/``. Between two ticks
    the daemon collects ``take_results``, puts each Swap's detector in service and
    calls ``applied``. Nothing is written while nothing changes.
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
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._disk_lock = threading.Lock()  # taken before _lock, never after it
        self._persisted = threading.Condition(self._lock)
        self._tasks: queue.Queue[object] = queue.Queue()
        self._jobs: deque[_Job] = deque()
        self._results: list[Swap | Refused] = []
        self._pending: dict[int, _Pending] = {}
        self._slots: dict[str, ModelSlot] = {}
        self._config: Config | None = None
        self._key: Ed25519PublicKey | None = None
        self._capture: CaptureFacts | None = None
        self._generation = 0
        self._tickets = 0
        self._in_flight = 0
        self._flight: _Command | None = None  # the push or rollback in flight
        self._last_push: dict[str, Any] | None = None
        self._thread: threading.Thread | None = None

    # --- the daemon's thread -------------------------------------------------------

    def load(self, config: Config) -> dict[str, Detector]:
        """Load every monitor's model (see the class); the watcher follows ``config``.

        Raises ConfigError listing every failing ``monitors[i].model``, or naming
        ``push.key_file``; the store is then unchanged (a failed SIGHUP changes nothing).
        Once ``set_capture`` was called (a reload), each model must also fit the running
        capture (``check_capture``).
        """
        key = load_key(config)
        self._wait_persisted()
        root = self.root
        slots: dict[str, ModelSlot] = {}
        detectors: dict[str, Detector] = {}
        problems: list[str] = []
        demotions: list[tuple[ModelSlot, bool]] = []
        with self._disk_lock:
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
        with self._lock:
            for name, old in self._slots.items():
                new = slots.get(name)
                if new is not None and (old.last_issued_at or "") > (new.last_issued_at or ""):
                    new.last_issued_at, new.last_request_id = (
                        old.last_issued_at,
                        old.last_request_id,
                    )
                close_held(old.held)
            self._slots, self._config, self._key = slots, config, key
            self._generation += 1
        self._tasks.put(_NUDGE)  # the worker takes up the new watch period
        return detectors

    def set_capture(self, sample_rate: int, ring_s: float) -> None:
        """The audio input's facts, once it is open: a candidate must be servable at
        ``sample_rate`` and its window must fit in ``ring_s`` seconds with room."""
        with self._lock:
            self._capture = CaptureFacts(int(sample_rate), float(ring_s))

    def check_capture(self, detector: Detector, cfg: MonitorConfig) -> str | None:
        """Why ``detector`` cannot serve monitor ``cfg`` on the running capture (rate
        servable, window fits ``ring_s`` with room, noise through the monitor's pipeline
        scores finitely), as pushes and file swaps are checked; None when it can. Before
        ``set_capture`` only the noise check runs, at the model's own rate."""
        with self._lock:
            capture = self._capture
        try:
            check_fit(detector, cfg, capture)
        except Unfit as exc:
            return str(exc)
        return None

    def take_results(self) -> list[Swap | Refused]:
        """Swaps ready to be put in service and refusals to report; never waits on work.

        Each Swap must get ``applied`` (or ``discard``) before the next ``load``; a
        swap validated under a configuration since reloaded comes back as a Refused.
        """
        with self._lock:
            items, self._results = self._results, []
            out: list[Swap | Refused] = []
            for item in items:
                pending = self._pending.get(item.ticket) if isinstance(item, Swap) else None
                if pending is None or (
                    pending.generation == self._generation and pending.swap.monitor in self._slots
                ):
                    out.append(item)
                else:
                    out.append(self._drop(pending, SUPERSEDED))
            return out

    def applied(self, swap: Swap) -> None:
        """The daemon has put ``swap``'s detector in service: the facts change now, the
        worker writes the store (previous.onnx, active.onnx, state.json) and the
        detector's ``path`` names active.onnx (the config's file for a file swap)."""
        with self._lock:
            pending = self._pending.pop(swap.ticket, None)
            slot = self._slots.get(swap.monitor)
            if pending is None or slot is None or pending.generation != self._generation:
                log.warning("model_swap_unknown", monitor=swap.monitor, ticket=swap.ticket)
                if pending is not None:  # its command ends here: the in-flight slot is free
                    gone = slot is None
                    self._drop(pending, f"monitor {swap.monitor!r} is gone" if gone else SUPERSEDED)
                return
            now = iso_utc(self._wall())
            config_sha = pending.record.config_sha256 or slot.config_sha256
            new = dataclasses.replace(pending.record, adopted_at=now, config_sha256=config_sha)
            outgoing, held = slot.running, slot.held
            slot.config_sha256 = config_sha
            if pending.issued_at is not None:
                slot.last_issued_at, slot.last_request_id = pending.issued_at, swap.request_id
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
                self._release()
                self._last_push = outcome(swap.command, swap.request_id, swap.monitor, now, new)
            self._jobs.append(_Job(slot, new, state, outgoing, held, swap.detector))
        self._tasks.put(_NUDGE)

    def discard(self, swap: Swap, reason: str) -> None:
        """The daemon will not put ``swap`` in service: it is reported as refused."""
        with self._lock:
            pending = self._pending.get(swap.ticket)
            if pending is not None:
                self._drop(pending, reason)

    def facts(self, monitor: str) -> dict[str, Any]:
        """For the ``model`` topic: ``source``, ``previous`` ({name, version, sha256} or
        None) and ``last_error`` of a loaded monitor's model."""
        with self._lock:
            slot = self._slots[monitor]
            previous = slot.state.previous
            return {
                "source": slot.running.source,
                "previous": None if previous is None else previous.facts(),
                "last_error": slot.last_error,
            }

    def last_push(self) -> dict[str, Any] | None:
        """The outcome of the last push or rollback (the ``model`` topic's ``last_push``)."""
        with self._lock:
            return None if self._last_push is None else dict(self._last_push)

    # --- the MQTT thread -----------------------------------------------------------

    def submit_push(self, args: Mapping[str, Any], request_id: str | None) -> None:
        """Queue a ``cmd/model`` push (its JSON object without ``id``); returns at once.

        Raises CommandError ("busy: ...") while another push or rollback is in flight.
        """
        self._submit("model", args, request_id)

    def submit_rollback(self, args: Mapping[str, Any], request_id: str | None) -> None:
        """Queue a ``cmd/model/rollback``; returns at once (CommandError when busy)."""
        self._submit("model/rollback", args, request_id)

    def _submit(self, command: str, args: Mapping[str, Any], request_id: str | None) -> None:
        item = _Command(command, dict(args), request_id)
        with self._lock:
            flight_id = None if self._flight is None else self._flight.request_id
            if is_duplicate(request_id, item.args, flight_id, self._slots):
                log.debug("model_command_duplicate", command=command, id=request_id)
                return
            if self._in_flight >= MAX_IN_FLIGHT:
                raise CommandError(
                    "busy: a model push is already being processed", command=command, id=request_id
                )
            self._in_flight += 1
            self._flight = item
        self._tasks.put(item)

    def _release(self) -> None:
        """The push or rollback in flight has ended (lock held)."""
        self._in_flight -= 1
        self._flight = None

    # --- the worker ----------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (after ``load`` and ``set_capture``)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="asd-models", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the worker once the swaps already in service are written, and let go
        of the files held open."""
        thread = self._thread
        if thread is not None:
            self._tasks.put(_STOP)
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("model_worker_stop_timeout", timeout_s=timeout_s)
                return
            self._thread = None
        self._write_jobs()
        with self._lock:
            for slot in self._slots.values():
                close_held(slot.held)
            for pending in self._pending.values():
                close_held(pending.held)

    def _run(self) -> None:
        next_watch = time.monotonic()
        while True:
            self._write_jobs()  # never raises: a failed write is logged and reported
            with self._lock:
                watch_s = self._config.detector.watch_s if self._config is not None else 0.0
            timeout = None if watch_s <= 0 else max(0.0, next_watch - time.monotonic())
            try:
                item = self._tasks.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._write_jobs()
                return
            self._write_jobs()  # swaps in service are stored before the next change
            try:
                if isinstance(item, _Command):
                    self._command(item)
                elif isinstance(item, _Discard):
                    with self._disk_lock:
                        item.files.discard_incoming()
            except Exception:  # supervisor boundary: the worker must outlive a bug
                log.exception("model_worker_failed")
                if isinstance(item, _Command):
                    self._internal_error(item)
            if watch_s > 0 and time.monotonic() >= next_watch:
                next_watch = time.monotonic() + watch_s
                try:
                    self._watch()
                except Exception:  # supervisor boundary, as above
                    log.exception("model_watch_failed")

    def _internal_error(self, item: _Command) -> None:
        """Refuse a command a bug interrupted, unless it already ended or was handed over."""
        with self._lock:
            handed = any(p.swap.request_id == item.request_id for p in self._pending.values())
            open_ = self._flight is item and not handed
        if open_:
            named = item.args.get("monitor")
            with self._lock:
                known = named if isinstance(named, str) and named in self._slots else None
            source = COMMAND_SOURCES[item.name]
            self._refuse(item.name, source, item.request_id, known, "internal error")

    def _wait_persisted(self) -> None:
        """Swaps already in service reach the disk before ``load`` reads it."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._write_jobs()
            return
        self._tasks.put(_NUDGE)
        with self._persisted:
            if not self._persisted.wait_for(lambda: not self._jobs, PERSIST_WAIT_S):
                log.warning("model_store_write_slow", waited_s=PERSIST_WAIT_S)

    def _write_jobs(self) -> None:
        while True:
            with self._lock:
                if not self._jobs:
                    self._persisted.notify_all()
                    return
                job = self._jobs[0]
            try:
                self._write(job)
            except Exception:  # supervisor boundary: one bad write must not stop the worker
                log.exception("model_store_write_failed", monitor=job.slot.name)
                with self._lock:
                    job.slot.last_error = "the model runs but could not be stored: internal error"
            with self._lock:
                self._jobs.popleft()

    def _write(self, job: _Job) -> None:
        slot = job.slot
        try:
            with self._disk_lock:
                written = slot.files.adopt(job.new, job.state, job.outgoing, job.held)
        except OSError as exc:
            log.error("model_store_write_failed", monitor=slot.config.name, error=str(exc))
            if job.new.stored and slot.files.incoming.is_file():
                job.detector.path = str(slot.files.incoming)
            with self._lock:
                slot.last_error = f"the model runs but could not be stored: {exc}"
            return
        finally:
            close_held(job.held)
        with self._lock:
            if slot.state is job.state:
                slot.state = written
        log.info("model_stored", monitor=slot.config.name, path=str(slot.files.dir))

    def _command(self, item: _Command) -> None:
        source = COMMAND_SOURCES[item.name]
        try:
            slot, request_id, issued_at, detector, generation = self._prepare(item)
        except Refused as exc:
            named = item.args.get("monitor")
            with self._lock:  # name the monitor when the request names a known one
                known = named if isinstance(named, str) and named in self._slots else None
            self._refuse(item.name, source, item.request_id, exc.monitor or known, exc.reason)
            return
        record = new_record(source, detector, config_sha256=None, request_id=request_id)
        self._hand_over(
            slot, detector, record, item.name, request_id, generation, issued_at=issued_at
        )

    def _prepare(self, item: _Command) -> tuple[ModelSlot, str, str, Detector, int]:
        """Check a push or rollback and validate its model; Refused says why not. Also
        returns the configuration generation it was picked up under."""
        with self._lock:
            config, key, capture = self._config, self._key, self._capture
            generation = self._generation
            names = list(self._slots)
        if config is None:
            raise Refused("the daemon has no models loaded yet")
        request = check_request(
            item.name,
            item.args,
            item.request_id,
            device_id=self.device_id,
            push=config.push,
            key=key,
        )
        monitor = pick_monitor(request.monitor, names)
        with self._lock:
            slot = self._slots[monitor]
            check_replay(monitor, request.issued_at, slot.last_issued_at)
            previous = slot.state.previous
        files = slot.files
        with self._disk_lock:
            try:
                files.write_incoming(
                    request.model if request.model is not None else files.read_previous(previous)
                )
            except OSError as exc:
                raise Refused(f"model: cannot be stored ({exc})", monitor=monitor) from None
        threads = config.detector.threads
        try:
            detector = validate_candidate(
                files.incoming, slot.config, threads=threads, capture=capture
            )
        except ModelError as exc:
            reason = f"model: {exc.field}: {exc.problem}"
        except Unfit as exc:
            reason = str(exc)
        else:
            return slot, request.request_id, request.issued_at, detector, generation
        with self._disk_lock:
            files.discard_incoming()
        raise Refused(reason, monitor=monitor)

    def _watch(self) -> None:
        """Look at each monitor's config model file; act on a change once it has settled."""
        with self._lock:
            slots = list(self._slots.values())
        for slot in slots:
            try:
                now: StatKey | None = stat_key(os.stat(slot.config.model))
            except OSError:
                now = None
            with self._lock:
                if now == slot.seen_stat or now != slot.last_stat:
                    slot.last_stat = now
                    continue
                slot.seen_stat = now
            self._file_changed(slot)

    def _file_changed(self, slot: ModelSlot) -> None:
        """Validate the config's replaced model file; hand over a Swap or a Refused."""
        path, name = slot.config.model, slot.config.name
        with self._lock:
            config, capture, generation = self._config, self._capture, self._generation
        if config is None:
            return
        try:
            held = HeldFile(path)
        except OSError as exc:
            self._refuse(
                None, "file", None, name, f"{path}: file: cannot read ({exc.strerror or exc})"
            )
            return
        with self._lock:
            slot.seen_stat = slot.last_stat = held.stat
            unchanged = held.sha256 == slot.config_sha256
        if unchanged:  # touched, or put back as it was
            held.close()
            return
        threads = config.detector.threads
        try:
            detector = validate_candidate(path, slot.config, threads=threads, capture=capture)
        except ModelError as exc:
            reason = str(exc)
        except Unfit as exc:
            reason = f"{path}: {exc}"
        else:
            if detector.sha256 != held.sha256:  # replaced again while loading: next round
                held.close()
                with self._lock:
                    slot.seen_stat = None
                return
            record = new_record("file", detector, config_sha256=held.sha256, request_id=None)
            self._hand_over(slot, detector, record, None, None, generation, held=held)
            return
        held.close()
        self._refuse(None, "file", None, name, reason)

    # --- results ---------------------------------------------------------------------

    def _hand_over(
        self,
        slot: ModelSlot,
        detector: Detector,
        record: ModelRecord,
        command: str | None,
        request_id: str | None,
        generation: int,
        *,
        held: HeldFile | None = None,
        issued_at: str | None = None,
    ) -> None:
        """Hand a validated candidate to the daemon, or refuse it as superseded when the
        configuration was reloaded since it was picked up (``generation``)."""
        source: SwapSource = COMMAND_SOURCES[command] if command is not None else "file"
        with self._lock:
            self._tickets += 1
            swap = Swap(slot.config.name, detector, source, request_id, command, self._tickets)
            pending = _Pending(swap, generation, record, slot.files, held=held, issued_at=issued_at)
            self._pending[swap.ticket] = pending
            if generation != self._generation:
                self._results.append(self._drop(pending, SUPERSEDED))
                return
            self._results.append(swap)
        log.info(
            "model_candidate_ready",
            monitor=swap.monitor,
            source=source,
            id=request_id,
            model=record.name,
            version=record.version,
            sha256=record.sha256,
        )

    def _refuse(
        self,
        command: str | None,
        source: SwapSource,
        request_id: str | None,
        monitor: str | None,
        reason: str,
    ) -> None:
        with self._lock:
            self._results.append(
                Refused(
                    reason,
                    monitor=monitor,
                    request_id=request_id,
                    command=command,
                    source=source,
                )
            )
            slot = self._slots.get(monitor) if monitor is not None else None
            if slot is not None:
                slot.last_error = reason
            if command is not None:
                self._release()
                at = iso_utc(self._wall())
                self._last_push = outcome(command, request_id, monitor, at, None, reason)
        log.debug("model_candidate_refused", monitor=monitor, id=request_id, reason=reason)

    def _drop(self, pending: _Pending, reason: str) -> Refused:
        """Turn a pending swap into a refusal (with the lock held)."""
        swap = pending.swap
        self._pending.pop(swap.ticket, None)
        close_held(pending.held)
        slot = self._slots.get(swap.monitor)
        if slot is not None:
            slot.last_error = reason
        if swap.command is not None:
            self._release()
            at = iso_utc(self._wall())
            self._last_push = outcome(swap.command, swap.request_id, swap.monitor, at, None, reason)
            self._tasks.put(_Discard(pending.files))
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
