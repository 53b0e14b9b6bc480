"""The clips of this device, read from its state directory (read-only), as the pages
want them: the audio, its media type and the picture beside it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..clips.lookup import ALERT_ID, find_clip

__all__ = ["ALERT_ID", "LocalClip", "local_clip"]

MEDIA_TYPES: Final = {".wav": "audio/wav", ".flac": "audio/flac"}


@dataclass(frozen=True, slots=True)
class LocalClip:
    """A saved clip: its audio, its picture (if written) and its sidecar."""

    audio: Path
    picture: Path | None
    sidecar: dict[str, Any]

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES.get(self.audio.suffix.lower(), "application/octet-stream")


def local_clip(clips_dir: Path, alert_id: str) -> LocalClip | None:
    """The clip of ``alert_id`` under ``clips_dir`` (``asd_edge.clips.lookup``, as the
    daemon finds it), or None: never saved, deleted by retention, or not an alert id."""
    if not ALERT_ID.match(alert_id) or alert_id in (".", ".."):
        return None
    found = find_clip(clips_dir, alert_id)
    if found is None:
        return None
    audio, sidecar = found
    picture = audio.with_suffix(".png")
    return LocalClip(audio, picture if picture.is_file() else None, sidecar)
