"""The JSON values every message, sidecar, record and log line shares: safe numbers and
UTC time stamps, written one way for the daemon and for training."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["iso_utc", "json_safe"]


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON data: every NaN or infinite float becomes None (standard
    ``null`` rather than Python's ``NaN``), numpy scalars and arrays become Python
    numbers and lists, paths become strings, mappings dicts with text keys and
    tuples lists, recursively. Anything else is returned as it is."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str | int | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return {_key(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays, without numpy
    if callable(tolist):
        return json_safe(tolist())
    return value


def _key(key: Any) -> str:
    """A mapping key as text, as ``json.dumps`` writes it (``true``, ``null``, ``1.5``), so
    that ``sort_keys`` never compares text with numbers."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool) or key is None:
        return json.dumps(key)
    return str(key)


def iso_utc(moment: float | datetime) -> str:
    """ISO 8601 UTC with milliseconds, e.g. ``2026-11-21T10:15:02.250Z``: the time stamps
    of alerts, health, pushes (``issued_at`` compares as a string) and records.
    ``moment``: epoch seconds, or an aware datetime."""
    stamp = (
        moment.astimezone(UTC)
        if isinstance(moment, datetime)
        else datetime.fromtimestamp(moment, UTC)
    )
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
