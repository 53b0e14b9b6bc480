"""End to end in a real browser: the daemon on the virtual microphone, a real mosquitto,
``asd-edge web`` as a subprocess and Debian's chromium through Selenium, with every host
but 127.0.0.1 unreachable.

What a technician sees: the device page opens, live frames fill the waterfall, three
bursts played into the microphone appear as alerts without a reload within seconds of
the broker delivering them, each clip plays; exposed, the dashboard wants the password.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.audio import write_wav
from support.browser import WebProcess, chromium, requested_hosts
from support.e2e import ALERT, PREFIX, RATE, alerts, daemon_config, stream_with_bursts
from support.services import start_daemon, wait_until

from asd_edge.web.auth import hash_password
from devkit.broker import Broker, free_port

pytest.importorskip("starlette")
pytest.importorskip("selenium")

SCREENSHOT_ENV = "ASD_EDGE_SCREENSHOT"
"""Where to save the device page's screenshot too (the README's picture)."""
PAGE_LAG_S = 5.0
"""An alert must be in the page at most this long after the broker delivered it."""


def page_stats(browser: Any) -> dict[str, Any]:
    return dict(browser.execute_script("return window.ASD_STATS || {}"))


@pytest.mark.realaudio
@pytest.mark.slow
class TestDashboardInABrowser:
    def test_live_page_alerts_and_clips(
        self, tmp_path: Path, level_model: Path, virtual_mic: Any, mqtt_broker: Broker
    ) -> None:
        """Three bursts into the microphone: three alerts appear in the open page (ids in
        the page) within PAGE_LAG_S of reaching a subscriber, without a reload; the
        waterfall gets live frames; each clip answers 200 audio/wav and loads in the
        player; no request leaves 127.0.0.1; a screenshot is saved."""
        bursts = [(4.0, 1.0), (11.0, 1.0), (18.0, 1.0)]
        wav = write_wav(tmp_path / "stream.wav", stream_with_bursts(22.0, bursts), RATE)
        sub = mqtt_broker.subscriber(f"{PREFIX}/#")
        config = daemon_config(tmp_path, mqtt_broker, level_model, virtual_mic.device)
        daemon = start_daemon(config, virtual_mic.env)
        web = None
        try:
            daemon.wait_for("daemon_started", 20)
            wait_until(lambda: sub.on(f"{PREFIX}/monitor/pump"), 15, "the monitor's state")
            web = WebProcess(config, free_port())
            with chromium() as browser:
                browser.get(f"{web.url}/device/e2e")
                wait_until(lambda: page_stats(browser).get("frames", 0) >= 8, 20, "live frames")
                canvas = browser.find_element("css selector", "canvas.waterfall")
                assert int(canvas.get_attribute("data-frames")) >= 8
                virtual_mic.play(wav, wait=True)
                wait_until(
                    lambda: len([a for a in alerts(sub) if a["phase"] == "end"]) >= 3,
                    20,
                    "three ended alerts at the subscriber",
                )
                wait_until(
                    lambda: len(browser.find_elements("css selector", "li.alert audio")) >= 3,
                    PAGE_LAG_S + 5,
                    "three clips in the page",
                )
                seen = page_stats(browser)["alerts_seen"]
                for message in sub.on(ALERT):
                    alert = json.loads(message.payload)
                    if alert.get("type") != "anomaly":
                        continue
                    shown_ms = seen.get(f"{alert['id']}:{alert['phase']}")
                    assert shown_ms is not None, f"alert {alert['id']} {alert['phase']} not shown"
                    lag_s = shown_ms / 1000 - message.received_at
                    assert lag_s <= PAGE_LAG_S, f"{alert['id']} shown {lag_s:.2f} s after delivery"
                ids = {a["id"] for a in alerts(sub)}
                in_page = {
                    li.get_attribute("data-alert-id")
                    for li in browser.find_elements("css selector", "li.alert")
                }
                assert ids <= in_page and len(ids) == 3
                assert browser.find_element("css selector", "ol#alerts").text.count("id:") >= 3
                for player in browser.find_elements("css selector", "li.alert audio")[:3]:
                    src = player.get_attribute("src")
                    with urllib.request.urlopen(src, timeout=10) as response:
                        assert response.status == 200
                        assert response.headers["content-type"] == "audio/wav"
                        assert response.read(4) == b"RIFF"
                first = browser.find_element("css selector", "li.alert audio")
                browser.execute_script("arguments[0].preload = 'auto'; arguments[0].load();", first)
                wait_until(
                    lambda: browser.execute_script("return arguments[0].duration", first) or 0,
                    10,
                    "the clip to load in the player",
                )
                assert browser.execute_script("return arguments[0].error", first) is None
                assert requested_hosts(browser) <= {"127.0.0.1"}
                browser.save_screenshot(str(tmp_path / "device-page.png"))
                if os.environ.get(SCREENSHOT_ENV):
                    browser.save_screenshot(os.environ[SCREENSHOT_ENV])
                latency = sorted(page_stats(browser)["latency_ms"])
                print(f"live frame latency ms: median {latency[len(latency) // 2]:.0f}")
        finally:
            if web is not None:
                web.stop()
            daemon.stop()
        assert (tmp_path / "device-page.png").stat().st_size > 10_000

    def test_exposed_dashboard_wants_the_password(
        self, tmp_path: Path, level_model: Path, mqtt_broker: Broker
    ) -> None:
        """web.host set with a password: pages lead to the login, a wrong password is
        refused, the right one opens the device page with its actions, and an action
        (roll back) shows the daemon's answer."""
        wav = write_wav(tmp_path / "quiet.wav", stream_with_bursts(60.0, []), RATE)
        config = daemon_config(
            tmp_path,
            mqtt_broker,
            level_model,
            f"file:{wav}",
            web={"host": "0.0.0.0", "password_hash": hash_password("open sesame")},
        )
        answers = mqtt_broker.subscriber(f"{PREFIX}/cmd_result")
        daemon = start_daemon(config, {})
        web = None
        try:
            daemon.wait_for("daemon_started", 20)
            web = WebProcess(config, free_port())
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{web.url}/api/devices/e2e", timeout=10)
            assert refused.value.code == 401
            with chromium(lang="ja") as browser:
                browser.get(f"{web.url}/device/e2e")
                wait_until(lambda: "/login" in browser.current_url, 10, "the login page")
                field = browser.find_element("css selector", "input[name=password]")
                field.send_keys("wrong password")
                field.submit()
                error = browser.find_element("id", "login-error")
                wait_until(error.is_displayed, 15, "the refusal")
                assert "パスワードが違います" in error.text
                field.clear()
                field.send_keys("open sesame")
                field.submit()
                wait_until(lambda: "/device/e2e" in browser.current_url, 10, "the device page")
                rollback = wait_until(
                    lambda: browser.find_elements("css selector", "button.rollback"), 15, "actions"
                )[0]
                browser.execute_script("window.confirm = () => true;")
                rollback.click()
                toast = browser.find_element("id", "toast")
                wait_until(lambda: toast.text.startswith("応答"), 15, "the daemon's answer")
                (reply,) = [
                    r
                    for m in answers.on(f"{PREFIX}/cmd_result")
                    if (r := json.loads(m.payload))["command"] == "model/rollback"
                ]
                assert (reply["error"] or "ok") in toast.text
            assert "web_login_failed" in web.log()
            assert "wrong password" not in web.log() and "open sesame" not in web.log()
        finally:
            if web is not None:
                web.stop()
            daemon.stop()
