"""The asd-edge command line, run as a user runs it: the installed script, as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from support import REPO
from support.audio import sparse_wav, tone_burst, write_wav
from support.files import REJECTED_KINDS, rejected_file
from support.services import asd_edge_command

from asd_edge.audiofile import read_audio, to_mono
from asd_edge.detector import Detector


def cli(
    *args: str, cwd: Path | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*asd_edge_command(), *args], capture_output=True, text=True, timeout=timeout_s, cwd=cwd
    )


PEAK_RSS_LIMIT_KB = 200_000
"""``asd-edge score`` of a 2 GB WAV must stay under this; it takes about 95 MB."""
QUICK_S = 30
"""A check that must not wait on a file: it takes a few seconds (the process starting and
loading onnxruntime); a FIFO used to hold check-config until this ran out."""


def config_file(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def mqtt_file_configs(tmp_path: Path, model: Path) -> dict[str, dict[str, Any]]:
    """Configurations whose MQTT password or TLS CA file is missing, by the key naming it:
    each runs a monitor on a replayed recording, so only that file can stop it."""
    wav = write_wav(tmp_path / "quiet.wav", np.zeros(16000 * 60, np.float32), 16000)
    base = {
        "state_dir": str(tmp_path / "state"),
        "input": {"device": f"file:{wav}"},
        "clips": {"enabled": False},
        "monitors": [{"name": "fan", "model": str(model)}],
    }
    missing = str(tmp_path / "missing")
    return {
        "mqtt.password_file": {**base, "mqtt": {"username": "u", "password_file": missing}},
        "mqtt.tls.ca_file": {**base, "mqtt": {"tls": {"enabled": True, "ca_file": missing}}},
    }


class TestHelp:
    @pytest.mark.parametrize("command", ["", "run", "check-config", "devices", "score", "record"])
    def test_every_command_has_help(self, command: str) -> None:
        """--help works on the tool and every subcommand, and lists the exit codes."""
        result = cli(*([command] if command else []), "--help")
        assert result.returncode == 0, result.stderr
        assert "usage: asd-edge" in result.stdout
        assert "78" in result.stdout

    def test_no_command_is_a_usage_error(self) -> None:
        """Without a subcommand the exit code is 2 (usage)."""
        assert cli().returncode == 2


class TestScore:
    def test_finds_the_event_in_the_middle(self, tmp_path: Path, level_model: Path) -> None:
        """A loud second in a quiet 10 s file is exactly one event around it."""
        wav = write_wav(tmp_path / "burst.wav", tone_burst(16000, 10.0, (4.5, 5.5)), 16000)
        result = cli("score", "--model", str(level_model), str(wav))
        assert result.returncode == 0, result.stderr
        (line,) = result.stdout.strip().splitlines()
        report = json.loads(line)
        assert report["file"] == str(wav)
        assert report["sample_rate"] == 16000
        assert report["threshold"] == -30.0
        assert len(report["windows"]) == 19
        assert set(report["windows"][0]) == {"start_s", "end_s", "score"}
        (event,) = report["events"]
        assert event["start_s"] <= 4.5 and event["end_s"] >= 5.5
        assert event["end_s"] - event["start_s"] <= 3.0
        assert event["peak_score"] == pytest.approx(-6.0, abs=0.5)

    def test_real_recording_with_an_impact(self, tmp_path: Path, shared_data: Path) -> None:
        """A real pump recording with a real crash mixed in at 6 s: one event, at the crash."""
        pump = read_audio(shared_data / "machines/pump/normal/mamisoa__normal_id_00_00000000.wav")
        crash = read_audio(shared_data / "impacts/crash/crash_1.wav")
        assert pump.sample_rate == 16000
        x = to_mono(pump.samples, None).copy()
        # the crash is 8 kHz: bring it to 16 kHz by sample repetition-free interpolation
        c = to_mono(crash.samples, None)
        c16 = np.interp(np.arange(2 * c.shape[0]) / 2, np.arange(c.shape[0]), c).astype(np.float32)
        at = 6 * 16000
        x[at : at + c16.shape[0]] += c16
        wav = write_wav(tmp_path / "pump_crash.wav", x, 16000)
        result = cli("score", "--model", str(REPO / "models/level.onnx"), str(wav))
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        (event,) = report["events"]
        crash_end = 6 + c16.shape[0] / 16000
        assert event["start_s"] <= 6.0 <= event["end_s"]
        assert event["end_s"] >= crash_end - 0.5

    def test_bad_file_is_reported_and_others_scored(
        self, tmp_path: Path, level_model: Path
    ) -> None:
        """An unreadable file yields {file, error}; the next file is still scored; exit 1."""
        bad = tmp_path / "broken.wav"
        bad.write_bytes(b"RIFF....WAVEjunk")
        good = write_wav(tmp_path / "good.wav", tone_burst(16000, 3.0, (1.0, 2.0)), 16000)
        result = cli("score", "--model", str(level_model), str(bad), str(good))
        assert result.returncode == 1
        first, second = (json.loads(line) for line in result.stdout.strip().splitlines())
        assert first["file"] == str(bad) and "broken.wav" in first["error"]
        assert second["file"] == str(good) and len(second["windows"]) == 5

    def test_nan_samples_or_a_1_hz_rate_are_reported_by_name_and_others_scored(
        self, tmp_path: Path, level_model: Path
    ) -> None:
        """A float WAV holding NaN, and one whose header says 1 Hz, are errors naming the
        file (they were scored without a word); the next file is scored; exit 1."""
        from scipy.io import wavfile

        x = tone_burst(16000, 3.0, (1.0, 2.0))
        good = write_wav(tmp_path / "good.wav", x, 16000)
        y = x.copy()
        y[24000] = np.nan
        nan = tmp_path / "nan.wav"
        wavfile.write(nan, 16000, y)
        slow = tmp_path / "slow.wav"
        wavfile.write(slow, 1, x[:100])
        result = cli("score", "--model", str(level_model), str(nan), str(slow), str(good))
        assert result.returncode == 1
        first, second, third = (json.loads(line) for line in result.stdout.strip().splitlines())
        assert first == {
            "file": str(nan),
            "error": f"{nan}: sample 24,000 (1.500 s) is NaN or infinite",
        }
        assert second["error"] == (
            f"{slow}: sample rate 1 Hz is below 1000 Hz: not an audio recording"
        )
        assert third["file"] == str(good) and len(third["windows"]) == 5

    def test_a_truncated_wav_is_reported_by_name_and_others_scored(
        self, tmp_path: Path, level_model: Path
    ) -> None:
        """A WAV cut short is an error naming it and both lengths (it was scored silently as
        far as it went); the next file is scored; exit 1."""
        good = write_wav(tmp_path / "good.wav", tone_burst(16000, 3.0, (1.0, 2.0)), 16000)
        cut = tmp_path / "cut.wav"
        cut.write_bytes(good.read_bytes()[: 44 + 32000])
        result = cli("score", "--model", str(level_model), str(cut), str(good))
        assert result.returncode == 1
        first, second = (json.loads(line) for line in result.stdout.strip().splitlines())
        assert first == {
            "file": str(cut),
            "error": f"{cut}: truncated: the header announces 96,000 bytes of audio (3.000 s), "
            "the file holds 32,000 (1.000 s)",
        }
        assert second["file"] == str(good) and len(second["windows"]) == 5

    @pytest.mark.slow
    def test_a_2_gb_wav_is_scored_in_bounded_memory_beside_the_others(
        self, tmp_path: Path, level_model: Path
    ) -> None:
        """A 2 GB WAV (sparse: 32 channels of silence, 35 min) is scored block by block
        with the peak resident memory of the process under 200 MB (it used to read the
        whole file, several times its size); the good file after it is scored and a
        truncated one is reported by name."""
        big = sparse_wav(tmp_path / "big.wav", 16000, 32, 2**31 - 64)
        good = write_wav(tmp_path / "good.wav", tone_burst(16000, 3.0, (1.0, 2.0)), 16000)
        cut = tmp_path / "cut.wav"
        cut.write_bytes(good.read_bytes()[:1000])
        args = ["score", "--model", str(level_model), str(big), str(good), str(cut)]
        code = (
            "import sys\n"
            "from asd_edge.cli import main\n"
            f"code = main({args!r})\n"
            "status = open('/proc/self/status').read().splitlines()\n"
            "print(next(s for s in status if s.startswith('VmHWM:')), file=sys.stderr)\n"
            "sys.exit(code)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
        )
        assert result.returncode == 1, result.stderr
        peak_kb = int(result.stderr.strip().splitlines()[-1].split()[1])
        assert peak_kb < PEAK_RSS_LIMIT_KB, f"peak resident memory {peak_kb} kB"
        scored, second, third = (json.loads(line) for line in result.stdout.strip().splitlines())
        seconds = (2**31 - 64) // (32 * 2) / 16000
        assert scored["file"] == str(big) and scored["events"] == []
        assert len(scored["windows"]) == int((seconds - 1.0) / 0.5) + 1
        assert scored["windows"][-1]["end_s"] == pytest.approx(seconds, abs=0.5)
        assert second["file"] == str(good) and len(second["windows"]) == 5
        assert third["file"] == str(cut) and f"{cut}: truncated" in third["error"]

    def test_bad_model_exits_78_naming_the_field(self, tmp_path: Path) -> None:
        """A model without the contract's metadata: exit 78, the field named."""
        from training.level import build_level_model, save_model

        model = build_level_model()
        del model.metadata_props[:]
        path = save_model(model, tmp_path / "plain.onnx")
        wav = write_wav(tmp_path / "a.wav", np.zeros(16000, np.float32), 16000)
        result = cli("score", "--model", str(path), str(wav))
        assert result.returncode == 78
        assert "metadata.asd_edge" in result.stderr

    def test_other_rates_and_config_settings(self, tmp_path: Path, level_model: Path) -> None:
        """A 44.1 kHz stereo file is resampled; --config's monitor gives hop and onset rule."""
        stereo = np.stack([tone_burst(44100, 4.0, (2.0, 3.0)), np.zeros(44100 * 4, np.float32)], 1)
        wav = tmp_path / "stereo.wav"
        from scipy.io import wavfile

        wavfile.write(wav, 44100, (stereo * 32767).astype(np.int16))
        config = tmp_path / "c.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "monitors": [
                        {
                            "name": "pump",
                            "model": str(level_model),
                            "hop_s": 0.25,
                            "onset_k": 1,
                            "onset_n": 1,
                        }
                    ]
                }
            )
        )
        result = cli(
            "score",
            "--model",
            str(level_model),
            "--config",
            str(config),
            "--channel",
            "0",
            str(wav),
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["sample_rate"] == 44100
        ends = [w["end_s"] for w in report["windows"]]
        assert ends[:3] == [1.0, 1.25, 1.5]
        (event,) = report["events"]
        assert event["alert_s"] <= 2.25


class TestCheckConfig:
    def test_shipped_config_is_valid(self) -> None:
        """config/asd-edge.yaml passes, with its model, and the effective config is printed."""
        result = cli("check-config", "--config", str(REPO / "config/asd-edge.yaml"))
        assert result.returncode == 0, result.stderr
        effective = yaml.safe_load(result.stdout)
        assert effective["monitors"][0]["model"] == str(REPO / "models/level.onnx")
        assert effective["mqtt"]["topic_prefix"] == f"asd/{effective['device_id']}"

    def test_it_says_which_model_each_monitor_runs(self, tmp_path: Path, level_model: Path) -> None:
        """Before the effective configuration, one comment line per monitor names the
        model the daemon would run now, where it comes from and its file (a pushed
        model would run from the state directory instead of the configured file)."""
        config = tmp_path / "c.yaml"
        config.write_text(
            f"state_dir: {tmp_path / 'state'}\nmonitors:\n  - name: fan\n    model: {level_model}\n"
        )
        result = cli("check-config", "--config", str(config))
        assert result.returncode == 0, result.stderr
        name, version = (
            Detector(str(level_model)).spec.name,
            Detector(str(level_model)).spec.version,
        )
        assert f"# monitor fan runs {name} {version} (config, {level_model})" in result.stdout
        assert not (tmp_path / "state").exists()  # nothing written

    def test_secrets_are_redacted(self, tmp_path: Path) -> None:
        """A password in the config never reaches the output."""
        config = tmp_path / "c.yaml"
        config.write_text("mqtt:\n  password: hunter2\n")
        result = cli("check-config", "--config", str(config))
        assert result.returncode == 0, result.stderr
        assert "hunter2" not in result.stdout
        assert yaml.safe_load(result.stdout)["mqtt"]["password"] == "***"

    def test_bad_key_exits_78_naming_it(self, tmp_path: Path) -> None:
        """A typo is exit 78 with the dotted path and a suggestion."""
        config = tmp_path / "c.yaml"
        config.write_text("mqtt:\n  prot: 1883\n")
        result = cli("check-config", "--config", str(config))
        assert result.returncode == 78
        assert "mqtt.prot" in result.stderr and "port" in result.stderr

    def test_missing_model_exits_78(self, tmp_path: Path) -> None:
        """A monitor whose model file is missing fails the check, naming the monitor."""
        config = tmp_path / "c.yaml"
        config.write_text("monitors:\n  - name: fan\n    model: nope.onnx\n")
        result = cli("check-config", "--config", str(config))
        assert result.returncode == 78
        assert "monitors[0].model" in result.stderr and "nope.onnx" in result.stderr

    @pytest.mark.parametrize("kind", REJECTED_KINDS)
    def test_a_model_no_regular_file_or_too_large_exits_78_at_once(
        self, tmp_path: Path, kind: str
    ) -> None:
        """A FIFO (which held check-config 30 s), a link to /dev/zero or a 2 GB sparse
        file (which filled its memory) as the model: exit 78 at once, naming the key and
        the file, nothing read."""
        path, problem = rejected_file(tmp_path, kind, ".onnx")
        config = config_file(tmp_path, {"monitors": [{"name": "fan", "model": str(path)}]})
        result = cli("check-config", "--config", str(config), timeout_s=QUICK_S)
        assert result.returncode == 78
        assert f"monitors[0].model: {path}: file: {problem}" in result.stderr

    def test_every_file_key_that_names_a_fifo_is_listed(
        self, tmp_path: Path, level_model: Path
    ) -> None:
        """The push key, the MQTT password and the TLS files are read as the daemon reads
        them: each key naming a FIFO is listed, without waiting on any."""
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        tls = {"enabled": True, "ca_file": str(fifo), "cert_file": "c.pem", "key_file": "k.pem"}
        config = config_file(
            tmp_path,
            {
                "monitors": [{"name": "fan", "model": str(level_model)}],
                "push": {"key_file": str(fifo)},
                "mqtt": {"username": "u", "password_file": str(fifo), "tls": tls},
            },
        )
        result = cli("check-config", "--config", str(config), timeout_s=QUICK_S)
        assert result.returncode == 78
        fifo_problem = "not a regular file (a FIFO)"
        assert f"push.key_file: {fifo}: {fifo_problem}" in result.stderr
        assert f"mqtt.password_file: cannot read {fifo}: {fifo_problem}" in result.stderr
        assert f"mqtt.tls.ca_file: cannot load the TLS file {fifo}: {fifo_problem}" in (
            result.stderr
        )

    @pytest.mark.parametrize("key", ["mqtt.password_file", "mqtt.tls.ca_file"])
    def test_a_missing_mqtt_file_exits_78_naming_the_key(
        self, tmp_path: Path, level_model: Path, key: str
    ) -> None:
        """A missing password or CA file fails the check as it would fail the daemon."""
        config = config_file(tmp_path, mqtt_file_configs(tmp_path, level_model)[key])
        result = cli("check-config", "--config", str(config))
        assert result.returncode == 78
        assert f"{key}: " in result.stderr and str(tmp_path / "missing") in result.stderr


class TestRun:
    @pytest.mark.parametrize("key", ["mqtt.password_file", "mqtt.tls.ca_file"])
    def test_a_missing_mqtt_file_exits_78_naming_the_key(
        self, tmp_path: Path, level_model: Path, key: str
    ) -> None:
        """A missing password or CA file stops the daemon with exit 78, which systemd does
        not restart, and names the key (it was exit 70 with a traceback: a restart loop)."""
        config = config_file(tmp_path, mqtt_file_configs(tmp_path, level_model)[key])
        result = cli("run", "--config", str(config), timeout_s=QUICK_S)
        assert result.returncode == 78
        assert f"{key}: " in result.stderr and str(tmp_path / "missing") in result.stderr
        assert "Traceback" not in result.stderr + result.stdout

    def test_a_password_without_a_user_name_exits_78(
        self, tmp_path: Path, level_model: Path
    ) -> None:
        """A password without mqtt.username stops the daemon at the link's start with exit
        78 and the key in its log (it was exit 70 with a traceback)."""
        data = mqtt_file_configs(tmp_path, level_model)["mqtt.password_file"]
        config = config_file(tmp_path, {**data, "mqtt": {"password": "secret"}})
        result = cli("run", "--config", str(config), timeout_s=QUICK_S)
        assert result.returncode == 78
        assert "mqtt.username: expected a user name to go with the password" in result.stdout
        assert "Traceback" not in result.stderr + result.stdout

    def test_no_monitor_exits_78(self, tmp_path: Path) -> None:
        """Running with nothing to monitor is a configuration error, not a silent daemon."""
        config = tmp_path / "empty.yaml"
        config.write_text("")
        result = cli("run", "--config", str(config))
        assert result.returncode == 78
        assert "monitors" in result.stderr

    def test_bad_config_exits_78(self, tmp_path: Path) -> None:
        """An invalid value stops the daemon before it opens any device, with exit 78."""
        config = tmp_path / "bad.yaml"
        config.write_text("input:\n  channels: many\n")
        result = cli("run", "--config", str(config))
        assert result.returncode == 78
        assert "input.channels" in result.stderr


class TestArguments:
    @pytest.mark.parametrize(
        "args",
        [
            ["record", "--seconds", "0", "--out", "x"],
            ["record", "--seconds", "5", "--segment-s", "-1", "--out", "x"],
            ["score", "--model", "m.onnx", "--hop-s", "nan", "a.wav"],
            ["score", "--model", "m.onnx", "--hop-s", "0.001", "a.wav"],
        ],
    )
    def test_non_positive_durations_are_usage_errors(self, args: list[str]) -> None:
        """Zero, negative or NaN durations are refused with exit 2 before anything runs."""
        result = cli(*args)
        assert result.returncode == 2
        assert "above 0" in result.stderr or "0.05-10 seconds" in result.stderr

    def test_monitor_without_config(self, tmp_path: Path, level_model: Path) -> None:
        """`score --monitor NAME` without --config is a clear error (78), not ignored."""
        wav = write_wav(tmp_path / "a.wav", np.zeros(16000, np.float32), 16000)
        result = cli("score", "--model", str(level_model), "--monitor", "pump", str(wav))
        assert result.returncode == 78
        assert "--monitor" in result.stderr

    def test_output_cut_short_by_the_reader(self, tmp_path: Path, level_model: Path) -> None:
        """`asd-edge score ... | head -n 1` ends quietly, without a traceback."""
        wav = write_wav(tmp_path / "a.wav", tone_burst(16000, 2.0, (0.5, 1.0)), 16000)
        command = " ".join([*asd_edge_command(), "score", "--model", str(level_model)])
        result = subprocess.run(
            f"{command} {' '.join([str(wav)] * 40)} | head -n 1",
            shell=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.stdout.count("\n") == 1
        assert "Traceback" not in result.stderr


class TestWhatARunWrites:
    def test_nothing_outside_its_state_directory(self, tmp_path: Path, level_model: Path) -> None:
        """`asd-edge run` on a recording without an anomaly, with an empty HOME and the real
        onnxruntime, in an environment without ORT_DISABLE_TELEMETRY (a new user's): HOME
        and the working directory stay empty (onnxruntime's telemetry would write
        ~/.cache/Microsoft/DeveloperTools/.onnxruntime/deviceid at its import), and the
        state directory holds only the empty outbox and clips folder."""
        rng = np.random.default_rng(5)
        quiet = (0.003 * rng.standard_normal(16000 * 3)).astype(np.float32)
        wav = write_wav(tmp_path / "machine.wav", quiet, 16000)
        state, home, work = tmp_path / "state", tmp_path / "home", tmp_path / "work"
        home.mkdir()
        work.mkdir()
        config = config_file(
            tmp_path,
            {
                "state_dir": str(state),
                "input": {"device": f"file:{wav}"},
                "mqtt": {"enabled": False},
                "monitors": [{"name": "fan", "model": str(level_model)}],
            },
        )
        env = {
            k: v
            for k, v in os.environ.items()
            if k != "ORT_DISABLE_TELEMETRY" and not k.startswith("XDG_")
        }
        result = subprocess.run(
            [*asd_edge_command(), "run", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=work,
            env={**env, "HOME": str(home)},
        )
        assert result.returncode == 0, result.stderr
        assert "anomaly_started" not in result.stdout
        assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []
        assert list(work.iterdir()) == []
        assert sorted(p.name for p in state.iterdir()) == ["clips", "outbox.sqlite"]
        assert list((state / "clips").iterdir()) == []


class TestRecordFromAFile:
    def test_a_replayed_file_is_recorded_into_segments(self, tmp_path: Path) -> None:
        """`record` with `input.device: "file:..."` (trying it without a microphone): the
        file, replayed in real time, becomes 1 s segments equal to it, the last one
        shorter; the command says the file ended and exits 0."""
        rng = np.random.default_rng(3)
        audio = (0.1 * rng.standard_normal(40000)).astype(np.float32)  # 2.5 s at 16 kHz
        wav = write_wav(tmp_path / "machine.wav", audio, 16000)
        config = config_file(tmp_path, {"device_id": "bench", "input": {"device": f"file:{wav}"}})
        out = tmp_path / "out"
        result = cli(
            "record",
            "--config",
            str(config),
            "--seconds",
            "10",
            "--segment-s",
            "1",
            "--out",
            str(out),
        )
        assert result.returncode == 0, result.stderr
        assert "the replayed file ended after 2.5 s" in result.stderr
        files = sorted(out.glob("*.wav"))
        assert [Path(line).name for line in result.stdout.split()] == [f.name for f in files]
        pieces = [read_audio(f).samples[:, 0] for f in files]
        assert [p.size for p in pieces] == [16000, 16000, 8000]
        np.testing.assert_allclose(np.concatenate(pieces), audio, atol=1 / 32767)
