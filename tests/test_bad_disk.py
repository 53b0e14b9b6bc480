"""A bad disk under the state directory: read-only from the start, filling up, turned
read-only by a disk error while running, an outbox file cut short. Detection goes on,
every alert phase is delivered exactly once with one payload, and the health topic and a
``disk`` input alert say what is wrong.

The link is tested in-process against a real mosquitto; the daemon as a subprocess that
replays a recording (``file:`` input, no sound hardware) to a real mosquitto. The bad
disks are small mounts (``support.mounts``): tests that need them skip where mounting is
not permitted, and the ones with permission bits skip as root.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.audio import write_wav
from support.e2e import ALERT, PREFIX, RATE, daemon_config, request_health, stream_with_bursts
from support.mounts import Mounts, fill, not_root
from support.services import connected, start_daemon, wait_until

from asd_edge.config import MqttConfig, OutboxConfig
from asd_edge.mqtt import MqttLink
from asd_edge.mqtt.outbox import Outbox
from devkit.broker import HOST, Broker, Subscriber
from devkit.daemonproc import DaemonProcess

HEALTH = f"{PREFIX}/health"


def on_disk(path: Path, query: str = "SELECT alert_id FROM outbox ORDER BY rowid") -> list[Any]:
    """What a separate connection reads from an outbox file (closed again at once)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [row[0] if len(row) == 1 else row for row in conn.execute(query)]


def received(sub: Subscriber) -> list[dict[str, Any]]:
    """Every alert received, in order, after checking that no (id, phase) came twice."""
    got = [json.loads(m.payload) for m in sub.on(ALERT)]
    keys = [(a["id"], a["phase"]) for a in got]
    assert len(keys) == len(set(keys)), f"an alert phase was published twice: {keys}"
    return got


class TestLink:
    """MqttLink with its outbox on a bad disk, against a real mosquitto."""

    def link(self, broker: Broker, outbox: Path, retry_s: float = 60.0) -> MqttLink:
        config = MqttConfig(host=HOST, port=broker.port, topic_prefix="asd/dev1")
        link = MqttLink(
            config,
            device_id="dev1",
            outbox_path=outbox,
            outbox=OutboxConfig(),
            outbox_retry_s=retry_s,
        )
        link.start()
        return connected(link)

    def test_a_held_end_goes_out_once_with_its_clip_when_the_disk_fills(
        self, mounts: Mounts, mqtt_broker: Broker
    ) -> None:
        """The disk fills after the outbox opened: the start goes out, the end held for its
        clip is not published until released, then once, with the final clip. (It was
        published at once with ``recording``, and again when released.)"""
        state = mounts.tmpfs("state", size_kb=512)
        sub = mqtt_broker.subscriber("asd/dev1/alert")
        link = self.link(mqtt_broker, state / "outbox.sqlite")
        try:
            fill(state)
            recording = {"clip": {"status": "recording"}}
            link.submit_alert("e-1", recording, phase="start")
            link.submit_alert("e-1", recording, phase="end", held=True)
            link.release_alert("e-1", "end", {"clip": {"status": "saved"}})
            link.submit_alert("e-2", {}, phase="start")  # in order after every phase of e-1
            wait_until(lambda: any(b"e-2" in m.payload for m in sub.on("asd/dev1/alert")))
            got = [json.loads(m.payload) for m in sub.on("asd/dev1/alert")]
            assert [(a["id"], a["phase"], a.get("clip")) for a in got] == [
                ("e-1", "start", {"status": "recording"}),
                ("e-1", "end", {"status": "saved"}),
                ("e-2", "start", None),
            ]
            stats = link.stats()
            assert (stats["outbox_storage"], stats["outbox_reason"]) == ("memory", "full")
        finally:
            link.stop(1.0)

    def test_back_to_the_file_once_the_disk_has_room(
        self, mounts: Mounts, mqtt_broker: Broker
    ) -> None:
        """Alerts kept in memory while the disk is full are written to the outbox file at
        the next retry once there is room, then delivered once each and deleted there."""
        state = mounts.tmpfs("state", size_kb=512)
        outbox = state / "outbox.sqlite"
        sub = mqtt_broker.subscriber("asd/dev1/alert")
        link = self.link(mqtt_broker, outbox, retry_s=0.1)
        try:
            mqtt_broker.pause()  # nothing acknowledged: the rows wait
            try:
                filler = fill(state)
                link.submit_alert("r-1", {}, phase="start")
                link.submit_alert("r-2", {}, phase="start")
                wait_until(lambda: link.stats()["outbox_storage"] == "memory", what="memory")
                wait_until(lambda: link.stats()["outbox_depth"] == 2, what="both rows")
                filler.unlink()
                wait_until(lambda: link.stats()["outbox_storage"] == "file", what="the file")
                assert on_disk(outbox) == ["r-1", "r-2"]
            finally:
                mqtt_broker.resume()
            wait_until(lambda: len(sub.on("asd/dev1/alert")) == 2, what="both alerts")
            wait_until(lambda: on_disk(outbox) == [], what="the acknowledged rows deleted")
            assert [json.loads(m.payload)["id"] for m in sub.on("asd/dev1/alert")] == ["r-1", "r-2"]
        finally:
            link.stop(1.0)


def replay(
    tmp_path: Path, broker: Broker, model: Path, stream: np.ndarray, state: Path
) -> tuple[Subscriber, DaemonProcess]:
    """The daemon replaying ``stream`` with ``state`` as its state directory, started; a
    subscriber to its alerts and health."""
    wav = write_wav(tmp_path / "stream.wav", stream, RATE)
    config = daemon_config(
        tmp_path, broker, model, f"file:{wav}", state_dir=str(state), clips={"min_free_mb": 0.0}
    )
    sub = broker.subscriber(ALERT, HEALTH)
    daemon = start_daemon(config)
    try:
        daemon.wait_for("daemon_started", 20)
    except BaseException:
        daemon.stop()
        raise
    return sub, daemon


def finished(daemon: DaemonProcess, sub: Subscriber) -> list[dict[str, Any]]:
    """Wait for the replay's end (the daemon stops by itself), check that it exited 0 and
    that the ``disk`` alert ended (the last alert it sends: every earlier one has arrived);
    every alert received, each (id, phase) once."""
    daemon.wait_for("daemon_stopped", 40)
    daemon.proc.wait(timeout=20)  # its last words logged: the process is ending
    assert daemon.stop() == 0
    wait_until(
        lambda: any(a.get("condition") == "disk" and a["phase"] == "end" for a in received(sub)),
        10,
        "the disk alert's end",
    )
    return received(sub)


def anomalies(got: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(a["id"], a["phase"]) for a in got if a.get("type") == "anomaly"]


def disk_alerts(got: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in got if a.get("type") == "input" and a.get("condition") == "disk"]


def memory_health(sub: Subscriber) -> dict[str, Any]:
    """The latest health message that has the outbox in memory."""
    found = [
        h for m in sub.on(HEALTH) if (h := json.loads(m.payload))["outbox"]["storage"] == "memory"
    ]
    assert found, "no health message said the outbox is in memory"
    return found[-1]


@pytest.mark.slow
class TestDaemon:
    """The daemon, a subprocess, on a bad state directory."""

    def test_a_read_only_state_directory(
        self, tmp_path: Path, mounts: Mounts, mqtt_broker: Broker, level_model: Path
    ) -> None:
        """Read-only from the start (it exited 70 before and delivered nothing): it runs to
        the end of the replay and exits 0; the alert a previous run left in the outbox goes
        out first, read from the read-only file; the anomaly's start and end go out once
        each, the end saying why its clip could not be written; a ``disk`` alert starts and
        ends; health has the outbox in memory and the ``disk`` condition (outbox, clips)."""
        state = mounts.tmpfs("state")
        with Outbox(state / "outbox.sqlite", max_rows=1000, max_age_s=1e9) as ob:
            left = {"id": "left-1", "phase": "start", "type": "anomaly"}
            ob.add("left-1", ALERT, json.dumps(left).encode(), key="start")
        mounts.read_only(state)
        sub, daemon = replay(
            tmp_path, mqtt_broker, level_model, stream_with_bursts(6.0, [(1.5, 1.0)]), state
        )
        try:
            daemon.wait_for("anomaly_started", 20)
            health = request_health(mqtt_broker, sub)
        finally:
            got = finished(daemon, sub)
        assert health["outbox"]["storage"] == "memory" and health["outbox"]["reason"] == "read_only"
        [condition] = [c for c in health["input"] if c["condition"] == "disk"]
        assert condition["details"]["parts"] == {"clips": "read_only", "outbox": "read_only"}
        [left_behind, (alert_id, _), end] = anomalies(got)
        assert left_behind == ("left-1", "start") and end == (alert_id, "end")
        clip = next(a for a in got if (a["id"], a["phase"]) == end)["clip"]
        assert clip["status"] == "skipped" and "Read-only file system" in clip["error"]
        start, stop = disk_alerts(got)
        assert (start["phase"], stop["phase"], start["id"]) == ("start", "end", stop["id"])
        assert start["details"]["reason"] == "read_only" and start["channel"] is None
        assert not daemon.events("daemon_failed")

    def test_a_state_directory_an_ordinary_user_may_not_write(
        self, tmp_path: Path, mqtt_broker: Broker, level_model: Path
    ) -> None:
        """The same without root: permission bits refuse the state directory."""
        not_root()
        state = tmp_path / "state"
        state.mkdir(mode=0o555)
        try:
            sub, daemon = replay(
                tmp_path, mqtt_broker, level_model, stream_with_bursts(5.0, [(1.5, 1.0)]), state
            )
            got = finished(daemon, sub)
        finally:
            state.chmod(0o755)
        assert [phase for _, phase in anomalies(got)] == ["start", "end"]
        assert disk_alerts(got)[0]["details"]["reason"] == "permission"
        assert memory_health(sub)["outbox"]["reason"] in ("permission", "read_only")

    def test_a_disk_that_fills_up_while_running(
        self, tmp_path: Path, mounts: Mounts, mqtt_broker: Broker, level_model: Path
    ) -> None:
        """The disk fills after start: the anomaly's start and end go out once each (the
        end went out twice before, first with its clip still ``recording``); the ``disk``
        alert says the disk is full and health has the outbox in memory."""
        state = mounts.tmpfs("state")
        sub, daemon = replay(
            tmp_path, mqtt_broker, level_model, stream_with_bursts(6.0, [(3.0, 1.0)]), state
        )
        try:
            fill(state)
        finally:
            got = finished(daemon, sub)
        [(alert_id, _), end] = anomalies(got)
        assert end == (alert_id, "end")
        clip = next(a for a in got if (a["id"], a["phase"]) == end)["clip"]
        assert clip["status"] == "skipped"
        assert disk_alerts(got)[0]["details"]["parts"]["outbox"] == "full"
        assert memory_health(sub)["outbox"]["reason"] == "full"

    def test_a_truncated_outbox_is_salvaged_and_delivered(
        self, tmp_path: Path, mqtt_broker: Broker, level_model: Path
    ) -> None:
        """An outbox file cut short (a half-copied backup restored, a disk fault): at start
        every row SQLite can still read is delivered, in order and once, and the log says
        how many were salvaged and which alerts were lost."""
        state = tmp_path / "state"
        state.mkdir()
        with Outbox(state / "outbox.sqlite", max_rows=1000, max_age_s=1e9) as ob:
            for i in range(120):
                body = {"id": f"old-{i}", "phase": "start", "type": "anomaly", "pad": "x" * 300}
                ob.add(f"old-{i}", ALERT, json.dumps(body).encode(), key="start")
        data = (state / "outbox.sqlite").read_bytes()
        (state / "outbox.sqlite").write_bytes(data[: -2 * 4096])
        quiet = stream_with_bursts(3.0, [])
        sub, daemon = replay(tmp_path, mqtt_broker, level_model, quiet, state)
        try:
            salvaged = daemon.wait_for("outbox_salvaged", 5)
            wait_until(lambda: len(sub.on(ALERT)) >= salvaged["rows"], 15, "the salvaged rows")
        finally:
            daemon.stop()
        rows, lost = salvaged["rows"], salvaged["lost"]
        assert rows > 60 and lost > 0 and rows + lost == 120
        assert [a["id"] for a in received(sub)] == [f"old-{i}" for i in range(rows)]
        assert salvaged["lost_alerts"] == [f"old-{i}" for i in range(rows, min(rows + 20, 120))]
        assert on_disk(state / "outbox.sqlite") == []  # delivered, acknowledged, deleted

    def test_a_file_system_turned_read_only_while_running(
        self, tmp_path: Path, mounts: Mounts, mqtt_broker: Broker, level_model: Path
    ) -> None:
        """A disk error turns the file system read-only while alerts wait in the outbox
        for a frozen broker: they are not stranded (they were before); they, and the next
        event's alerts, are delivered once each from memory, and health says so."""
        state = mounts.ext4("state")
        stream = stream_with_bursts(11.0, [(1.0, 1.0), (6.5, 1.0)])
        sub, daemon = replay(tmp_path, mqtt_broker, level_model, stream, state)
        try:
            mqtt_broker.pause()
            try:
                first = daemon.wait_for("anomaly_ended", 20)["alert_id"]
                query = "SELECT alert_id, key, ready FROM outbox ORDER BY rowid"
                waiting = [(first, "start", 1), (first, "end", 1)]
                wait_until(lambda: on_disk(state / "outbox.sqlite", query) == waiting, 10)
                mounts.fail(state)
            finally:
                mqtt_broker.resume()
        finally:
            got = finished(daemon, sub)
        [second] = [
            e["alert_id"] for e in daemon.events("anomaly_started") if e["alert_id"] != first
        ]
        assert anomalies(got) == [
            (first, "start"),
            (first, "end"),
            (second, "start"),
            (second, "end"),
        ]
        assert disk_alerts(got)[0]["details"]["reason"] == "read_only"
        assert memory_health(sub)["outbox"]["storage"] == "memory"
