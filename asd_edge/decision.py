"""When a stream of window scores becomes an event: threshold, k-of-n onset, hold, refractory."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["Decision", "DecisionPolicy", "Event"]


@dataclass(frozen=True, slots=True)
class DecisionPolicy:
    """The rule that turns scores into events (per monitor)."""

    threshold: float
    """A window is anomalous when its score is strictly above this."""
    onset_k: int = 2
    """An event starts when at least ``onset_k`` of the last ``onset_n`` windows are anomalous."""
    onset_n: int = 3
    """How many recent windows the onset rule looks at."""
    hold_s: float = 1.0
    """An event ends once no window has been anomalous for this many seconds."""
    refractory_s: float = 5.0
    """After an event ends, no new event starts for this many seconds."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold}")
        if not 1 <= self.onset_k <= self.onset_n:
            raise ValueError(f"need 1 <= onset_k <= onset_n, got {self.onset_k} of {self.onset_n}")
        if self.hold_s < 0 or self.refractory_s < 0:
            raise ValueError("hold_s and refractory_s must not be negative")


@dataclass(frozen=True, slots=True)
class Event:
    """One phase of an anomaly event. Times are those passed to ``Decision.update``."""

    phase: Literal["start", "end"]
    """``start`` when the onset rule fires, ``end`` after the hold time."""
    at_s: float
    """When this phase was decided (the time of the window that decided it)."""
    onset_s: float
    """Time of the first anomalous window among those that started the event."""
    last_anomalous_s: float
    """Time of the latest anomalous window so far."""
    peak_score: float
    """Highest score of the event so far."""
    score: float
    """Score of the window that decided this phase."""
    threshold: float
    """The threshold in force."""
    peak_bands: npt.NDArray[np.float32] | None = field(default=None, compare=False, repr=False)
    """The ``bands`` output of the window that scored ``peak_score`` (None: the model has
    no ``bands`` output); ``modelspec.band_evidence`` turns it into the event's evidence."""


class Decision:
    """The event state machine of one monitor, fed ``(score, now)`` once per window.

    It keeps no clock of its own: ``now`` is whatever time base the caller uses
    (the daemon and ``asd-edge score`` both pass the stream time of the window's
    end), so it behaves identically live, on files and in tests.
    """

    def __init__(self, policy: DecisionPolicy) -> None:
        self.policy = policy
        n = policy.onset_n
        self._above = [False] * n
        self._times = [0.0] * n
        self._scores = [0.0] * n
        self._bands: list[npt.NDArray[np.float32] | None] = [None] * n
        self._slot = 0
        self._active = False
        self._onset_s = 0.0
        self._last_above_s = 0.0
        self._peak = -math.inf
        self._peak_bands: npt.NDArray[np.float32] | None = None
        self._quiet_until = -math.inf

    @property
    def active(self) -> bool:
        """Whether an event is in progress."""
        return self._active

    def update(
        self, score: float, now: float, bands: npt.NDArray[np.float32] | None = None
    ) -> Event | None:
        """Take the score of the window ending at ``now``; return an event phase or None.

        A NaN score counts as not anomalous (a broken window must not raise alarms
        on its own; the caller counts it). ``bands``, the window's ``bands`` output if
        the model has one, is only carried along: the events give the peak window's.
        """
        p = self.policy
        # NaN is never anomalous; nor is anything during the refractory period, so
        # that a new event rests on evidence gathered after it.
        above = score > p.threshold and (self._active or now >= self._quiet_until)
        slot = self._slot
        self._above[slot], self._times[slot], self._scores[slot] = above, now, score
        self._bands[slot] = bands
        self._slot = (slot + 1) % p.onset_n

        if self._active:
            if above:
                self._last_above_s = now
                if score > self._peak:
                    self._peak, self._peak_bands = score, bands
                return None
            if now - self._last_above_s >= p.hold_s:
                return self._end(now, score)
            return None

        if sum(self._above) < p.onset_k:
            return None
        hits = [i for i in range(p.onset_n) if self._above[i]]
        self._active = True
        self._onset_s = min(self._times[i] for i in hits)
        self._last_above_s = now if above else max(self._times[i] for i in hits)
        best = max(hits, key=lambda i: self._scores[i])
        self._peak, self._peak_bands = self._scores[best], self._bands[best]
        return self._event("start", now, score)

    def close(self, now: float) -> Event | None:
        """End an event still in progress (end of a file, shutdown); None if idle."""
        if not self._active:
            return None
        return self._end(now, math.nan)

    def _end(self, now: float, score: float) -> Event:
        self._active = False
        self._quiet_until = now + self.policy.refractory_s
        # A new event needs fresh evidence, not the windows of the one that ended.
        self._above = [False] * self.policy.onset_n
        event = self._event("end", now, score)
        self._peak_bands = None
        return event

    def _event(self, phase: Literal["start", "end"], now: float, score: float) -> Event:
        return Event(
            phase=phase,
            at_s=now,
            onset_s=self._onset_s,
            last_anomalous_s=self._last_above_s,
            peak_score=self._peak,
            score=score,
            threshold=self.policy.threshold,
            peak_bands=self._peak_bands,
        )
