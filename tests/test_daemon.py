"""The daemon as a subprocess, replaying a recording in real time (no sound hardware)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from structlog.testing import capture_logs
from support.audio import tone_burst, write_wav
from support.services import asd_edge_command, wait_until

from asd_edge.assembly import build_services, load_detectors
from asd_edge.config import parse_config
from asd_edge.daemon import EXIT_CONFIG, EXIT_SOFTWARE, EXIT_UNAVAILABLE, Daemon
from asd_edge.errors import AudioError
from asd_edge.filesource import FileSource
from asd_edge.runtime import MemoryRelease


def run_daemon(config: Path, timeout_s: float = 60) -> tuple[int, list[dict], str]:
    proc = subprocess.run(
        [*asd_edge_command(), "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return proc.returncode, [strict_json(line) for line in proc.stdout.splitlines()], proc.stderr


def refuse_constant(name: str) -> None:
    raise AssertionError(f"not standard JSON: {name}")


def strict_json(line: str) -> dict[str, Any]:
    """Parse a log line as standard JSON (Python's json accepts NaN; consumers don't)."""
    record: dict[str, Any] = json.loads(line, parse_constant=refuse_constant)
    return record


def replay_config(tmp_path: Path, wav: Path, model: Path, **monitor: object) -> Path:
    config = tmp_path / "replay.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "device_id": "replay",
                "state_dir": str(tmp_path / "state"),
                "mqtt": {"enabled": False},
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
        loaded = [r for r in records if r["event"] == "model_loaded"]
        assert len(loaded) == 1 and loaded[0]["monitor"] == "fan"  # which model, from where
        assert events[len(loaded)] == "daemon_started"
        assert events[-1] == "daemon_stopped"
        # the file ends inside the event's hold time: shutdown closes the event
        assert events.index("daemon_stopping") < events.index("anomaly_ended")
        assert (
            next(r for r in records if r["event"] == "daemon_stopping")["reason"] == "end_of_input"
        )
        windows = [r for r in records if r["event"] == "window_scored"]
        ends = [w["end_s"] for w in windows]
        # every window on the hop grid from the file's first second to its end; a
        # tick that came late on a loaded machine may skip one, never shift them
        assert ends[0] == 1.0 and ends[-1] == 4.0 and len(ends) >= 5
        assert all(end * 2 == int(end * 2) for end in ends) and ends == sorted(set(ends))
        (start,) = [r for r in records if r["event"] == "anomaly_started"]
        (end,) = [r for r in records if r["event"] == "anomaly_ended"]
        assert 2.0 < start["onset_s"] <= 3.0 and start["monitor"] == "fan"
        assert end["peak_score"] > -30.0
        assert end["score"] is None  # closed at shutdown: no deciding window, null not NaN
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
                    "state_dir": str(tmp_path / "state"),
                    "mqtt": {"enabled": False},
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


class FailingSource(FileSource):
    """A replayed file whose supervision fails on the third poll (test fake)."""

    def __init__(self, path: Path, error: Exception) -> None:
        super().__init__(path)
        self.error = error
        self.polls = 0

    def poll(self, now_s: float) -> None:
        self.polls += 1
        if self.polls == 3:
            raise self.error


class TestDaemonInProcess:
    """The daemon object with an injected source (a real file, paced in real time)."""

    @pytest.fixture
    def setup(self, tmp_path: Path, level_model: Path) -> tuple[Any, Any, Path]:
        wav = write_wav(tmp_path / "long.wav", tone_burst(16000, 30.0, (0.5, 1.5)), 16000)
        config = parse_config(
            {"monitors": [{"name": "fan", "model": str(level_model), "onset_k": 1, "onset_n": 1}]},
            base_dir=tmp_path,
        )
        return config, load_detectors(config), wav

    def test_stop_from_another_thread(self, setup: tuple[Any, Any, Path]) -> None:
        """stop() from another thread ends run() promptly with exit 0, the reason logged,
        and the event in progress closed."""
        config, detectors, wav = setup
        daemon = Daemon(config, detectors, source=FileSource(wav))
        timer = threading.Timer(1.3, daemon.stop, args=("test_stop",))
        timer.start()
        with capture_logs() as logs:
            code = daemon.run()
        timer.join()
        assert code == 0
        names = [entry["event"] for entry in logs]
        assert names[0] == "daemon_started" and names[-1] == "daemon_stopped"
        stopping = next(e for e in logs if e["event"] == "daemon_stopping")
        assert stopping["reason"] == "test_stop"
        assert names.count("anomaly_started") == 1 and names.count("anomaly_ended") == 1

    def test_free_memory_is_given_back_between_ticks_at_its_interval(
        self, setup: tuple[Any, Any, Path]
    ) -> None:
        """The loop gives glibc's free memory back at its wakes once every ``every_s`` of
        its ``MemoryRelease`` (here 0.6 s; no wake of its own), not at every wake, and
        keeps scoring. (That it is never sooner is MemoryRelease's own test.)"""
        config, detectors, wav = setup
        released: list[float] = []
        memory = MemoryRelease(lambda: released.append(time.monotonic()), every_s=0.6)
        daemon = Daemon(config, detectors, source=FileSource(wav), memory=memory)
        timer = threading.Timer(4.0, daemon.stop, args=("test_stop",))
        started = time.monotonic()
        timer.start()
        with capture_logs() as logs:
            assert daemon.run() == 0
        timer.join()
        assert 2 <= len(released) <= 7, released  # wakes: about two a second
        gaps = np.diff([started, *released])
        assert (gaps[1:] >= 0.5).all() and (gaps < 3.0).all(), gaps
        assert [e["event"] for e in logs].count("anomaly_started") == 1

    def test_a_clip_written_gives_its_memory_back_at_once(
        self, tmp_path: Path, setup: tuple[Any, Any, Path]
    ) -> None:
        """A clip written (the clip store's real worker) asks for a release at the loop's
        next wake, without waiting for the interval."""
        model, wav = setup[0].monitors[0].model, setup[2]
        config = parse_config(
            {
                "state_dir": str(tmp_path / "state"),
                "clips": {"pre_s": 0.2, "post_s": 0.2},
                "mqtt": {"enabled": False},
                "monitors": [{"name": "fan", "model": model, "onset_k": 1, "onset_n": 1}],
            },
            base_dir=tmp_path,
        )
        services = build_services(config)
        logs: list[dict[str, Any]] = []
        released: list[int] = []  # clips saved when each release came
        memory = MemoryRelease(
            lambda: released.append(sum(e["event"] == "clip_saved" for e in logs)),
            every_s=3600.0,
        )
        daemon = Daemon(
            config, services.detectors, source=FileSource(wav), services=services, memory=memory
        )
        runner = threading.Thread(target=daemon.run)
        with capture_logs() as captured:
            logs = captured
            runner.start()
            try:
                wait_until(lambda: any(e["event"] == "clip_saved" for e in logs), 20.0)
                wait_until(lambda: bool(released), 2.0, "a release after the clip")
            finally:
                daemon.stop("test_stop")
                runner.join(10.0)
        assert released[0] == 1  # asked for by the clip, not by the hour's interval

    def test_unexpected_error_is_logged_and_exits_70(self, setup: tuple[Any, Any, Path]) -> None:
        """A bug escaping the loop is logged with its traceback at the supervisor boundary,
        the source is stopped, and the exit code is 70 so that systemd restarts the service."""
        config, detectors, wav = setup
        source = FailingSource(wav, RuntimeError("boom"))
        with capture_logs() as logs:
            code = Daemon(config, detectors, source=source).run()
        assert code == EXIT_SOFTWARE
        failed = next(e for e in logs if e["event"] == "daemon_failed")
        assert failed["log_level"] == "error" and failed.get("exc_info")
        assert not source.alive
        assert logs[-1]["event"] == "daemon_stopped" and logs[-1]["exit_code"] == EXIT_SOFTWARE

    def test_a_password_file_gone_before_the_link_starts_exits_78(
        self, tmp_path: Path, setup: tuple[Any, Any, Path]
    ) -> None:
        """A password file removed after build_services read it and before the link's start
        stops the daemon with exit 78 naming the key (it was 70: systemd restarted it in a
        loop), with no traceback logged."""
        model, wav = setup[0].monitors[0].model, setup[2]
        password = tmp_path / "password"
        password.write_text("secret\n")
        config = parse_config(
            {
                "state_dir": str(tmp_path / "state"),
                "clips": {"enabled": False},
                "mqtt": {"username": "u", "password_file": str(password)},
                "monitors": [{"name": "fan", "model": model}],
            },
            base_dir=tmp_path,
        )
        services = build_services(config)
        password.unlink()
        daemon = Daemon(config, services.detectors, source=FileSource(wav), services=services)
        with capture_logs() as logs:
            code = daemon.run()
        assert code == EXIT_CONFIG
        invalid = next(e for e in logs if e["event"] == "config_invalid")
        missing = "No such file or directory"
        assert invalid["problems"] == [f"mqtt.password_file: cannot read {password}: {missing}"]
        assert not any(e["event"] == "daemon_failed" for e in logs)

    def test_audio_failure_exits_69(self, setup: tuple[Any, Any, Path]) -> None:
        """When the input cannot be kept alive the daemon exits 69 (EX_UNAVAILABLE)."""
        config, detectors, wav = setup
        source = FailingSource(wav, AudioError("device gone for good"))
        with capture_logs() as logs:
            code = Daemon(config, detectors, source=source).run()
        assert code == EXIT_UNAVAILABLE
        assert any(e["event"] == "audio_failed" for e in logs)


def reloadable(tmp_path: Path, level_model: Path) -> tuple[Path, Path, dict[str, Any], Any]:
    """A 30 s recording, and a configuration file of one monitor (no MQTT, no clips) to
    edit and reload: (recording, file, its data, the loaded configuration)."""
    from asd_edge.config import load_config

    wav = write_wav(tmp_path / "long.wav", tone_burst(16000, 30.0, (20.0, 21.0)), 16000)
    path = tmp_path / "c.yaml"
    data: dict[str, Any] = {
        "monitors": [{"name": "fan", "model": str(level_model)}],
        "mqtt": {"enabled": False},
        "clips": {"enabled": False},
    }
    path.write_text(yaml.safe_dump(data))
    return wav, path, data, load_config(path)


def test_reload_naming_a_channel_not_open_is_rejected_and_the_daemon_goes_on(
    tmp_path: Path, level_model: Path
) -> None:
    """SIGHUP with a monitor on a channel the running input did not open (input.channels
    needs a restart): the reload is rejected naming the key; the daemon keeps scoring."""
    wav, path, data, config = reloadable(tmp_path, level_model)
    daemon = Daemon(config, load_detectors(config), source=FileSource(wav))
    runner = threading.Thread(target=daemon.run)
    with capture_logs() as logs:
        runner.start()
        try:
            time.sleep(1.5)
            data["input"] = {"channels": 2}
            data["monitors"][0]["channel"] = 1
            path.write_text(yaml.safe_dump(data))
            daemon.request_reload()
            time.sleep(1.5)
        finally:
            daemon.stop("test")
            runner.join(10)
    names = [entry["event"] for entry in logs]
    rejected = [entry for entry in logs if entry["event"] == "reload_rejected"]
    assert rejected and "monitors[0].channel" in rejected[0]["problems"][0]
    assert "daemon_failed" not in names and "config_reloaded" not in names
    after = names.index("reload_rejected")
    assert "window_scored" in names[after:]


def test_a_reload_gives_the_replaced_models_memory_back(tmp_path: Path, level_model: Path) -> None:
    """A reload that replaces a monitor's model asks for a release at the loop's next
    wake (the old model's memory), not at the interval's end."""
    wav, path, data, config = reloadable(tmp_path, level_model)
    released: list[float] = []
    memory = MemoryRelease(lambda: released.append(time.monotonic()), every_s=3600.0)
    daemon = Daemon(config, load_detectors(config), source=FileSource(wav), memory=memory)
    runner = threading.Thread(target=daemon.run)
    with capture_logs() as logs:
        runner.start()
        try:
            time.sleep(1.0)
            assert released == []
            data["monitors"][0]["name"] = "pump"  # a new monitor, its model loaded anew
            path.write_text(yaml.safe_dump(data))
            daemon.request_reload()
            wait_until(lambda: bool(released), 5.0, "a release after the reload")
        finally:
            daemon.stop("test")
            runner.join(10)
    assert "config_reloaded" in [entry["event"] for entry in logs]


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (``SigCgt`` in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(
        next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16
    )
    return bool(mask >> (signum - 1) & 1)


@pytest.mark.parametrize("signame", ["SIGHUP", "SIGTERM"])
def test_a_signal_while_starting_is_held_until_the_daemon_can_act_on_it(
    tmp_path: Path, level_model: Path, signame: str
) -> None:
    """systemd's ExecReload (SIGHUP) or a stop (SIGTERM) in the first moments after start,
    while Python imports numpy and loads the models: the process does not die of the
    signal's default action; it starts, then reloads (SIGHUP) and goes on, or stops
    cleanly with exit 0 (SIGTERM)."""
    wav = write_wav(tmp_path / "long.wav", tone_burst(16000, 30.0, (20.0, 21.0)), 16000)
    config = replay_config(tmp_path, wav, level_model)
    proc = subprocess.Popen(
        [*asd_edge_command(), "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # As soon as the process catches the signal (its entry point held it), long
        # before numpy and the models are loaded and the daemon's handlers installed.
        wait_until(lambda: catches(proc.pid, getattr(signal, signame)), 20, "signal held")
        proc.send_signal(getattr(signal, signame))
        assert proc.stdout is not None
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        wanted = "config_reloaded" if signame == "SIGHUP" else "daemon_stopped"
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            events.append(strict_json(line))
            if events[-1]["event"] == wanted:
                break
        names = [e["event"] for e in events]
        assert wanted in names, (names, proc.stderr.read() if proc.stderr else "")
        assert "daemon_started" in names
        early = next(e for e in events if e["event"] == "early_signal")
        assert early["signal"] == signame
        if signame == "SIGHUP":
            assert proc.poll() is None, "the daemon died of an early SIGHUP"
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
