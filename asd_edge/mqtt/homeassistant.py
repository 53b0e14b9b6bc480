"""Home Assistant MQTT discovery: the device, and per monitor anomaly, score, level and
machine-running entities."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from .. import __version__

__all__ = [
    "DiscoveryMessage",
    "device_info",
    "discovery_messages",
    "monitor_topic",
    "status_topic",
]

DiscoveryMessage = tuple[str, dict[str, Any]]
"""(config topic, config payload) of one entity; published retained."""

_LEVEL: Final = re.compile(r"^[A-Za-z0-9_-]+$")
"""What Home Assistant accepts as node_id and object_id in a discovery topic."""
_AVAILABILITY_TEMPLATE: Final = "{{ value_json.state }}"
_MACHINE_TEMPLATE: Final = (
    "{{ {'running': 'ON', 'stopped': 'OFF'}.get(value_json.machine, 'None') }}"
)


def status_topic(topic_prefix: str) -> str:
    """``<prefix>/status``: the retained online/offline state of the device."""
    return f"{topic_prefix}/status"


def monitor_topic(topic_prefix: str, monitor: str) -> str:
    """``<prefix>/monitor/<name>``: the retained state one monitor's entities read."""
    return f"{topic_prefix}/monitor/{monitor}"


def device_info(device_id: str, *, version: str = __version__) -> dict[str, Any]:
    """The ``device`` block shared by every entity of this daemon."""
    return {
        "identifiers": [f"asd-edge-{device_id}"],
        "name": f"asd-edge {device_id}",
        "manufacturer": "asd-edge",
        "model": "asd-edge",
        "sw_version": version,
    }


def discovery_messages(
    *,
    device_id: str,
    topic_prefix: str,
    monitors: Sequence[str],
    discovery_prefix: str = "homeassistant",
    model_names: Mapping[str, str] | None = None,
    learn_s: float | None = None,
    version: str = __version__,
) -> list[DiscoveryMessage]:
    """Every discovery config message for the device and its monitors, in a stable order.

    Per monitor: a ``binary_sensor`` (device class problem) that is on during an
    anomaly, a ``sensor`` for the latest score and one for the audio level (dB), and
    a ``binary_sensor`` (device class running) that is on while the machine runs and
    off while it is stopped (unknown for a model without ``level`` metadata, whose
    ``machine`` is null), all read from ``<prefix>/monitor/<name>``. For the device: a connectivity
    ``binary_sensor`` read from ``<prefix>/status``. The monitor entities are
    available while the device is online; the connectivity entity has no
    availability of its own, since it *is* the availability (it reads "off" when
    the device is offline instead of "unavailable").

    With ``learn_s`` (learning on the device is on): per monitor a ``button`` that
    sends ``cmd/learn`` for ``learn_s`` seconds and one that marks the monitor's last
    alert as a false alarm (``cmd/feedback``), and for the device a ``sensor`` of the
    learning's state (``collecting``, ``fitting``, ``done``, ``failed``, ``cancelled``)
    with the whole ``<prefix>/learn`` message as its attributes.
    """
    for what, value in (("device_id", device_id), ("discovery_prefix", discovery_prefix)):
        if not _LEVEL.match(value):
            raise ValueError(f"{what}: expected A-Z a-z 0-9 _ - only, got {value!r}")
    if len(set(monitors)) != len(monitors):
        raise ValueError(f"monitors: expected unique names, got {list(monitors)}")
    models = dict(model_names or {})
    device = device_info(device_id, version=version)
    node = f"asd-edge-{device_id}"
    status = status_topic(topic_prefix)
    availability = [{"topic": status, "value_template": _AVAILABILITY_TEMPLATE}]
    origin = {"name": "asd-edge", "sw_version": version}

    def entity(
        component: str, object_id: str, config: dict[str, Any], *, available: bool = True
    ) -> DiscoveryMessage:
        unique = f"asd-edge-{device_id}:{object_id}"
        payload: dict[str, Any] = {
            **config,
            "unique_id": unique,
            "default_entity_id": f"{component}.{_slug(node)}_{_slug(object_id)}",
            "device": device,
            "origin": origin,
        }
        if available:
            payload["availability"] = availability
        topic = f"{discovery_prefix}/{component}/{node}/{object_id}/config"
        return topic, payload

    messages = [
        entity(
            "binary_sensor",
            "connectivity",
            {
                "name": "Connectivity",
                "device_class": "connectivity",
                "entity_category": "diagnostic",
                "state_topic": status,
                "value_template": "{{ value_json.state }}",
                "payload_on": "online",
                "payload_off": "offline",
            },
            available=False,
        )
    ]
    if learn_s is not None:
        learn = f"{topic_prefix}/learn"
        messages.append(
            entity(
                "sensor",
                "learning",
                {
                    "name": "Learning",
                    "state_topic": learn,
                    "value_template": "{{ value_json.state }}",
                    "json_attributes_topic": learn,
                    "icon": "mdi:school",
                },
            )
        )
    for monitor in monitors:
        if not _LEVEL.match(monitor):
            raise ValueError(f"monitors: expected A-Z a-z 0-9 _ - only, got {monitor!r}")
        state = monitor_topic(topic_prefix, monitor)
        attributes: dict[str, Any] = {"json_attributes_topic": state}
        if monitor in models:
            # The attributes are the monitor state plus the model's name.
            attributes["json_attributes_template"] = (
                "{{ dict(value_json, model=" + _jinja_string(models[monitor]) + ") | tojson }}"
            )
        messages.append(
            entity(
                "binary_sensor",
                f"{monitor}_anomaly",
                {
                    "name": f"{monitor} anomaly",
                    "device_class": "problem",
                    "state_topic": state,
                    "value_template": "{{ 'ON' if value_json.anomaly else 'OFF' }}",
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    **attributes,
                },
            )
        )
        messages.append(
            entity(
                "sensor",
                f"{monitor}_score",
                {
                    "name": f"{monitor} anomaly score",
                    "state_class": "measurement",
                    "state_topic": state,
                    "value_template": "{{ value_json.score }}",
                    "suggested_display_precision": 2,
                    "icon": "mdi:chart-bell-curve",
                },
            )
        )
        messages.append(
            entity(
                "sensor",
                f"{monitor}_level",
                {
                    "name": f"{monitor} audio level",
                    "state_class": "measurement",
                    "unit_of_measurement": "dB",
                    "state_topic": state,
                    "value_template": "{{ value_json.level_dbfs }}",
                    "suggested_display_precision": 1,
                    "icon": "mdi:waveform",
                },
            )
        )
        messages.append(
            entity(
                "binary_sensor",
                f"{monitor}_running",
                {
                    "name": f"{monitor} machine running",
                    "device_class": "running",
                    "state_topic": state,
                    # 'None' is Home Assistant's "unknown" (a model without `level`)
                    "value_template": _MACHINE_TEMPLATE,
                    "payload_on": "ON",
                    "payload_off": "OFF",
                },
            )
        )
        if learn_s is not None:
            messages.append(
                entity(
                    "button",
                    f"{monitor}_learn",
                    {
                        "name": f"{monitor} learn normal sound",
                        "command_topic": f"{topic_prefix}/cmd/learn",
                        "payload_press": json.dumps({"monitor": monitor, "seconds": learn_s}),
                        "icon": "mdi:ear-hearing",
                    },
                )
            )
            messages.append(
                entity(
                    "button",
                    f"{monitor}_false_alarm",
                    {
                        "name": f"{monitor} last alert was a false alarm",
                        "command_topic": f"{topic_prefix}/cmd/feedback",
                        "payload_press": json.dumps(
                            {"monitor": monitor, "alert_id": "last", "verdict": "normal"}
                        ),
                        "icon": "mdi:bell-cancel",
                    },
                )
            )
    return messages


def _slug(text: str) -> str:
    """An entity id part: lower case letters, digits and underscores."""
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")


def _jinja_string(text: str) -> str:
    """``text`` as a Jinja string literal (single-quoted, escaped)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
