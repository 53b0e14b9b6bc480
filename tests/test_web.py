"""The web dashboard's parts: the fleet's state, the live leases, the language, who may do
what, and the HTTP server against a real mosquitto (Starlette's TestClient)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest
import yaml
from paho.mqtt.client import Client, MQTTMessage
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs
from support.audio import write_wav

from asd_edge.config import Config, load_config
from asd_edge.errors import ConfigError
from asd_edge.web import fleet as fleet_module
from asd_edge.web.access import Access, is_loopback
from asd_edge.web.auth import hash_password, hash_token, verify_password, verify_token
from asd_edge.web.fleet import MAX_ALERTS, MAX_PAYLOAD_BYTES, Fleet
from asd_edge.web.hub import Hub
from asd_edge.web.i18n import STRINGS, choose_language
from devkit.broker import Broker, wait_until
from devkit.daemonproc import asd_edge_command

REPO = Path(__file__).resolve().parents[1]

starlette_testclient = pytest.importorskip("starlette.testclient")

PREFIX = "asd/pump-1"


def message(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


class TestFleet:
    """What the broker's topics say about every device."""

    def test_devices_from_their_topics(self) -> None:
        """Status, monitor state and model of two devices become two summaries."""
        fleet = Fleet(PREFIX)
        fleet.handle(f"{PREFIX}/status", message({"state": "online", "device_id": "pump-1"}))
        fleet.handle(f"{PREFIX}/monitor/main", message({"anomaly": True, "index": 1.4}))
        fleet.handle("asd/fan-2/status", message({"state": "offline", "device_id": "fan-2"}))
        fleet.handle(
            f"{PREFIX}/model",
            message({"monitors": {"main": {"name": "pump", "version": "v2", "source": "learn"}}}),
        )
        by_key = {d["key"]: d for d in fleet.summaries()}
        assert set(by_key) == {"pump-1", "fan-2"}
        assert by_key["pump-1"]["online"] and not by_key["fan-2"]["online"]
        assert by_key["pump-1"]["monitors"]["main"]["anomaly"] is True
        assert by_key["pump-1"]["models"]["main"]["source"] == "learn"

    def test_only_its_own_prefix_without_fleet(self) -> None:
        """With ``fleet: false`` another device's messages are not read."""
        fleet = Fleet(PREFIX, fleet=False)
        assert fleet.subscriptions()[0] == f"{PREFIX}/status"
        fleet.handle("asd/fan-2/status", message({"state": "online"}))
        fleet.handle(f"{PREFIX}/status", message({"state": "online"}))
        assert fleet.keys() == ["pump-1"]

    def test_start_and_end_of_an_alert_are_one_entry(self) -> None:
        """The end alert updates its start (same id); the newest alert comes first."""
        fleet = Fleet(PREFIX)
        fleet.handle(f"{PREFIX}/alert", message({"id": "a1", "phase": "start", "score": 3}))
        fleet.handle(f"{PREFIX}/alert", message({"id": "a2", "phase": "start"}))
        fleet.handle(f"{PREFIX}/alert", message({"id": "a1", "phase": "end", "duration_s": 2}))
        detail = fleet.detail("pump-1")
        assert detail is not None
        assert [a["id"] for a in detail["alerts"]] == ["a1", "a2"]
        assert detail["alerts"][0] == {"id": "a1", "phase": "end", "score": 3, "duration_s": 2}

    def test_alerts_are_bounded(self) -> None:
        """At most MAX_ALERTS alerts are kept per device, the newest."""
        fleet = Fleet(PREFIX)
        for i in range(MAX_ALERTS + 5):
            fleet.handle(f"{PREFIX}/alert", message({"id": f"a{i}", "phase": "start"}))
        detail = fleet.detail("pump-1")
        assert detail is not None and len(detail["alerts"]) == MAX_ALERTS
        assert detail["alerts"][0]["id"] == f"a{MAX_ALERTS + 4}"

    def test_bad_messages_are_dropped_and_counted(self) -> None:
        """Oversized, non-JSON and non-object payloads change nothing and are counted."""
        fleet = Fleet(PREFIX)
        with capture_logs() as logs:
            fleet.handle(f"{PREFIX}/health", b"{" + b" " * MAX_PAYLOAD_BYTES + b"}")
            fleet.handle(f"{PREFIX}/health", b"\xff\xfe")
            fleet.handle(f"{PREFIX}/health", b"[1, 2]")
            fleet.handle(f"{PREFIX}/alert", message({"phase": "start"}))  # no id
        assert fleet.dropped["oversized"] == 1 and fleet.dropped["malformed"] == 2
        assert [e["event"] for e in logs].count("web_message_dropped") == 3
        detail = fleet.detail("pump-1")
        assert detail is None or (detail["health"] is None and detail["alerts"] == [])

    def test_nan_and_deep_nesting_are_dropped(self) -> None:
        """NaN or Infinity (a page could not be served with them) and JSON nested past what
        Python parses are malformed: dropped, counted, nothing raised."""
        fleet = Fleet(PREFIX)
        fleet.handle(f"{PREFIX}/status", b'{"state": "online", "device_id": NaN}')
        fleet.handle(f"{PREFIX}/health", b'{"x": Infinity}')
        fleet.handle(f"{PREFIX}/health", b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}")
        assert fleet.dropped["malformed"] == 3
        assert fleet.summaries() == []

    def test_the_stored_bytes_are_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Past the memory budget a new message is dropped and counted; replacing a stored
        message or removing one frees its share."""
        monkeypatch.setattr(fleet_module, "MAX_STORED_BYTES", 2000)
        fleet = Fleet(PREFIX)
        big = message({"pad": "x" * 900})
        fleet.handle(f"{PREFIX}/health", big)
        fleet.handle(f"{PREFIX}/model", big)
        fleet.handle(f"{PREFIX}/learn", big)
        assert fleet.dropped["budget"] == 1
        fleet.handle(f"{PREFIX}/model", b"")  # cleared
        fleet.handle(f"{PREFIX}/learn", big)
        assert fleet.dropped["budget"] == 1
        detail = fleet.detail("pump-1")
        assert detail is not None and detail["learn"] is not None and detail["model"] is None

    def test_monitor_names_come_from_the_topic(self) -> None:
        """A monitor payload cannot rename itself; live frames of a monitor the device never
        announced are not passed on; band edges are kept for pages opened later."""
        updates: list[Any] = []
        fleet = Fleet(PREFIX, on_update=updates.append)
        fleet.handle(f"{PREFIX}/monitor/main", message({"monitor": "<img>", "index": 0.1}))
        fleet.handle(f"{PREFIX}/live/ghost", message({"index": 0.2}))
        fleet.handle(f"{PREFIX}/live/main", message({"index": 0.3, "band_edges_hz": [20, 40]}))
        detail = fleet.detail("pump-1")
        assert detail is not None
        assert list(detail["monitor_states"]) == ["main"]
        assert detail["monitor_states"]["main"]["monitor"] == "main"
        assert detail["band_edges_hz"] == {"main": [20.0, 40.0]}
        assert [(kind, body.get("index")) for _, kind, body in updates] == [
            ("monitor", 0.1),
            ("live", 0.3),
        ]

    def test_a_cleared_retained_topic_forgets_the_state(self) -> None:
        """An empty retained message (a monitor removed) removes its state."""
        fleet = Fleet(PREFIX)
        fleet.handle(f"{PREFIX}/monitor/old", message({"anomaly": False}))
        fleet.handle(f"{PREFIX}/monitor/old", b"")
        assert fleet.summaries()[0]["monitors"] == {}

    def test_problems_from_the_health_payload(self) -> None:
        """Input conditions, a waiting outbox and short disk space are listed by name."""
        fleet = Fleet(PREFIX)
        health = {
            "input": [{"condition": "silence", "channel": 0}],
            "outbox": {"outbox_depth": 3},
            "clips": {"free_mb": 50.0, "last_error": None},
        }
        fleet.handle(f"{PREFIX}/health", message(health))
        assert fleet.summaries()[0]["problems"] == ["disk", "outbox", "silence"]


class TestLiveLease:
    """``cmd/live`` is renewed while a page watches a device, and only then."""

    def test_renewed_while_watched_and_not_after(self) -> None:
        """A page's stream asks at once, again every lease_s / 2, and never once it left."""
        now = [0.0]
        renewals: list[tuple[str, float]] = []
        hub = Hub(
            lease_s=20.0,
            renew=lambda key, s: renewals.append((key, s)) or True,
            clock=lambda: now[0],
        )

        async def scenario() -> None:
            hub.bind(asyncio.get_running_loop())
            stream = hub.stream("pump-1")
            assert await anext(stream) == "retry: 2000\n\n"
            assert renewals == [("pump-1", 20.0)]
            leases = asyncio.create_task(hub.run_leases())
            now[0] = 5.0
            await asyncio.sleep(1.1)
            assert len(renewals) == 1  # not yet due
            now[0] = 10.5
            await asyncio.sleep(1.1)
            assert len(renewals) == 2
            hub.publish(("pump-1", "live", {"monitor": "main", "index": 0.4}))
            hub.publish(("fan-2", "live", {"monitor": "main"}))  # another device's
            event = await anext(stream)
            assert event.startswith("event: live\ndata: ") and '"index": 0.4' in event.replace(
                '"index":0.4', '"index": 0.4'
            )
            await stream.aclose()  # the page went away
            now[0] = 40.0
            await asyncio.sleep(1.1)
            leases.cancel()

        asyncio.run(scenario())
        assert len(renewals) == 2
        assert hub.watched() == set()

    def test_the_fleet_page_gets_no_live_frames(self) -> None:
        """The fleet page's stream carries state changes, never live frames."""
        hub = Hub(lease_s=20.0, renew=lambda key, s: True)

        async def scenario() -> list[str]:
            hub.bind(asyncio.get_running_loop())
            stream = hub.stream(None)
            await anext(stream)
            hub.publish(("pump-1", "live", {}))
            hub.publish(("pump-1", "alert", {"id": "a1"}))
            got = [await anext(stream)]
            await stream.aclose()
            return got

        (event,) = asyncio.run(scenario())
        assert event.startswith("event: alert\n")


class TestLanguage:
    """English unless the browser prefers Japanese."""

    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            (None, "en"),
            ("ja", "ja"),
            ("ja-JP,ja;q=0.9,en;q=0.8", "ja"),
            ("en-US,en;q=0.9,ja;q=0.8", "en"),
            ("fr-FR,ja;q=0.5", "ja"),
            ("de, fr", "en"),
            ("ja;q=bad, en", "en"),
        ],
    )
    def test_accept_language(self, header: str | None, expected: str) -> None:
        """The best supported language of Accept-Language, by quality then order."""
        assert choose_language(header) == expected

    def test_every_word_in_both_languages(self) -> None:
        """Both languages have the same keys, none empty."""
        assert STRINGS["en"].keys() == STRINGS["ja"].keys()
        assert all(STRINGS["ja"].values()) and all(STRINGS["en"].values())


class TestAccess:
    """The bind address and the secrets decide who may view and act."""

    @pytest.mark.parametrize(
        ("host", "loopback"),
        [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False)],
    )
    def test_loopback(self, host: str, loopback: bool) -> None:
        """Only loopback addresses count as this machine."""
        assert is_loopback(host) is loopback

    def test_a_malformed_stored_hash_is_found_at_start(self, tmp_path: Path) -> None:
        """A broken web.password_hash is a ConfigError naming the key before any login."""
        config = load(tmp_path, {"web": {"password_hash": "scrypt$nonsense"}})
        with pytest.raises(ConfigError, match=r"web\.password_hash"):
            Access(config.web).check()

    @pytest.mark.parametrize(
        ("target", "expected"),
        [
            ("/device/pump-1", "/device/pump-1"),
            ("//evil.example", "/"),
            ("/\\evil.example", "/"),
            ("/\t/evil.example", "/"),
            ("https://evil.example/", "/"),
            ("device", "/"),
        ],
    )
    def test_login_goes_back_only_to_this_site(self, target: str, expected: str) -> None:
        """The page after a login is a path on this site, never another host."""
        from starlette.requests import Request

        from asd_edge.web.server import _next

        query = urlencode({"next": target}).encode()
        request = Request({"type": "http", "query_string": query, "headers": []})
        assert _next(request) == expected

    def test_exposed_without_a_password_is_refused(self, tmp_path: Path) -> None:
        """web.host 0.0.0.0 without a password or token: ConfigError naming web.host."""
        config = load(tmp_path, {"web": {"host": "0.0.0.0"}})
        with pytest.raises(ConfigError, match=r"web\.host"):
            Access(config.web).check()
        Access(
            load(tmp_path, {"web": {"host": "0.0.0.0", "token_hash": "sha256$" + "0" * 64}}).web
        ).check()


def load(tmp_path: Path, data: dict[str, Any]) -> Config:
    path = tmp_path / "asd-edge.yaml"
    path.write_text(
        yaml.safe_dump({"device_id": "pump-1", "state_dir": str(tmp_path / "state"), **data})
    )
    return load_config(path)


class FakeDaemon:
    """A paho client that answers ``cmd/<name>`` on ``cmd_result`` as the daemon would,
    publishing the answer the test set (it stands in for the daemon in the server tests)."""

    def __init__(self, broker: Broker, answers: dict[str, dict[str, Any]]) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.answers = answers
        self.client: Client = broker.client("fake-daemon")
        self.client.on_message = self._on_message
        ready = threading.Event()
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(f"{PREFIX}/cmd/#", 1)
        assert ready.wait(10)

    def _on_message(self, client: Client, _u: Any, msg: MQTTMessage) -> None:
        body = json.loads(msg.payload)
        name = msg.topic.removeprefix(f"{PREFIX}/cmd/")
        self.received.append((name, body))
        if name in self.answers:
            answer = {"command": name, "id": body.get("id"), **self.answers[name]}
            client.publish(f"{PREFIX}/cmd_result", json.dumps(answer), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def device_state(mqtt_broker: Broker) -> Broker:
    """The retained topics of one online device on a real broker."""
    mqtt_broker.publish(
        f"{PREFIX}/status", message({"state": "online", "device_id": "pump-1"}), retain=True
    )
    mqtt_broker.publish(
        f"{PREFIX}/health",
        message({"process": {"cpu_percent": 0.8, "rss_mb": 71.5}, "ticks": {"tick_p95_ms": 0.4}}),
        retain=True,
    )
    mqtt_broker.publish(
        f"{PREFIX}/monitor/main",
        message({"anomaly": False, "score": 0.2, "threshold": 1.0, "index": 0.2}),
        retain=True,
    )
    return mqtt_broker


@pytest.fixture
def server(tmp_path: Path, device_state: Broker) -> Iterator[Any]:
    """A factory: the dashboard app for a web: section, started (its bridge connected)."""
    from asd_edge.web.app import build_app

    clients: list[Any] = []

    def make(web: dict[str, Any]) -> Any:
        config = load(
            tmp_path,
            {"mqtt": {"host": device_state.host, "port": device_state.port}, "web": web},
        )
        app = build_app(config)
        client = starlette_testclient.TestClient(app, base_url="http://127.0.0.1:8080")
        client.__enter__()
        clients.append(client)
        wait_until(lambda: app.state.fleet.detail("pump-1"), 10, "the device's topics")
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def csrf_of(client: Any, path: str = "/device/pump-1") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    marker = 'name="csrf-token" content="'
    start = page.text.index(marker) + len(marker)
    return str(page.text[start : page.text.index('"', start)])


@pytest.mark.slow
class TestServer:
    """The HTTP server with a real mosquitto: pages, state, actions, metrics, clips."""

    def test_loopback_without_password_shows_but_does_not_act(self, server: Any) -> None:
        """On 127.0.0.1 without a password the pages open; actions need a login."""
        client = server({})
        page = client.get("/device/pump-1", headers={"accept-language": "ja"})
        assert page.status_code == 200 and "アラート" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        detail = client.get("/api/devices/pump-1").json()
        assert detail["monitor_states"]["main"]["index"] == 0.2
        token = csrf_of(client)
        answer = client.post(
            "/api/devices/pump-1/actions/rollback",
            json={"monitor": "main"},
            headers={"x-csrf-token": token},
        )
        assert answer.status_code == 401

    def test_password_login_csrf_and_an_action_through_the_broker(
        self, server: Any, device_state: Broker
    ) -> None:
        """With a password: pages redirect to the login; a wrong password is refused (slowly,
        logged); the right one opens a session whose action reaches the daemon's command and
        shows its answer; without the CSRF token the action is refused."""
        daemon = FakeDaemon(
            device_state,
            {"model/rollback": {"ok": True, "error": None, "result": {"monitor": "main"}}},
        )
        try:
            client = server({"host": "0.0.0.0", "password_hash": hash_password("correct horse")})
            assert client.get("/", follow_redirects=False).status_code == 303
            assert client.get("/api/devices/pump-1").status_code == 401
            assert client.get("/metrics").status_code == 401
            token = csrf_of(client, "/login")
            with capture_logs() as logs:
                wrong = client.post(
                    "/login", json={"password": "nope"}, headers={"x-csrf-token": token}
                )
            assert wrong.status_code == 401
            failed = [e for e in logs if e["event"] == "web_login_failed"]
            assert failed and failed[0]["delay_s"] >= 1.0 and "nope" not in json.dumps(logs)
            right = client.post(
                "/login", json={"password": "correct horse"}, headers={"x-csrf-token": token}
            )
            assert right.status_code == 200 and right.json()["ok"]
            token = csrf_of(client)
            refused = client.post("/api/devices/pump-1/actions/rollback", json={"monitor": "main"})
            assert refused.status_code == 403
            answer = client.post(
                "/api/devices/pump-1/actions/rollback",
                json={"monitor": "main"},
                headers={"x-csrf-token": token},
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["ok"] is True and answer.json()["result"] == {"monitor": "main"}
            name, body = daemon.received[-1]
            assert (
                name == "model/rollback"
                and body["target"] == "pump-1"
                and body["monitor"] == "main"
            )
        finally:
            daemon.close()

    def test_open_view_answers_only_loopback_names(self, server: Any) -> None:
        """Without a password, a request naming another host (DNS rebinding) is refused."""
        client = server({})
        assert client.get("/", headers={"host": "localhost:8080"}).status_code == 200
        assert client.get("/", headers={"host": "evil.example:8080"}).status_code == 421

    def test_big_login_bodies_are_refused_unread(self, server: Any) -> None:
        """A login body over 4 kB is not read: refused like a wrong password."""
        client = server({"password_hash": hash_password("correct horse")})
        token = csrf_of(client, "/login")
        big = b'{"password": "' + b"x" * 100_000 + b'"}'
        answer = client.post(
            "/login",
            content=big,
            headers={"x-csrf-token": token, "content-type": "application/json"},
        )
        assert answer.status_code == 401

    def test_a_login_page_from_before_a_restart_is_told_to_reload(self, server: Any) -> None:
        """A login without the session's CSRF token gets 403 "reload the page", not a slow
        wrong-password answer."""
        client = server({"password_hash": hash_password("correct horse")})
        answer = client.post("/login", json={"password": "correct horse"})
        assert answer.status_code == 403 and answer.json()["error"] == "reload the page"

    def test_token_for_scripts_and_metrics(self, server: Any) -> None:
        """A bearer token opens /metrics (parsed by prometheus_client) without a session."""
        client = server({"host": "0.0.0.0", "token_hash": hash_token("s3cret-token")})
        assert client.get("/metrics").status_code == 401
        response = client.get("/metrics", headers={"authorization": "Bearer s3cret-token"})
        assert response.status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(response.text)}
        online = [s for s in families["asd_edge_online"].samples if s.labels["device"] == "pump-1"]
        assert online and online[0].value == 1.0

    def test_clips_of_this_device(self, server: Any, tmp_path: Path) -> None:
        """A saved clip plays (audio/wav); an id that is not one, or unknown, is a 404."""
        folder = tmp_path / "state" / "clips" / "main"
        folder.mkdir(parents=True)
        alert_id = "20261207T101010Z-main-abcd1234"
        write_wav(folder / f"20261207T101005Z_{alert_id}.wav", np.zeros(1600, np.float32), 16000)
        (folder / f"20261207T101005Z_{alert_id}.json").write_text(
            json.dumps({"alert_id": alert_id, "clip": {"file": f"20261207T101005Z_{alert_id}.wav"}})
        )
        client = server({})
        clip = client.get(f"/clips/pump-1/{alert_id}.wav")
        assert clip.status_code == 200 and clip.headers["content-type"] == "audio/wav"
        assert clip.content[:4] == b"RIFF"
        assert client.get("/clips/pump-1/..%2F..%2Fetc.wav").status_code == 404
        assert client.get("/clips/pump-1/unknown.wav").status_code == 404


class TestCommandLine:
    """``asd-edge web``'s secrets and refusals, as a user runs it."""

    def run(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*asd_edge_command(), "web", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_set_password_and_new_token_store_hashes(self, tmp_path: Path) -> None:
        """--set-password (one line on stdin) and --new-token store hashes that verify, keep
        the rest of the shipped file, and never print the password."""
        path = tmp_path / "asd-edge.yaml"
        shutil.copy(REPO / "config" / "asd-edge.yaml", path)
        done = self.run("--config", str(path), "--set-password", stdin="long enough pw\n")
        assert done.returncode == 0, done.stderr
        assert "long enough pw" not in done.stdout + done.stderr
        made = self.run("--config", str(path), "--new-token")
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        web = yaml.safe_load(path.read_text())["web"]
        assert verify_password("long enough pw", web["password_hash"])
        assert verify_token(token, web["token_hash"])
        short = self.run("--config", str(path), "--set-password", stdin="short\n")
        assert short.returncode == 1 and "password refused" in short.stderr

    def test_exposed_without_password_exits_78(self, tmp_path: Path) -> None:
        """--host 0.0.0.0 without a password or token: exit 78 naming web.host."""
        path = tmp_path / "asd-edge.yaml"
        path.write_text(yaml.safe_dump({"state_dir": str(tmp_path)}))
        done = self.run("--config", str(path), "--host", "0.0.0.0", "--port", "1")
        assert done.returncode == 78 and "web.host" in done.stderr
