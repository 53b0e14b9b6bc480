"""One monitor's model slot: what runs, where it came from, and the choice made at start."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import structlog

from ..config import MonitorConfig
from ..detector import Detector, unreadable_model
from ..errors import ModelError
from .files import HeldFile, ModelRecord, MonitorFiles, SlotState, Source, StatKey

__all__ = [
    "ModelSlot",
    "load_slot",
    "new_record",
    "running_model",
]

log = structlog.get_logger()


@dataclass(slots=True)
class ModelSlot:
    """One monitor as the model manager sees it (guarded by ``SharedState.lock``)."""

    config: MonitorConfig
    """The monitor's configuration."""
    files: MonitorFiles
    """Its folder in the store."""
    state: SlotState
    """What state.json says (or will say once the worker has written it)."""
    running: ModelRecord
    """The model in service."""
    held: HeldFile | None
    """The config's model file as loaded, while ``running`` is that file."""
    config_sha256: str
    """The config's model file's sha256 as last seen."""
    seen_stat: StatKey | None
    """The config's model file's stat as last acted on."""
    last_stat: StatKey | None = None
    """The watcher's latest look; a change is acted on once it holds for one period."""
    last_error: str | None = None
    """Why the last candidate for this monitor was refused (None after a swap)."""
    last_issued_at: str | None = None
    """issued_at of the last accepted push or rollback (the replay marker)."""
    last_request_id: str | None = None
    """Its request id."""

    @property
    def name(self) -> str:
        """The monitor's name."""
        return self.config.name


def new_record(
    source: Source, detector: Detector, *, config_sha256: str | None, request_id: str | None
) -> ModelRecord:
    """What a freshly loaded model is (``adopted_at`` is set when it goes in service)."""
    return ModelRecord(
        source=source,
        name=detector.spec.name,
        version=detector.spec.version,
        sha256=detector.sha256,
        adopted_at="",
        config_sha256=config_sha256,
        stored=source in ("push", "rollback", "learn"),
        request_id=request_id,
    )


def load_slot(
    cfg: MonitorConfig, threads: int, root: Path
) -> tuple[ModelSlot, Detector, bool | None]:
    """One monitor's slot and detector at start or reload.

    The stored model (active.onnx) runs if state.json says it was adopted while the
    config's model file had the sha256 it has now and it still loads as recorded;
    otherwise the config's model runs (ModelError if it cannot; its source stays
    ``file`` if it is the file a watcher swap put in service). Also says whether the
    stored model must be demoted: True (kept as previous.onnx: the config's file
    changed), False (dropped: it no longer loads) or None (nothing to write).
    """
    files = MonitorFiles(root, cfg.name)
    state = files.read_state()
    held = _open_config_model(cfg.model)
    stored = state.active if state.active is not None and state.active.stored else None
    why, demote = "no stored model", None
    if stored is not None and stored.config_sha256 != held.sha256:
        why, demote = "the config's model file changed since the stored model was adopted", True
    elif stored is not None:
        demote = False
        try:
            detector = Detector(files.active, threads=threads)
        except ModelError as exc:
            why = f"the stored model no longer loads ({exc})"
        else:
            if detector.sha256 == stored.sha256:
                log.info(
                    "model_loaded",
                    monitor=cfg.name,
                    source=stored.source,
                    path=str(files.active),
                    version=stored.version,
                    reason="adopted while the config's model file was as it is now",
                )
                held.close()
                slot = _slot(cfg, files, state, stored, None, held)
                return slot, detector, None
            why = "active.onnx does not match state.json (sha256)"
    try:
        detector = Detector(cfg.model, threads=threads)
        if detector.sha256 != held.sha256:  # replaced while being read: take it again
            held.close()
            held = _open_config_model(cfg.model)
            detector = Detector(cfg.model, threads=threads)
    except ModelError:
        held.close()
        raise
    record = new_record("config", detector, config_sha256=held.sha256, request_id=None)
    record = dataclasses.replace(record, adopted_at=detector.loaded_at)
    earlier = state.active
    if earlier is not None and not earlier.stored and earlier.sha256 == detector.sha256:
        record = earlier  # the file a watcher swap put in service: it says so
    log.info(
        "model_loaded",
        monitor=cfg.name,
        source="config",
        path=cfg.model,
        version=detector.spec.version,
        reason=why,
    )
    return _slot(cfg, files, state, record, held, held), detector, demote


def _slot(
    cfg: MonitorConfig,
    files: MonitorFiles,
    state: SlotState,
    running: ModelRecord,
    keep: HeldFile | None,
    seen: HeldFile,
) -> ModelSlot:
    return ModelSlot(
        config=cfg,
        files=files,
        state=state,
        running=running,
        held=keep,
        config_sha256=seen.sha256,
        seen_stat=seen.stat,
        last_issued_at=state.last_issued_at,
        last_request_id=state.last_request_id,
    )


def _open_config_model(path: str) -> HeldFile:
    try:
        return HeldFile(path)
    except OSError as exc:
        raise unreadable_model(path, exc) from None


def running_model(cfg: MonitorConfig, threads: int, root: Path) -> str:
    """Which model monitor ``cfg`` would run if the daemon started now, in one line (for
    ``check-config``): ``name version (source, path)``. Reads, never writes."""
    slot, _detector, _demote = load_slot(cfg, threads, root)
    if slot.held is not None:
        slot.held.close()
    record = slot.running
    path = slot.files.active if record.stored else cfg.model
    return f"{record.name} {record.version} ({record.source}, {path})"
