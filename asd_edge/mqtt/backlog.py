"""The backlog: retained state, discovery, clips and replies waiting for a connection."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Final

import structlog
from paho.mqtt.client import Client

from .homeassistant import discovery_messages
from .topics import encode_json

__all__ = ["CLIP_BACKLOG", "REPLY_BACKLOG", "Backlog"]

log = structlog.get_logger()

CLIP_BACKLOG: Final = 4
"""Clips kept in memory while offline; the oldest beyond this are dropped and counted."""
REPLY_BACKLOG: Final = 100
"""Command replies kept while offline."""
_DISCOVERY: Final = "discovery"
"""The marker in the dirty set for Home Assistant discovery (never a topic: no slash)."""


class Backlog:
    """Everything but alerts that the broker should get once connected (link thread only).

    Retained states keep only their latest body per topic and are all published
    again after every connect (the broker may be new); so is discovery. Clips and
    command replies go out at once when connected, and are otherwise kept in
    bounded queues, the oldest dropped and counted. Scores are never kept.
    """

    def __init__(self, *, device_id: str, topic_prefix: str, discovery_prefix: str) -> None:
        self.device_id = device_id
        self.topic_prefix = topic_prefix
        self.discovery_prefix = discovery_prefix
        self._retained: dict[str, bytes] = {}
        self._dirty: set[str] = set()
        self._queues: dict[str, deque[tuple[str, bytes]]] = {
            "clips": deque(maxlen=CLIP_BACKLOG),
            "replies": deque(maxlen=REPLY_BACKLOG),
        }
        self._discovery: tuple[list[str], dict[str, str]] | None = None
        self._discovery_topics: set[str] = set()
        self.learn_s: float | None = None
        """Seconds the Home Assistant "learn normal sound" buttons learn (None: no buttons)."""
        self.counts = {
            "scores_dropped": 0,
            "live_dropped": 0,
            "clips_dropped": 0,
            "replies_dropped": 0,
        }
        """Scores and live frames dropped while offline; clips and replies dropped from a
        full queue."""

    def retain(self, topic: str, body: bytes) -> None:
        """The latest retained state of ``topic``, published at the next flush."""
        self._retained[topic] = body
        self._dirty.add(topic)

    def score(
        self, client: Client | None, topic: str, body: bytes, dropped: str = "scores_dropped"
    ) -> None:
        """A score or a live frame (QoS 0) now if ``client`` is connected (not None), else
        dropped and counted in ``counts[dropped]``."""
        if client is not None:
            client.publish(topic, body, 0)
        else:
            self.counts[dropped] += 1

    def send(self, client: Client | None, topic: str, body: bytes, queue: str) -> None:
        """A clip or a reply (``queue``): now if ``client`` is connected (not None), or kept."""
        if client is not None:
            client.publish(topic, body, 1)
            return
        waiting = self._queues[queue]
        if len(waiting) == waiting.maxlen:
            self.counts[f"{queue}_dropped"] += 1
        waiting.append((topic, body))

    def set_discovery(self, monitors: Sequence[str], model_names: Mapping[str, str]) -> None:
        """Home Assistant discovery for these monitors, published at the next flush."""
        self._discovery = (list(monitors), dict(model_names))
        self._dirty.add(_DISCOVERY)

    def rediscover(self) -> None:
        """Home Assistant came online: publish discovery again (if there is any)."""
        if self._discovery is not None:
            self._dirty.add(_DISCOVERY)

    def reconnected(self) -> None:
        """A new connection: every retained state and discovery go out again."""
        self._dirty.update(self._retained)
        self.rediscover()

    def flush(self, client: Client) -> None:
        """Publish the latest retained states, discovery, clips and replies (connected)."""
        publish = client.publish
        for topic in sorted(self._dirty - {_DISCOVERY}):
            publish(topic, self._retained[topic], 1, True)
        if _DISCOVERY in self._dirty and self._discovery is not None:
            self._publish_discovery(client)
        self._dirty.clear()
        for waiting in self._queues.values():
            while waiting:
                publish(*waiting.popleft(), qos=1)

    def _publish_discovery(self, client: Client) -> None:
        assert self._discovery is not None
        monitors, models = self._discovery
        messages = discovery_messages(
            device_id=self.device_id,
            topic_prefix=self.topic_prefix,
            monitors=monitors,
            discovery_prefix=self.discovery_prefix,
            model_names=models,
            learn_s=self.learn_s,
        )
        topics = {topic for topic, _ in messages}
        for topic in sorted(self._discovery_topics - topics):  # entities of removed monitors
            client.publish(topic, b"", 1, True)
        for topic, config in messages:
            client.publish(topic, encode_json(config), 1, True)
        self._discovery_topics = topics
        log.info("discovery_published", entities=len(messages), monitors=len(monitors))
