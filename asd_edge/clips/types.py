"""What the tick side hands the clip writer, and what the writer reports back."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["ClipRequest", "ClipResult"]


@dataclass(frozen=True, slots=True)
class ClipRequest:
    """Everything the worker needs to write one clip (built on the tick, owned by the worker)."""

    alert_id: str
    """Id of the alert the clip belongs to."""
    monitor: str
    """Monitor name."""
    device_id: str
    """This device."""
    samples: npt.NDArray[np.float32]
    """Mono float32 audio, copied out of the ring."""
    sample_rate: int
    """Capture rate of ``samples``."""
    started_at: datetime
    """UTC wall time of the first sample."""
    stream_start_s: float
    """Stream time of the first sample."""
    pre_s: float
    """Pre-roll actually included (less than configured if the ring held less)."""
    event: Mapping[str, Any]
    """Event facts for the sidecar (stream times, offsets into the clip, peak, truncation)."""
    model: Mapping[str, Any]
    """The model that decided: name, version, sha256."""
    scores: Sequence[tuple[float, float]]
    """(stream time of window end, score) of the windows scored during the clip."""
    path: Path
    """Where the audio goes (``ClipStore.planned_path``)."""
    markers_s: tuple[float, ...] = ()
    """Seconds into the clip where the anomaly starts and ends (lines in the spectrogram)."""
    band_hz: tuple[float, float] | None = None
    """The strongest evidence band (bracketed in the spectrogram); None: no evidence."""

    @property
    def duration_s(self) -> float:
        """Length of the audio in seconds."""
        return int(self.samples.shape[0]) / self.sample_rate

    @property
    def alert_at(self) -> datetime | None:
        """UTC wall time of the event's start alert (``event["started_s"]``, a stream time);
        None when the facts do not say."""
        started_s = self.event.get("started_s")
        if not isinstance(started_s, int | float) or not math.isfinite(started_s):
            return None
        return self.started_at + timedelta(seconds=started_s - self.stream_start_s)


@dataclass(frozen=True, slots=True)
class ClipResult:
    """What became of a request (``on_done`` receives one for every request)."""

    alert_id: str
    """Id of the alert."""
    monitor: str
    """Monitor name."""
    path: Path | None
    """The audio file; None when skipped."""
    duration_s: float
    """Length of the audio in seconds."""
    bytes: int
    """Size of the audio file (0 when skipped)."""
    sha256: str | None
    """SHA-256 of the audio file, hex."""
    spectrogram: Path | None
    """The PNG beside it, if any."""
    sidecar: Path | None
    """The JSON sidecar."""
    error: str | None
    """Why it was skipped or failed; None when saved."""
    recovered: bool = False
    """A clip found on disk at a restart whose sidecar a crash had cut off and the store
    rebuilt from the audio file alone (``retention.saved_clip``)."""
