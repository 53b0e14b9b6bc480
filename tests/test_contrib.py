"""Tests of contrib/: the files parse, and the dashboard, the alert rules and the Home
Assistant card name what the exporter and the daemon really produce."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support import REPO
from test_web_metrics import NOW, realistic_devices

from asd_edge.mqtt.homeassistant import discovery_messages
from asd_edge.web.metrics import render_metrics

CONTRIB = REPO / "contrib"
DASHBOARD = CONTRIB / "grafana" / "asd-edge-dashboard.json"
PROMETHEUS = CONTRIB / "prometheus" / "prometheus.yml"
RULES = CONTRIB / "prometheus" / "asd-edge-alerts.yml"
CARD = CONTRIB / "homeassistant" / "dashboard-card.yaml"
FLOW = CONTRIB / "node-red" / "alerts-to-notifications.json"
METRIC = re.compile(r"\basd_edge_[a-z0-9_]+")
NODE = shutil.which("node")

START = {
    "id": "20261121T214549Z-main-ab042069",
    "type": "anomaly",
    "device_id": "pump-a",
    "monitor": "main",
    "phase": "start",
    "started_at": "2026-11-21T21:45:49.366Z",
    "detected_at": "2026-11-21T21:45:50.886Z",
    "score": 27.01500129699707,
    "peak_score": 27.01500129699707,
    "threshold": 0.8143848975684366,
    "model": {"name": "pump-dense_ae", "version": "20261121T214506Z-7c43507"},
    "clip": {"path": "/var/lib/asd-edge/clips/main/x.wav", "status": "recording"},
}
END = {
    **START,
    "phase": "end",
    "score": 0.7287671566009521,
    "ended_at": "2026-11-21T21:45:54.366Z",
    "duration_s": 5.0,
    "clip": {"path": "/var/lib/asd-edge/clips/main/x.wav", "status": "saved", "bytes": 480044},
}
INPUT_START = {
    "id": "20261121T231018Z-input-input_lost-device-fcf71152",
    "type": "input",
    "device_id": "pump-a",
    "condition": "input_lost",
    "channel": None,
    "monitors": ["main"],
    "phase": "start",
    "started_at": "2026-11-21T23:10:18.419Z",
    "details": {"reason": "stream_finished"},
}


def exposed_names(level_model: Path) -> set[str]:
    """The sample names ``render_metrics`` writes for a realistic two-device fleet."""
    text = render_metrics(realistic_devices(level_model), now=NOW).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def dashboard_queries() -> list[str]:
    """Every PromQL query of the dashboard: panel targets and template variables."""
    board = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        query = variable["query"]
        queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def rule_queries() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


class TestFilesParse:
    def test_every_json_and_yaml_file_parses(self) -> None:
        """Each contrib file of these kinds is valid JSON or YAML (and there are some)."""
        files = sorted(p for p in CONTRIB.rglob("*") if p.suffix in (".json", ".yml", ".yaml"))
        assert {p.name for p in files} >= {
            DASHBOARD.name,
            PROMETHEUS.name,
            RULES.name,
            CARD.name,
            FLOW.name,
        }
        for path in files:
            text = path.read_text(encoding="utf-8")
            loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            assert loaded, path


class TestGrafanaAndPrometheus:
    def test_dashboard_names_only_metrics_the_exporter_writes(self, level_model: Path) -> None:
        """A renamed metric breaks this test, not the users' dashboards."""
        exposed = exposed_names(level_model)
        used = {name for query in dashboard_queries() for name in METRIC.findall(query)}
        assert used - exposed == set()
        assert {"asd_edge_score_index", "asd_edge_model_info", "asd_edge_online"} <= used

    def test_alert_rules_name_only_metrics_the_exporter_writes(self, level_model: Path) -> None:
        """The same for every rule's expression."""
        used = {name for query in rule_queries() for name in METRIC.findall(query)}
        assert used - exposed_names(level_model) == set()
        assert {"asd_edge_anomaly", "asd_edge_online", "asd_edge_outbox_depth"} <= used

    def test_dashboard_asks_for_its_datasource_and_filters_by_device(self) -> None:
        """Imported, it asks which Prometheus to use; every query honours $device."""
        board = json.loads(DASHBOARD.read_text())
        assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
        names = [v["name"] for v in board["templating"]["list"]]
        assert names == ["device", "monitor"]
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
                assert '$device"' in target["expr"], target["expr"]
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))

    def test_scrape_config_points_at_the_web_default_and_the_rules(self) -> None:
        """The local job scrapes http://127.0.0.1:8080/metrics; the remote one sends a
        bearer token from a file; the rule file it names is the one next to it."""
        config = yaml.safe_load(PROMETHEUS.read_text())
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        local = jobs["asd-edge"]
        assert local["metrics_path"] == "/metrics"
        assert local["static_configs"][0]["targets"] == ["127.0.0.1:8080"]
        remote = jobs["asd-edge-remote"]
        assert remote["authorization"]["type"] == "Bearer"
        assert remote["authorization"]["credentials_file"].startswith("/")
        assert [(PROMETHEUS.parent / f).resolve() for f in config["rule_files"]] == [RULES]


def run_function(tmp_path: Path, messages: list[dict[str, Any]]) -> list[Any]:
    """Run the flow's function node in node on ``messages`` in turn, one context shared
    as Node-RED would; its return value for each."""
    harness = tmp_path / "harness.js"
    harness.write_text(
        """
        const fs = require("fs");
        const flow = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
        const [fn] = flow.filter((n) => n.type === "function");
        const body = new Function("msg", "node", "context", fn.func);
        const store = {};
        const context = {get: (k) => store[k], set: (k, v) => { store[k] = v; }};
        const node = {warn: (w) => {}, error: (e) => { throw new Error(e); }};
        const messages = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
        const out = messages.map((m) => {
            if (m.raw) m.payload = Buffer.from(m.payload);  // as with datatype "buffer"
            const result = body(m, node, context);
            return result === null || result === undefined ? null : result;
        });
        process.stdout.write(JSON.stringify(out));
        """
    )
    inputs = tmp_path / "messages.json"
    inputs.write_text(json.dumps(messages))
    assert NODE is not None
    done = subprocess.run(
        [NODE, str(harness), str(FLOW), str(inputs)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: list[Any] = json.loads(done.stdout)
    return result


@pytest.mark.skipif(NODE is None, reason="node is not installed")
class TestNodeRedFlow:
    def test_function_is_valid_javascript(self, tmp_path: Path) -> None:
        """`node --check` accepts the function node's body as Node-RED wraps it."""
        (fn,) = [n for n in json.loads(FLOW.read_text()) if n["type"] == "function"]
        script = tmp_path / "function.js"
        script.write_text(f"function f(msg, node, context) {{\n{fn['func']}\n}}\n")
        done = subprocess.run([NODE, "--check", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    def test_redelivered_alerts_pass_once(self, tmp_path: Path) -> None:
        """The same alert id and phase twice (also as raw bytes) gives one notification;
        its end, and another alert, give theirs."""
        topic = "asd/pump-a/alert"
        messages = [
            {"topic": topic, "payload": START},
            {"topic": topic, "payload": START},
            {"topic": topic, "payload": END},
            {"topic": topic, "payload": json.dumps(END), "raw": True},
            {"topic": topic, "payload": INPUT_START},
            {"topic": topic, "payload": {"not": "an alert"}},
        ]
        out = run_function(tmp_path, messages)
        assert [m is not None for m in out] == [True, False, True, False, True, False]
        start, _, end, _, lost, _ = out
        assert start["topic"] == "Anomaly on pump-a / main"
        assert "Score 27.02 over the threshold 0.81" in start["payload"]
        assert "Clip (recording): /var/lib/asd-edge/clips/main/x.wav" in start["payload"]
        assert START["id"] in start["payload"]
        assert start["notification"]["phase"] == "start"
        assert start["notification"]["score"] == START["score"]
        assert end["topic"] == "Anomaly ended on pump-a / main"
        assert "after 5.0 s" in end["payload"] and "Clip saved:" in end["payload"]
        assert lost["topic"] == "Microphone problem on pump-a: input_lost"
        assert "the whole input" in lost["payload"]


def entity_ids(node: object) -> list[str]:
    """Every ``entity`` and ``entity_id`` value in a Lovelace card, however nested."""
    if isinstance(node, list):
        return [e for item in node for e in entity_ids(item)]
    if not isinstance(node, dict):
        return []
    found = [v for k, v in node.items() if k in ("entity", "entity_id") and isinstance(v, str)]
    return found + [e for v in node.values() for e in entity_ids(v)]


class TestHomeAssistantCard:
    def test_card_entities_are_the_announced_ones(self) -> None:
        """Every entity id in the card is one the daemon announces for device pump-a with
        a monitor main (learning on), and the card shows the main ones."""
        announced = {
            payload["default_entity_id"]
            for _, payload in discovery_messages(
                device_id="pump-a", topic_prefix="asd/pump-a", monitors=["main"], learn_s=600.0
            )
        }
        used = set(entity_ids(yaml.safe_load(CARD.read_text())))
        assert used - announced == set()
        assert {
            "binary_sensor.asd_edge_pump_a_main_anomaly",
            "sensor.asd_edge_pump_a_main_score",
            "button.asd_edge_pump_a_main_learn",
            "button.asd_edge_pump_a_main_false_alarm",
            "sensor.asd_edge_pump_a_learning",
        } <= used
