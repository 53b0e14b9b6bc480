"""MqttLink against a real mosquitto: alerts never lost, retained state, discovery, commands."""

from __future__ import annotations

import json
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from support.services import connected, make_tls_files, wait_until

from asd_edge.backoff import Backoff
from asd_edge.config import HomeAssistantConfig, TlsConfig
from asd_edge.errors import ConfigError
from asd_edge.mqtt import CommandRouter, MqttLink
from asd_edge.mqtt.commands import RETAINED_REASON
from asd_edge.mqtt.connection import RECONNECT_JITTER
from devkit.broker import HOST, Broker, free_port

LinkFactory = Callable[..., MqttLink]


def ids(messages: list) -> list[str]:
    return [json.loads(m.payload)["id"] for m in messages]


def rows_on_disk(path: Path) -> list[str]:
    """Alert ids in the outbox file, read by a separate connection (what a restart would see)."""
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT alert_id FROM outbox ORDER BY rowid")]


class TestAlerts:
    def test_deleted_only_after_puback(
        self, mqtt_broker: Broker, make_link: LinkFactory, tmp_path: Path
    ) -> None:
        """An alert published to a frozen broker stays on disk; the PUBACK deletes it."""
        sub = mqtt_broker.subscriber("asd/dev1/alert")
        link = connected(make_link(mqtt_broker))
        mqtt_broker.pause()
        try:
            link.submit_alert("a-1", {"monitor": "pump", "score": 12.5}, phase="start")
            wait_until(lambda: link.stats()["published"] == 1, what="the publish")
            assert rows_on_disk(tmp_path / "dev1.sqlite") == ["a-1"]
            assert link.stats()["acked"] == 0
        finally:
            mqtt_broker.resume()
        [message] = sub.wait_for("asd/dev1/alert")
        assert message.qos == 1
        assert json.loads(message.payload) == {
            "id": "a-1",
            "phase": "start",
            "monitor": "pump",
            "score": 12.5,
        }
        wait_until(lambda: link.stats()["acked"] == 1, what="the PUBACK")
        assert rows_on_disk(tmp_path / "dev1.sqlite") == []
        assert link.stats()["outbox_depth"] == 0

    def test_outage_loses_nothing_and_keeps_order(
        self, mqtt_broker_factory: Callable[..., Broker], make_link: LinkFactory
    ) -> None:
        """Alerts before, during and after a broker outage all arrive, in order, same ids."""
        broker = mqtt_broker_factory(persistence=True)
        sub = broker.subscriber("asd/dev1/alert", persistent=True, client_id="watcher")
        link = connected(make_link(broker))
        expected = [f"before-{i}" for i in range(5)]
        for alert_id in expected:
            link.submit_alert(alert_id, {"score": 1.0}, phase="start")
        sub.wait_for("asd/dev1/alert", 5)
        broker.stop()
        for i in range(20):
            expected.append(f"during-{i}")
            link.submit_alert(f"during-{i}", {"score": float("nan")}, phase="start")
        wait_until(lambda: not link.connected, what="the link to notice the outage")
        wait_until(lambda: link.stats()["outbox_depth"] == 20, what="20 alerts stored")
        broker.start()
        connected(link)
        for i in range(5):
            expected.append(f"after-{i}")
            link.submit_alert(f"after-{i}", {"score": 2.0}, phase="end")
        wait_until(
            lambda: set(ids(sub.on("asd/dev1/alert"))) >= set(expected),
            timeout_s=15,
            what="every alert at the subscriber",
        )
        got = ids(sub.on("asd/dev1/alert"))
        assert list(dict.fromkeys(got)) == expected  # order of first arrival; nothing lost
        assert set(got) == set(expected)  # a duplicate, if any, carries a known id
        wait_until(lambda: link.stats()["outbox_depth"] == 0, what="an empty outbox")
        assert link.stats()["disconnects"] >= 1 and link.stats()["connects"] >= 2
        during = [json.loads(m.payload) for m in sub.on("asd/dev1/alert")]
        assert next(a for a in during if a["id"] == "during-0")["score"] is None  # NaN -> null

    def test_unacknowledged_alerts_are_resent_after_reconnect(
        self, mqtt_broker: Broker, make_link: LinkFactory
    ) -> None:
        """Alerts sent to a broker that died before acknowledging go again to the next one."""
        link = connected(make_link(mqtt_broker))
        mqtt_broker.pause()
        for i in range(3):
            link.submit_alert(f"lost-{i}", {}, phase="start")
        wait_until(lambda: link.stats()["published"] == 3, what="three publishes")
        mqtt_broker.kill()  # frozen, then gone: none of the three was acknowledged
        wait_until(lambda: not link.connected, what="the link to notice")
        assert link.stats()["outbox_depth"] == 3 and link.stats()["acked"] == 0
        mqtt_broker.start()
        wait_until(lambda: link.stats()["acked"] == 3, what="the re-sent alerts' PUBACKs")
        assert link.stats()["outbox_depth"] == 0

    def test_alerts_are_stored_while_a_connect_hangs(
        self, make_link: LinkFactory, tmp_path: Path
    ) -> None:
        """A server that takes the TCP connection but never answers TLS: alerts still hit disk."""
        with socket.create_server((HOST, 0)) as server:
            server.settimeout(10)
            link = make_link(server.getsockname()[1], tls=TlsConfig(enabled=True))
            conn, _ = server.accept()  # the link is now stuck in its TLS handshake
            with conn:
                link.submit_alert("while-dialing", {}, phase="start")
                wait_until(
                    lambda: rows_on_disk(tmp_path / "dev1.sqlite") == ["while-dialing"],
                    what="the alert on disk",
                )
                assert link.stats()["connect_failures"] == 0 and not link.connected

    def test_alerts_handed_over_just_before_stop_are_published(
        self, mqtt_broker: Broker, make_link: LinkFactory, tmp_path: Path
    ) -> None:
        """Alerts submitted right before stop() (the end of an event that shutdown closed)
        are published and acknowledged before the link goes offline, not left behind."""
        sub = mqtt_broker.subscriber("asd/dev1/alert", "asd/dev1/status")
        link = connected(make_link(mqtt_broker))
        for n in range(15):  # more than fit in flight at once
            link.submit_alert(f"last-{n}", {"n": n}, phase="end")
        link.stop(timeout_s=5.0)
        assert ids(sub.wait_for("asd/dev1/alert", 15)) == [f"last-{n}" for n in range(15)]
        assert rows_on_disk(tmp_path / "dev1.sqlite") == []
        status = [json.loads(m.payload)["state"] for m in sub.on("asd/dev1/status")]
        assert status[-1] == "offline"

    def test_what_a_stopped_link_left_is_sent_by_the_next(
        self, mqtt_broker: Broker, make_link: LinkFactory, tmp_path: Path
    ) -> None:
        """Alerts stored while the broker was down go out after a restart, held ones on release."""
        mqtt_broker.stop()
        first = make_link(mqtt_broker)
        first.submit_alert("r-1", {"n": 1}, phase="start")
        first.submit_alert("r-2", {"n": 2, "clip": None}, phase="end", held=True)
        first.submit_alert("r-3", {"n": 3}, phase="start")
        first.stop(timeout_s=0.5)
        assert rows_on_disk(tmp_path / "dev1.sqlite") == ["r-1", "r-2", "r-3"]
        mqtt_broker.start()
        sub = mqtt_broker.subscriber("asd/dev1/alert")
        second = make_link(mqtt_broker)
        assert second.held_alerts() == [
            ("r-2", "end", {"id": "r-2", "phase": "end", "n": 2, "clip": None})
        ]
        assert ids(sub.wait_for("asd/dev1/alert", 2)) == ["r-1", "r-3"]
        second.release_alert("r-2", "end", {"n": 2, "clip": "r-2.wav"})
        got = sub.wait_for("asd/dev1/alert", 3)
        assert json.loads(got[2].payload) == {
            "id": "r-2",
            "phase": "end",
            "n": 2,
            "clip": "r-2.wav",
        }
        wait_until(lambda: second.stats()["outbox_depth"] == 0, what="an empty outbox")

    def test_alerts_started_and_never_ended_are_known_to_the_next_link(
        self, mqtt_broker: Broker, make_link: LinkFactory
    ) -> None:
        """A start whose end was never submitted (the process died) is what the next link's
        open_alerts() gives, with the start's payload; an end, held or not, closes it."""
        first = connected(make_link(mqtt_broker))
        first.submit_alert("o-1", {"n": 1}, phase="start")
        first.submit_alert("o-2", {"n": 2}, phase="start")
        first.submit_alert("o-2", {"n": 2}, phase="end")
        first.submit_alert("o-3", {"n": 3, "clip": None}, phase="start")
        first.submit_alert("o-3", {"n": 3, "clip": None}, phase="end", held=True)
        first.submit_alert("o-4", {"n": 4}, phase="start")
        first.stop(timeout_s=2.0)
        second = make_link(mqtt_broker)
        assert second.open_alerts() == [
            ("o-1", {"id": "o-1", "phase": "start", "n": 1}),
            ("o-4", {"id": "o-4", "phase": "start", "n": 4}),
        ]
        second.submit_alert("o-1", {"n": 1}, phase="end")
        second.stop(timeout_s=2.0)
        third = make_link(mqtt_broker)
        assert [alert_id for alert_id, _ in third.open_alerts()] == ["o-4"]

    def test_unusable_outbox_falls_back_to_memory(
        self, mqtt_broker: Broker, make_link: LinkFactory, tmp_path: Path
    ) -> None:
        """An outbox path that cannot be created is logged; alerts still go out."""
        (tmp_path / "dev1.sqlite").mkdir()  # a directory where the file should be
        sub = mqtt_broker.subscriber("asd/dev1/alert")
        with capture_logs() as logs:
            link = connected(make_link(mqtt_broker))
            link.submit_alert("m-1", {}, phase="start")
            assert ids(sub.wait_for("asd/dev1/alert")) == ["m-1"]
        assert any(e["event"] == "outbox_unavailable" and e["log_level"] == "error" for e in logs)


class TestStatus:
    def test_online_retained_after_start_and_after_broker_restart(
        self, mqtt_broker: Broker, make_link: LinkFactory
    ) -> None:
        """A late subscriber finds status online (retained), also after the broker lost it."""
        link = connected(make_link(mqtt_broker))
        status = mqtt_broker.subscriber("asd/dev1/status").wait_for("asd/dev1/status")[0]
        assert status.retain and json.loads(status.payload)["state"] == "online"
        mqtt_broker.stop()  # no persistence: the retained status is gone with it
        mqtt_broker.start()
        wait_until(lambda: link.stats()["connects"] == 2, what="the reconnect")
        status = mqtt_broker.subscriber("asd/dev1/status").wait_for("asd/dev1/status")[0]
        assert status.retain
        assert json.loads(status.payload)["state"] == "online"
        assert json.loads(status.payload)["device_id"] == "dev1"

    def test_stop_publishes_offline(self, mqtt_broker: Broker, make_link: LinkFactory) -> None:
        """A clean stop leaves status offline, retained, with the reason."""
        link = connected(make_link(mqtt_broker))
        link.stop()
        status = mqtt_broker.subscriber("asd/dev1/status").wait_for("asd/dev1/status")[0]
        assert status.retain
        assert json.loads(status.payload)["state"] == "offline"
        assert json.loads(status.payload)["reason"] == "stopped"

    def test_will_sets_offline_when_the_process_is_killed(self, mqtt_broker: Broker) -> None:
        """SIGKILL of the publishing process: the broker publishes the will, offline, retained."""
        sub = mqtt_broker.subscriber("asd/victim/status")
        code = textwrap.dedent(
            f"""
            import time
            from pathlib import Path
            from asd_edge.config import MqttConfig, OutboxConfig
            from asd_edge.mqtt.link import MqttLink
            cfg = MqttConfig(host={HOST!r}, port={mqtt_broker.port}, topic_prefix="asd/victim",
                             keepalive_s=60)
            link = MqttLink(cfg, device_id="victim", outbox_path=Path({str(mqtt_broker.root)!r})
                            / "victim.sqlite", outbox=OutboxConfig())
            link.start()
            deadline = time.monotonic() + 30
            while not link.connected and time.monotonic() < deadline:
                time.sleep(0.01)
            print("connected" if link.connected else f"not connected: {{link.stats()}}", flush=True)
            time.sleep(30)
            """
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert proc.stdout is not None
            output = []
            for line in iter(proc.stdout.readline, ""):  # its own log lines come first
                output.append(line)
                if line.strip() == "connected":
                    break
            assert output and output[-1].strip() == "connected", "".join(output)
            sub.wait_for("asd/victim/status")
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        states = wait_until(
            lambda: [
                json.loads(m.payload)
                for m in sub.on("asd/victim/status")
                if json.loads(m.payload)["state"] == "offline"
            ],
            what="the will",
        )
        assert states[0]["reason"] == "connection_lost"
        late = mqtt_broker.subscriber("asd/victim/status").wait_for("asd/victim/status")[0]
        assert late.retain and json.loads(late.payload)["state"] == "offline"


class TestConnection:
    def test_wrong_password_is_never_connected(
        self, mqtt_broker_factory: Callable[..., Broker], make_link: LinkFactory, tmp_path: Path
    ) -> None:
        """Refused credentials: logged with the reason, retried with back-off, never connected."""
        broker = mqtt_broker_factory(users={"asd": "right-horse"})
        secret = "wrong-battery-staple"
        seen_connected = False
        with capture_logs() as logs:
            link = make_link(broker, username="asd", password=secret)

            def refused_twice() -> bool:
                nonlocal seen_connected
                seen_connected |= link.connected
                return sum(e["event"] == "mqtt_connect_refused" for e in logs) >= 2

            wait_until(refused_twice, what="two refused connects")
        assert not seen_connected and not link.connected
        assert link.stats()["connects"] == 0 and link.stats()["connect_failures"] >= 2
        refused = [e for e in logs if e["event"] == "mqtt_connect_refused"]
        assert refused[0]["log_level"] == "error"
        assert refused[0]["reason"] in ("Not authorized", "Bad user name or password")
        assert all(e["retry_in_s"] >= 0.1 for e in refused)
        assert secret not in repr(logs)
        password_file = tmp_path / "mqtt-password"
        password_file.write_text("right-horse\n")
        good = make_link(broker, name="dev2", username="asd", password_file=str(password_file))
        connected(good)

    def test_unreadable_password_file_is_a_config_error(
        self, mqtt_broker: Broker, make_link: LinkFactory, tmp_path: Path
    ) -> None:
        """A missing password file is named at start."""
        link = make_link(
            mqtt_broker, start=False, username="u", password_file=str(tmp_path / "missing")
        )
        with pytest.raises(ConfigError, match=r"mqtt\.password_file: cannot read .*missing"):
            link.start()

    def test_broker_down_backs_off(self, make_link: LinkFactory) -> None:
        """Nothing listening: attempts are spaced by a growing back-off, never a hot loop."""
        with capture_logs() as logs:
            link = make_link(free_port(), reconnect_min_s=0.1, reconnect_max_s=0.4)
            wait_until(
                lambda: sum(e["event"] == "mqtt_connect_failed" for e in logs) >= 4,
                what="four failed attempts",
            )
        delays = [e["retry_in_s"] for e in logs if e["event"] == "mqtt_connect_failed"]
        assert all(0.05 <= d <= 0.4 for d in delays)
        assert delays[3] >= 0.2  # the base doubled to the cap: attempt 4 waits in [0.2, 0.4]
        assert not link.connected

    def test_backoff_is_capped_jittered_and_resets(self) -> None:
        """Delays double within [min, max], differ between devices, and reset after success."""

        def backoff(seed: int) -> Backoff:
            return Backoff(1.0, 60.0, RECONNECT_JITTER, random.Random(seed))

        a, b = backoff(1), backoff(2)
        da, db = [a.next_delay() for _ in range(12)], [b.next_delay() for _ in range(12)]
        assert all(0.5 <= d <= 60.0 for d in da + db)
        assert da != db
        assert 0.5 <= da[0] <= 1.5 and 30.0 <= da[-1] <= 60.0
        a.reset()
        assert a.next_delay() <= 1.5

    def test_tls_with_client_certificate(
        self, mqtt_broker_factory: Callable[..., Broker], make_link: LinkFactory, tmp_path: Path
    ) -> None:
        """TLS with a private CA and a client certificate; a wrong CA never connects."""
        files = make_tls_files(tmp_path / "tls")
        broker = mqtt_broker_factory(tls=files)
        sub = broker.subscriber("asd/dev1/alert")
        tls = TlsConfig(
            enabled=True,
            ca_file=str(files.ca),
            cert_file=str(files.client_cert),
            key_file=str(files.client_key),
        )
        link = connected(make_link(broker, tls=tls))
        link.submit_alert("tls-1", {}, phase="start")
        assert ids(sub.wait_for("asd/dev1/alert")) == ["tls-1"]
        other = make_tls_files(tmp_path / "other")
        wrong = TlsConfig(
            enabled=True,
            ca_file=str(other.ca),
            cert_file=str(files.client_cert),
            key_file=str(files.client_key),
        )
        with capture_logs() as logs:
            bad = make_link(broker, name="dev2", tls=wrong)
            wait_until(lambda: any(e["event"] == "mqtt_connect_failed" for e in logs))
        assert not bad.connected
        assert "CERTIFICATE_VERIFY_FAILED" in str(logs)
        missing = make_link(
            broker,
            name="dev3",
            start=False,
            tls=TlsConfig(enabled=True, ca_file=str(tmp_path / "nope.pem")),
        )
        with pytest.raises(ConfigError, match=r"mqtt\.tls\.ca_file"):
            missing.start()

    def test_mqtt5(self, mqtt_broker: Broker, make_link: LinkFactory) -> None:
        """Protocol 5 works the same: the alert is acknowledged and deleted."""
        sub = mqtt_broker.subscriber("asd/dev1/alert")
        link = connected(make_link(mqtt_broker, protocol="5"))
        link.submit_alert("v5-1", {}, phase="start")
        assert ids(sub.wait_for("asd/dev1/alert")) == ["v5-1"]
        wait_until(lambda: link.stats()["outbox_depth"] == 0, what="the PUBACK")


class TestState:
    def test_offline_health_keeps_only_the_latest(
        self, mqtt_broker: Broker, make_link: LinkFactory
    ) -> None:
        """Health and monitor state published while offline: the latest is retained on reconnect."""
        mqtt_broker.stop()
        link = make_link(mqtt_broker)
        for n in range(3):
            link.publish_health({"n": n})
        link.publish_model({"pump-a": {"name": "pump-a", "version": "v2"}})
        link.publish_monitor_state(
            "pump-a", {"anomaly": True, "score": 9.0, "level_dbfs": -12.0, "at": "t"}
        )
        mqtt_broker.start()
        connected(link)
        sub = mqtt_broker.subscriber("asd/dev1/health", "asd/dev1/monitor/#", "asd/dev1/model")
        health = sub.wait_for("asd/dev1/health")
        assert [json.loads(m.payload) for m in health] == [{"n": 2}]
        assert health[0].retain
        monitor = sub.wait_for("asd/dev1/monitor/pump-a")[0]
        assert json.loads(monitor.payload)["anomaly"] is True and monitor.retain
        model = sub.wait_for("asd/dev1/model")[0]
        assert json.loads(model.payload)["pump-a"]["version"] == "v2" and model.retain

    def test_scores_throttled_and_clips_bounded(
        self, mqtt_broker: Broker, make_link: LinkFactory
    ) -> None:
        """One score per monitor per interval (QoS 0); clips only if enabled and small enough."""
        sub = mqtt_broker.subscriber("asd/dev1/score", "asd/dev1/clip/#")
        link = connected(
            make_link(
                mqtt_broker,
                publish_scores=True,
                score_interval_s=3600.0,
                publish_clips=True,
                clip_max_mb=0.01,
            )
        )
        for score in (1.0, 2.0, 3.0):
            link.publish_score("pump-a", {"score": score})
        link.publish_score("fan-b", {"score": 7.0})
        got = sub.wait_for("asd/dev1/score", 2)
        assert link.publish_clip("c-1", b"RIFF" + bytes(5000))
        assert not link.publish_clip("c-2", bytes(20_000))
        clip = sub.wait_for("asd/dev1/clip/c-1")[0]
        assert clip.payload.startswith(b"RIFF") and len(clip.payload) == 5004 and clip.qos == 1
        link.submit_alert("fence", {}, phase="start")  # whatever came before it has arrived
        mqtt_broker.subscriber("asd/dev1/alert")
        wait_until(lambda: link.stats()["acked"] == 1, what="the fence alert")
        assert [json.loads(m.payload) for m in sub.on("asd/dev1/score")] == [
            {"monitor": "pump-a", "score": 1.0},
            {"monitor": "fan-b", "score": 7.0},
        ]
        assert got[0].qos == 0 and sub.on("asd/dev1/clip/c-2") == []
        quiet = make_link(mqtt_broker, name="dev2", start=False)
        assert not quiet.publish_clip("c-3", b"x")  # publish_clips is off by default

    def test_discovery_on_connect_and_when_home_assistant_restarts(
        self, mqtt_broker: Broker, make_link: LinkFactory
    ) -> None:
        """Discovery is retained at connect and published again on homeassistant/status online."""
        sub = mqtt_broker.subscriber("homeassistant/#")
        link = connected(make_link(mqtt_broker))
        link.set_discovery(["pump-a"], model_names={"pump-a": "pump-a-v3"})
        first = wait_until(
            lambda: (
                len(configs := [m for m in sub.messages if m.topic.endswith("/config")]) >= 4
                and configs
            )
        )
        assert all(
            json.loads(m.payload)["device"]["identifiers"] == ["asd-edge-dev1"] for m in first
        )
        sub.clear()
        mqtt_broker.publish("homeassistant/status", "offline")
        mqtt_broker.publish("homeassistant/status", "online")
        again = wait_until(
            lambda: len([m for m in sub.messages if m.topic.endswith("/config")]) >= 4
        )
        assert again
        late = mqtt_broker.subscriber("homeassistant/+/asd-edge-dev1/+/config")
        retained = late.wait_for("homeassistant/binary_sensor/asd-edge-dev1/pump-a_anomaly/config")
        assert retained[0].retain

    def test_discovery_off(self, mqtt_broker: Broker, make_link: LinkFactory) -> None:
        """With Home Assistant disabled nothing is published under its prefix."""
        sub = mqtt_broker.subscriber("homeassistant/#", "asd/dev1/alert")
        link = connected(make_link(mqtt_broker, homeassistant=HomeAssistantConfig(enabled=False)))
        link.set_discovery(["pump-a"])
        link.submit_alert("fence", {}, phase="start")
        sub.wait_for("asd/dev1/alert")
        assert [m for m in sub.messages if m.topic.startswith("homeassistant/")] == []


class TestCommands:
    def test_a_retained_command_is_refused_once_and_never_run(
        self, mqtt_broker: Broker, make_link: LinkFactory
    ) -> None:
        """A command left retained on the broker (which replays it at every subscription):
        refused once with the reason, never executed, not answered again when the link
        subscribes anew; a live command still runs."""
        pings: list[str | None] = []
        router = CommandRouter({"ping": lambda cmd: pings.append(cmd.id)})
        publisher = mqtt_broker.client()
        publisher.connect(HOST, mqtt_broker.port)
        publisher.loop_start()
        try:
            info = publisher.publish("asd/dev1/cmd/ping", b'{"id": "kept"}', qos=1, retain=True)
            info.wait_for_publish(timeout=10)
            sub = mqtt_broker.subscriber("asd/dev1/cmd_result")
            first = make_link(mqtt_broker, on_command=router, start=False)
            router.reply = first.publish_command_result
            first.start()
            (reply,) = [json.loads(m.payload) for m in sub.wait_for("asd/dev1/cmd_result")]
            assert reply["id"] == "kept" and reply["ok"] is False
            assert reply["error"] == RETAINED_REASON
            first.stop(timeout_s=2.0)
            second = make_link(mqtt_broker, on_command=router, start=False)
            router.reply = second.publish_command_result
            second.start()  # subscribes anew: the broker replays the retained command
            wait_until(lambda: router.received == 2, what="the retained command again")
            live = publisher.publish("asd/dev1/cmd/ping", b'{"id": "live"}', qos=1)
            live.wait_for_publish(timeout=10)
            wait_until(lambda: pings == ["live"], what="the live ping to run")
            # The handler runs before its reply is published: wait for the reply too. A
            # second answer to the replay would have come before it.
            replies = wait_until(
                lambda: len(got := [json.loads(m.payload) for m in sub.messages]) >= 2 and got,
                what="the live ping's reply",
            )
            assert [(r["id"], r["ok"]) for r in replies] == [("kept", False), ("live", True)]
        finally:
            publisher.loop_stop()
            publisher.disconnect()

    def test_fuzzed_commands_are_rejected_and_ping_still_works(
        self, mqtt_broker: Broker, make_link: LinkFactory
    ) -> None:
        """Hundreds of malformed cmd/ messages: each rejected, logged, counted; link stays up."""
        health_calls: list[str | None] = []
        router = CommandRouter({"health": lambda cmd: health_calls.append(cmd.id)})
        link = connected(make_link(mqtt_broker, on_command=router))
        router.reply = link.publish_command_result
        sub = mqtt_broker.subscriber("asd/dev1/cmd_result")
        wait_until(lambda: link.stats()["connects"] == 1)
        rng = random.Random(7)
        bad: list[tuple[str, bytes]] = []
        for i in range(300):
            kind = i % 6
            if kind == 0:
                bad.append(("ping", b"\xff" + rng.randbytes(rng.randrange(0, 40))))
            elif kind == 1:
                bad.append(("health", b"x" + bytes(rng.choices(range(32, 127), k=20))))
            elif kind == 2:
                bad.append(("ping", json.dumps(rng.choice([[1], 2, "s", None, True])).encode()))
            elif kind == 3:
                bad.append(("ping", json.dumps({"id": rng.choice([1, [], {}, False])}).encode()))
            elif kind == 4:
                name = "zz" + "".join(rng.choices("abc/", k=rng.randrange(1, 12)))
                bad.append((name, rng.randbytes(rng.randrange(0, 30))))
            else:
                bad.append(("health", json.dumps({"id": "big", "pad": "x" * 70_000}).encode()))
        client = mqtt_broker.client()
        client.connect(HOST, mqtt_broker.port)
        client.loop_start()
        with capture_logs() as logs:
            infos = [
                client.publish(f"asd/dev1/cmd/{suffix}", payload, qos=1) for suffix, payload in bad
            ]
            for info in infos:
                info.wait_for_publish(timeout=10)
            wait_until(
                lambda: link.stats()["commands_rejected"] == len(bad),
                timeout_s=20,
                what="every malformed command to be rejected",
            )
            client.publish("asd/dev1/cmd/ping", b'{"id": "after-fuzz"}', qos=1)
            client.publish("asd/dev1/cmd/health", b'{"id": "h-1"}', qos=1)
            replies = wait_until(
                lambda: [
                    json.loads(m.payload)
                    for m in sub.on("asd/dev1/cmd_result")
                    if json.loads(m.payload)["id"] in ("after-fuzz", "h-1")
                ],
                what="the ping reply",
            )
        client.disconnect()
        client.loop_stop()
        assert link.connected and link.stats()["connects"] == 1
        assert replies[0] == {"command": "ping", "id": "after-fuzz", "ok": True, "error": None}
        wait_until(lambda: health_calls == ["h-1"], what="the health handler")
        rejected = [e for e in logs if e["event"] == "command_rejected"]
        assert len(rejected) == len(bad) and all(e["reason"] for e in rejected)
        failures = [json.loads(m.payload) for m in sub.wait_for("asd/dev1/cmd_result", len(bad))]
        assert sum(not r["ok"] for r in failures) == len(bad)
