"""Tests of ``/metrics``: the devices' retained payloads as Prometheus text."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asd_edge.capture import CaptureStats
from asd_edge.clips.writer import ClipUsage
from asd_edge.config import HealthConfig, MonitorConfig
from asd_edge.detector import Detector
from asd_edge.inputhealth import InputCondition
from asd_edge.learning.session import Progress
from asd_edge.monitor import Monitor
from asd_edge.ring import RingBuffer
from asd_edge.telemetry import MonitorState, Telemetry, model_payload
from asd_edge.web.metrics import CONTENT_TYPE, METRICS, DeviceSnapshot, render_metrics

RATE = 16000
NOW = 1_790_000_100.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class FakeSource:
    """Just enough of an AudioSource for Telemetry: rings and capture counters."""

    sample_rate = RATE

    def __init__(self, channels: int) -> None:
        self.stats = CaptureStats(overflows=2, restarts=1, stalls=1)
        self.rings = [RingBuffer(RATE * 4) for _ in range(channels)]

    def ring(self, channel: int) -> RingBuffer:
        return self.rings[channel]


def _device(
    device_id: str, level_model: Path, monitors: Mapping[str, int], *, online: bool
) -> DeviceSnapshot:
    """One device's retained payloads, built by the daemon's own code where it can run
    here (Telemetry, model_payload, ClipUsage, InputCondition, Progress)."""
    source = FakeSource(channels=max(monitors.values()) + 1)
    ticks = iter(np.arange(0.0, 1e4, 30.0))
    telemetry = Telemetry(
        device_id=device_id,
        source=source,  # type: ignore[arg-type]
        channels=sorted(set(monitors.values())),
        health=HealthConfig(),
        clock=lambda: float(next(ticks)),
        wall_clock=lambda: NOW - 5.0,
    )
    running = []
    for name, channel in monitors.items():
        detector = Detector(level_model)
        cfg = MonitorConfig(name=name, channel=channel, model=str(level_model))
        monitor = Monitor.from_config(cfg, detector, source.ring(channel), RATE, start_index=0)
        running.append(monitor)
        telemetry.monitors[name] = MonitorState(
            name=name,
            channel=channel,
            model={"name": detector.spec.name, "version": detector.spec.version},
            threshold=monitor.decision.policy.threshold,
        )
    source.rings[0].write(np.full(RATE, 0.1, np.float32))  # -20 dBFS
    for ring in source.rings[1:]:
        ring.write(np.zeros(RATE, np.float32))  # silent
    telemetry.update()
    telemetry.durations_s += [0.002, 0.004, 0.010]
    first = next(iter(monitors))
    telemetry.monitors[first].scored(-12.5, -20.0)
    telemetry.monitors[first].anomaly = True
    telemetry.monitors[first].events = 3
    telemetry.monitors[first].machine = "running"
    problems = [InputCondition("silence", 1, 0.0, {"level_dbfs": -200.0}).as_dict(12.0)]
    usage = ClipUsage(
        bytes=480_044,
        files=3,
        clips=1,
        saved=4,
        skipped=1,
        deleted=3,
        last_error="quota",
        free_mb=1234.5,
    )
    link = {"connected": True, "connects": 2, "disconnects": 1, "published": 40}
    link |= {"outbox_depth": 5, "dropped_rows": 1, "dropped_age": 0, "last_ack_latency_s": 0.02}
    extra = {
        "input": problems if len(monitors) > 1 else [],
        "clips": usage.as_dict(),
        "mqtt": link,
        "outbox": {k: link[k] for k in ("outbox_depth", "dropped_rows", "dropped_age")},
    }
    health = telemetry.report(extra)
    own = {name: telemetry.monitor_payload(name) for name in monitors}
    progress = Progress(monitor=first, id="l1", seconds_wanted=600.0, append=False)
    progress.seconds_collected = 123.4
    status = {"state": "online" if online else "offline", "device_id": device_id}
    status |= {"version": "0.1.0", "since": "2026-11-21T21:45:39Z"}
    if not online:
        status["reason"] = "connection_lost"
    return DeviceSnapshot(
        device_id=device_id,
        status=status,
        health=health,
        model=model_payload(device_id, running, None),
        monitors=own,
        learn=progress.as_dict() if online else None,
        received_at={"status": NOW - 1.0, "health": NOW - 42.0, "model": NOW - 300.0},
    )


def realistic_devices(level_model: Path) -> dict[str, DeviceSnapshot]:
    """Two devices: ``pump-a`` online with two monitors (an anomaly, a silent channel, a
    learning), ``fan-b`` gone offline with one."""
    return {
        "pump-a": _device("pump-a", level_model, {"main": 0, "bearing": 1}, online=True),
        "fan-b": _device("fan-b", level_model, {"main": 0}, online=False),
    }


def parse(text: bytes) -> Samples:
    """Every sample as {(name, sorted labels): value}."""
    out: Samples = {}
    for family in text_string_to_metric_families(text.decode("utf-8")):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in out, f"duplicate series {key}"
            out[key] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
def devices(level_model: Path) -> dict[str, DeviceSnapshot]:
    return realistic_devices(level_model)


class TestRealisticDevices:
    def test_device_monitor_and_daemon_figures(self, devices: dict[str, DeviceSnapshot]) -> None:
        """What the payloads say comes out in base units under the device and monitor."""
        s = parse(render_metrics(devices, now=NOW))
        pump = devices["pump-a"]
        assert pump.health is not None
        main = {"device": "pump-a", "monitor": "main"}
        assert value(s, "asd_edge_online", device="pump-a") == 1.0
        assert value(s, "asd_edge_score", **main) == -12.5
        assert value(s, "asd_edge_threshold", **main) == pump.monitors["main"]["threshold"]
        assert value(s, "asd_edge_score_index", **main) == pump.monitors["main"]["index"]
        assert value(s, "asd_edge_anomaly", **main) == 1.0
        assert value(s, "asd_edge_anomaly", device="pump-a", monitor="bearing") == 0.0
        assert value(s, "asd_edge_machine_running", **main) == 1.0
        assert ("asd_edge_machine_running", (("device", "pump-a"), ("monitor", "bearing"))) not in s
        assert value(s, "asd_edge_level_dbfs", **main) == pytest.approx(-20.0, abs=0.01)
        assert value(s, "asd_edge_events_total", **main) == 3.0
        assert value(s, "asd_edge_health_age_seconds", device="pump-a") == 42.0
        ticks = pump.health["ticks"]
        assert value(s, "asd_edge_tick_p95_seconds", device="pump-a") == pytest.approx(
            ticks["tick_p95_ms"] / 1e3
        )
        assert value(s, "asd_edge_tick_max_seconds", device="pump-a") == pytest.approx(0.010)
        cpu = pump.health["process"]["cpu_percent"]
        assert value(s, "asd_edge_process_cpu_core_ratio", device="pump-a") == cpu / 100
        rss = value(s, "asd_edge_process_resident_memory_bytes", device="pump-a")
        assert rss == pump.health["process"]["rss_mb"] * 1e6 and rss > 1e6
        assert value(s, "asd_edge_outbox_depth", device="pump-a") == 5.0
        assert value(s, "asd_edge_outbox_dropped_total", device="pump-a", reason="max_rows") == 1
        assert value(s, "asd_edge_input_overflows_total", device="pump-a") == 2.0
        assert value(s, "asd_edge_clips_bytes", device="pump-a") == 480_044
        assert value(s, "asd_edge_clips", device="pump-a") == 1
        assert value(s, "asd_edge_disk_free_bytes", device="pump-a") == 1_234_500_000

    def test_input_problems_per_channel(self, devices: dict[str, DeviceSnapshot]) -> None:
        """An active condition reads 1, the known others 0; whole-input ones say "all"."""
        s = parse(render_metrics(devices, now=NOW))
        problem = "asd_edge_input_problem"
        assert value(s, problem, device="pump-a", condition="silence", channel="1") == 1.0
        assert value(s, problem, device="pump-a", condition="silence", channel="0") == 0.0
        assert value(s, problem, device="pump-a", condition="clipping", channel="1") == 0.0
        assert value(s, problem, device="pump-a", condition="input_lost", channel="all") == 0.0
        assert value(s, problem, device="fan-b", condition="silence", channel="0") == 0.0

    def test_model_info_and_learning(self, devices: dict[str, DeviceSnapshot]) -> None:
        """The model topic becomes one info series per monitor; the learning one 1/0 per state."""
        families = {
            f.name: f
            for f in text_string_to_metric_families(render_metrics(devices, now=NOW).decode())
        }
        (main,) = [
            x
            for x in families["asd_edge_model_info"].samples
            if x.labels["device"] == "pump-a" and x.labels["monitor"] == "main"
        ]
        assert devices["pump-a"].model is not None
        facts = devices["pump-a"].model["monitors"]["main"]
        assert main.name == "asd_edge_model_info" and main.value == 1.0
        assert {k: main.labels[k] for k in ("name", "version", "kind", "source")} == {
            "name": facts["name"],
            "version": facts["version"],
            "kind": facts["kind"],
            "source": "config",
        }
        states = {
            x.labels["state"]: x.value
            for x in families["asd_edge_learn_state"].samples
            if x.labels["device"] == "pump-a"
        }
        assert states == {"collecting": 1, "fitting": 0, "done": 0, "failed": 0, "cancelled": 0}
        s = parse(render_metrics(devices, now=NOW))
        learned = value(s, "asd_edge_learn_collected_seconds", device="pump-a", monitor="main")
        assert learned == 123.4

    def test_offline_device_reports_online_0(self, devices: dict[str, DeviceSnapshot]) -> None:
        """A device whose last will said offline is 0, its last known figures still there."""
        s = parse(render_metrics(devices, now=NOW))
        assert value(s, "asd_edge_online", device="fan-b") == 0.0
        assert value(s, "asd_edge_threshold", device="fan-b", monitor="main") < 0
        assert not any(
            labels and dict(labels).get("device") == "fan-b"
            for (n, labels) in s
            if n.startswith("asd_edge_learn")
        )

    def test_every_family_has_help_and_a_type(self, devices: dict[str, DeviceSnapshot]) -> None:
        """Each declared family is exposed with its help text, and all carry the prefix."""
        families = list(text_string_to_metric_families(render_metrics(devices, now=NOW).decode()))
        exposed = [f.samples[0].name if f.samples else f.name for f in families]
        assert exposed == [m.sample_name for m in METRICS]
        assert all(f.documentation and f.name.startswith("asd_edge_") for f in families)
        assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")

    def test_monitor_known_only_from_health(self, devices: dict[str, DeviceSnapshot]) -> None:
        """Before a monitor's own topic arrives, its health entry gives score and state."""
        pump = devices["pump-a"]
        assert pump.health is not None
        only_health = DeviceSnapshot(device_id="pump-a", health=pump.health)
        s = parse(render_metrics({"pump-a": only_health}, now=NOW))
        main = {"device": "pump-a", "monitor": "main"}
        assert value(s, "asd_edge_score", **main) == -12.5
        assert value(s, "asd_edge_score_max", **main) == -12.5
        assert value(s, "asd_edge_anomaly", **main) == 1.0
        assert ("asd_edge_online", (("device", "pump-a"),)) not in s  # no status: unknown


class TestOddPayloads:
    def test_wrong_types_are_skipped(self) -> None:
        """Text for numbers, NaN, lists for objects, missing keys: those samples only go."""
        odd: dict[str, Any] = {
            "uptime_s": "long",
            "ticks": {"tick_p50_ms": math.nan, "tick_p95_ms": "5", "tick_max_ms": math.inf},
            "process": {"cpu_percent": None, "rss_mb": [1]},
            "audio": {"channels": [None, {"channel": "0"}, {"channel": 2, "level_dbfs": "x"}]},
            "monitors": [None, {"name": 5}, {"name": "m", "last_score": "9", "threshold": 2.0}],
            "clips": [],
            "outbox": {"outbox_depth": True, "dropped_rows": -3},
            "input": {"condition": "silence"},
            "mqtt": "down",
        }
        snap = DeviceSnapshot(
            device_id="odd",
            status={"state": 1},
            health=odd,
            model={"monitors": {"m": "x", "n": {"name": 3, "version": "v"}}},
            monitors={"m": {"anomaly": "yes", "score": float("nan"), "machine": "maybe"}},
            learn={"monitor": "m", "state": None},
            received_at={"health": "yesterday"},  # type: ignore[dict-item]
        )
        s = parse(render_metrics({"odd": snap, "none": DeviceSnapshot("none")}, now=NOW))
        assert value(s, "asd_edge_threshold", device="odd", monitor="m") == 2.0
        assert value(s, "asd_edge_model_info", device="odd", monitor="n", version="v") == 1.0
        assert (
            value(s, "asd_edge_input_problem", device="odd", condition="overrun", channel="all")
            == 0
        )
        assert {name for name, _ in s} == {
            "asd_edge_threshold",
            "asd_edge_model_info",
            "asd_edge_model_error",
            "asd_edge_input_problem",
        }

    def test_not_even_mappings(self) -> None:
        """Payloads that are not objects at all give no samples and no error."""
        snap = DeviceSnapshot(
            device_id="x",
            status="online",  # type: ignore[arg-type]
            health=[1, 2],  # type: ignore[arg-type]
            model=None,
            monitors={"m": 3},  # type: ignore[dict-item]
            learn="collecting",  # type: ignore[arg-type]
        )
        assert parse(render_metrics({"x": snap}, now=NOW)) == {}

    def test_huge_integers_and_duplicate_devices(self) -> None:
        """An integer past float's range is skipped; a device id seen twice is exposed once."""
        snap = DeviceSnapshot("d", health={"clips": {"bytes": 10**400, "clips": 2}})
        s = parse(render_metrics({"a": snap, "b": snap}, now=NOW))
        assert s == {("asd_edge_clips", (("device", "d"),)): 2.0}


class TestEscaping:
    def test_quotes_newlines_and_backslashes_survive(self) -> None:
        """Label values from the devices are escaped, and parse back to what was sent."""
        device, monitor = 'pump "a"\\b', "line\nbreak"
        snap = DeviceSnapshot(
            device_id=device,
            status={"state": "online", "version": 'v"1\n'},
            monitors={monitor: {"score": 1.5}},
        )
        text = render_metrics({device: snap}, now=NOW)
        assert b'device="pump \\"a\\"\\\\b"' in text and b'monitor="line\\nbreak"' in text
        s = parse(text)
        assert value(s, "asd_edge_score", device=device, monitor=monitor) == 1.5
        assert value(s, "asd_edge_build_info", device=device, version='v"1\n') == 1.0

    def test_text_no_utf8_can_carry(self) -> None:
        """A lone surrogate (JSON \\ud800 from a device) is written as its escape."""
        snap = DeviceSnapshot("dev\ud800", status={"state": "online"})
        s = parse(render_metrics({"x": snap}, now=NOW))
        assert value(s, "asd_edge_online", device="dev\\ud800") == 1.0
