"""The daemon as a subprocess, replaying a recording in real time (no sound hardware)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import yaml
from conftest import asd_edge_command, tone_burst, write_wav


def run_daemon(config: Path, timeout_s: float = 60) -> tuple[int, list[dict], str]:
    proc = subprocess.run(
        [*asd_edge_command(), "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


def replay_config(tmp_path: Path, wav: Path, model: Path, **monitor: object) -> Path:
    config = tmp_path / "replay.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "device_id": "replay",
                "input": {"device": f"file:{wav}"},
                "monitors": [{"name": "fan", "model": str(model), **monitor}],
                "logging": {"format": "json", "level": "debug"},
            }
        )
    )
    return config


class TestReplay:
    def test_replay_reports_the_event_and_stops_at_the_end(
        self, tmp_path: Path, level_model: Path
    ) -> None:
        """A 4 s recording replayed through the daemon: scored every hop, one event started
        and ended, then a clean exit 0 at the end of the file."""
        wav = write_wav(tmp_path / "b.wav", tone_burst(16000, 4.0, (2.0, 2.6)), 16000)
        code, records, stderr = run_daemon(replay_config(tmp_path, wav, level_model))
        assert code == 0, stderr
        events = [r["event"] for r in records]
        assert events[0] == "daemon_started"
        assert events[-1] == "daemon_stopped"
        # the file ends inside the event's hold time: shutdown closes the event
        assert events.index("daemon_stopping") < events.index("anomaly_ended")
        assert (
            next(r for r in records if r["event"] == "daemon_stopping")["reason"] == "end_of_input"
        )
        windows = [r for r in records if r["event"] == "window_scored"]
        assert [w["end_s"] for w in windows] == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
        (start,) = [r for r in records if r["event"] == "anomaly_started"]
        (end,) = [r for r in records if r["event"] == "anomaly_ended"]
        assert 2.0 < start["onset_s"] <= 3.0 and start["monitor"] == "fan"
        assert end["peak_score"] > -30.0
        assert all(r["level"] in ("debug", "info", "warning") for r in records)

    def test_multichannel_replay_monitors_each_channel(
        self, tmp_path: Path, level_model: Path
    ) -> None:
        """Two monitors on the two channels of one stereo recording: only the loud one alerts."""
        from scipy.io import wavfile

        loud = tone_burst(16000, 3.0, (1.0, 2.0))
        quiet = tone_burst(16000, 3.0, (1.0, 2.0), amplitude=0.0)
        wav = tmp_path / "stereo.wav"
        wavfile.write(wav, 16000, (np.stack([quiet, loud], 1) * 32767).astype(np.int16))
        config = tmp_path / "two.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "input": {"device": f"file:{wav}", "channels": 2},
                    "monitors": [
                        {"name": "left", "channel": 0, "model": str(level_model)},
                        {"name": "right", "channel": 1, "model": str(level_model)},
                    ],
                    "logging": {"format": "json"},
                }
            )
        )
        code, records, stderr = run_daemon(config)
        assert code == 0, stderr
        started = [r["monitor"] for r in records if r["event"] == "anomaly_started"]
        assert started == ["right"]

    def test_unreadable_replay_file_is_a_config_error(
        self, tmp_path: Path, level_model: Path
    ) -> None:
        """A replay file that cannot be decoded exits 78 naming input.device and the file."""
        bad = tmp_path / "bad.wav"
        bad.write_text("not audio")
        code, _, stderr = run_daemon(replay_config(tmp_path, bad, level_model))
        assert code == 78
        assert "input.device" in stderr and "bad.wav" in stderr
