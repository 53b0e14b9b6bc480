"""The daemon as a subprocess on the virtual microphone (real PulseAudio, real PortAudio)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from support.audio import tone_burst, write_wav
from support.services import asd_edge_command, start_daemon

pytestmark = pytest.mark.realaudio


@pytest.fixture
def daemon_config(tmp_path: Path, level_model: Path, virtual_mic: Any) -> Path:
    config = tmp_path / "asd-edge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "device_id": "test-device",
                "state_dir": str(tmp_path / "state"),
                "mqtt": {"enabled": False},
                "input": {"device": virtual_mic.device, "channels": 1},
                "monitors": [{"name": "pump", "channel": 0, "model": str(level_model)}],
                "logging": {"level": "info", "format": "json"},
            }
        )
    )
    return config


class TestRunOnVirtualMicrophone:
    def test_logs_the_event_within_2_s(
        self, tmp_path: Path, daemon_config: Path, virtual_mic: Any
    ) -> None:
        """A loud second played into the microphone is logged as anomaly_started within 2 s
        of its start, ended afterwards, and SIGTERM stops the daemon with exit 0."""
        daemon = start_daemon(daemon_config, virtual_mic.env)
        try:
            started = daemon.wait_for("daemon_started", 20)
            assert started["sample_rate"] == 16000
            assert started["monitors"][0]["name"] == "pump"
            time.sleep(1.5)  # let the monitor fill its first window with quiet audio
            wav = write_wav(tmp_path / "burst.wav", tone_burst(16000, 5.0, (2.0, 3.0)), 16000)
            played_at = time.monotonic()
            player = virtual_mic.play(wav, wait=False)
            at, alert = daemon.wait_for_at("anomaly_started", 10)
            loud_at = played_at + 2.0
            assert at - loud_at < 2.0, f"logged {at - loud_at:.2f} s after the loud part began"
            assert alert["monitor"] == "pump" and alert["level"] == "warning"
            assert alert["peak_score"] > alert["threshold"] == -30.0
            ended = daemon.wait_for("anomaly_ended", 10)
            assert 0.5 <= ended["duration_s"] <= 3.0
            player.wait(timeout=10)
        finally:
            code = daemon.stop()
        assert code == 0
        daemon.wait_for("daemon_stopped", 5)
        assert not [r for r in daemon.records if r.get("event") == "anomaly_started"][1:]


class TestRecordAndDevices:
    def test_devices_lists_the_virtual_microphone(self, virtual_mic: Any) -> None:
        """`asd-edge devices --json` lists the pulse device with 16 kHz among its rates."""
        result = subprocess.run(
            [*asd_edge_command(), "devices", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **virtual_mic.env},
        )
        assert result.returncode == 0, result.stderr
        pulse = [d for d in json.loads(result.stdout) if d["name"] == "pulse"]
        assert pulse and 16000 in pulse[0]["rates"]

    def test_record_writes_segments_of_what_was_played(
        self, tmp_path: Path, virtual_mic: Any
    ) -> None:
        """`asd-edge record` writes 16 kHz WAV segments that contain the sound played."""
        from asd_edge.audiofile import read_audio

        config = tmp_path / "rec.yaml"
        config.write_text(yaml.safe_dump({"device_id": "rec", "input": {"device": "pulse"}}))
        wav = write_wav(tmp_path / "tone.wav", tone_burst(16000, 4.0, (0.0, 4.0)), 16000)
        recorder = subprocess.Popen(
            [
                *asd_edge_command(),
                "record",
                "--config",
                str(config),
                "--seconds",
                "2.5",
                "--segment-s",
                "1",
                "--out",
                str(tmp_path / "rec"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **virtual_mic.env},
        )
        player = virtual_mic.play(wav, wait=False)
        out, err = recorder.communicate(timeout=30)
        player.wait(timeout=10)
        assert recorder.returncode == 0, err
        files = [Path(line) for line in out.split()]
        assert len(files) == 3
        durations = [read_audio(f).duration_s for f in files]
        assert durations == [1.0, 1.0, 0.5]
        loud = [float(np.sqrt(np.mean(read_audio(f).samples ** 2))) for f in files]
        assert max(loud) > 0.2  # the -9 dBFS tone, not silence
        assert all(f.name.startswith("rec_ch0_") for f in files)
