"""Tests of the Home Assistant discovery messages: valid, unique, and reading real state fields."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from asd_edge import __version__
from asd_edge.mqtt import encode_json
from asd_edge.mqtt.homeassistant import discovery_messages, monitor_topic, status_topic

PREFIX = "asd/dev-1"


def messages(device_id: str = "dev-1", prefix: str = PREFIX, **kw: Any) -> list:
    return discovery_messages(
        device_id=device_id, topic_prefix=prefix, monitors=["pump-a", "fan_b"], **kw
    )


def render(template: str, payload: bytes) -> str:
    """Render a value template the way Home Assistant does: value and value_json."""
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return str(
        env.from_string(template).render(value=payload.decode(), value_json=json.loads(payload))
    )


class TestShape:
    def test_topics_and_payloads_are_valid(self) -> None:
        """Every config is JSON on <discovery>/<component>/<node>/<object>/config."""
        msgs = messages(discovery_prefix="ha")
        assert len(msgs) == 1 + 4 * 2
        for topic, config in msgs:
            assert re.fullmatch(
                r"ha/(binary_sensor|sensor)/asd-edge-dev-1/[A-Za-z0-9_-]+/config", topic
            ), topic
            assert json.loads(encode_json(config)) == config
            component = topic.split("/")[1]
            assert config["default_entity_id"].startswith(component + ".")
            assert re.fullmatch(r"[a-z_]+\.[a-z0-9_]+", config["default_entity_id"])
        assert len({topic for topic, _ in msgs}) == len(msgs)

    def test_unique_ids_are_unique_across_devices_and_monitors(self) -> None:
        """No two entities share a unique_id, even for names built to collide ("a-b"+"c")."""
        a = discovery_messages(device_id="a-b", topic_prefix="asd/a-b", monitors=["c"])
        b = discovery_messages(device_id="a", topic_prefix="asd/a", monitors=["b-c"])
        ids = [config["unique_id"] for _, config in [*a, *b, *messages()]]
        assert len(ids) == len(set(ids))

    def test_device_block(self) -> None:
        """Every entity names the same device: identifiers, model, software version."""
        devices = [config["device"] for _, config in messages()]
        assert all(d == devices[0] for d in devices)
        assert devices[0]["identifiers"] == ["asd-edge-dev-1"]
        assert devices[0]["model"] == "asd-edge"
        assert devices[0]["sw_version"] == __version__

    def test_entity_kinds(self) -> None:
        """Anomaly: problem binary sensor; score and level: measurement sensors, level in dB;
        machine: running binary sensor."""
        by_object = {topic.split("/")[-2]: config for topic, config in messages()}
        assert by_object["pump-a_anomaly"]["device_class"] == "problem"
        assert by_object["pump-a_running"]["device_class"] == "running"
        assert by_object["pump-a_score"]["state_class"] == "measurement"
        assert by_object["pump-a_level"]["unit_of_measurement"] == "dB"
        assert by_object["connectivity"]["device_class"] == "connectivity"
        for name in ("pump-a_anomaly", "pump-a_score", "pump-a_level", "pump-a_running"):
            assert by_object[name]["state_topic"] == monitor_topic(PREFIX, "pump-a")
            assert by_object[name]["availability"] == [
                {"topic": status_topic(PREFIX), "value_template": "{{ value_json.state }}"}
            ]
        assert by_object["connectivity"]["state_topic"] == status_topic(PREFIX)

    @pytest.mark.parametrize("bad", ["pump/a", "pump+", "#", ""])
    def test_names_that_break_topics_are_refused(self, bad: str) -> None:
        """A monitor name that is not one topic level is a ValueError naming it."""
        with pytest.raises(ValueError, match="monitors"):
            discovery_messages(device_id="d", topic_prefix="asd/d", monitors=[bad])


class TestTemplates:
    """The templates read the fields MqttLink actually publishes."""

    state = encode_json(
        {
            "anomaly": True,
            "score": 3.25,
            "level_dbfs": -20.5,
            "machine": "running",
            "at": "2026-11-21T10:15:00Z",
        }
    )
    quiet = encode_json(
        {
            "anomaly": False,
            "score": float("nan"),
            "level_dbfs": None,
            "machine": None,
            "at": "2026-11-21T10:15:01Z",
        }
    )
    stopped = encode_json(
        {
            "anomaly": False,
            "score": 9.5,
            "level_dbfs": -60.0,
            "machine": "stopped",
            "at": "2026-11-21T10:15:02Z",
        }
    )

    def entity(self, name: str, **kw: Any) -> dict[str, Any]:
        return {topic.split("/")[-2]: config for topic, config in messages(**kw)}[name]

    def test_anomaly_on_and_off(self) -> None:
        """The anomaly template gives payload_on during an anomaly and payload_off otherwise."""
        config = self.entity("pump-a_anomaly")
        assert render(config["value_template"], self.state) == config["payload_on"]
        assert render(config["value_template"], self.quiet) == config["payload_off"]

    def test_machine_running_stopped_and_unknown(self) -> None:
        """The running sensor is on while the machine runs, off while it is stopped, and
        'None' (unknown in HA) for a model without ``level`` (``machine`` null)."""
        config = self.entity("pump-a_running")
        assert render(config["value_template"], self.state) == config["payload_on"]
        assert render(config["value_template"], self.stopped) == config["payload_off"]
        assert render(config["value_template"], self.quiet) == "None"

    def test_score_and_level(self) -> None:
        """Numbers come through; a missing score or level renders None (unknown in HA)."""
        score, level = self.entity("pump-a_score"), self.entity("pump-a_level")
        assert float(render(score["value_template"], self.state)) == 3.25
        assert float(render(level["value_template"], self.state)) == -20.5
        assert render(score["value_template"], self.quiet) == "None"
        assert render(level["value_template"], self.quiet) == "None"

    def test_availability_and_connectivity(self) -> None:
        """The status payloads render to HA's default online/offline availability payloads."""
        online = encode_json({"state": "online", "device_id": "dev-1", "since": "x"})
        offline = encode_json({"state": "offline", "device_id": "dev-1"})
        template = self.entity("pump-a_score")["availability"][0]["value_template"]
        assert [render(template, p) for p in (online, offline)] == ["online", "offline"]
        conn = self.entity("connectivity")
        assert render(conn["value_template"], online) == conn["payload_on"]
        assert render(conn["value_template"], offline) == conn["payload_off"]

    def test_attributes_carry_the_model_name(self) -> None:
        """With model names, the anomaly entity's attributes are the state plus the model."""
        config = self.entity("pump-a_anomaly", model_names={"pump-a": "pump-a's model"})
        attributes = json.loads(render(config["json_attributes_template"], self.state))
        assert attributes["model"] == "pump-a's model"
        assert attributes["score"] == 3.25


class TestLearning:
    def test_a_learn_button_per_monitor_sends_the_learn_command(self) -> None:
        """With learning on, each monitor has a button whose press is the ``cmd/learn``
        payload the daemon accepts, and the device a sensor of the learning's state."""
        from asd_edge.config import parse_config
        from asd_edge.mqtt import command_specs
        from asd_edge.mqtt.commands import parse_command

        msgs = dict(messages(learn_s=600.0))
        button = msgs["homeassistant/button/asd-edge-dev-1/pump-a_learn/config"]
        assert button["command_topic"] == f"{PREFIX}/cmd/learn"
        specs = command_specs(parse_config(None, base_dir=".").push)
        command = parse_command("learn", button["payload_press"].encode(), commands=specs)
        assert dict(command.args) == {"monitor": "pump-a", "seconds": 600.0}
        sensor = msgs["homeassistant/sensor/asd-edge-dev-1/learning/config"]
        body = encode_json({"monitor": "pump-a", "state": "fitting"})
        assert render(sensor["value_template"], body) == "fitting"
        assert sensor["json_attributes_topic"] == f"{PREFIX}/learn"

    def test_no_learning_entities_when_learning_is_off(self) -> None:
        topics = [topic for topic, _ in messages()]
        assert not any("learn" in topic for topic in topics)
