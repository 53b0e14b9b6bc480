"""The MQTT wing: one broker connection for alerts, state, discovery and commands.

``MqttLink`` is the face the daemon talks to; every call returns at once and the
work happens on the link thread:

- ``link``: ``MqttLink``, the API (any thread), which queues typed messages.
- ``thread``: ``LinkThread``, which owns the paho client and the outbox and runs
  the select loop; ``messages``: what crosses from the API to that thread.
- ``delivery`` and ``outbox/``: alerts stored durably (SQLite), published at QoS 1
  in order, deleted on PUBACK; a damaged outbox file salvaged, and the outbox kept in
  memory while the disk refuses the file.
- ``connection`` and ``client``: connection attempts with back-off; the paho client
  (protocol, session, will, credentials, TLS).
- ``backlog``: retained state, discovery, clips and replies waiting for a connection.
- ``topics`` and ``homeassistant``: the topic names and JSON bodies of the contract,
  and Home Assistant discovery.
- ``commands``: ``<prefix>/cmd/<name>`` messages parsed, checked and dispatched.
"""

from .client import check_credentials
from .commands import Command, CommandRouter, command_specs, max_message_bytes
from .link import MqttLink
from .topics import Topics, encode_json

__all__ = [
    "Command",
    "CommandRouter",
    "MqttLink",
    "Topics",
    "check_credentials",
    "command_specs",
    "encode_json",
    "max_message_bytes",
]
