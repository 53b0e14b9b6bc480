"""``cmd/clip``: an alert's saved clip published once on request, size-capped."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import structlog

from ..durable import read_regular
from ..errors import CommandError, FileRejected
from ..mqtt.commands import Command
from .lookup import find_clip

__all__ = ["ClipSender"]

log = structlog.get_logger()

PACE_S: Final = 5.0
"""After sending a clip of ``max_mb``, the next is refused for this long (a smaller clip
waits in proportion, at least a second): a client that asks again and again cannot fill
the link's queue, and so the daemon's memory, with copies of clips."""


class ClipSender:
    """Answers ``cmd/clip {"alert_id"}``: finds the alert's clip (``lookup.find_clip``),
    refuses one larger than ``max_mb`` (``mqtt.clip_max_mb``), and hands its bytes to
    ``send`` (``MqttLink.send_clip``: ``<prefix>/clip/<alert_id>``, QoS 1, whatever
    ``mqtt.publish_clips`` says), which returns the topic.

    It runs on the MQTT thread, as every command handler does: reading the file (at
    most ``max_mb``, 2 MB by default: milliseconds) delays other commands and
    publishes that long, never the tick loop.
    """

    def __init__(
        self,
        clips_dir: Path,
        *,
        max_mb: float,
        send: Callable[[str, bytes], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clips_dir = Path(clips_dir)
        self._clock = clock
        self._ready_at = 0.0
        self.max_bytes = int(max_mb * 1e6)
        self.send = send
        """Set once the link exists (it is made after its command router)."""

    def command(self, cmd: Command) -> dict[str, Any]:
        """Publish the clip; the reply is ``{alert_id, bytes, sha256, topic}``. CommandError
        names why not: not an alert id, not on this device, too large."""
        alert_id = str(cmd.args.get("alert_id"))
        wait_s = self._ready_at - self._clock()
        if wait_s > 0:
            raise CommandError(f"busy sending a clip: ask again in {wait_s:.1f} s")
        try:
            found = find_clip(self.clips_dir, alert_id)
        except ValueError as exc:
            raise CommandError(f"alert_id: {exc}") from None
        if found is None:
            raise CommandError(
                f"alert_id: the clip of alert {alert_id} is not on this device (deleted by "
                "retention: clips.max_total_mb, clips.max_age_days; still being recorded; "
                "or never saved)"
            )
        audio = found[0]
        try:
            size = audio.stat().st_size
            if size > self.max_bytes:
                raise CommandError(
                    f"clip too large: {audio.name} is {size:,} bytes, mqtt.clip_max_mb allows "
                    f"{self.max_bytes:,}"
                )
            data = read_regular(audio, self.max_bytes)
        except FileRejected as exc:
            raise CommandError(f"clip not sent: {exc}") from None
        except OSError as exc:  # deleted by retention between the lookup and the read
            raise CommandError(
                f"alert_id: the clip of alert {alert_id} could not be read "
                f"({exc.strerror or exc}); retention may have deleted it just now"
            ) from None
        if self.send is None:
            raise CommandError("clips can only be sent over a running MQTT link")
        topic = self.send(alert_id, data)
        self._ready_at = self._clock() + max(1.0, PACE_S * len(data) / self.max_bytes)
        sha256 = hashlib.sha256(data).hexdigest()
        log.info("clip_sent", alert_id=alert_id, bytes=len(data), topic=topic)
        return {"alert_id": alert_id, "bytes": len(data), "sha256": sha256, "topic": topic}
