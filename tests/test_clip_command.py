"""cmd/clip: an alert's saved clip published once on request, found by its id, size-capped."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.services import connected

from asd_edge.clips import ClipSender, find_clip, newest_clip
from asd_edge.config import PushConfig
from asd_edge.mqtt import Command, CommandRouter, MqttLink, command_specs
from devkit.broker import Broker

ALERT = "20261121T101502Z-pump-3f2a9c1d"


def saved(
    root: Path, alert_id: str = ALERT, size: int = 1000, start: str = "20261121T101500Z"
) -> Path:
    """A clip as the writer leaves it: audio, then its sidecar naming it."""
    folder = root / "pump"
    folder.mkdir(parents=True, exist_ok=True)
    audio = folder / f"{start}_{alert_id}.wav"
    audio.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    sidecar = {"alert_id": alert_id, "monitor": "pump", "clip": {"file": audio.name}}
    audio.with_suffix(".json").write_text(json.dumps(sidecar))
    return audio


class Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def __call__(self, alert_id: str, data: bytes) -> str:
        self.messages.append((alert_id, data))
        return f"asd/dev/clip/{alert_id}"


def router(sender: ClipSender) -> tuple[CommandRouter, list[dict[str, Any]]]:
    replies: list[dict[str, Any]] = []
    return (
        CommandRouter(
            {"clip": sender.command}, reply=replies.append, commands=command_specs(PushConfig())
        ),
        replies,
    )


class TestClipCommand:
    def test_found_clip_is_sent_once_with_its_digest(self, tmp_path: Path) -> None:
        """A saved clip: its bytes go to clip/<alert_id>; the reply has alert_id, bytes,
        sha256 and topic."""
        audio = saved(tmp_path)
        sent = Sent()
        route, replies = router(ClipSender(tmp_path, max_mb=2.0, send=sent))
        route("clip", json.dumps({"alert_id": ALERT, "id": "c1"}).encode())
        data = audio.read_bytes()
        assert sent.messages == [(ALERT, data)]
        (reply,) = replies
        assert reply["ok"] and reply["id"] == "c1"
        assert reply["result"] == {
            "alert_id": ALERT,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "topic": f"asd/dev/clip/{ALERT}",
        }

    def test_clips_are_paced(self, tmp_path: Path) -> None:
        """Right after a clip the next request is refused as busy, saying when to ask
        again; after the pace (at least 1 s, 5 s for a clip of max_mb) it is sent."""
        saved(tmp_path, size=1_000_000)
        now = [100.0]
        sent = Sent()
        route, replies = router(ClipSender(tmp_path, max_mb=2.0, send=sent, clock=lambda: now[0]))
        request = json.dumps({"alert_id": ALERT}).encode()
        route("clip", request)
        now[0] += 1.0
        route("clip", request)
        assert [r["ok"] for r in replies] == [True, False]
        assert "busy sending a clip: ask again in 1.5 s" in replies[1]["error"]
        now[0] += 1.6
        route("clip", request)
        assert replies[2]["ok"] and len(sent.messages) == 2

    def test_unknown_id_is_refused(self, tmp_path: Path) -> None:
        """An id with no clip on the device: a refusal saying why, nothing sent."""
        saved(tmp_path)
        sent = Sent()
        route, replies = router(ClipSender(tmp_path, max_mb=2.0, send=sent))
        route("clip", b'{"alert_id": "20261121T000000Z-pump-00000000"}')
        assert not replies[0]["ok"] and "not on this device" in replies[0]["error"]
        assert sent.messages == []

    def test_a_clip_deleted_by_retention_is_refused(self, tmp_path: Path) -> None:
        """The sidecar is there but its audio is gone (retention deletes both): refused."""
        saved(tmp_path).unlink()
        sent = Sent()
        route, replies = router(ClipSender(tmp_path, max_mb=2.0, send=sent))
        route("clip", json.dumps({"alert_id": ALERT}).encode())
        assert not replies[0]["ok"] and "deleted by retention" in replies[0]["error"]
        assert sent.messages == []

    def test_a_clip_larger_than_clip_max_mb_is_refused(self, tmp_path: Path) -> None:
        """Over mqtt.clip_max_mb: refused naming its size and the limit, nothing sent."""
        saved(tmp_path, size=20_000)
        sent = Sent()
        route, replies = router(ClipSender(tmp_path, max_mb=0.01, send=sent))
        route("clip", json.dumps({"alert_id": ALERT}).encode())
        error = replies[0]["error"]
        assert not replies[0]["ok"] and "20,000 bytes" in error and "clip_max_mb" in error
        assert "10,000" in error and sent.messages == []

    @pytest.mark.parametrize("bad", ["../etc/passwd", "*", ""])
    def test_text_that_is_no_alert_id_is_refused(self, tmp_path: Path, bad: str) -> None:
        """No path separators or globs reach the file system."""
        route, replies = router(ClipSender(tmp_path, max_mb=2.0, send=Sent()))
        route("clip", json.dumps({"alert_id": bad}).encode())
        assert not replies[0]["ok"] and "not an alert id" in replies[0]["error"]

    def test_missing_alert_id_is_refused(self, tmp_path: Path) -> None:
        """alert_id is required."""
        route, replies = router(ClipSender(tmp_path, max_mb=2.0, send=Sent()))
        route("clip", b"{}")
        assert replies[0]["error"] == "missing field(s): alert_id"


class TestLookup:
    def test_find_and_newest(self, tmp_path: Path) -> None:
        """find_clip matches the id exactly; newest_clip is the monitor's latest clip."""
        older = saved(tmp_path, "20261121T101502Z-pump-aaaaaaaa", start="20261121T101500Z")
        newer = saved(tmp_path, "20261121T111502Z-pump-bbbbbbbb", start="20261121T111500Z")
        assert find_clip(tmp_path, "20261121T101502Z-pump-aaaaaaaa") == (
            older,
            json.loads(older.with_suffix(".json").read_text()),
        )
        found = newest_clip(tmp_path, "pump")
        assert found is not None and found[0] == newer
        assert find_clip(tmp_path, "pump-aaaaaaaa") is None  # a suffix is not the id


class TestThroughMosquitto:
    def test_sent_even_with_publish_clips_off(
        self, tmp_path: Path, mqtt_broker: Broker, make_link: Callable[..., MqttLink]
    ) -> None:
        """The link's send_clip publishes the bytes on clip/<alert_id> at QoS 1 although
        mqtt.publish_clips is false (which keeps the automatic clips off)."""
        audio = saved(tmp_path / "clips")
        sub = mqtt_broker.subscriber("asd/dev1/clip/#")
        link = connected(make_link(mqtt_broker, publish_clips=False))
        assert link.publish_clip(ALERT, b"automatic") is False
        sender = ClipSender(tmp_path / "clips", max_mb=2.0, send=link.send_clip)
        result = sender.command(Command("clip", args={"alert_id": ALERT}))
        (message,) = sub.wait_for(result["topic"])
        assert result["topic"] == f"asd/dev1/clip/{ALERT}"
        assert message.payload == audio.read_bytes() and message.qos == 1
