"""Finding an alert's saved clip on disk by its id (``cmd/clip``, ``cmd/feedback``).

A saved clip is ``<clips>/<monitor>/<start>_<alert id>.<wav|flac>`` with its sidecar
``.json`` beside it, written last (``writer``); retention deletes both. The sidecar
names the audio file and the alert id, so a sidecar whose audio is gone (retention
in progress) or whose id differs (a glob that matched more) is passed over.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from ..durable import read_regular

__all__ = ["ALERT_ID", "SIDECAR_MAX_BYTES", "find_clip", "newest_clip"]

ALERT_ID: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,160}$")
"""What an alert id looks like (it names a clip file: no path separators, no globs)."""
SIDECAR_MAX_BYTES: Final = 1 << 20


def find_clip(clips_dir: Path, alert_id: str) -> tuple[Path, dict[str, Any]] | None:
    """The saved audio of alert ``alert_id`` and its sidecar, or None when it is not on
    disk (never saved, still being recorded, or deleted by retention). ValueError for
    text that is not an alert id."""
    if not ALERT_ID.match(alert_id):
        raise ValueError(f"not an alert id: {alert_id[:64]!r}")
    return _first_saved(sorted(clips_dir.glob(f"*/*_{alert_id}.json")), alert_id)


def newest_clip(clips_dir: Path, monitor: str) -> tuple[Path, dict[str, Any]] | None:
    """The newest saved clip of ``monitor`` (sidecars are named by start time) and its
    sidecar, or None."""
    sidecars = sorted((clips_dir / monitor).glob("*.json"))
    return _first_saved(sidecars[-1:], None)


def _first_saved(
    sidecars: Iterable[Path], alert_id: str | None
) -> tuple[Path, dict[str, Any]] | None:
    for sidecar in sidecars:
        try:
            alert = json.loads(read_regular(sidecar, SIDECAR_MAX_BYTES))
            audio = sidecar.with_name(Path(str(alert["clip"]["file"])).name)
            found_id = str(alert["alert_id"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if audio.is_file() and (alert_id is None or found_id == alert_id):
            return audio, alert
    return None
