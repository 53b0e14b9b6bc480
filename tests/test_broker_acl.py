"""The broker lock-down recipe (contrib/mosquitto) against a real mosquitto that reads its
very ACL file: a device speaks only for itself, only the key holder commands, consumers
read, and no packet larger than the largest push gets through."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from paho.mqtt.client import Client
from support import REPO
from support.services import connected, wait_until

from asd_edge.config import PushConfig
from asd_edge.mqtt import CommandRouter, MqttLink, command_specs, max_message_bytes
from devkit.broker import HOST, Broker, Subscriber

CONTRIB = REPO / "contrib" / "mosquitto"
ACL_FILE = CONTRIB / "asd-edge.acl"
CONF_FILE = CONTRIB / "asd-edge.conf"

USERS = {
    name: f"{name}-horse-battery"
    for name in ("pump-a", "pump-b", "asd-push", "homeassistant", "dashboard", "asd-web")
}
"""The users contrib's ACL file names: two devices, the key holder and two consumers."""

LinkFactory = Callable[..., MqttLink]


def recipe_settings() -> dict[str, str]:
    """The settings contrib's asd-edge.conf makes (the first of each name; no comments)."""
    settings: dict[str, str] = {}
    for line in CONF_FILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.strip().partition(" ")
            settings.setdefault(name, value.strip())
    return settings


@pytest.fixture
def broker(mqtt_broker_factory: Callable[..., Broker]) -> Broker:
    """mosquitto as the recipe sets it up: contrib's ACL file as it is, a password for each
    of its users, no anonymous client, and the conf's max_packet_size and
    use_username_as_clientid (devkit keeps its own listener and paths)."""
    settings = recipe_settings()
    return mqtt_broker_factory(
        users=USERS,
        acl_file=ACL_FILE,
        max_packet_size=int(settings["max_packet_size"]),
        username_as_client_id=settings["use_username_as_clientid"] == "true",
    )


def device(
    make_link: LinkFactory, broker: Broker, name: str, *, user: str | None = None, **kw: Any
) -> MqttLink:
    """The daemon's link for device ``name``, logged in as its user, or as ``user``
    (``mqtt.username`` and ``mqtt.password_file``, as the README sets them up)."""
    user = user or name
    password_file = broker.root / f"{user}.password"
    password_file.write_text(USERS[user] + "\n")
    return make_link(broker, name=name, username=user, password_file=str(password_file), **kw)


def watch(broker: Broker, user: str, *topics: str) -> Subscriber:
    """A subscriber logged in as ``user``."""
    return broker.subscriber(*topics, username=user, password=USERS[user])


def login(broker: Broker, user: str, **kw: Any) -> Client:
    """A connected paho client of ``user``; fails the test if the broker refuses it."""
    accepted = threading.Event()
    client = broker.client(username=user, password=USERS[user], **kw)
    client.on_connect = lambda _c, _u, _f, reason, _p: reason.is_failure or accepted.set()
    client.connect(HOST, broker.port)
    client.loop_start()
    wait_until(accepted.is_set, what=f"the broker to accept {user}")
    return client


def publish(client: Client, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
    """Publish at QoS 1 and wait for the PUBACK (MQTT 3.1.1: given for a denied message too,
    after the broker has dropped it)."""
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(timeout=10)


def log_out(client: Client) -> None:
    """Disconnect cleanly and stop paho's thread."""
    client.disconnect()
    client.loop_stop()


def payloads(sub: Subscriber, topic: str) -> list[dict[str, Any]]:
    """The JSON bodies ``sub`` got on ``topic``."""
    return [json.loads(m.payload) for m in sub.on(topic)]


def configs(sub: Subscriber) -> set[str]:
    """The discovery config topics ``sub`` got."""
    return {m.topic for m in sub.messages if m.topic.endswith("/config")}


class TestRecipe:
    def test_max_packet_size_is_the_largest_message_a_device_reads(self) -> None:
        """The conf's max_packet_size is the daemon's own limit for the default push.max_mb
        (the largest push as base64, its other fields, room for topic and properties), and
        it admits nobody anonymous."""
        settings = recipe_settings()
        assert int(settings["max_packet_size"]) == max_message_bytes(command_specs(PushConfig()))
        assert settings["allow_anonymous"] == "false"
        assert settings["acl_file"].endswith("/asd-edge.acl")
        assert settings["password_file"].endswith("/asd-edge.passwd")


class TestDevice:
    def test_publishes_its_state_and_discovery_which_consumers_read(
        self, broker: Broker, make_link: LinkFactory
    ) -> None:
        """pump-a, logged in as itself: a dashboard reads its status, alert, health, model
        and monitor state; Home Assistant reads its discovery, and its birth message makes
        the device announce itself again."""
        dashboard = watch(broker, "dashboard", "asd/#")
        ha = watch(broker, "homeassistant", "homeassistant/#")
        link = connected(device(make_link, broker, "pump-a"))
        link.set_discovery(["main"])
        link.publish_health({"n": 1})
        link.publish_model({"main": {"version": "v1"}})
        link.publish_monitor_state("main", {"anomaly": True, "score": 9.0})
        link.submit_alert("a-1", {"monitor": "main", "score": 9.0}, phase="start")
        for topic in ("status", "health", "model", "monitor/main", "alert"):
            dashboard.wait_for(f"asd/pump-a/{topic}")
        assert [a["id"] for a in payloads(dashboard, "asd/pump-a/alert")] == ["a-1"]
        assert payloads(dashboard, "asd/pump-a/status")[0]["state"] == "online"
        connectivity = "homeassistant/binary_sensor/asd-edge-pump-a/connectivity/config"
        ha.wait_for(connectivity)
        wait_until(lambda: len(configs(ha)) == 5, what="5 discovery configs")
        ha.clear()
        publish(ha.client, "homeassistant/status", "online")
        ha.wait_for(connectivity, 1)
        wait_until(lambda: len(configs(ha)) == 5, what="discovery again")

    def test_takes_commands_from_the_key_holder_only(
        self, broker: Broker, make_link: LinkFactory
    ) -> None:
        """cmd/ping, cmd/model/reset and a fleet cmd/model from the other device and from
        the consumers never reach pump-a; the key holder's reach it, the key holder reads
        the replies, and the other device cannot read pump-a's commands."""
        heard: list[tuple[str, bytes]] = []
        router = CommandRouter({})

        def on_command(suffix: str, payload: bytes, retained: bool) -> None:
            heard.append((suffix, payload))
            router(suffix, payload, retained)

        link = connected(
            device(make_link, broker, "pump-a", on_command=on_command, fleet_prefix="asd/fleet")
        )
        router.reply = link.publish_command_result
        eavesdropper = watch(broker, "pump-b", "asd/pump-a/cmd/#")
        for user in ("dashboard", "homeassistant"):
            intruder = login(broker, user)
            publish(intruder, "asd/pump-a/cmd/ping", json.dumps({"id": user}))
            publish(intruder, "asd/pump-a/cmd/model/reset", json.dumps({"id": user}))
            publish(intruder, "asd/fleet/cmd/model", json.dumps({"id": user}))
            log_out(intruder)
        publish(eavesdropper.client, "asd/pump-a/cmd/ping", b'{"id": "pump-b"}')
        publish(eavesdropper.client, "asd/pump-a/cmd/model/reset", b'{"id": "pump-b"}')
        publish(eavesdropper.client, "asd/fleet/cmd/model", b'{"id": "pump-b"}')
        key = watch(broker, "asd-push", "asd/pump-a/cmd_result")
        publish(key.client, "asd/pump-a/cmd/ping", b'{"id": "key"}')
        publish(key.client, "asd/pump-a/cmd/model/reset", b'{"id": "key-reset"}')
        publish(key.client, "asd/fleet/cmd/model", b'{"id": "key-fleet"}')
        wait_until(lambda: len(heard) >= 3, what="the key holder's three commands")
        assert heard == [
            ("ping", b'{"id": "key"}'),
            ("model/reset", b'{"id": "key-reset"}'),
            ("model", b'{"id": "key-fleet"}'),
        ]
        replies = wait_until(
            lambda: len(got := payloads(key, "asd/pump-a/cmd_result")) >= 3 and got,
            what="three replies",
        )
        assert [(r["id"], r["ok"]) for r in replies] == [
            ("key", True),
            ("key-reset", False),
            ("key-fleet", False),
        ]
        assert eavesdropper.messages == []

    def test_the_web_dashboard_sends_its_commands_but_no_model(
        self, broker: Broker, make_link: LinkFactory
    ) -> None:
        """asd-web (asd-edge web's own user) reaches pump-a with cmd/live and cmd/clip and
        reads its replies; its cmd/model and cmd/model/reset never arrive."""
        heard: list[str] = []
        router = CommandRouter({"live": lambda _c: None, "clip": lambda _c: None})

        def on_command(suffix: str, payload: bytes, retained: bool) -> None:
            heard.append(suffix)
            router(suffix, payload, retained)

        link = connected(device(make_link, broker, "pump-a", on_command=on_command))
        router.reply = link.publish_command_result
        web = watch(broker, "asd-web", "asd/pump-a/cmd_result")
        publish(web.client, "asd/pump-a/cmd/model", b'{"id": "w0"}')
        publish(web.client, "asd/pump-a/cmd/model/reset", b'{"id": "w3"}')
        publish(web.client, "asd/pump-a/cmd/live", b'{"id": "w1", "seconds": 20}')
        publish(web.client, "asd/pump-a/cmd/clip", b'{"id": "w2", "alert_id": "a"}')
        wait_until(lambda: len(heard) >= 2, what="the dashboard's two commands")
        assert heard == ["live", "clip"]
        wait_until(lambda: len(payloads(web, "asd/pump-a/cmd_result")) >= 2, what="replies")

    def test_outside_its_own_prefix_it_is_refused_visibly_with_mqtt5(
        self, broker: Broker, make_link: LinkFactory
    ) -> None:
        """A device logged in as pump-b but configured with pump-a's prefix (a copied
        config): with MQTT 5 the broker refuses its alert, which stays in the outbox and is
        counted as refused; nothing reaches a subscriber."""
        sub = watch(broker, "dashboard", "asd/#")
        link = connected(device(make_link, broker, "pump-a", user="pump-b", protocol="5"))
        link.submit_alert("a-1", {"score": 9.0}, phase="start")
        wait_until(lambda: link.stats()["refused"] == 1, what="the broker to refuse the alert")
        assert link.stats()["outbox_depth"] == 1 and link.stats()["acked"] == 0
        assert sub.messages == []


class TestOtherUsers:
    FORGED: tuple[tuple[str, str, bool], ...] = (
        ("asd/pump-a/alert", '{"id": "forged", "phase": "start", "score": 99}', False),
        ("asd/pump-a/status", '{"state": "offline", "reason": "forged"}', True),
        ("asd/pump-a/health", '{"forged": true}', True),
        ("asd/pump-a/model", '{"forged": true}', True),
        ("asd/pump-a/monitor/main", '{"anomaly": true, "forged": true}', True),
        ("asd/pump-a/cmd_result", '{"id": "forged", "ok": true}', False),
        (
            "homeassistant/binary_sensor/asd-edge-pump-a/connectivity/config",
            '{"state_topic": "elsewhere", "forged": true}',
            True,
        ),
    )
    """Messages on pump-a's topics that anyone but pump-a might try."""

    def test_cannot_speak_for_the_device(self, broker: Broker, make_link: LinkFactory) -> None:
        """The other device, the key holder and a consumer publishing pump-a's alert,
        retained offline status, health, model, monitor state, reply or discovery: a
        subscriber gets none of it, and the retained status stays pump-a's online. Nor can
        a user that is not a device publish alerts under its own name; the other device
        can under its own."""
        ha = watch(broker, "homeassistant", "asd/#", "homeassistant/#")
        link = connected(device(make_link, broker, "pump-a"))
        ha.wait_for("asd/pump-a/status")
        for user in ("pump-b", "asd-push", "dashboard"):
            intruder = login(broker, user)
            for topic, body, retain in self.FORGED:
                publish(intruder, topic, body, retain=retain)
            publish(intruder, f"asd/{user}/alert", '{"id": "own-name"}')
            log_out(intruder)
        link.submit_alert("real", {"score": 1.0}, phase="start")
        ha.wait_for("asd/pump-a/alert")  # after everything the intruders published
        assert [a["id"] for a in payloads(ha, "asd/pump-a/alert")] == ["real"]
        assert [s["state"] for s in payloads(ha, "asd/pump-a/status")] == ["online"]
        assert {m.topic for m in ha.messages} == {
            "asd/pump-a/status",
            "asd/pump-a/alert",
            "asd/pump-b/alert",  # pump-b's own, under its own name
        }
        late = watch(broker, "dashboard", "asd/pump-a/#")
        [status] = late.wait_for("asd/pump-a/status")
        assert status.retain and json.loads(status.payload)["state"] == "online"

    def test_cannot_take_the_device_client_id(self, broker: Broker, make_link: LinkFactory) -> None:
        """pump-b connecting with pump-a's client id neither disconnects pump-a nor makes the
        broker publish pump-a's last will (offline): the client id is the user name."""
        sub = watch(broker, "dashboard", "asd/pump-a/#")
        link = connected(device(make_link, broker, "pump-a"))
        sub.wait_for("asd/pump-a/status")
        intruder = login(broker, "pump-b", client_id=link.client_id)
        link.submit_alert("after", {"score": 1.0}, phase="start")
        sub.wait_for("asd/pump-a/alert")
        log_out(intruder)
        assert link.stats()["disconnects"] == 0
        assert [s["state"] for s in payloads(sub, "asd/pump-a/status")] == ["online"]


class TestPacketSize:
    def test_the_largest_push_passes_and_a_larger_packet_is_refused(
        self, broker: Broker, make_link: LinkFactory
    ) -> None:
        """The key holder's push of the largest size the device accepts (push.max_mb)
        arrives whole; a payload of max_packet_size bytes gets the key holder disconnected
        before the device sees any of it (the device's own guard never has to act)."""
        specs = command_specs(PushConfig())
        largest = specs["model"].max_bytes
        limit = int(recipe_settings()["max_packet_size"])
        heard: list[tuple[str, int]] = []
        link = connected(
            device(
                make_link,
                broker,
                "pump-a",
                on_command=lambda suffix, payload, _r: heard.append((suffix, len(payload))),
                max_message_bytes=max_message_bytes(specs),
            )
        )
        key = login(broker, "asd-push")
        key.publish("asd/pump-a/cmd/model", bytes(largest), qos=1).wait_for_publish(timeout=60)
        wait_until(lambda: heard, timeout_s=30, what="the largest push")
        dropped = threading.Event()
        key.on_disconnect = lambda *_a: dropped.set()
        key.publish("asd/pump-a/cmd/model", bytes(limit), qos=1)
        wait_until(dropped.is_set, timeout_s=30, what="the broker to drop the key holder")
        log_out(key)  # before paho reconnects (1 s) and tries again
        key = login(broker, "asd-push")
        publish(key, "asd/pump-a/cmd/ping", b"{}")
        wait_until(lambda: len(heard) == 2, what="the ping after the refused packet")
        log_out(key)
        assert heard == [("model", largest), ("ping", 2)]
        assert link.stats()["messages_oversized"] == 0
        assert "oversize packet" in broker.log_text()
