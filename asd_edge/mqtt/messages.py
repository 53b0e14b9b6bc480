"""What the link's API (any thread) hands the link thread: one typed message per kind of work.

``MqttLink`` puts them on the link thread's queue; ``LinkThread`` applies each on its
own thread, so the outbox, the backlog and the paho client need no locks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Dialed",
    "Discovery",
    "LinkMessage",
    "Live",
    "ReleaseAlert",
    "Retain",
    "Score",
    "Send",
    "Stop",
    "SubmitAlert",
]


@dataclass(frozen=True, slots=True)
class SubmitAlert:
    """Store one alert phase in the outbox, then publish it at QoS 1 unless ``held``."""

    alert_id: str
    phase: str
    body: bytes
    held: bool
    at_s: float
    """Monotonic time of the submission (the outbox's age limit and ack latency)."""


@dataclass(frozen=True, slots=True)
class ReleaseAlert:
    """Publish a held alert phase with its final body."""

    alert_id: str
    phase: str
    body: bytes
    at_s: float


@dataclass(frozen=True, slots=True)
class Retain:
    """A retained state message (health, model, monitor): the latest per topic is sent."""

    topic: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Score:
    """A live score at QoS 0: sent now if connected, else dropped and counted."""

    body: bytes


@dataclass(frozen=True, slots=True)
class Live:
    """A live-feed frame at QoS 0 on ``topic``: sent now if connected, else dropped and
    counted (never stored, never queued)."""

    topic: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Send:
    """A clip or a command reply at QoS 1: sent now, or kept (bounded) until connected."""

    topic: str
    body: bytes
    queue: Literal["clips", "replies"]


@dataclass(frozen=True, slots=True)
class Discovery:
    """The monitors Home Assistant discovery announces, now and on every reconnect."""

    monitors: Sequence[str]
    model_names: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Dialed:
    """A connection attempt ended (from its helper thread); ``error`` None: TCP is up."""

    error: str | None


@dataclass(frozen=True, slots=True)
class Stop:
    """Shut the link down, waiting at most ``timeout_s`` for the last acknowledgements."""

    timeout_s: float


LinkMessage = SubmitAlert | ReleaseAlert | Retain | Score | Live | Send | Discovery | Dialed | Stop
"""Everything the link thread's queue carries."""
