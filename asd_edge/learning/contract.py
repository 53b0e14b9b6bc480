"""What every model made here carries: the contract's metadata, its version, the build
time, and how an export is held to the numpy or torch model it came from.

Reproducible builds: when ``SOURCE_DATE_EPOCH`` (seconds since 1970, UTC; see
reproducible-builds.org) is set, it is the build time of every model made here, on a
workstation or on the device: the time in the version and ``training.created``, so the
same data, kind, parameters and seed give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ..errors import LearnError
from ..modelspec import SCHEMA_VERSION

__all__ = [
    "ATOL",
    "PARITY_MAX_WINDOWS",
    "RTOL",
    "SOURCE_DATE_EPOCH",
    "build_time",
    "contract_metadata",
    "make_version",
    "spread_windows",
]

ATOL = 1e-4
"""Parity: ``max|onnx - torch| <= ATOL + RTOL * |torch|`` on every held-out window."""
RTOL = 1e-3
PARITY_MAX_WINDOWS = 512
"""At most this many real windows are compared (spread over the given ones)."""
SOURCE_DATE_EPOCH = "SOURCE_DATE_EPOCH"
"""Environment variable fixing the build time (integer seconds since 1970-01-01 UTC)."""


def build_time(now: datetime | None = None) -> datetime:
    """The build time: ``SOURCE_DATE_EPOCH`` when set, else ``now``, else the clock (UTC, s).

    LearnError names the variable when its value is not a non-negative integer.
    """
    text = os.environ.get(SOURCE_DATE_EPOCH, "").strip()
    if not text:
        return (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    if not (text.isascii() and text.isdigit()):
        raise LearnError(
            f"{SOURCE_DATE_EPOCH}: expected whole seconds since 1970-01-01 UTC, got {text!r}"
        )
    try:
        return datetime.fromtimestamp(int(text), UTC)
    except (OverflowError, OSError, ValueError):
        raise LearnError(f"{SOURCE_DATE_EPOCH}: {text} is out of range") from None


def make_version(
    created: datetime, data_sha256: str, kind: str, params: Mapping[str, Any], seed: int
) -> str:
    """``<UTC yyyymmddThhmmssZ>-<7 hex of sha256(data hash + kind + params + seed)>``.

    The time is ``created``, or ``SOURCE_DATE_EPOCH`` when that is set (:func:`build_time`).
    """
    created = build_time(created)
    digest = hashlib.sha256(
        json.dumps(
            {"data": data_sha256, "kind": kind, "params": dict(params), "seed": seed},
            sort_keys=True,
            default=str,
        ).encode("utf-8")
    ).hexdigest()
    return f"{created.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}-{digest[:7]}"


def contract_metadata(
    *,
    name: str,
    version: str,
    kind: str,
    spec_fields: Mapping[str, Any],
    threshold: float,
    calibration: Mapping[str, Any],
    training: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``asd_edge`` metadata object (schema 1); ``spec_fields`` from ``WindowSpec.metadata``.

    When ``SOURCE_DATE_EPOCH`` is set, it replaces ``training.created`` (:func:`build_time`).
    """
    training = dict(training)
    if os.environ.get(SOURCE_DATE_EPOCH, "").strip():
        training["created"] = build_time().isoformat().replace("+00:00", "Z")
    return {
        "schema": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "kind": kind,
        **dict(spec_fields),
        "threshold": float(threshold),
        "calibration": dict(calibration),
        "training": training,
    }


def spread_windows(x: np.ndarray, limit: int = PARITY_MAX_WINDOWS) -> np.ndarray:
    """At most ``limit`` rows of ``x``, evenly spread (the parity check's real windows)."""
    if x.shape[0] <= limit:
        return x
    return x[np.linspace(0, x.shape[0] - 1, limit).round().astype(np.int64)]
