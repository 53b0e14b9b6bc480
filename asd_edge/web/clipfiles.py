"""The clips of this device, read from its state directory (read-only)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["ALERT_ID", "LocalClip", "find_clip"]

ALERT_ID: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
"""What an alert id in a URL may look like (no separators, no globs, no ``..`` tricks)."""
SIDECAR_MAX_BYTES: Final = 4 << 20
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


def find_clip(clips_dir: Path, alert_id: str) -> LocalClip | None:
    """The clip of ``alert_id`` under ``clips_dir/<monitor>/``, or None (never saved,
    deleted by retention, or an id that cannot be one)."""
    if not ALERT_ID.match(alert_id) or alert_id in (".", ".."):
        return None
    for sidecar_path in sorted(clips_dir.glob(f"*/*_{alert_id}.json")):
        try:
            if sidecar_path.stat().st_size > SIDECAR_MAX_BYTES:
                continue
            sidecar = json.loads(sidecar_path.read_bytes())
        except (OSError, ValueError):
            continue
        if not isinstance(sidecar, dict) or sidecar.get("alert_id") != alert_id:
            continue
        clip = sidecar.get("clip")
        name = clip.get("file") if isinstance(clip, dict) else None
        audio = sidecar_path.with_name(Path(str(name)).name) if name else None
        if audio is None or not audio.is_file():
            continue
        picture = audio.with_suffix(".png")
        return LocalClip(audio, picture if picture.is_file() else None, sidecar)
    return None
