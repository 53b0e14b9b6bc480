"""`python -m devkit.demo` end to end: real mosquitto, PulseAudio, daemon and paplay."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import REPO

from asd_edge.audiofile import read_audio
from devkit import Unavailable
from devkit.broker import check_tools as check_broker_tools
from devkit.vmic import check_tools as check_mic_tools

pytestmark = [pytest.mark.slow, pytest.mark.realaudio]


@pytest.fixture
def demo_env(tmp_path: Path) -> dict[str, str]:
    """The demo's environment, its temporary directories under ``tmp_path/tmp``."""
    try:
        check_broker_tools()
        check_mic_tools()
    except Unavailable as exc:
        pytest.skip(str(exc))
    if not Path(sys.executable).with_name("asd-edge").exists():
        pytest.skip(f"the asd-edge console script is not installed beside {sys.executable}")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return {**os.environ, "TMPDIR": str(tmp)}


def demo(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "devkit.demo", "--out", str(out), *args]


def runtime_dirs(tmp: Path) -> list[Path]:
    """The demo's temporary directories (broker, PulseAudio) left in ``tmp``."""
    return [p for p in tmp.iterdir() if p.name.startswith("asd-")]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


class TestDemo:
    def test_plays_detects_and_reports(self, tmp_path: Path, demo_env: dict[str, str]) -> None:
        """Two anomalies played into the virtual microphone: the summary lists both, the
        loud impact is detected and its alert, printed as the broker delivered it, points
        to a saved clip with its spectrogram; exit 0; nothing the demo started is left."""
        out = tmp_path / "out"
        result = subprocess.run(
            demo(out, "--anomalies", "2", "--kinds", "impact,squeal"),
            cwd=REPO,
            env=demo_env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        stdout = result.stdout
        assert "anomalies played:   2" in stdout
        assert "pipeline OK" in stdout
        summary = json.loads((out / "summary.json").read_text())
        assert [a["kind"] for a in summary["anomalies"]] == ["impact", "squeal"]
        impact = summary["anomalies"][0]
        assert impact["detected"], stdout
        assert impact["alert_id"] in stdout  # printed as received from the broker
        assert impact["latency_s"] > 0.0  # the alert came after the sound, not before
        assert summary["clips_saved"] == len(summary["alerts"]) >= 1
        assert f"clips saved:        {summary['clips_saved']} of {len(summary['alerts'])}" in stdout
        for alert in summary["alerts"]:
            clip = alert["clip"]
            assert clip["status"] == "saved"
            wav = Path(clip["path"])
            assert wav.is_relative_to(out.resolve() / "state" / "clips")
            assert wav.with_suffix(".png").is_file()
            audio = read_audio(wav)
            assert abs(audio.frames / audio.sample_rate - clip["duration_s"]) < 0.01
        if not summary["anomalies"][1]["detected"]:
            assert "MISSED:             1 (squeal)" in stdout
        stream = read_audio(out / "stream.wav")
        assert stream.frames / stream.sample_rate == summary["stream"]["duration_s"] == 34.0
        described = json.loads((out / "stream.json").read_text())  # as asd-train synth's
        assert described == {"wav": "stream.wav", **summary["stream"]}
        assert [a["kind"] for a in described["anomalies"]] == ["impact", "squeal"]
        log = [json.loads(line) for line in (out / "daemon.log").read_text().splitlines()]
        assert [r["exit_code"] for r in log if r["event"] == "daemon_stopped"] == [0]
        assert not runtime_dirs(tmp_path / "tmp")
        assert not processes_mentioning(str(tmp_path))

    def test_ctrl_c_stops_everything(self, tmp_path: Path, demo_env: dict[str, str]) -> None:
        """Ctrl-C while the stream plays: exit 130, and the daemon, paplay, mosquitto,
        PulseAudio and their temporary directories are all gone."""
        proc = subprocess.Popen(
            demo(tmp_path / "out", "--anomalies", "1"),
            cwd=REPO,
            env=demo_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "] daemon: pid" in line:
                break
        else:
            pytest.fail(f"the demo never started its daemon:\n{''.join(seen)}{proc.stderr.read()}")
        daemon_pid = int(seen[-1].split("pid ")[1].split(",")[0])
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, "".join(seen) + stdout + stderr
        assert "interrupted" in stderr
        assert not Path(f"/proc/{daemon_pid}").exists()
        assert not runtime_dirs(tmp_path / "tmp")
        assert not processes_mentioning(str(tmp_path))
