"""The model manager's worker thread: pushes, rollbacks, resets, the file watcher, the
store's writes."""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from typing import Final

import structlog

from ..detector import Detector, unreadable_model
from ..errors import ModelError, Refused, Unfit
from ..jsonvalues import iso_utc
from .checks import CaptureFacts, validate_candidate
from .files import HeldFile, ModelRecord, StatKey, close_held, stat_key
from .replay import check_not_ahead, check_replay, write_floor
from .requests import COMMAND_SOURCES, RESET_COMMAND, check_request, outcome, pick_monitor
from .reset import apply_reset
from .shared import SUPERSEDED, SharedState, Swap, SwapSource, _Command, _Discard, _Job, _Pending
from .slot import ModelSlot, new_record

__all__ = ["ModelWorker"]

log = structlog.get_logger()

_STOP: Final = object()


class ModelWorker:
    """The thread ``asd-models``, which does everything slow for ``ModelManager``.

    It takes pushes, rollbacks and resets off the shared task queue, looks at the config's
    model files every ``detector.watch_s``, validates each candidate beside the running
    model and hands it over (a Swap or a Refused in the shared results), and writes the
    swaps the daemon has put in service to ``state_dir/models/<monitor>/``. All it
    shares with the manager is in ``SharedState``, behind its lock.
    """

    def __init__(self, shared: SharedState, *, device_id: str) -> None:
        self.device_id = device_id
        """The device's id, which a push or rollback must name."""
        self._shared = shared
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Start the thread, unless it runs."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="asd-models", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> bool:
        """Stop the thread once the swaps already in service are written, and write any
        left; False (nothing written) when it did not end within ``timeout_s``."""
        thread = self._thread
        if thread is not None:
            self._shared.tasks.put(_STOP)
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("model_worker_stop_timeout", timeout_s=timeout_s)
                return False
            self._thread = None
        self.write_jobs()
        return True

    def write_jobs(self) -> None:
        """Write the swaps in service to the store, oldest first, and notify the waiters
        of ``SharedState.persisted``; never raises (a failed write is logged and set as
        the slot's ``last_error``)."""
        shared = self._shared
        while True:
            with shared.lock:
                if not shared.jobs:
                    shared.persisted.notify_all()
                    return
                job = shared.jobs[0]
            try:
                self._write(job)
            except Exception:  # supervisor boundary: one bad write must not stop the worker
                log.exception("model_store_write_failed", monitor=job.slot.name)
                with shared.lock:
                    job.slot.last_error = "the model runs but could not be stored: internal error"
            with shared.lock:
                shared.jobs.popleft()

    # --- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        shared = self._shared
        next_watch = time.monotonic()
        while True:
            self.write_jobs()  # never raises: a failed write is logged and reported
            with shared.lock:
                watch_s = shared.config.detector.watch_s if shared.config is not None else 0.0
            timeout = None if watch_s <= 0 else max(0.0, next_watch - time.monotonic())
            try:
                item = shared.tasks.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                self.write_jobs()
                return
            self.write_jobs()  # swaps in service are stored before the next change
            try:
                if isinstance(item, _Command):
                    self._command(item)
                elif isinstance(item, _Discard):
                    with shared.disk_lock:
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
        shared = self._shared
        with shared.lock:
            handed = any(p.swap.request_id == item.request_id for p in shared.pending.values())
            open_ = shared.flight is item and not handed
        if open_:
            named = item.args.get("monitor")
            with shared.lock:
                known = named if isinstance(named, str) and named in shared.slots else None
            source = _source(item.name)
            shared.refuse(item.name, source, item.request_id, known, "internal error")

    def _write(self, job: _Job) -> None:
        """Store a swap in service: the device's replay floor first if it rose, then the
        monitor's files with its replay marker as it stands now (a reset since the swap
        may have replaced the one ``job.state`` carries)."""
        shared, slot = self._shared, job.slot
        try:
            with shared.disk_lock:
                with shared.lock:
                    floor, stored = shared.floor, shared.floor_stored
                    state = dataclasses.replace(
                        job.state,
                        last_issued_at=slot.last_issued_at,
                        last_request_id=slot.last_request_id,
                    )
                if floor != stored:
                    write_floor(shared.root, floor)
                    with shared.lock:
                        shared.floor_stored = floor
                written = slot.files.adopt(job.new, state, job.outgoing, job.held)
        except OSError as exc:
            log.error("model_store_write_failed", monitor=slot.config.name, error=str(exc))
            if job.new.stored and slot.files.incoming.is_file():
                job.detector.path = str(slot.files.incoming)
            with shared.lock:
                slot.last_error = f"the model runs but could not be stored: {exc}"
            return
        finally:
            close_held(job.held)
        with shared.lock:
            if slot.state is job.state:
                slot.state = written
        log.info("model_stored", monitor=slot.config.name, path=str(slot.files.dir))

    # --- pushes and rollbacks ----------------------------------------------------------

    def _command(self, item: _Command) -> None:
        shared = self._shared
        if item.name == RESET_COMMAND:
            self._reset(item)
            return
        source = COMMAND_SOURCES[item.name]
        try:
            slot, request_id, issued_at, detector, generation = self._prepare(item)
        except Refused as exc:
            named = item.args.get("monitor")
            with shared.lock:  # name the monitor when the request names a known one
                known = named if isinstance(named, str) and named in shared.slots else None
            shared.refuse(item.name, source, item.request_id, exc.monitor or known, exc.reason)
            return
        record = new_record(source, detector, config_sha256=None, request_id=request_id)
        self._hand_over(
            slot, detector, record, item.name, request_id, generation, issued_at=issued_at
        )

    def _reset(self, item: _Command) -> None:
        """A reset of replay markers: accepted (a ReplayReset for the daemon, and the
        answer in ``last_push``) or refused."""
        shared = self._shared
        try:
            done = apply_reset(shared, item, self.device_id)
        except Refused as exc:
            named = item.args.get("monitor")
            with shared.lock:
                known = named if isinstance(named, str) and named in shared.slots else None
            shared.refuse(item.name, "reset", item.request_id, exc.monitor or known, exc.reason)
            return
        with shared.lock:
            shared.results.append(done)
            shared.release()
            shared.last_push = outcome(
                item.name,
                done.request_id,
                done.monitor,
                iso_utc(shared.wall()),
                None,
                extra={"cleared": done.cleared, "replay_marker": done.marker},
            )

    def _prepare(self, item: _Command) -> tuple[ModelSlot, str | None, str | None, Detector, int]:
        """Check a push or rollback and validate its model; Refused says why not. Also
        returns the configuration generation it was picked up under. A learned model
        (``learn``) is the daemon's own: no signature, no replay marker."""
        shared = self._shared
        with shared.lock:
            config, key, capture = shared.config, shared.key, shared.capture
            generation = shared.generation
            names = list(shared.slots)
        if config is None:
            raise Refused("the daemon has no models loaded yet")
        if item.name == "learn":
            monitor = pick_monitor(item.args["monitor"], names)
            with shared.lock:
                slot = shared.slots[monitor]
            detector = self._validate(slot, item.args["model"], config.detector.threads, capture)
            return slot, item.request_id, None, detector, generation
        skew_s = config.push.max_clock_skew_s

        def cheap(named: str | None, issued_at: str) -> None:
            """Refused when the monitor is unknown, or the request is dated too far ahead
            or is a replay: run before the signature is verified (a child process), so
            that no malformed or stale request costs one; again below, once it is."""
            monitor = pick_monitor(named, names)
            check_not_ahead(issued_at, shared.wall(), skew_s, monitor)
            with shared.lock:
                slot = shared.slots.get(monitor)
                if slot is None:  # removed by a reload since the request was read
                    raise Refused(f"monitor: {monitor!r} is no longer configured", monitor=monitor)
                check_replay(monitor, issued_at, slot.last_issued_at, shared.floor)

        request = check_request(
            item.name,
            item.args,
            item.request_id,
            device_id=self.device_id,
            push=config.push,
            key=key,
            precheck=cheap,
        )
        monitor = pick_monitor(request.monitor, names)
        check_not_ahead(request.issued_at, shared.wall(), skew_s, monitor)
        with shared.lock:
            slot = shared.slots[monitor]
            check_replay(monitor, request.issued_at, slot.last_issued_at, shared.floor)
            previous = slot.state.previous
        with shared.disk_lock:
            try:
                model = (
                    request.model
                    if request.model is not None
                    else slot.files.read_previous(previous)
                )
            except OSError as exc:
                raise Refused(f"model: cannot be stored ({exc})", monitor=monitor) from None
        detector = self._validate(slot, model, config.detector.threads, capture)
        return slot, request.request_id, request.issued_at, detector, generation

    def _validate(
        self, slot: ModelSlot, model: bytes, threads: int, capture: CaptureFacts | None
    ) -> Detector:
        """Store a candidate as incoming and validate it beside the running model;
        Refused (and no incoming file) when it does not serve."""
        files, monitor = slot.files, slot.config.name
        with self._shared.disk_lock:
            try:
                files.write_incoming(model)
            except OSError as exc:
                raise Refused(f"model: cannot be stored ({exc})", monitor=monitor) from None
        try:
            detector = validate_candidate(
                files.incoming, slot.config, threads=threads, capture=capture
            )
        except ModelError as exc:
            reason = f"model: {exc.field}: {exc.problem}"
        except Unfit as exc:
            reason = str(exc)
        else:
            return detector
        with self._shared.disk_lock:
            files.discard_incoming()
        raise Refused(reason, monitor=monitor)

    # --- the config's model files ----------------------------------------------------

    def _watch(self) -> None:
        """Look at each monitor's config model file; act on a change once it has settled."""
        shared = self._shared
        with shared.lock:
            slots = list(shared.slots.values())
        for slot in slots:
            try:
                now: StatKey | None = stat_key(os.stat(slot.config.model))
            except OSError:
                now = None
            with shared.lock:
                if now == slot.seen_stat or now != slot.last_stat:
                    slot.last_stat = now
                    continue
                slot.seen_stat = now
            self._file_changed(slot)

    def _file_changed(self, slot: ModelSlot) -> None:
        """Validate the config's replaced model file; hand over a Swap or a Refused."""
        shared = self._shared
        path, name = slot.config.model, slot.config.name
        with shared.lock:
            config, capture, generation = shared.config, shared.capture, shared.generation
        if config is None:
            return
        try:
            held = HeldFile(path)
        except OSError as exc:
            shared.refuse(None, "file", None, name, str(unreadable_model(path, exc)))
            return
        with shared.lock:
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
                with shared.lock:
                    slot.seen_stat = None
                return
            record = new_record("file", detector, config_sha256=held.sha256, request_id=None)
            self._hand_over(slot, detector, record, None, None, generation, held=held)
            return
        held.close()
        shared.refuse(None, "file", None, name, reason)

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
        shared = self._shared
        source: SwapSource = COMMAND_SOURCES[command] if command is not None else "file"
        with shared.lock:
            shared.tickets += 1
            swap = Swap(slot.config.name, detector, source, request_id, command, shared.tickets)
            pending = _Pending(swap, generation, record, slot.files, held=held, issued_at=issued_at)
            shared.pending[swap.ticket] = pending
            if generation != shared.generation:
                shared.results.append(shared.drop(pending, SUPERSEDED))
                return
            shared.results.append(swap)
        log.info(
            "model_candidate_ready",
            monitor=swap.monitor,
            source=source,
            id=request_id,
            model=record.name,
            version=record.version,
            sha256=record.sha256,
        )


def _source(command: str) -> str:
    """What a command's refusal says it was: push, rollback, learn or reset."""
    return "reset" if command == RESET_COMMAND else COMMAND_SOURCES[command]
