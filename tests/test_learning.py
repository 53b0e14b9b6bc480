"""Learning on the device, without the daemon: the collector's windows and what it skips,
the saved data, the fit as a child process, the learn command's refusals and the
offline ``asd-edge learn --from`` (the live path is in ``test_learning_e2e``)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.audio import write_wav
from support.services import asd_edge_command

from asd_edge.config import Config, parse_config
from asd_edge.detector import Detector
from asd_edge.errors import CommandError, LearnError
from asd_edge.learning import bandstat
from asd_edge.learning.calibration import CalibrationConfig
from asd_edge.learning.fitting import fit_recordings
from asd_edge.learning.job import FRAME
from asd_edge.learning.job import run as run_job
from asd_edge.learning.learner import SESSION_FILE, Learner
from asd_edge.learning.windows import (
    Collector,
    Featurizer,
    features_for,
    load_recordings,
    save_recordings,
)
from asd_edge.mqtt.commands import Command
from training.synth import Machine
from training.synth.machine import make_stream

RATE = 16000
FEATURES = features_for(RATE, 1.0, 64)


@pytest.fixture(scope="module")
def machine_audio() -> np.ndarray:
    """70 s of one session of a synthetic machine."""
    machine = Machine(machine_id=0, seed=3, sample_rate=RATE)
    return make_stream(70.0, [], machine=machine, seed=1).astype(np.float32)


def collect(audio: np.ndarray, block: int, **kw: Any) -> Collector:
    c = Collector(FEATURES, 1.0, 0.5, **kw)
    c.begin("live")
    for at in range(0, audio.shape[0], block):
        c.feed(audio[at : at + block])
    c.finish()
    return c


def config(tmp_path: Path, **learn: Any) -> Config:
    return parse_config(
        {
            "state_dir": str(tmp_path / "state"),
            "monitors": [{"name": "pump", "model": "m.onnx"}, {"name": "fan", "model": "m.onnx"}],
            "learn": learn,
        },
        base_dir=tmp_path,
    )


class TestCollector:
    def test_blocks_of_any_size_give_the_windows_of_the_whole_stream(
        self, machine_audio: np.ndarray
    ) -> None:
        """Fed in blocks (odd sizes, smaller and larger than a window), the statistics
        are those of the whole stream's windows on the hop grid."""
        audio = machine_audio[: 12 * RATE]
        whole = Featurizer(FEATURES, 1.0, 0.5).recording("x", audio)
        for block in (777, 8000, 40000):
            (rec,) = collect(audio, block).recordings()
            assert rec.stats.shape == whole.stats.shape
            np.testing.assert_allclose(rec.stats, whole.stats, atol=1e-4)
            np.testing.assert_allclose(rec.levels_dbfs, whole.levels_dbfs, atol=1e-4)

    def test_silence_clipping_nonfinite_and_marked_audio_are_skipped_and_counted(
        self, machine_audio: np.ndarray
    ) -> None:
        """Windows the input-health checks would flag are not learned; each reason counts
        the hops it cost."""
        audio = machine_audio[: 20 * RATE].copy()
        audio[2 * RATE : 6 * RATE] = 0.0  # silence
        audio[8 * RATE : 10 * RATE] = np.clip(audio[8 * RATE : 10 * RATE] * 50, -1, 1)
        audio[12 * RATE] = np.nan
        c = Collector(FEATURES, 1.0, 0.5)
        c.begin("live")
        c.feed(audio[: 15 * RATE])
        c.feed(audio[15 * RATE : 17 * RATE], bad="input_lost")
        c.feed(audio[17 * RATE :])
        c.finish()
        assert set(c.skipped_s) == {"silence", "clipping", "nonfinite", "input_lost"}
        assert c.skipped_s["silence"] >= 3.0 and c.skipped_s["input_lost"] >= 2.0
        assert c.seconds + c.skipped_total_s == pytest.approx(0.5 * 39, abs=0.01)

    def test_pieces_bound_the_kept_audio(self, machine_audio: np.ndarray) -> None:
        """A live stream is cut into pieces (the folds' sources); of each, at most 30 s of
        audio and their log-mel frames are kept, all windows' statistics."""
        recs = collect(machine_audio, 8000, piece_s=20.0, keep_s=5.0).recordings()
        assert [r.source for r in recs] == ["live#0", "live#1", "live#2", "live#3"]
        for r in recs:
            assert r.stream.shape[0] <= 5 * RATE + 8000
            assert r.logmel.shape[0] <= 10 < r.stats.shape[0] or r is recs[-1]

    def test_saved_data_loads_back_and_a_damaged_file_is_named(
        self, tmp_path: Path, machine_audio: np.ndarray
    ) -> None:
        recs = collect(machine_audio[: 30 * RATE], 8000, piece_s=10.0).recordings()
        path = tmp_path / "normal.npz"
        size = save_recordings(path, recs)
        assert size == path.stat().st_size
        back = load_recordings(path)
        assert [r.source for r in back] == [r.source for r in recs]
        np.testing.assert_allclose(back[0].stats, recs[0].stats, atol=1e-5)
        path.write_bytes(b"PK\x03\x04 not a zip")
        with pytest.raises(LearnError, match=str(path)):
            load_recordings(path)


class TestFit:
    def test_learned_from_the_collector_the_model_loads_and_holds_its_own_audio(
        self, machine_audio: np.ndarray
    ) -> None:
        """Collector → fit_recordings: a contract ONNX the daemon loads, whose threshold
        raises no event on the audio it learned."""
        recs = collect(machine_audio[: 40 * RATE], 8000, piece_s=10.0).recordings()
        learned = fit_recordings(
            recs, kind="auto", params={"n_mels": 64}, features=FEATURES, window_s=1.0,
            config=CalibrationConfig(hop_s=0.5), name="t", data_sha256="0" * 64,
            training={"source": "learn"}, pieces=True,
        )  # fmt: skip
        assert learned.metadata["kind"] == "bandstat" and learned.threshold > 0
        assert learned.calibration["final_model"]["events_at_crossfitted_threshold"] == 0

    def test_too_little_audio_says_how_much_is_needed(self, machine_audio: np.ndarray) -> None:
        recs = collect(machine_audio[: 5 * RATE], 8000).recordings()
        with pytest.raises(LearnError, match=r"needs at least 16 windows \(8\.5 s\)"):
            fit_recordings(
                recs, kind="auto", params={}, features=FEATURES, window_s=1.0,
                config=CalibrationConfig(hop_s=0.5), name="t", data_sha256="0",
                training={}, pieces=False,
            )  # fmt: skip

    def test_the_fit_child_writes_the_model_or_says_why_not(
        self, tmp_path: Path, machine_audio: np.ndarray
    ) -> None:
        """``python -m asd_edge.learning.job``: exit 0 with the model and its report, and
        neither torch nor scikit-learn loaded; exit 65 with the reason for too little."""
        data = tmp_path / "normal.npz"
        save_recordings(data, collect(machine_audio[: 30 * RATE], 8000, piece_s=10.0).recordings())
        job = {"data": [str(data)], "out": str(tmp_path / "m.onnx"),
               "report": str(tmp_path / "r.json"), "name": "pump-learned", "kind": "auto",
               "sample_rate": RATE, "n_mels": 64, "window_s": 1.0,
               "calibration": {"hop_s": 0.5, "target_fa_per_day": 1.0}}  # fmt: skip
        (tmp_path / "job.json").write_text(json.dumps(job))
        code = (
            "import sys, runpy\n"
            "sys.argv = ['job', sys.argv[1]]\n"
            "try:\n"
            "    runpy.run_module('asd_edge.learning.job', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    bad = [n for n in ('torch', 'sklearn', 'librosa') if n in sys.modules]\n"
            "    assert not bad, bad\n"
            "    raise\n"
        )
        run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "job.json")],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 0, run.stderr
        lines = [json.loads(line) for line in run.stdout.splitlines()]
        assert lines[-1]["done"] and any("progress" in line for line in lines)
        report = lines[-1]["report"]
        assert report["name"] == "pump-learned" and report["peak_rss_mb"] > 0
        assert Detector(tmp_path / "m.onnx").spec.kind == "bandstat"
        save_recordings(data, collect(machine_audio[: 4 * RATE], 8000).recordings())
        run = subprocess.run([sys.executable, "-m", "asd_edge.learning.job",
                              str(tmp_path / "job.json")], capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        assert run.returncode == 65
        assert "needs at least" in json.loads(run.stdout.splitlines()[-1])["error"]


def with_tone(audio: np.ndarray, db: float = -10.0) -> np.ndarray:
    """The machine with a new but harmless sound: a soft modulated tone at 1230 Hz."""
    t = np.arange(audio.shape[0]) / RATE
    rms = float(np.sqrt(np.mean(audio**2)))
    tone = np.sin(2 * np.pi * 1230.0 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    return (audio + rms * 10 ** (db / 20) * tone).astype(np.float32)


class TestMarkedNormal:
    def test_a_marked_false_alarm_stops_alerting_and_faults_still_do(self) -> None:
        """A pattern marked normal (one 8 s clip) scores below the threshold when it comes
        back over other normal sound; normal sound stays below it; faults, alone or with
        the pattern, stay above it; the ONNX graph agrees with numpy (parity)."""
        machine = Machine(machine_id=0, seed=3, sample_rate=RATE)
        events = [(150.0, 4.0, "bearing"), (162.0, 4.0, "imbalance")]
        audio = make_stream(170.0, events, machine=machine, seed=1).astype(np.float32)
        base = collect(audio[: 60 * RATE], 8000, piece_s=12.0).recordings()
        kw: dict[str, Any] = dict(
            kind="auto", params={"n_mels": 64}, features=FEATURES, window_s=1.0,
            config=CalibrationConfig(hop_s=0.5), name="t", data_sha256="0", training={},
            pieces=True,
        )  # fmt: skip
        plain = fit_recordings(base, **kw)

        def peak(model: Any, x: np.ndarray) -> float:
            (rec,) = collect(x, 8000).recordings()
            return float(model.score_of(rec.stats)[0].max())

        pattern = with_tone(audio[70 * RATE : 78 * RATE])
        assert peak(plain.model, pattern) > 2 * plain.threshold
        c = Collector(FEATURES, 1.0, 0.5)
        c.begin("marked-a1")
        c.feed(pattern)
        marked = fit_recordings(base, marked=c.recordings(), **kw)
        assert marked.metadata["training"]["marked_normal"]["sources"] == ["marked-a1"]
        assert marked.parity["max_abs_diff"] < 1e-3
        t = marked.threshold
        assert peak(marked.model, with_tone(audio[100 * RATE : 108 * RATE])) < 0.9 * t
        assert peak(marked.model, audio[110 * RATE : 145 * RATE]) < 1.3 * t
        assert peak(marked.model, audio[150 * RATE : 154 * RATE]) > 2 * t
        assert peak(marked.model, audio[162 * RATE : 166 * RATE]) > 1.5 * t
        assert peak(marked.model, with_tone(audio[150 * RATE : 154 * RATE])) > 2 * t


def frames(audio: np.ndarray, block: int = 4800, lost_at: int | None = None) -> io.BytesIO:
    """Live audio as the daemon writes it to the child: ``<II`` headers and float32."""
    out = io.BytesIO()
    for i, at in enumerate(range(0, audio.shape[0], block)):
        part = audio[at : at + block].astype(np.float32)
        out.write(FRAME.pack(part.shape[0], 4800 if i == lost_at else 0) + part.tobytes())
    out.seek(0)
    return out


class TestChildCollects:
    def live_job(self, tmp_path: Path, seconds: float) -> dict[str, Any]:
        return {
            "data": [], "out": str(tmp_path / "m.onnx"), "report": str(tmp_path / "r.json"),
            "name": "pump-learned", "kind": "auto", "sample_rate": RATE, "n_mels": 64,
            "window_s": 1.0, "calibration": {"hop_s": 0.5},
            "collect": {"mode": "live", "seconds": seconds, "capture_rate": 48000,
                        "source": "live-1", "piece_s": 10.0, "hop_s": 0.5,
                        "silence_dbfs": -80.0, "clipping_ratio": 0.001,
                        "save": str(tmp_path / "normal-1.npz")},
        }  # fmt: skip

    def test_live_audio_at_the_capture_rate_becomes_a_model(
        self, tmp_path: Path, machine_audio: np.ndarray
    ) -> None:
        """48 kHz capture frames on stdin (with a loss) → resampled, collected, saved and
        fitted in the child; the report names the data it learned."""
        from scipy.signal import resample_poly

        audio48 = resample_poly(machine_audio[: 40 * RATE], 3, 1).astype(np.float32)
        report = run_job(self.live_job(tmp_path, 30.0), stdin=frames(audio48, lost_at=20))
        assert report["seconds"] >= 30.0 and report["data"] == [str(tmp_path / "normal-1.npz")]
        assert Detector(tmp_path / "m.onnx").spec.kind == "bandstat"
        (piece, *_) = load_recordings(tmp_path / "normal-1.npz")
        assert piece.source == "live-1#0"

    def test_a_silent_input_fails_once_it_is_most_of_the_period(self, tmp_path: Path) -> None:
        with pytest.raises(LearnError, match=r"unusable for most of the period \(silence"):
            run_job(self.live_job(tmp_path, 20.0), stdin=frames(np.zeros(60 * 48000)))
        assert not (tmp_path / "m.onnx").exists()

    def test_audio_that_stops_too_early_is_said(self, tmp_path: Path) -> None:
        with pytest.raises(LearnError, match="stopped sending audio"):
            run_job(self.live_job(tmp_path, 20.0), stdin=frames(np.zeros(4800)))


class TestLearnCommand:
    @pytest.mark.parametrize(
        ("args", "reason"),
        [
            ({"monitor": "press", "seconds": 60}, "monitor: 'press' does not exist"),
            ({"seconds": 60}, "monitor: name the monitor to learn (one of pump, fan)"),
            ({"monitor": "pump", "seconds": 19.5}, "at least 20 s of normal sound"),
            ({"monitor": "pump", "seconds": 10000}, "at most 3600 (learn.max_s)"),
            ({"cancel": True}, "cancel: nothing is being learned"),
        ],
    )
    def test_refusals_say_why(self, tmp_path: Path, args: dict[str, Any], reason: str) -> None:
        learner = Learner(config(tmp_path), models=None, publish=None)
        with pytest.raises(CommandError, match=re.escape(reason)):
            learner.command(Command("learn", "r1", args))

    def test_learning_over_mqtt_can_be_switched_off(self, tmp_path: Path) -> None:
        learner = Learner(config(tmp_path, enabled=False), models=None, publish=None)
        with pytest.raises(CommandError, match=r"learn\.enabled: false"):
            learner.command(Command("learn", "r1", {"monitor": "pump", "seconds": 60}))

    @pytest.mark.parametrize(
        ("args", "reason"),
        [
            ({"alert_id": "x", "verdict": "fault"}, 'verdict: expected "normal"'),
            ({"alert_id": "../etc", "verdict": "normal"}, "alert_id: not an alert id"),
            ({"alert_id": "20261207T000000Z-pump-0", "verdict": "normal"}, "deleted by retention"),
            ({"alert_id": "last", "monitor": "pump", "verdict": "normal"}, "has no alert clip"),
            ({"alert_id": "20261207T000000Z-pump-1", "verdict": "normal"}, "learn it first"),
        ],
    )
    def test_feedback_refusals_say_why(
        self, tmp_path: Path, args: dict[str, Any], reason: str
    ) -> None:
        cfg = config(tmp_path)
        clips = Path(cfg.state_dir) / "clips" / "pump"
        clips.mkdir(parents=True)
        alert = "20261207T000000Z-pump-1"
        write_wav(clips / f"20261207T000000Z_{alert}.wav", np.zeros(RATE, np.float32), RATE)
        sidecar = {"alert_id": alert, "monitor": "pump",
                   "clip": {"file": f"20261207T000000Z_{alert}.wav"}}  # fmt: skip
        (clips / f"20261207T000000Z_{alert}.json").write_text(json.dumps(sidecar))
        if args.get("alert_id") == "last":
            for f in clips.iterdir():
                f.unlink()
        learner = Learner(cfg, models=None, publish=None)
        with pytest.raises(CommandError, match=re.escape(reason)):
            learner.feedback(Command("feedback", "f1", args))

    def test_a_session_a_killed_daemon_left_is_said_interrupted(self, tmp_path: Path) -> None:
        """At start, a session file left by a killed daemon becomes a ``failed`` learn
        state saying the learning was interrupted; its leftovers are removed."""
        cfg = config(tmp_path)
        root = Path(cfg.state_dir) / "learn"
        (root / "pump").mkdir(parents=True)
        (root / SESSION_FILE).write_text(json.dumps({"monitor": "pump", "id": "k1"}))
        (root / "pump" / "candidate.onnx").write_bytes(b"half")
        said: list[dict[str, Any]] = []
        Learner(cfg, models=None, publish=said.append).recover()
        assert said[0]["id"] == "k1" and said[0]["state"] == "failed"
        assert "interrupted" in said[0]["error"]
        assert not (root / SESSION_FILE).exists()
        assert not (root / "pump" / "candidate.onnx").exists()


class TestOfflineCli:
    def test_learn_from_recordings_names_a_bad_file_and_writes_the_model(
        self, tmp_path: Path, machine_audio: np.ndarray
    ) -> None:
        folder = tmp_path / "rec"
        folder.mkdir()
        write_wav(folder / "a.wav", machine_audio[: 20 * RATE], RATE)
        write_wav(folder / "b.wav", machine_audio[20 * RATE : 40 * RATE], RATE)
        (folder / "c.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
        cfg = tmp_path / "asd-edge.yaml"
        cfg.write_text(f"monitors:\n  - name: pump\n    model: m.onnx\nstate_dir: {tmp_path}\n")
        out = tmp_path / "pump.onnx"
        run = subprocess.run(
            [*asd_edge_command(), "learn", "--config", str(cfg), "--from", str(folder),
             "--out", str(out)], capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "c.wav" in run.stderr and run.stdout.strip() == str(out)
        assert Detector(out).spec.kind == "bandstat"

    @pytest.mark.parametrize(
        ("extra", "code", "said"),
        [
            (["--from", "EMPTY"], 66, "no audio"),
            (["--monitor", "fan", "--from", "EMPTY"], 78, "'fan' does not exist"),
        ],
    )
    def test_nothing_to_learn_from_or_no_such_monitor(
        self, tmp_path: Path, extra: list[str], code: int, said: str
    ) -> None:
        """No audio in the folders: 66. A monitor the configuration does not have: 78,
        naming the configuration file read and its monitors."""
        (tmp_path / "empty").mkdir()
        cfg = tmp_path / "asd-edge.yaml"
        cfg.write_text("monitors:\n  - name: pump\n    model: m.onnx\n")
        args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in extra]
        run = subprocess.run([*asd_edge_command(), "learn", "--config", str(cfg), *args],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert run.returncode == code and said in run.stderr
        if code == 78:  # which configuration was read, and what it has
            assert f"monitors in {cfg}: pump" in run.stderr


def test_bandstat_statistics_are_numpy_only() -> None:
    """The collector's statistics need no onnx: the daemon computes them."""
    assert bandstat.statistics(np.zeros((1, 30, 64))).shape == (1, 193)


def test_the_audio_queued_for_a_slow_child_is_bounded(tmp_path: Path) -> None:
    """The tick queues at most ``INBOX_S`` of audio for the learning child; what comes
    while the child is that far behind is counted lost to it, not held in the daemon."""
    from asd_edge.learning.session import INBOX_S, LearnSession

    cfg = config(tmp_path)
    session = LearnSession(
        config=cfg, monitor=cfg.monitors[0], capture_rate=48000, seconds=60.0, append=False,
        request_id="r", directory=tmp_path, previous_data=[], publish=lambda _p: None,
        submit=lambda *_a: None, outcome=lambda: None, on_end=lambda _s: None,
    )  # fmt: skip
    for _ in range(30):
        session.offer(np.zeros(48000, np.float32), 0)
    assert session._queued == round(INBOX_S) * 48000
    assert session._behind_samples == (30 - round(INBOX_S)) * 48000


def test_data_kept_per_monitor_loses_marked_clips_first_never_the_newest_normal(
    tmp_path: Path,
) -> None:
    """Beyond ``MAX_DATA_FILES`` the oldest marked-normal clip goes first, then the oldest
    normal data, never the newest normal data; leftovers of a learning are cleaned up."""
    from asd_edge.learning.session import MAX_DATA_FILES, clean_up, data_files, prune

    (tmp_path / "normal-1000.npz").write_bytes(b"n")
    for i in range(MAX_DATA_FILES + 2):
        (tmp_path / f"marked-{2000 + i}.npz").write_bytes(b"m")
    prune(tmp_path)
    kept = [p.name for p in data_files(tmp_path)]
    assert len(kept) == MAX_DATA_FILES and kept[0] == "normal-1000.npz"
    assert "marked-2000.npz" not in kept and "marked-2001.npz" not in kept
    for name in ("pending-3000.npz", "candidate.onnx", "report.json", ".normal-1.npz.ab.tmp"):
        (tmp_path / name).write_bytes(b"x")
    clean_up(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_the_last_alert_is_not_one_still_in_progress(tmp_path: Path) -> None:
    """``alert_id: "last"`` (the Home Assistant button) while the monitor's alert is in
    progress is refused: its clip is not saved yet, and the newest clip on disk would be
    an older alert's."""
    learner = Learner(config(tmp_path), models=None, publish=None)
    learner.open_anomaly = lambda monitor: "20261207T000000Z-pump-9" if monitor == "pump" else None
    args = {"alert_id": "last", "monitor": "pump", "verdict": "normal"}
    with pytest.raises(CommandError, match="still in progress"):
        learner.feedback(Command("feedback", "f1", args))
