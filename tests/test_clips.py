"""Tests of the clip store and recorder: exact audio around events, sidecars, quota, crashes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.io import wavfile
from structlog.testing import capture_logs

from asd_edge.clips import (
    MB,
    WORKER_NICE,
    ClipRecorder,
    ClipRequest,
    ClipResult,
    ClipStore,
    encode_audio,
)
from asd_edge.config import ClipsConfig
from asd_edge.decision import Event
from asd_edge.ring import RingBuffer

RATE = 8000
WALL = 1_800_000_000.0
"""The injected wall clock (2027-01-15T08:00:00Z) at which recorders open clips."""
MODEL = {"name": "pump-a", "version": "v1", "sha256": "ab" * 32}


def pcm(n: int, seed: int = 0) -> np.ndarray:
    """Noise whose every sample is an exact int16 value, so a clip compares bit for bit."""
    ints = np.random.default_rng(seed).integers(-20000, 20000, n)
    return (ints / 32768.0).astype(np.float32)


def ints(samples: np.ndarray) -> np.ndarray:
    """The int16 values a 16-bit file holds for ``samples``."""
    return np.round(samples.astype(np.float64) * 32768.0).astype(np.int64)


def clips_config(**changes: Any) -> ClipsConfig:
    """Small, fast defaults: 2 s pre-roll, 1 s post-roll, 8 s at most, no pictures."""
    base = ClipsConfig(
        pre_s=2.0, post_s=1.0, max_clip_s=8.0, spectrogram=False, min_free_mb=0.0, max_age_days=None
    )
    return replace(base, **changes)


def start_event(onset_s: float, at_s: float, peak: float = 5.0) -> Event:
    return Event("start", at_s, onset_s, at_s, peak, peak, 1.0)


def end_event(onset_s: float, last_s: float, at_s: float, peak: float = 5.0) -> Event:
    return Event("end", at_s, onset_s, last_s, peak, 0.5, 1.0)


def sidecar(audio: Path) -> dict[str, Any]:
    return json.loads(audio.with_suffix(".json").read_text())  # type: ignore[no-any-return]


def read_ints(path: Path) -> np.ndarray:
    rate, data = wavfile.read(path)
    assert rate == RATE and data.dtype == np.int16
    return data.astype(np.int64)


class Results:
    """Collects what ``on_done`` receives (from the worker thread, or the caller's)."""

    def __init__(self) -> None:
        self.items: list[ClipResult] = []
        self._lock = threading.Lock()

    def __call__(self, result: ClipResult) -> None:
        with self._lock:
            self.items.append(result)

    def by_id(self) -> dict[str, ClipResult]:
        return {r.alert_id: r for r in self.items}


class Rig:
    """A real ring fed with known audio, a real store in a temporary directory, a recorder."""

    def __init__(self, directory: Path, config: ClipsConfig, ring_s: float = 20.0) -> None:
        self.audio = pcm(60 * RATE)
        self.ring = RingBuffer(round(ring_s * RATE))
        self.results = Results()
        self.store = ClipStore(directory, config, on_done=self.results)
        self.recorder = ClipRecorder(self.store, config, device_id="dev1", wall_clock=lambda: WALL)
        self.store.start()

    def feed(self, until_s: float) -> None:
        """Capture up to ``until_s`` in 20 ms blocks, as the PortAudio callback would."""
        end = round(until_s * RATE)
        while self.ring.written < end:
            start = self.ring.written
            self.ring.write(self.audio[start : min(end, start + 160)])

    def open(self, alert_id: str, onset_s: float, at_s: float) -> Path | None:
        return self.recorder.start(
            alert_id=alert_id,
            monitor="pump",
            event=start_event(onset_s, at_s),
            ring=self.ring,
            sample_rate=RATE,
            window_s=1.0,
            model=MODEL,
        )

    def finish(self) -> dict[str, ClipResult]:
        self.store.stop()
        return self.results.by_id()

    def expected(self, start_s: float, stop_s: float) -> np.ndarray:
        return ints(self.audio[round(start_s * RATE) : round(stop_s * RATE)])


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "clips", clips_config())
    yield r
    r.store.stop()


class TestRecorder:
    """The clip holds exactly the audio around the event, cut at the right time."""

    def test_clip_is_pre_roll_event_and_post_roll(self, rig: Rig) -> None:
        """From onset - window - pre_s to last anomalous + post_s, sample for sample, and only
        once that post-roll has been captured."""
        rig.feed(6.5)
        path = rig.open("a1", onset_s=6.0, at_s=6.5)
        assert path == rig.store.directory / "pump" / "20270115T075956Z_a1.wav"
        rig.recorder.score("pump", 6.5, 3.0)
        rig.feed(8.0)
        rig.recorder.end(monitor="pump", event=end_event(6.0, last_s=7.5, at_s=8.0))
        assert rig.recorder.poll() == []  # the post-roll (until 8.5 s) is not captured yet
        rig.feed(8.49)
        assert rig.recorder.poll() == []
        rig.feed(9.0)
        assert rig.recorder.poll() == ["a1"]
        assert rig.recorder.poll() == []
        result = rig.finish()["a1"]
        assert result.error is None and result.path == path
        np.testing.assert_array_equal(read_ints(path), rig.expected(3.0, 8.5))
        assert result.duration_s == pytest.approx(5.5)
        assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert result.bytes == path.stat().st_size

    def test_sidecar(self, rig: Rig) -> None:
        """The sidecar names the alert, event, model, file facts and the score timeline as
        offsets into the clip; wall time is the capture time of the first sample."""
        rig.feed(6.5)
        path = rig.open("a1", onset_s=6.0, at_s=6.5)
        assert path is not None
        for at_s, score in ((6.5, 3.0), (7.0, 7.0), (7.5, 2.0), (8.0, 0.1), (9.0, 0.2)):
            rig.feed(at_s)
            rig.recorder.score("pump", at_s, score)
        rig.recorder.end(monitor="pump", event=end_event(6.0, last_s=7.5, at_s=8.0, peak=7.0))
        rig.recorder.poll()
        rig.finish()
        doc = sidecar(path)
        assert doc["alert_id"] == "a1" and doc["device_id"] == "dev1" and doc["monitor"] == "pump"
        assert doc["model"] == MODEL
        clip = doc["clip"]
        assert clip["file"] == path.name and clip["format"] == "wav"
        assert clip["sample_rate"] == RATE and clip["duration_s"] == pytest.approx(5.5)
        assert clip["pre_s"] == pytest.approx(2.0)
        assert clip["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert clip["bytes"] == path.stat().st_size
        # 3.5 s of audio (3.0 .. 6.5 s) had been captured when the clip opened at WALL.
        assert datetime.fromisoformat(clip["started_at"]) == datetime.fromtimestamp(
            WALL - 3.5, tz=UTC
        )
        event = doc["event"]
        assert event["anomaly_start_offset_s"] == pytest.approx(2.0)
        assert event["anomaly_end_offset_s"] == pytest.approx(4.5)
        assert event["peak_score"] == 7.0 and event["threshold"] == 1.0
        assert event["truncated"] is False and event["cut"] == "end"
        # Windows ending inside the clip (3.0 .. 8.5 s); the one at 9.0 s is after it.
        assert [(s["offset_s"], s["score"]) for s in doc["scores"]] == [
            (3.5, 3.0),
            (4.0, 7.0),
            (4.5, 2.0),
            (5.0, 0.1),
        ]

    def test_scores_before_the_start_are_in_the_timeline(self, rig: Rig) -> None:
        """Windows scored before the event started (the onset evidence) are in the sidecar."""
        rig.feed(6.5)
        rig.recorder.score("pump", 2.5, 0.1)  # ends before the clip: left out
        rig.recorder.score("pump", 6.0, 4.0)
        path = rig.open("a1", onset_s=6.0, at_s=6.5)
        rig.recorder.score("pump", 6.5, 4.5)
        rig.recorder.score("other", 6.5, 9.9)  # another monitor's window
        rig.recorder.end(monitor="pump", event=end_event(6.0, last_s=6.5, at_s=7.5))
        rig.feed(8.0)
        rig.recorder.poll()
        rig.finish()
        assert path is not None
        assert [s["offset_s"] for s in sidecar(path)["scores"]] == [3.0, 3.5]

    def test_pre_roll_clamped_at_the_stream_start(self, rig: Rig) -> None:
        """An event in the first seconds gets the pre-roll there is, and says so."""
        rig.feed(2.0)
        path = rig.open("early", onset_s=1.5, at_s=2.0)
        rig.recorder.end(monitor="pump", event=end_event(1.5, last_s=2.0, at_s=3.0))
        rig.feed(3.0)
        assert rig.recorder.poll() == ["early"]
        rig.finish()
        assert path is not None
        np.testing.assert_array_equal(read_ints(path), rig.expected(0.0, 3.0))
        assert sidecar(path)["clip"]["pre_s"] == pytest.approx(0.5)

    def test_stalled_tick_leaves_silence_not_a_shift(self, tmp_path: Path) -> None:
        """If the tick stalls longer than the ring holds, the overwritten stretch is silence
        and counted; the audio around it keeps its place in time."""
        rig = Rig(tmp_path / "clips", clips_config(), ring_s=4.0)
        rig.feed(6.5)
        path = rig.open("a1", onset_s=6.0, at_s=6.5)  # the pre-roll is copied right away
        rig.recorder.end(monitor="pump", event=end_event(6.0, last_s=7.5, at_s=8.0))
        rig.feed(11.0)  # no poll meanwhile: the ring now starts at 7.0 s
        assert rig.recorder.poll() == ["a1"]
        rig.finish()
        assert path is not None
        silence = np.zeros(RATE // 2, dtype=np.int64)
        expected = np.concatenate([rig.expected(3.0, 6.5), silence, rig.expected(7.0, 8.5)])
        np.testing.assert_array_equal(read_ints(path), expected)
        assert sidecar(path)["event"]["lost_samples"] == RATE // 2

    def test_truncated_at_max_clip_s_and_no_second_clip(self, tmp_path: Path) -> None:
        """A long event is cut at max_clip_s (pre-roll included), marked truncated; its end
        later starts no second clip."""
        rig = Rig(tmp_path / "clips", clips_config(max_clip_s=4.0))
        rig.feed(6.5)
        path = rig.open("long", onset_s=6.0, at_s=6.5)
        rig.feed(6.99)
        assert rig.recorder.poll() == []
        rig.feed(7.0)
        assert rig.recorder.poll() == ["long"]
        rig.feed(12.0)
        rig.recorder.end(monitor="pump", event=end_event(6.0, last_s=11.0, at_s=12.0))
        rig.feed(13.0)
        assert rig.recorder.poll() == [] and rig.recorder.flush() == []
        results = rig.finish()
        assert list(results) == ["long"] and path is not None
        np.testing.assert_array_equal(read_ints(path), rig.expected(3.0, 7.0))
        event = sidecar(path)["event"]
        assert event["truncated"] is True and event["cut"] == "max_clip_s"
        assert event["anomaly_end_offset_s"] is None
        assert sorted(p.name for p in path.parent.iterdir()) == [
            "20270115T075956Z_long.json",
            path.name,
        ]

    def test_flush_at_shutdown(self, rig: Rig) -> None:
        """Shutdown submits open clips with what the ring holds: an event still running,
        and an ended one whose post-roll never came."""
        rig.feed(6.5)
        running = rig.open("running", onset_s=6.0, at_s=6.5)
        rig.recorder.start(
            alert_id="ended",
            monitor="fan",
            event=start_event(6.0, 6.5),
            ring=rig.ring,
            sample_rate=RATE,
            window_s=1.0,
            model=MODEL,
        )
        rig.feed(7.0)
        rig.recorder.end(monitor="fan", event=end_event(6.0, last_s=7.0, at_s=7.0))
        rig.feed(7.2)
        assert rig.recorder.poll() == []
        assert sorted(rig.recorder.flush()) == ["ended", "running"]
        assert rig.recorder.flush() == [] and rig.recorder.poll() == []
        results = rig.finish()
        assert running is not None and results["ended"].path is not None
        for path in (running, results["ended"].path):
            np.testing.assert_array_equal(read_ints(path), rig.expected(3.0, 7.2))
            assert sidecar(path)["event"]["cut"] == "shutdown"

    def test_disabled(self, tmp_path: Path) -> None:
        """clips.enabled false: no path in the alert, nothing written."""
        rig = Rig(tmp_path / "clips", clips_config(enabled=False))
        rig.feed(6.5)
        assert rig.open("a1", onset_s=6.0, at_s=6.5) is None
        rig.recorder.end(monitor="pump", event=end_event(6.0, last_s=6.5, at_s=7.0))
        rig.feed(10.0)
        assert rig.recorder.poll() == [] and rig.recorder.flush() == []
        assert rig.finish() == {}
        assert list((tmp_path / "clips").rglob("*.wav")) == []


def request(store: ClipStore, alert_id: str, seconds: float, rate: int = 16000) -> ClipRequest:
    """A clip request as the recorder builds it, with seeded noise."""
    samples = pcm(round(seconds * rate), seed=len(alert_id))
    started = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
    return ClipRequest(
        alert_id=alert_id,
        monitor="pump",
        device_id="dev1",
        samples=samples,
        sample_rate=rate,
        started_at=started,
        stream_start_s=100.0,
        pre_s=1.0,
        event={"truncated": False},
        model=MODEL,
        scores=[(100.5, 1.0)],
        path=store.planned_path("pump", alert_id, started),
        markers_s=(1.0, seconds - 1.0),
    )


def write_all(store: ClipStore, ids: list[str], seconds: float, tick: Callable[[], None]) -> None:
    """Submit clips one at a time, waiting for each (so their order is their age)."""
    for alert_id in ids:
        tick()
        usage = store.usage()
        done = usage.saved + usage.skipped
        assert store.submit(request(store, alert_id, seconds))
        deadline = time.monotonic() + 10
        while (usage := store.usage()).saved + usage.skipped == done:
            assert time.monotonic() < deadline
            time.sleep(0.005)


def clip_sets(directory: Path) -> dict[str, set[str]]:
    """alert id -> suffixes of the files on disk (temporary files under '.tmp')."""
    sets: dict[str, set[str]] = {}
    for path in directory.rglob("*"):
        if path.is_file():
            key = ".tmp" if path.name.endswith(".tmp") else path.stem.partition("_")[2]
            sets.setdefault(key, set()).add(path.suffix)
    return sets


def du(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


class TestStore:
    """The worker writes whole clip sets, reports every request, and never blocks the tick."""

    def test_queue_full_is_reported(self, tmp_path: Path) -> None:
        """A clip that finds the queue full is refused at once and reported through on_done."""
        results = Results()
        store = ClipStore(tmp_path, clips_config(queue=1), on_done=results)
        assert store.submit(request(store, "first", 1.0))
        assert not store.submit(request(store, "second", 1.0))
        assert [(r.alert_id, r.path, r.error) for r in results.items] == [
            ("second", None, "queue full (1 clips waiting)")
        ]
        store.start()
        store.stop()
        assert results.by_id()["first"].error is None
        usage = store.usage()
        assert (usage.saved, usage.skipped, usage.clips, usage.files) == (1, 1, 1, 2)
        assert usage.last_error == "queue full (1 clips waiting)"

    def test_whole_set_with_spectrogram_and_one_log_line(self, tmp_path: Path) -> None:
        """Audio, picture and sidecar appear together; one info line per clip."""
        results = Results()
        store = ClipStore(tmp_path, clips_config(spectrogram=True), on_done=results)
        store.start()
        with capture_logs() as logs:
            store.submit(request(store, "a1", 2.0))
            store.stop()
        result = results.items[0]
        assert result.spectrogram is not None and result.spectrogram.read_bytes()[:4] == b"\x89PNG"
        assert clip_sets(tmp_path) == {"a1": {".wav", ".png", ".json"}}
        assert sidecar(result.path)["clip"]["spectrogram"] == result.spectrogram.name  # type: ignore[arg-type]
        infos = [e for e in logs if e["log_level"] == "info"]
        assert [e["event"] for e in infos] == ["clip_saved"]
        assert infos[0]["alert_id"] == "a1" and infos[0]["bytes"] == result.bytes

    def test_worker_yields_the_cpu_to_the_tick(self, tmp_path: Path) -> None:
        """The writer thread runs niced (the tick thread keeps its priority)."""
        seen: list[int] = []

        def on_done(_result: ClipResult) -> None:
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

        store = ClipStore(tmp_path, clips_config(), on_done=on_done)
        store.start()
        store.submit(request(store, "a1", 0.5))
        store.stop()
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert seen == [min(19, mine + WORKER_NICE)]

    def test_numpy_and_nan_in_the_facts(self, tmp_path: Path) -> None:
        """numpy numbers in the event or model facts become JSON numbers, NaN becomes null:
        the clip is not lost to a serialisation error."""
        results = Results()
        store = ClipStore(tmp_path, clips_config(), on_done=results)
        store.start()
        req = replace(
            request(store, "a1", 0.5),
            event={"score": float("nan"), "peak_score": np.float32(1.5)},
            model={"threshold": np.float64(2.25), "shape": np.array([1, 2])},
        )
        store.submit(req)
        store.stop()
        assert results.items[0].error is None
        doc = sidecar(req.path)
        assert doc["event"] == {"score": None, "peak_score": 1.5}
        assert doc["model"] == {"threshold": 2.25, "shape": [1, 2]}

    def test_flac_round_trip(self, tmp_path: Path) -> None:
        """format: flac writes lossless 16-bit FLAC that decodes to the same samples."""
        soundfile = pytest.importorskip("soundfile")
        results = Results()
        store = ClipStore(tmp_path, clips_config(format="flac"), on_done=results)
        store.start()
        req = request(store, "f1", 3.0)
        store.submit(req)
        store.stop()
        path = results.items[0].path
        assert path is not None and path.suffix == ".flac"
        data, rate = soundfile.read(path, dtype="int16")
        assert rate == 16000
        np.testing.assert_array_equal(data.astype(np.int64), ints(req.samples))
        assert results.items[0].bytes < len(encode_audio(req.samples, 16000, "wav"))
        assert sidecar(path)["clip"]["format"] == "flac"

    def test_flac_without_soundfile_is_a_config_error(self, tmp_path: Path) -> None:
        """Without soundfile, format: flac fails at construction naming the key and the fix."""
        code = textwrap.dedent(
            f"""
            import sys
            sys.modules["soundfile"] = None  # as if not installed
            from asd_edge.clips import ClipStore
            from asd_edge.config import ClipsConfig
            from asd_edge.errors import ConfigError
            try:
                ClipStore({str(tmp_path)!r}, ClipsConfig(format="flac"), on_done=print)
            except ConfigError as exc:
                print(exc)
            """
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("clips.format: flac needs the soundfile package")
        assert "pip install 'asd-edge[flac]'" in out.stdout

    def test_recovery_at_start(self, tmp_path: Path) -> None:
        """start() deletes temporary files and remains of a deletion, and keeps a whole audio
        file whose sidecar was lost, giving it a sidecar marked recovered."""
        monitor = tmp_path / "pump"
        monitor.mkdir()
        audio = encode_audio(pcm(RATE), RATE, "wav")
        (monitor / ".20270101T000000Z_x.wav.tmp").write_bytes(audio[:100])
        (monitor / "20270101T000001Z_orphan.wav").write_bytes(audio)
        (monitor / "20270101T000002Z_gone.json").write_text("{}")
        (monitor / "20270101T000002Z_gone.png").write_bytes(b"png")
        (monitor / "notes.txt").write_text("not ours")
        store = ClipStore(tmp_path, clips_config(), on_done=Results())
        store.start()
        store.stop()
        assert sorted(p.name for p in monitor.iterdir()) == [
            "20270101T000001Z_orphan.json",
            "20270101T000001Z_orphan.wav",
            "notes.txt",
        ]
        doc = sidecar(monitor / "20270101T000001Z_orphan.wav")
        assert doc["recovered"] is True and doc["alert_id"] == "orphan"
        assert doc["clip"]["sha256"] == hashlib.sha256(audio).hexdigest()
        assert doc["clip"]["duration_s"] == 1.0
        assert store.usage().clips == 1


class TestRetention:
    """Before every write: age, then total size and free space, oldest clip sets first."""

    def test_total_size(self, tmp_path: Path) -> None:
        """Within max_total_mb the oldest clips go first, whole sets, pictures included."""
        results = Results()
        cfg = clips_config(max_total_mb=1.0, spectrogram=True)
        now = [0.0]
        store = ClipStore(tmp_path, cfg, on_done=results, clock=lambda: now[0])
        store.start()
        ids = [f"c{i}" for i in range(6)]

        def tick() -> None:
            now[0] += 60.0

        write_all(store, ids, 8.0, tick)  # ~0.26 MB audio + picture each
        store.stop()
        kept = sorted(k for k in clip_sets(tmp_path))
        assert all(r.error is None for r in results.items)
        assert 0 < len(kept) < len(ids) and kept == ids[-len(kept) :]
        assert all(s == {".wav", ".png", ".json"} for s in clip_sets(tmp_path).values())
        assert du(tmp_path) <= MB
        usage = store.usage()
        assert usage.bytes == du(tmp_path) and usage.deleted == len(ids) - len(kept)

    def test_age_including_clips_found_at_start(self, tmp_path: Path) -> None:
        """Clips older than max_age_days are deleted at the next write, also those from a
        previous run (aged by file time)."""
        now = [0.0]
        cfg = clips_config(max_age_days=1.0)
        store = ClipStore(tmp_path, cfg, on_done=Results(), clock=lambda: now[0])
        store.start()
        day = 86400.0
        for alert_id, t in (("a", 0.0), ("b", 0.5 * day), ("c", 1.2 * day)):
            now[0] = t
            write_all(store, [alert_id], 1.0, lambda: None)
        store.stop()
        assert sorted(clip_sets(tmp_path)) == ["b", "c"]
        # A new run finds "b" on disk with an old file time.
        old = time.time() - 3 * day
        for path in tmp_path.rglob("*_b.*"):
            os.utime(path, (old, old))
        store = ClipStore(tmp_path, cfg, on_done=Results())
        store.start()
        write_all(store, ["d"], 1.0, lambda: None)
        store.stop()
        assert sorted(clip_sets(tmp_path)) == ["c", "d"]

    def test_prune_without_a_write(self, tmp_path: Path) -> None:
        """prune() deletes expired clips on a device that records nothing new."""
        now = [0.0]
        store = ClipStore(
            tmp_path, clips_config(max_age_days=1.0), on_done=Results(), clock=lambda: now[0]
        )
        store.start()
        write_all(store, ["a"], 1.0, lambda: None)
        now[0] = 0.9 * 86400
        assert store.prune()
        write_all(store, ["b"], 1.0, lambda: None)  # the prune ran before it: "a" was young
        now[0] = 1.5 * 86400
        assert store.prune()
        store.stop()
        assert sorted(clip_sets(tmp_path)) == ["b"]
        assert store.usage().deleted == 1

    def test_free_space_floor(self, tmp_path: Path) -> None:
        """The oldest clips are deleted so that min_free_mb stays free on the filesystem."""
        capacity = 2 * MB

        def disk_usage(_directory: Path) -> tuple[int, int]:
            return capacity - du(tmp_path), capacity

        store = ClipStore(
            tmp_path, clips_config(min_free_mb=1.0), on_done=Results(), disk_usage=disk_usage
        )
        store.start()
        ids = [f"c{i}" for i in range(6)]
        write_all(store, ids, 10.0, lambda: time.sleep(0.01))  # 0.32 MB each
        store.stop()
        kept = sorted(clip_sets(tmp_path))
        assert kept == ids[-3:]  # three leave 1.04 MB free, a fourth would not
        assert capacity - du(tmp_path) >= MB

    def test_skipped_when_nothing_can_be_freed(self, tmp_path: Path) -> None:
        """A clip that cannot fit even with every clip deleted is skipped with the numbers,
        deletes nothing, is counted and logged; the store keeps going."""
        other_files = [1_800_000]

        def disk_usage(_directory: Path) -> tuple[int, int]:
            return 2 * MB - other_files[0] - du(tmp_path), 2 * MB

        results = Results()
        cfg = clips_config(min_free_mb=0.1, max_total_mb=1.0)
        store = ClipStore(tmp_path, cfg, on_done=results, disk_usage=disk_usage)
        store.start()
        with capture_logs() as logs:
            write_all(store, ["small"], 0.5, lambda: None)  # 16 kB fits
            write_all(store, ["big"], 5.0, lambda: None)  # 160 kB does not
            write_all(store, ["huge"], 40.0, lambda: None)  # more than max_total_mb
            other_files[0] = 0  # the other files were removed: clips fit again
            write_all(store, ["later"], 3.0, lambda: None)
        store.stop()
        by_id = results.by_id()
        big, huge = by_id["big"].error, by_id["huge"].error
        assert big == (
            "quota: cannot free 0.06 MB: the clip needs 0.16 MB, 0.18 MB free and clips hold "
            "0.02 MB, clips.min_free_mb is 0.1 MB"
        )
        assert by_id["big"].path is None
        assert huge == "quota: the clip needs 1.28 MB, more than clips.max_total_mb (1 MB)"
        assert by_id["later"].error is None
        assert sorted(clip_sets(tmp_path)) == ["later", "small"]
        usage = store.usage()
        assert (usage.saved, usage.skipped, usage.deleted) == (2, 2, 0)
        skipped = [e["alert_id"] for e in logs if e["event"] == "clip_skipped"]
        assert skipped == ["big", "huge"]


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB tmpfs (needs root and mount permission)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


class TestRealFilesystem:
    """On a real, nearly full filesystem, clips are skipped and reported, nothing crashes."""

    def test_full_tmpfs(self, tiny_fs: Path) -> None:
        """With other files filling the disk, a clip that cannot fit is skipped (free-space
        check); when the free-space figure lies, the real ENOSPC is reported and no part of
        the set is left; smaller clips are still saved after both."""
        (tiny_fs / "other").write_bytes(b"\0" * 1_600_000)
        clips = tiny_fs / "clips"
        results = Results()
        store = ClipStore(clips, clips_config(spectrogram=True), on_done=results)
        store.start()
        write_all(store, ["big"], 20.0, lambda: None)  # 0.64 MB of audio alone
        write_all(store, ["small"], 2.0, lambda: None)
        store.stop()
        by_id = results.by_id()
        assert (by_id["big"].error or "").startswith("quota: cannot free 0.")
        assert by_id["small"].error is None
        assert clip_sets(clips) == {"small": {".wav", ".png", ".json"}}

        # A disk_usage that says there is room: the write itself fails with ENOSPC.
        liar = ClipStore(
            clips,
            clips_config(spectrogram=True),
            on_done=results,
            disk_usage=lambda _d: (10**12, 10**12),
        )
        liar.start()
        write_all(liar, ["big2"], 20.0, lambda: None)
        write_all(liar, ["small2"], 2.0, lambda: None)
        liar.stop()
        by_id = results.by_id()
        assert "No space left on device" in (by_id["big2"].error or "")
        assert by_id["small2"].error is None
        assert sorted(clip_sets(clips)) == ["small", "small2"]
        assert (liar.usage().saved, liar.usage().skipped) == (1, 1)


CRASH_WRITER = """
import sys, numpy as np
from datetime import UTC, datetime
from pathlib import Path
from asd_edge.clips import ClipRequest, ClipStore
from asd_edge.config import ClipsConfig

import structlog, threading
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
directory = Path(sys.argv[1])
cfg = ClipsConfig(spectrogram=True, max_total_mb=8.0, min_free_mb=0.0, queue=2)
done = threading.Semaphore(0)
def on_done(result):
    print(result.error or "saved", flush=True)
    done.release()
store = ClipStore(directory, cfg, on_done=on_done)
store.start()
samples = (np.random.default_rng(0).integers(-9000, 9000, 30 * 16000) / 32768).astype(np.float32)
for i in range(10**6):
    started = datetime.fromtimestamp(1.8e9 + i, tz=UTC)
    store.submit(ClipRequest(
        alert_id=f"k{i}", monitor="pump", device_id="dev", samples=samples, sample_rate=16000,
        started_at=started, stream_start_s=0.0, pre_s=1.0, event={}, model={}, scores=[],
        path=store.planned_path("pump", f"k{i}", started)))
    done.acquire()
"""


class TestCrash:
    """A process killed with SIGKILL while writing leaves nothing that start() would not clean."""

    def test_sigkill_while_writing(self, tmp_path: Path) -> None:
        """Kill a writer of ~1 MB clips in mid-write (a .tmp file exists) a few times; after
        start() no temporary file remains and every clip on disk is whole and matches its
        sidecar."""
        directory = tmp_path / "clips"
        caught = 0
        for _attempt in range(6):
            proc = subprocess.Popen(
                [sys.executable, "-c", CRASH_WRITER, str(directory)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "saved"  # running: one clip is down
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                if any(p.name.endswith(".tmp") for p in (directory / "pump").iterdir()):
                    break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
            if any(p.name.endswith(".tmp") for p in directory.rglob("*")):
                caught += 1
            store = ClipStore(directory, ClipsConfig(spectrogram=True), on_done=Results())
            store.start()
            store.stop()
            check_whole(directory)
            if caught >= 2:
                break
        assert caught >= 1, "the writer was never killed in the middle of a write"


def check_whole(directory: Path) -> None:
    """Every file is part of a whole clip: audio + sidecar (+ picture) that agree."""
    sets = clip_sets(directory)
    assert ".tmp" not in sets and sets
    for alert_id, suffixes in sets.items():
        assert {".wav", ".json"} <= suffixes <= {".wav", ".json", ".png"}, alert_id
    for audio in directory.rglob("*.wav"):
        doc = sidecar(audio)
        data = audio.read_bytes()
        assert doc["clip"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert doc["clip"]["bytes"] == len(data)
        rate, samples = wavfile.read(audio)
        assert samples.shape[0] == round(doc["clip"]["duration_s"] * rate)
    for picture in directory.rglob("*.png"):
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
