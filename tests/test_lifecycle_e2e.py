"""The daemon's lifecycle under a service manager, end to end: SIGTERM in the middle of an
event, SIGHUP reloads (good and bad), sd_notify on a real NOTIFY_SOCKET, and the
microphone's sound server killed under a running daemon.

The daemon runs as a subprocess on the virtual microphone (PulseAudio null sink through
ALSA and PortAudio) with a real mosquitto, as a user's device would.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from support.audio import write_wav
from support.e2e import (
    ALERT,
    PREFIX,
    RATE,
    alerts,
    daemon_config,
    request_health,
    stream_with_bursts,
)
from support.services import start_daemon, wait_until

from devkit.broker import Broker
from devkit.notify import NotifyListener

pytestmark = [pytest.mark.realaudio, pytest.mark.slow]


class TestSigterm:
    def test_sigterm_during_an_event_saves_the_clip_publishes_offline_and_exits_0(
        self, tmp_path: Path, level_model: Path, virtual_mic: Any, mqtt_broker: Broker
    ) -> None:
        """SIGTERM while an anomaly is going on: the event is ended, its clip is saved with
        what the ring holds, the end alert is delivered, ``offline`` is published (retained)
        and the exit code is 0, within systemd's stop timeout."""
        stream = stream_with_bursts(20.0, [(2.0, 16.0)])
        wav = write_wav(tmp_path / "long.wav", stream, RATE)
        sub = mqtt_broker.subscriber(ALERT, f"{PREFIX}/status")
        config = daemon_config(tmp_path, mqtt_broker, level_model, virtual_mic.device)
        daemon = start_daemon(config, virtual_mic.env)
        player = None
        try:
            daemon.wait_for("daemon_started", 20)
            player = virtual_mic.play(wav, wait=False)
            wait_until(lambda: alerts(sub), 15, "the start alert")
            time.sleep(1.5)  # the event goes on; the clip is being recorded
            asked = time.monotonic()
            code = daemon.stop(timeout_s=20)
            took_s = time.monotonic() - asked
        finally:
            if player is not None:
                player.kill()
                player.wait()
            daemon.stop()
        assert code == 0, daemon.log_tail()
        print(f"SIGTERM to exit: {took_s:.2f} s")
        start, end = alerts(sub)[:2]
        assert (start["phase"], end["phase"]) == ("start", "end") and start["id"] == end["id"]
        assert end["clip"]["status"] == "saved", end["clip"]
        clip = Path(end["clip"]["path"])
        assert clip.is_file() and clip.with_suffix(".json").is_file()
        assert not list(clip.parent.glob("*.tmp*"))
        status = json.loads(sub.on(f"{PREFIX}/status")[-1].payload)
        assert status["state"] == "offline"
        # retained: a consumer connecting now learns the device is offline
        late = mqtt_broker.subscriber(f"{PREFIX}/status")
        retained = late.wait_for(f"{PREFIX}/status")[0]
        assert retained.retain and json.loads(retained.payload)["state"] == "offline"
        names = [r.get("event") for r in daemon.records]
        assert names.index("daemon_stopping") < names.index("anomaly_ended")
        assert daemon.events("daemon_stopping")[0]["reason"] == "SIGTERM"


class TestSighup:
    def test_reload_applies_a_new_threshold_without_losing_audio_and_rejects_a_bad_file(
        self, tmp_path: Path, level_model: Path, virtual_mic: Any, mqtt_broker: Broker
    ) -> None:
        """SIGHUP with a changed threshold and hop: applied without a lost sample (the ring's
        counters on the health topic) and used by the next alert; a file that fails
        validation is rejected with the key named and the old configuration keeps running;
        a changed input section is reported as needing a restart."""
        sub = mqtt_broker.subscriber(f"{PREFIX}/#")
        config = daemon_config(
            tmp_path,
            mqtt_broker,
            level_model,
            virtual_mic.device,
            mqtt={"publish_scores": True, "score_interval_s": 0.1},
        )
        daemon = start_daemon(config, virtual_mic.env)
        try:
            daemon.wait_for("daemon_started", 20)
            time.sleep(2.0)
            data = yaml.safe_load(config.read_text())
            data["monitors"][0].update(threshold=-24.0, hop_s=0.25)
            data["input"]["ring_s"] = 45.0  # needs a restart: reported, not applied
            config.write_text(yaml.safe_dump(data))
            os.kill(daemon.pid, signal.SIGHUP)
            reloaded = daemon.wait_for("config_reloaded", 10)
            assert reloaded["monitors_changed"] == ["pump"]
            assert "input.ring_s" in daemon.wait_for("reload_needs_restart", 5)["keys"]

            good = config.read_text()
            config.write_text(good.replace("threshold: -24.0", "threshold: loud"))
            os.kill(daemon.pid, signal.SIGHUP)
            rejected = daemon.wait_for("reload_rejected", 10)
            assert any("monitors[0].threshold" in p for p in rejected["problems"])
            config.write_text(good)

            wav = write_wav(tmp_path / "burst.wav", stream_with_bursts(5.0, [(1.5, 1.0)]), RATE)
            virtual_mic.play(wav, wait=True)
            wait_until(lambda: len(alerts(sub)) >= 2, 15, "an anomaly after the reload")
            health = request_health(mqtt_broker, sub)
        finally:
            code = daemon.stop()
        assert code == 0
        assert alerts(sub)[0]["threshold"] == -24.0
        assert health["audio"]["lost_samples"] == 0, health["audio"]
        assert health["audio"]["overflows"] == 0, health["audio"]
        assert not [r for r in daemon.events("monitor_degraded") if r.get("lost_samples")]
        assert len(daemon.events("daemon_started")) == 1  # never restarted
        # scores continue across the reload without a gap: no window is lost
        ends = [json.loads(m.payload)["end_s"] for m in sub.on(f"{PREFIX}/score")]
        assert len(ends) > 10
        steps = [b - a for a, b in itertools.pairwise(ends)]
        assert max(steps) <= 0.5 + 1e-3, f"a {max(steps):.3f} s gap in the scores"
        # ring_s and what derives from it (clips.max_clip_s defaults to ring_s - 2)
        pending = daemon.events("config_reloaded")[0]["needs_restart"]
        assert set(pending) == {"input.ring_s", "clips.max_clip_s"}


class TestSdNotify:
    def test_ready_watchdog_status_reloading_stopping_on_a_real_socket(
        self, tmp_path: Path, level_model: Path, virtual_mic: Any, mqtt_broker: Broker
    ) -> None:
        """Under Type=notify: READY=1 once capture runs, WATCHDOG=1 about every third of
        WATCHDOG_USEC, a STATUS= line, RELOADING=1 (with MONOTONIC_USEC) then READY=1 on
        SIGHUP, and STOPPING=1 on SIGTERM."""
        notify = NotifyListener()
        config = daemon_config(tmp_path, mqtt_broker, level_model, virtual_mic.device)
        env = {
            **virtual_mic.env,
            "NOTIFY_SOCKET": notify.address,
            "WATCHDOG_USEC": "900000",
        }
        daemon = start_daemon(config, env)
        try:
            _at, ready = notify.wait("READY", "1", 20)
            daemon.wait_for("daemon_started", 5)  # logged before READY=1 is sent
            assert "listening at" in ready.get("STATUS", "") or notify.wait("STATUS")
            start = time.monotonic()
            pings = NotifyListener.times(notify.receive(3.0), "WATCHDOG", "1")
            gaps = [b - a for a, b in zip([start, *pings], [*pings, start + 3.0], strict=True)]
            assert max(gaps) < 0.9, f"a {max(gaps):.2f} s gap between pings (WATCHDOG_USEC 0.9 s)"
            os.kill(daemon.pid, signal.SIGHUP)
            _at, reloading = notify.wait("RELOADING", "1", 10)
            now_us = time.monotonic_ns() // 1000
            assert abs(int(reloading["MONOTONIC_USEC"]) - now_us) < 30_000_000
            daemon.wait_for("config_reloaded", 10)

            def ready_again() -> bool:
                notify.receive(0.2)
                return len(NotifyListener.times(notify.messages, "READY", "1")) >= 2

            wait_until(ready_again, 10, "READY=1 again")
            daemon.proc.send_signal(signal.SIGTERM)
            notify.wait("STOPPING", "1", 10)
        finally:
            code = daemon.stop()
            notify.close()
        assert code == 0


class TestInputLoss:
    def test_sound_server_killed_raises_an_input_alert_and_detection_resumes(
        self, tmp_path: Path, level_model: Path, virtual_mic: Any, mqtt_broker: Broker
    ) -> None:
        """PulseAudio killed under the running daemon: an input alert (type input,
        input_lost) within 10 s and health says so; PulseAudio started again: the alert
        ends and an anomaly played afterwards is detected, all without a restart."""
        sub = mqtt_broker.subscriber(ALERT, f"{PREFIX}/health")
        config = daemon_config(
            tmp_path,
            mqtt_broker,
            level_model,
            virtual_mic.device,
            input={"device": virtual_mic.device, "sample_rate": RATE, "restart_backoff_max_s": 2.0},
        )
        daemon = start_daemon(config, virtual_mic.env)
        try:
            daemon.wait_for("daemon_started", 20)
            time.sleep(1.0)
            killed = time.monotonic()
            virtual_mic.kill()
            lost = wait_until(
                lambda: [a for a in alerts(sub, "input") if a["condition"] == "input_lost"],
                10,
                "an input_lost alert within 10 s",
            )[0]
            detected_s = time.monotonic() - killed
            health = wait_until(
                lambda: [
                    h
                    for m in sub.on(f"{PREFIX}/health")
                    if "input_lost" in json.dumps((h := json.loads(m.payload)).get("input", {}))
                ],
                10,
                "health naming the lost input",
            )[-1]
            virtual_mic.start()
            wait_until(
                lambda: [
                    a
                    for a in alerts(sub, "input")
                    if a["condition"] == "input_lost" and a["phase"] == "end"
                ],
                30,
                "the input_lost alert ended",
            )
            wav = write_wav(tmp_path / "burst.wav", stream_with_bursts(5.0, [(1.5, 1.0)]), RATE)
            virtual_mic.play(wav, wait=True)
            wait_until(lambda: alerts(sub), 15, "an anomaly detected after recovery")
        finally:
            code = daemon.stop()
        print(f"input_lost alert {detected_s:.2f} s after PulseAudio was killed")
        assert code == 0
        assert lost["phase"] == "start" and lost["type"] == "input" and lost["monitors"] == ["pump"]
        assert health["input"]
        assert len(daemon.events("daemon_started")) == 1
        assert daemon.events("stream_restarted")


class TestSilenceAndClipping:
    def test_digital_silence_then_sustained_clipping_raise_input_alerts(
        self, tmp_path: Path, level_model: Path, virtual_mic: Any, mqtt_broker: Broker
    ) -> None:
        """Nothing played into the microphone is digital silence: a silence alert within
        10 s; a full-scale square wave is sustained clipping: the silence ends and a
        clipping alert starts, then ends once the wave stops."""
        sub = mqtt_broker.subscriber(ALERT)
        config = daemon_config(
            tmp_path, mqtt_broker, level_model, virtual_mic.device, health={"hold_s": 2.0}
        )
        t = np.arange(8 * RATE) / RATE
        square = np.where(np.sin(2 * np.pi * 220 * t) >= 0, 1.0, -1.0).astype(np.float32)
        loud = write_wav(tmp_path / "square.wav", square, RATE)
        daemon = start_daemon(config, virtual_mic.env)

        def inputs(condition: str, phase: str) -> list[dict[str, Any]]:
            return [
                a
                for a in alerts(sub, "input")
                if a["condition"] == condition and a["phase"] == phase
            ]

        try:
            daemon.wait_for("daemon_started", 20)
            started = time.monotonic()
            silence = wait_until(lambda: inputs("silence", "start"), 10, "a silence alert")[0]
            silence_s = time.monotonic() - started
            virtual_mic.play(loud, wait=False)
            wait_until(lambda: inputs("silence", "end"), 10, "the silence ended")
            clipping = wait_until(lambda: inputs("clipping", "start"), 10, "a clipping alert")[0]
            wait_until(lambda: inputs("clipping", "end"), 20, "the clipping ended")
        finally:
            code = daemon.stop()
        print(f"silence alert {silence_s:.2f} s after the daemon started (hold_s 2)")
        assert code == 0
        assert silence["channel"] == 0 and silence["details"].get("digital") is True
        assert clipping["channel"] == 0 and clipping["monitors"] == ["pump"]
