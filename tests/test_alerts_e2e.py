"""End to end: the daemon as a subprocess, a real mosquitto, the virtual microphone.

What a user sees: alerts on ``<prefix>/alert`` (one start and one end per anomaly),
a clip per event that holds the anomaly, and nothing lost through broker outages,
SIGKILL, or a clip store that cannot keep up.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import signal
from support.audio import write_wav
from support.e2e import ALERT, DEVICE, PREFIX, RATE, alerts, daemon_config, stream_with_bursts
from support.services import start_daemon, wait_until

from asd_edge.audiofile import read_audio
from devkit.broker import Broker, Subscriber

ALERT_FIELDS = {
    "id",
    "device_id",
    "monitor",
    "phase",
    "started_at",
    "score",
    "threshold",
    "model",
    "clip",
}


def phases(sub: Subscriber) -> list[tuple[str, str]]:
    return [(a["id"], a["phase"]) for a in alerts(sub)]


def first_of_each(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Alerts de-duplicated by (id, phase), as a consumer would, keeping the first."""
    seen: set[tuple[str, str]] = set()
    out = []
    for item in items:
        key = (item["id"], item["phase"])
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def locate(excerpt: np.ndarray, stream: np.ndarray) -> tuple[int, float]:
    """Where ``excerpt`` sits in ``stream`` (sample offset) and the normalised correlation."""
    corr = signal.correlate(stream, excerpt, mode="valid", method="fft")
    offset = int(np.argmax(corr))
    piece = stream[offset : offset + excerpt.size]
    ncc = float(np.dot(piece, excerpt) / (np.linalg.norm(piece) * np.linalg.norm(excerpt)))
    return offset, ncc


@pytest.mark.realaudio
@pytest.mark.slow
class TestOnTheVirtualMicrophone:
    def test_one_start_and_end_per_anomaly_with_a_clip_holding_it(
        self, tmp_path: Path, level_model: Path, virtual_mic: Any, mqtt_broker: Broker
    ) -> None:
        """Three loud bursts played into the microphone: exactly one alert start and one end
        per burst at a subscriber, with the contract's fields, and a clip per event whose
        audio is the played burst (by correlation) with the configured second of pre-roll."""
        bursts = [(2.0, 1.0), (9.0, 1.0), (16.0, 1.0)]
        stream = stream_with_bursts(20.0, bursts)
        wav = write_wav(tmp_path / "stream.wav", stream, RATE)
        sub = mqtt_broker.subscriber(f"{PREFIX}/#")
        config = daemon_config(tmp_path, mqtt_broker, level_model, virtual_mic.device)
        daemon = start_daemon(config, virtual_mic.env)
        try:
            daemon.wait_for("daemon_started", 20)
            wait_until(lambda: sub.on(f"{PREFIX}/status"), 10, "status online")
            virtual_mic.play(wav, wait=True)
            wait_until(lambda: len(phases(sub)) >= 6, 15, "three starts and three ends")
            time.sleep(1.0)  # nothing more should come
        finally:
            code = daemon.stop()
        assert code == 0
        got = alerts(sub)
        assert [a["phase"] for a in got] == ["start", "end"] * 3, phases(sub)
        for start, end in zip(got[::2], got[1::2], strict=True):
            assert start["id"] == end["id"]
            assert start.keys() >= ALERT_FIELDS and end.keys() >= ALERT_FIELDS
            assert start["device_id"] == DEVICE and start["monitor"] == "pump"
            assert start["model"]["sha256"] and start["threshold"] == -30.0
            assert start["score"] > start["threshold"]
            assert start["clip"]["status"] == "recording"
            assert end["clip"]["status"] == "saved", end["clip"]
            assert end["clip"]["path"] == start["clip"]["path"]
        status = json.loads(sub.on(f"{PREFIX}/status")[0].payload)
        assert status["state"] == "online"
        # each clip is a contiguous excerpt of what was played, around its burst
        offsets = []
        for end, (burst_s, length_s) in zip(got[1::2], bursts, strict=True):
            clip = read_audio(end["clip"]["path"])
            samples = clip.samples[:, 0]
            offset, ncc = locate(samples, stream)
            assert ncc > 0.99, f"clip {end['clip']['path']} is not the played audio ({ncc:.3f})"
            clip_start_s = offset / RATE
            assert clip_start_s <= burst_s - 1.0 + 0.02, "less than pre_s before the anomaly"
            assert clip_start_s + clip.duration_s >= burst_s + length_s, "anomaly cut short"
            sidecar = json.loads(Path(end["clip"]["path"]).with_suffix(".json").read_text())
            assert sidecar["alert_id"] == end["id"] and sidecar["clip"]["pre_s"] == 1.0
            assert Path(end["clip"]["path"]).with_suffix(".png").stat().st_size > 0
            offsets.append(offset)
        assert offsets == sorted(offsets)


@pytest.mark.slow
class TestNothingIsLost:
    """Replayed recordings (real time, no sound card) through the daemon and a real broker."""

    def test_alerts_raised_while_the_broker_is_down_arrive_in_order(
        self, tmp_path: Path, level_model: Path, mqtt_broker_factory: Any
    ) -> None:
        """Broker down while three anomalies happen, then back: every alert arrives, in order,
        none lost; any duplicate carries the same id."""
        broker = mqtt_broker_factory(persistence=True)
        sub = broker.subscriber(ALERT, persistent=True, client_id="e2e-consumer")
        # the stream outlasts the broker's restart by seconds: the daemon stops at its end
        stream = stream_with_bursts(20.0, [(1.5, 0.8), (5.0, 0.8), (8.5, 0.8)])
        wav = write_wav(tmp_path / "stream.wav", stream, RATE)
        broker.stop()
        daemon = start_daemon(daemon_config(tmp_path, broker, level_model, f"file:{wav}"), {})
        try:
            daemon.wait_for("daemon_started", 20)
            wait_until(lambda: len(daemon.events("anomaly_ended")) == 3, 30, "three events")
            assert not sub.on(ALERT)
            broker.start()
            wait_until(lambda: len(first_of_each(alerts(sub))) == 6, 20, "six alerts")
        finally:
            daemon.stop()
        started = [r["alert_id"] for r in daemon.events("anomaly_started")]
        unique = first_of_each(alerts(sub))
        assert [(a["id"], a["phase"]) for a in unique] == [
            (alert_id, phase) for alert_id in started for phase in ("start", "end")
        ]
        for item in alerts(sub):  # a re-delivery repeats an alert whole, with its id
            assert (item["id"], item["phase"]) in {(a["id"], a["phase"]) for a in unique}

    def test_alerts_wait_in_the_outbox_while_mqtt_is_disabled(
        self, tmp_path: Path, level_model: Path, mqtt_broker: Broker
    ) -> None:
        """With ``mqtt.enabled: false`` (a device without a network for days) the alerts
        wait in the outbox, nothing is sent; once MQTT is enabled and the daemon restarted,
        every one arrives, in order."""
        sub = mqtt_broker.subscriber(ALERT)
        stream = stream_with_bursts(9.0, [(1.5, 0.8), (5.0, 0.8)])
        wav = write_wav(tmp_path / "stream.wav", stream, RATE)
        offline = daemon_config(
            tmp_path, mqtt_broker, level_model, f"file:{wav}", mqtt={"enabled": False}
        )
        daemon = start_daemon(offline)
        assert daemon.wait_for("daemon_stopped", 30)  # the file ends, the daemon stops
        started = [r["alert_id"] for r in daemon.events("anomaly_started")]
        assert len(started) == 2 and not sub.on(ALERT)
        with sqlite3.connect(tmp_path / "state" / "outbox.sqlite") as db:
            assert db.execute("SELECT COUNT(*) FROM outbox").fetchone() == (4,)
        quiet = write_wav(tmp_path / "quiet.wav", stream_with_bursts(4.0, []), RATE)
        online = daemon_config(tmp_path, mqtt_broker, level_model, f"file:{quiet}")
        restarted = start_daemon(online)
        try:
            wait_until(lambda: len(first_of_each(alerts(sub))) == 4, 20, "four alerts")
        finally:
            restarted.stop()
        assert [(a["id"], a["phase"]) for a in first_of_each(alerts(sub))] == [
            (alert_id, phase) for alert_id in started for phase in ("start", "end")
        ]

    def test_sigkill_with_alerts_pending_then_restart_delivers_them(
        self, tmp_path: Path, level_model: Path, mqtt_broker: Broker
    ) -> None:
        """The daemon killed with SIGKILL while its alerts wait for a broker that is down and
        a clip is being recorded: after a restart every alert is delivered, no partial clip
        exists and the outbox is intact."""
        sub = mqtt_broker.subscriber(ALERT)
        stream = stream_with_bursts(30.0, [(1.5, 0.8), (5.0, 6.0)])
        wav = write_wav(tmp_path / "stream.wav", stream, RATE)
        config = daemon_config(
            tmp_path, mqtt_broker, level_model, f"file:{wav}", clips={"post_s": 3.0}
        )
        mqtt_broker.stop()
        daemon = start_daemon(config)
        daemon.wait_for("daemon_started", 20)
        wait_until(lambda: len(daemon.events("anomaly_started")) == 2, 20, "second event")
        wait_until(lambda: daemon.events("clip_saved"), 10, "the first clip")
        daemon.kill()  # the second event is still going on: its clip is being recorded
        before = [r["alert_id"] for r in daemon.events("anomaly_started")]
        outbox = Path(tmp_path / "state" / "outbox.sqlite")
        with sqlite3.connect(outbox) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        clips = tmp_path / "state" / "clips"
        mqtt_broker.start()
        restarted = start_daemon(config)
        try:
            restarted.wait_for("daemon_started", 20)
            # the first event (start and end) and the second's start, from before the kill
            wait_until(
                lambda: (
                    {(a["id"], a["phase"]) for a in alerts(sub)}
                    >= {(before[0], "start"), (before[0], "end"), (before[1], "start")}
                ),
                20,
                "the alerts raised before the kill",
            )
        finally:
            restarted.stop()
        assert not list(clips.rglob("*.tmp")), "a partial clip was left behind"
        for audio in clips.rglob("*.wav"):
            assert audio.with_suffix(".json").exists(), f"{audio} has no sidecar"
            read_audio(audio)  # whole and readable
        with sqlite3.connect(outbox) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    def test_a_clip_quota_that_cannot_be_met_skips_clips_but_not_alerts(
        self, tmp_path: Path, level_model: Path, mqtt_broker: Broker
    ) -> None:
        """With a free-space floor no disk can meet, detection and alerting go on; each end
        alert and the health topic say the clip was skipped and why."""
        sub = mqtt_broker.subscriber(ALERT, f"{PREFIX}/health")
        stream = stream_with_bursts(10.0, [(1.5, 0.8), (6.0, 0.8)])
        wav = write_wav(tmp_path / "stream.wav", stream, RATE)
        # no filesystem can leave 10 TB free: every clip is refused
        config = daemon_config(
            tmp_path,
            mqtt_broker,
            level_model,
            f"file:{wav}",
            clips={"min_free_mb": 10_000_000.0},
            mqtt={"health_interval_s": 5.0},
        )
        daemon = start_daemon(config)
        try:
            daemon.wait_for("daemon_started", 20)
            wait_until(lambda: len(first_of_each(alerts(sub))) == 4, 30, "four alerts")
            wait_until(lambda: sub.on(f"{PREFIX}/health"), 15, "a health report")
        finally:
            daemon.stop()
        ends = [a for a in first_of_each(alerts(sub)) if a["phase"] == "end"]
        assert len(ends) == 2
        for end in ends:
            assert end["clip"]["status"] == "skipped"
            assert "quota" in end["clip"]["error"]
        health = json.loads(sub.on(f"{PREFIX}/health")[-1].payload)
        assert health["clips"]["skipped"] >= 1
        assert health["clips"]["last_error"]
        assert not list((tmp_path / "state" / "clips").rglob("*.wav"))


@pytest.mark.slow
class TestAvailabilityAndCommands:
    def test_will_marks_offline_and_restart_marks_online(
        self, tmp_path: Path, level_model: Path, mqtt_broker: Broker
    ) -> None:
        """SIGKILL leaves the broker to publish the will (offline, retained); a restart
        publishes online again; discovery payloads are JSON with unique ids."""
        wav = write_wav(tmp_path / "quiet.wav", stream_with_bursts(60.0, []), RATE)
        config = daemon_config(tmp_path, mqtt_broker, level_model, f"file:{wav}")
        sub = mqtt_broker.subscriber(f"{PREFIX}/status", "homeassistant/#")

        def states() -> list[str]:
            return [json.loads(m.payload)["state"] for m in sub.on(f"{PREFIX}/status")]

        daemon = start_daemon(config)
        daemon.wait_for("daemon_started", 20)
        wait_until(lambda: states() == ["online"], 10, "online")
        daemon.kill()
        # the broker notices the dead connection at once (socket closed) and sends the will
        wait_until(lambda: states() == ["online", "offline"], 10, "offline from the will")
        late = mqtt_broker.subscriber(f"{PREFIX}/status", client_id="late")
        wait_until(lambda: late.on(f"{PREFIX}/status"), 5, "the retained status")
        retained = late.on(f"{PREFIX}/status")[-1]
        assert retained.retain and json.loads(retained.payload)["state"] == "offline"
        again = start_daemon(config)
        try:
            again.wait_for("daemon_started", 20)
            wait_until(lambda: states()[-1:] == ["online"], 10, "online again")
        finally:
            again.stop()
        discovery = [m for m in sub.messages if m.topic.startswith("homeassistant/")]
        payloads = [json.loads(m.payload) for m in discovery if m.payload]
        assert payloads
        ids = {p["unique_id"] for p in payloads}
        assert len(ids) == len({m.topic for m in discovery})

    def test_malformed_commands_are_rejected_and_the_daemon_stays_up(
        self, tmp_path: Path, level_model: Path, mqtt_broker: Broker
    ) -> None:
        """Hundreds of malformed cmd/ messages (random bytes, wrong JSON, unknown commands,
        bad fields) are rejected and logged; the daemon stays up, still answers a valid ping
        and still publishes health on request."""
        wav = write_wav(tmp_path / "quiet.wav", stream_with_bursts(60.0, []), RATE)
        config = daemon_config(tmp_path, mqtt_broker, level_model, f"file:{wav}")
        sub = mqtt_broker.subscriber(f"{PREFIX}/cmd_result", f"{PREFIX}/health")
        rng = random.Random(1)
        junk: list[tuple[str, bytes]] = []
        for _ in range(200):
            junk.append(
                (
                    rng.choice(["ping", "health", "nope", "model/x", ""]),
                    bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64))),
                )
            )
        junk += [
            ("ping", b"[1, 2]"),
            ("ping", b'{"id": 5}'),
            ("health", b'{"unexpected": true}'),
            ("ping", b"{" * 10000),
            ("ping", b'{"id": "x", "pad": "' + b"a" * 100_000 + b'"}'),
            ("ping", b"NaN"),
        ]
        daemon = start_daemon(config)
        try:
            daemon.wait_for("daemon_started", 20)
            wait_until(lambda: daemon.events("mqtt_connected"), 10, "connected")
            client = mqtt_broker.client("fuzzer")
            client.connect(mqtt_broker.host, mqtt_broker.port)
            client.loop_start()
            for suffix, payload in junk:
                client.publish(
                    f"{PREFIX}/cmd/{suffix}".rstrip("/"), payload, qos=1
                ).wait_for_publish(5)
            client.publish(f"{PREFIX}/cmd/ping", b'{"id": "still-there"}', qos=1).wait_for_publish(
                5
            )
            client.publish(f"{PREFIX}/cmd/health", b"{}", qos=1).wait_for_publish(5)
            wait_until(
                lambda: any(
                    json.loads(m.payload).get("id") == "still-there"
                    for m in sub.on(f"{PREFIX}/cmd_result")
                ),
                20,
                "the reply to the valid ping",
            )
            wait_until(lambda: sub.on(f"{PREFIX}/health"), 10, "health on request")
            client.loop_stop()
            client.disconnect()
            assert daemon.proc.poll() is None, "the daemon died"
        finally:
            code = daemon.stop()
        assert code == 0
        rejected = daemon.events("command_rejected")
        assert len(rejected) >= 150
        replies = [json.loads(m.payload) for m in sub.on(f"{PREFIX}/cmd_result")]
        assert any(r["ok"] is False and r["error"] for r in replies)
