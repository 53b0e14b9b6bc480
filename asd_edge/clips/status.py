"""The ``clip`` object of an alert: the clip saved, skipped, or lost to a killed daemon."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .retention import saved_clip
from .types import ClipResult

__all__ = ["CLIP_LOST", "clip_facts", "found_clip", "lost_clip"]

CLIP_LOST = "the daemon stopped before the clip was saved"
"""The clip error of an end alert held by a daemon that was killed meanwhile."""


def clip_facts(result: ClipResult) -> dict[str, Any]:
    """The ``clip`` object of an end alert: where the clip is, or why there is none."""
    if result.path is None:
        return {"path": None, "status": "skipped", "error": result.error}
    facts = {
        "path": str(result.path),
        "status": "saved",
        "duration_s": round(result.duration_s, 3),
        "sha256": result.sha256,
        "bytes": result.bytes,
    }
    return facts if not result.recovered else {**facts, "recovered": True}


def lost_clip(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A held end alert left by a daemon that died before its clip was saved."""
    clip = payload.get("clip") or {}
    path = clip.get("path") if isinstance(clip, Mapping) else None
    return {**payload, "clip": {"path": path, "status": "lost", "error": CLIP_LOST}}


def found_clip(payload: Mapping[str, Any]) -> dict[str, Any]:
    """An end alert a killed daemon left, with its clip as the restart finds it: ``saved``
    when its audio is on disk (``recovered``: true if a crash cut off its sidecar and the
    store rebuilt it, see ``retention.saved_clip``), else ``lost`` (``lost_clip``)."""
    clip = payload.get("clip")
    path = clip.get("path") if isinstance(clip, Mapping) else None
    found = saved_clip(Path(path)) if isinstance(path, str) else None
    return lost_clip(payload) if found is None else {**payload, "clip": clip_facts(found)}
