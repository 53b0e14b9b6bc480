"""No single MQTT message can take the daemon down: the daemon as a subprocess (a recording
replayed as its input) on a real mosquitto, sent a 200 MB command.

Before, such a message (to any ``cmd/`` topic) took the daemon to ~720 MB; under the
unit's MemoryMax it was killed, and the broker's persistent session delivered the
message again at every restart.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from support.audio import write_wav
from support.services import start_daemon, wait_until

from devkit.broker import HOST, Broker

pytestmark = pytest.mark.slow

DEVICE = "big"
PREFIX = f"asd/{DEVICE}"
HUGE_BYTES = 200_000_000
PEAK_RSS_LIMIT_KB = 250_000
"""The daemon's peak resident memory must stay well under its share of the unit's memory
(the unit's MemoryHigh, 512 MB, also holds a learning's child) and nowhere near the
message's size; it runs at about 110 MB."""


def peak_rss_kb(pid: int) -> int:
    """The process's highest resident set so far (VmHWM), in kB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def config_for(tmp_path: Path, broker: Broker, level_model: Path) -> Path:
    wav = write_wav(tmp_path / "quiet.wav", np.zeros(16000 * 600, np.float32), 16000)
    path = tmp_path / "big.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "device_id": DEVICE,
                "state_dir": str(tmp_path / "state"),
                "input": {"device": f"file:{wav}"},
                "mqtt": {"host": HOST, "port": broker.port},
                "clips": {"enabled": False},
                "monitors": [{"name": "pump", "model": str(level_model)}],
                "logging": {"format": "json"},
            }
        )
    )
    return path


@pytest.mark.parametrize("command", ["model", "no-such-command"])
def test_a_200_mb_command_is_refused_in_bounded_memory_and_not_delivered_again(
    tmp_path: Path, mqtt_broker: Broker, level_model: Path, command: str
) -> None:
    """200 MB to ``cmd/model`` (the largest command there is) and to an unknown command:
    refused with the reason on ``cmd_result``, counted in health, the daemon alive with
    its peak memory bounded; after a restart the broker does not deliver it again."""
    config = config_for(tmp_path, mqtt_broker, level_model)
    replies = mqtt_broker.subscriber(f"{PREFIX}/cmd_result", f"{PREFIX}/health")
    daemon = start_daemon(config)
    try:
        daemon.wait_for("mqtt_connected", 30)
        before_kb = peak_rss_kb(daemon.pid)
        sender = mqtt_broker.client()
        sender.connect(HOST, mqtt_broker.port)
        sender.loop_start()
        payload = b'{"id": "huge", "pad": "' + b"x" * HUGE_BYTES + b'"}'
        sender.publish(f"{PREFIX}/cmd/{command}", payload, qos=1).wait_for_publish(timeout=60)
        del payload
        sender.loop_stop()
        sender.disconnect()
        refused = daemon.wait_for("message_oversized", 120)
        assert refused["size"] > HUGE_BYTES and refused["limit"] < 50_000_000
        (reply,) = [json.loads(m.payload) for m in replies.wait_for(f"{PREFIX}/cmd_result")]
        assert reply["id"] == "huge" and reply["ok"] is False
        assert reply["error"].startswith(f"too large: {refused['size']} bytes")
        assert daemon.proc.poll() is None, daemon.log_tail()
        peak_kb = peak_rss_kb(daemon.pid)
        assert peak_kb < PEAK_RSS_LIMIT_KB, (before_kb, peak_kb)
        mqtt_broker.publish(f"{PREFIX}/cmd/health", b"{}")

        def oversized_in_health() -> int | None:
            for message in reversed(replies.on(f"{PREFIX}/health")):
                count = json.loads(message.payload)["mqtt"]["messages_oversized"]
                if count:
                    return int(count)
            return None

        assert wait_until(oversized_in_health, 15, "health counting it") == 1
        assert daemon.stop() == 0
        again = start_daemon(config)  # the same persistent session
        try:
            again.wait_for("mqtt_connected", 30)
            time.sleep(3.0)  # time enough for a redelivery to arrive
            assert again.events("message_oversized") == []
            assert again.proc.poll() is None
        finally:
            again.stop()
    finally:
        if daemon.proc.poll() is None:
            daemon.stop()
