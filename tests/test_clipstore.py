"""Tests of the clip store: whole clip sets on disk, sidecars, quota and age, crashes."""

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

import numpy as np
import pytest
from scipy.io import wavfile
from structlog.testing import capture_logs
from support.clips import MODEL, RATE, Results, clips_config, ints, pcm, sidecar

from asd_edge.clips import ClipRequest, ClipResult, found_clip, saved_clip
from asd_edge.clips.retention import MB
from asd_edge.clips.writer import WORKER_NICE, ClipStore, encode_audio
from asd_edge.config import ClipsConfig


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

    def test_usage_for_the_health_topic(self, tmp_path: Path) -> None:
        """usage().as_dict() is JSON with the sizes, counters, last error and the free space
        of the clips' filesystem in MB."""
        store = ClipStore(
            tmp_path / "clips",
            clips_config(queue=1),
            on_done=Results(),
            disk_usage=lambda _d: (1_234_567_890, 2_000_000_000),
        )
        assert store.submit(request(store, "a1", 1.0))
        assert not store.submit(request(store, "a2", 1.0))
        store.start()
        store.stop()
        assert json.loads(json.dumps(store.usage().as_dict())) == {
            "bytes": du(tmp_path / "clips"),
            "files": 2,
            "clips": 1,
            "saved": 1,
            "skipped": 1,
            "deleted": 0,
            "last_error": "queue full (1 clips waiting)",
            "free_mb": 1234.57,
        }

    def test_usage_reads_the_real_free_space(self, tmp_path: Path) -> None:
        """By default free_mb is the filesystem's free space (statvfs), null while the clips
        directory does not exist."""
        store = ClipStore(tmp_path / "clips", clips_config(), on_done=Results())
        assert store.usage().free_mb is None
        (tmp_path / "clips").mkdir()
        free_mb = store.usage().free_mb
        st = os.statvfs(tmp_path)
        assert free_mb is not None and free_mb > 0
        total_mb = st.f_blocks * st.f_frsize / MB
        assert abs(free_mb - st.f_bavail * st.f_frsize / MB) <= max(1.0, 0.01 * total_mb)

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
            from asd_edge.clips.writer import ClipStore
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


class TestFoundAtRestart:
    """What a restart finds of the clip an alert names (for the ends a killed daemon left)."""

    @staticmethod
    def written(directory: Path, alert_id: str, seconds: float) -> tuple[ClipResult, Path]:
        """One clip written whole by the store (picture included): its result and audio."""
        results = Results()
        store = ClipStore(directory, clips_config(spectrogram=True), on_done=results)
        store.start()
        write_all(store, [alert_id], seconds, lambda: None)
        store.stop()
        written = results.by_id()[alert_id]
        assert written.path is not None
        return written, written.path

    def test_a_saved_clip_is_found_with_its_facts(self, tmp_path: Path) -> None:
        """A clip written whole is found with the path, duration, sha256 and size the
        writer reported, and an end alert naming it says ``saved``."""
        written, audio = self.written(tmp_path, "whole", 2.0)
        assert saved_clip(audio) == written
        end = {"id": "whole", "phase": "end", "clip": {"path": str(audio)}}
        assert found_clip(end)["clip"] == {
            "path": str(audio),
            "status": "saved",
            "duration_s": 2.0,
            "sha256": written.sha256,
            "bytes": written.bytes,
        }

    def test_audio_whose_sidecar_was_cut_off_is_found_recovered(self, tmp_path: Path) -> None:
        """A WAV written just before a SIGKILL took its sidecar: after start() (which rebuilds
        the sidecar) the end alert says ``saved`` and ``recovered``, not ``lost``."""
        written, audio = self.written(tmp_path, "cut", 1.5)
        for suffix in (".json", ".png"):  # the kill came between the audio and the rest
            audio.with_suffix(suffix).unlink()
        restarted = ClipStore(tmp_path, clips_config(), on_done=Results())
        restarted.start()
        restarted.stop()
        end = {"id": "cut", "phase": "end", "clip": {"path": str(audio)}}
        assert found_clip(end)["clip"] == {
            "path": str(audio),
            "status": "saved",
            "duration_s": 1.5,
            "sha256": written.sha256,
            "bytes": written.bytes,
            "recovered": True,
        }

    def test_a_damaged_sidecar_does_not_hide_the_audio(self, tmp_path: Path) -> None:
        """A sidecar that is not a clip's JSON: the audio is still found, with its size
        (unreadable JSON falls back to the facts of the audio file itself)."""
        _written, audio = self.written(tmp_path, "odd", 1.0)
        audio.with_suffix(".json").write_text("[1, 2]")
        assert found_clip({"id": "odd", "clip": {"path": str(audio)}})["clip"] == {
            "path": str(audio),
            "status": "saved",
            "duration_s": 0.0,
            "sha256": None,
            "bytes": audio.stat().st_size,
        }
        audio.with_suffix(".json").write_text("{not json")
        found = saved_clip(audio)
        assert found is not None and found.duration_s == 1.0 and found.recovered

    def test_sidecar_fields_of_the_wrong_type_do_not_stop_a_restart(self, tmp_path: Path) -> None:
        """A sidecar whose fields are not numbers (damaged, or written by hand): the clip is
        still found, the odd fields read as unknown (once, this raised and the daemon's
        start failed on every restart)."""
        _written, audio = self.written(tmp_path, "typo", 1.0)
        odd = {"clip": {"duration_s": "n/a", "bytes": [1], "sha256": 7}}
        audio.with_suffix(".json").write_text(json.dumps(odd))
        assert found_clip({"id": "typo", "clip": {"path": str(audio)}})["clip"] == {
            "path": str(audio),
            "status": "saved",
            "duration_s": 0.0,
            "sha256": None,
            "bytes": audio.stat().st_size,
        }

    def test_a_clip_never_written_is_lost(self, tmp_path: Path) -> None:
        """No audio at the path (the daemon died while recording it): ``lost``, with the path;
        a sidecar or picture without audio does not count."""
        path = tmp_path / "pump" / "20270101T000000Z_gone.wav"
        path.parent.mkdir()
        path.with_suffix(".json").write_text("{}")
        assert saved_clip(path) is None
        clip = found_clip({"id": "gone", "clip": {"path": str(path), "status": "recording"}})
        assert clip["clip"]["status"] == "lost" and clip["clip"]["path"] == str(path)


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
