"""Learning a monitor's normal sound on the device: what the learning child costs while it
collects and while it fits, and what the tick and the running daemon pay meanwhile.

    python benchmarks/bench_learning.py [--quick] [--only fit|collect|tick|daemon|control]

Each run appends one JSON line per measurement to benchmarks/results/learning.jsonl
(about 7 minutes in all; ``--quick``: 60 s and 10 min fits, shorter collections, fewer
ticks, 30 s of learning, about 3 minutes). Run it on an otherwise idle machine. Every
job is the one ``LearnSession._job`` writes (a ``LearnSession`` built from the daemon's
defaults), and every child is launched as ``LearnSession._learn`` launches it
(``python -m asd_edge.learning.job JOB.json``, one BLAS thread, the parent's pid).

A child's own peak RSS is its VmHWM, read from /proc every 20 ms (50 ms for the
daemon's child) until it ends: ``child_vmhwm_mb``. The report's ``peak_rss_mb`` is
``ru_maxrss``, which Linux carries over an exec from the process that exec'd, and
``subprocess`` spawns with vfork: it is at least the parent's own peak (this process's,
which generates and collects audio; the daemon's, about 100 MB), so here it overstates
the child's.

``fit``: synthetic machine sound (``training.synth.Machine``) of 60 s, 10 min and 1 h is
fed in this process to a ``Collector`` built from the job's ``"collect"`` as the child
builds it (16 -> 16 kHz ``StreamResampler``, 0.5 s blocks), generated in 60 s blocks with
their own rng seed so the hour is never held in memory, and saved (``save_recordings``)
where the job says; then the child runs the fit alone from that npz (the job without
``"collect"``, its ``"data"`` plus the saved file: what the child fits once it has
collected). Recorded: the in-process feeding's wall and CPU time per second of audio;
the bytes the Collector holds (numpy data, the whole buffers its views keep alive, the
objects around them), the arrays ``recordings()`` builds and the npz's members, each
split into the statistics (they grow with the audio) and the kept audio (at most 30 s of
samples and their frames per piece, five pieces): what the child holds while it
collects; the child's report (``fit_s``, ``cpu_s``, ``peak_rss_mb``, model ``bytes``), its
VmHWM and its wall time from launch to exit.

``collect``: the child's own collection, a live job (``"collect": {"mode": "live"}``,
48 kHz capture) fed on stdin as the session's thread feeds it: 0.5 s frames (``FRAME``
header, float32 samples) of 48 kHz synthetic machine sound (five distinct 60 s blocks,
cycled). ``fast``: as fast as the child takes them, 60 s, 10 min and 1 h of audio, the
child killed once it says ``collected_done`` (the fits are measured above); ``paced``:
one frame every 0.5 s (real time) for a 60 s learning, left to fit to its end;
``fast+fit``: 1 h of sound that never repeats (``Distinct``: made here as the child reads,
so the pace is this process's), collected and fitted in the one child, whose peak is what
the unit's memory limits must hold. The
child's CPU (utime + stime) and RSS (VmRSS, VmHWM) are read from /proc when its first
frame is taken (startup: interpreter, imports, the fit's modules too) and when it says
``collected_done`` (after the npz is written); the difference is the collection's cost
per second of audio (the save included). Paced, also sampled every second.

``tick``: ``Monitor.tick`` in this process as ``bench_tick.py`` runs it (one monitor,
models/level.onnx, 16 kHz capture, one BLAS thread), with no fit running and while the
10 min fit runs as a child on the other core (whole fits, one after the other, until
the ticks are counted; only ticks that start and end while a child runs count). Three
paces: back to back (as bench_tick.py), every 20 ms and every 0.5 s (the daemon's hop:
the caches are cold at each tick, which costs about three times the back-to-back
figure whether or not a fit runs).

``daemon``: ``asd-edge run`` replaying a wav of synthetic machine sound in real time
(``input.device: "file:..."``, 16 kHz), MQTT to a private mosquitto; after 20 s
``{"id": "b1", "seconds": 120}`` goes to ``<prefix>/cmd/learn``; the daemon's RSS
(VmRSS) and CPU (utime + stime: its own threads, not the child's) are sampled every
second, and so are the learning child's (found by its parent pid: VmRSS, VmHWM, CPU),
each second filed under the state ``<prefix>/learn`` showed when it began (before,
collecting, fitting, done: a state is announced once its work is done, so the last
collecting second holds the child's save of the npz); median, max, first and last per
phase, the RSS every 10 s, the child's VmHWM, its report from the learn topic's ``fit``
field, and the daemon's own ``daemon_stats`` log records (tick p50/p95/max per minute).

``control`` (only with ``--only control``, about 3 minutes): the same daemon sampled as
long with nothing learned, to tell the learning's share of the RSS from what the daemon
does on its own in its first minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from asd_edge.runtime import pin_math_threads  # noqa: E402

pin_math_threads()  # as the asd-edge command does, before numpy loads

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from common import record, stats_us  # noqa: E402

from asd_edge.audiofile.wav import write_wav  # noqa: E402
from asd_edge.config import Config, parse_config  # noqa: E402
from asd_edge.decision import DecisionPolicy  # noqa: E402
from asd_edge.detector import Detector  # noqa: E402
from asd_edge.learning.job import FRAME, PARENT_ENV, new_collector  # noqa: E402
from asd_edge.learning.recording import Recording  # noqa: E402
from asd_edge.learning.session import LearnSession  # noqa: E402
from asd_edge.learning.windows import Collector, save_recordings  # noqa: E402
from asd_edge.monitor import Monitor  # noqa: E402
from asd_edge.resample import StreamResampler  # noqa: E402
from asd_edge.ring import RingBuffer  # noqa: E402
from devkit.broker import Broker, Subscriber  # noqa: E402
from devkit.daemonproc import DaemonProcess  # noqa: E402
from training.synth import Machine  # noqa: E402

MODEL = REPO / "models" / "level.onnx"
RATE = 16000
CAPTURE = 48000
"""The capture rate of the ``collect`` measurement (the child resamples to the model's)."""
BLOCK_S = 60
"""Synthetic audio is generated this many seconds at a time, each with its own seed."""
FEED_S = 0.5
"""Audio handed to the Collector per call, and per frame to the child (one tick's hop)."""
DEVICE = "bench"
MONITOR_NAME = "main"
PREFIX = f"asd/{DEVICE}"
CHILD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""What ``LearnSession._learn`` adds to the child's environment (and its pid)."""
SHOWN = ("fit_s", "cpu_s", "peak_rss_mb", "child_vmhwm_mb", "bytes", "child_wall_s", "chosen",
         "windows", "seconds", "predicted_fa_per_day", "warning")  # fmt: skip
"""The child's report fields kept in the results."""


def machine_sound(seconds: float, seed: int, rate: int = RATE) -> np.ndarray:
    """Normal sound of one synthetic machine (the same voice throughout)."""
    machine = Machine(machine_id=0, seed=3, sample_rate=rate)
    return machine.normal(seconds, np.random.default_rng(seed))


def commit() -> dict[str, Any]:
    """The commit measured, and whether ``asd_edge/`` differs from it."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "asd_edge_modified": bool(git("status", "--porcelain", "--", "asd_edge"))}  # fmt: skip


# --- the jobs and the child, as the session makes them ----------------------------------


def session_config(root: Path) -> Config:
    """The daemon's defaults with one monitor on the level model."""
    return parse_config(
        {"device_id": DEVICE, "state_dir": str(root / "state"),
         "monitors": [{"name": MONITOR_NAME, "model": str(MODEL)}]},
        base_dir=REPO,
    )  # fmt: skip


def session_job(root: Path, directory: Path, seconds: float, capture_rate: int) -> dict[str, Any]:
    """The job ``LearnSession._job`` writes for a new learning of ``seconds`` (live)."""
    config = session_config(root)
    session = LearnSession(
        config=config,
        monitor=config.monitors[0],
        capture_rate=capture_rate,
        seconds=seconds,
        append=False,
        request_id="b1",
        directory=directory,
        previous_data=[],
        publish=lambda _payload: None,
        submit=lambda _monitor, _model, _id: None,
        outcome=lambda: None,
        on_end=lambda _session: None,
    )
    return session._job()


def fit_only(job: dict[str, Any]) -> dict[str, Any]:
    """What the child fits once it has collected: the job without ``"collect"``, its
    ``"data"`` and the npz it saved (``job.run``)."""
    out = {k: v for k, v in job.items() if k != "collect"}
    out["data"] = [*job["data"], job["collect"]["save"]]
    return out


class Child:
    """``python -m asd_edge.learning.job`` launched as ``LearnSession._learn`` launches it;
    its output read on a thread as the session's thread reads it."""

    def __init__(
        self,
        job: dict[str, Any],
        directory: Path,
        *,
        stdin: bool = False,
        on_collected: Callable[[Child, dict[str, Any]], None] | None = None,
        watch: bool = True,
    ) -> None:
        """``watch``: read its VmHWM every 20 ms (not while ticks are timed here)."""
        path = directory / "job.json"
        path.write_text(json.dumps(job), encoding="utf-8")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "asd_edge.learning.job", str(path)],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **CHILD_ENV, PARENT_ENV: str(os.getpid())},
        )
        self.report: dict[str, Any] | None = None
        self.error: str | None = None
        self.collected = threading.Event()
        self._on_collected = on_collected
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.hwm = HwmWatch(self.proc.pid) if watch else None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stdin(self) -> IO[bytes]:
        assert self.proc.stdin is not None
        return self.proc.stdin

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("collected_done"):
                if self._on_collected is not None:
                    self._on_collected(self, msg)
                self.collected.set()
            self.report = msg.get("report", self.report)
            self.error = msg.get("error", self.error)

    def running(self) -> bool:
        return self.proc.poll() is None

    def finish(self) -> dict[str, Any]:
        """Wait for the end; the child's report and its wall time from launch to exit
        (RuntimeError if it failed)."""
        code = self.proc.wait()
        wall_s = time.perf_counter() - self.started
        self._reader.join()
        if code != 0 or self.report is None:
            raise RuntimeError(f"the learning child failed (exit {code}): {self.error}")
        out = {**self.report, "child_wall_s": round(wall_s, 2)}
        if self.hwm is not None:
            self.hwm.join()
            out["child_vmhwm_mb"] = mb(self.hwm.hwm_mb)
        return out


# --- /proc ------------------------------------------------------------------------------


def proc_sample(pid: int) -> tuple[float, float, float]:
    """(VmRSS in MB, VmHWM in MB, utime + stime in seconds) of a process; OSError once
    it is gone."""
    kb = {"VmRSS:": 0, "VmHWM:": 0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(maxsplit=1)[0] if line else ""
        if key in kb:
            kb[key] = int(line.split()[1])
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return kb["VmRSS:"] / 1024, kb["VmHWM:"] / 1024, ticks / os.sysconf("SC_CLK_TCK")


class HwmWatch:
    """A process's VmHWM (its own peak RSS), read every ``every_s`` until it ends.

    The report's ``peak_rss_mb`` is ``ru_maxrss``, which Linux carries over an exec from
    the process that exec'd: ``subprocess`` spawns with vfork, so the child's figure is at
    least its parent's own peak RSS (this process's, or the daemon's)."""

    def __init__(self, pid: int, every_s: float = 0.02) -> None:
        self.pid, self.every_s = pid, every_s
        self.hwm_mb = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                _, hwm, _ = proc_sample(self.pid)
            except (OSError, ValueError, IndexError):  # gone
                return
            if not hwm:  # a zombie: its memory is gone
                return
            self.hwm_mb = max(self.hwm_mb, hwm)
            time.sleep(self.every_s)

    def join(self) -> None:
        self._thread.join()


def learning_child(parent: int) -> int | None:
    """The pid of ``parent``'s learning child (``asd_edge.learning.job``), if it runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) != parent:
                continue
            if b"asd_edge.learning.job" in (entry / "cmdline").read_bytes():
                return int(entry.name)
        except (OSError, ValueError):
            continue
    return None


def mb(value: float) -> float:
    return round(value, 1)


# --- 1. collecting in this process, and the fit alone -----------------------------------


STATS_KEYS = ("stats_", "end_", "levels_")
"""npz members of the statistics (they grow with the audio; the rest is the kept audio)."""


def held_bytes(collector: Collector) -> dict[str, int]:
    """What the Collector's pieces hold: every array object, the whole buffers its views
    keep alive (once each), and the lists; the statistics apart from the kept audio."""
    out = {}
    for part, names in (("stats", ("stats", "levels")), ("audio", ("logmel", "kept"))):
        total, bases = 0, {}
        for piece in collector.pieces:
            for arrays in (getattr(piece, name) for name in names):
                total += sys.getsizeof(arrays)
                for a in arrays:
                    total += sys.getsizeof(a)  # with its data when it owns it
                    base = a
                    while isinstance(base.base, np.ndarray):
                        base = base.base
                    if base is not a:
                        bases[id(base)] = base.nbytes
        out[f"{part}_bytes"] = total + sum(bases.values())
    return out


def recording_bytes(recordings: list[Recording]) -> dict[str, int]:
    """The arrays ``Collector.recordings()`` builds: the statistics part (grows with the
    audio) and the audio part (at most 30 s of samples and their frames per piece)."""
    stats = sum(r.stats.nbytes + r.end_s.nbytes + r.levels_dbfs.nbytes for r in recordings)
    audio = sum(r.stream.nbytes + r.logmel.nbytes for r in recordings)
    return {"stats_bytes": stats, "audio_bytes": audio}


def npz_bytes(path: Path) -> dict[str, int]:
    """The npz's compressed members: statistics apart from the kept audio."""
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
    stats = sum(i.compress_size for i in infos if i.filename.startswith(STATS_KEYS))
    return {
        "stats_bytes": stats,
        "audio_bytes": sum(i.compress_size for i in infos) - stats,
        "file_bytes": path.stat().st_size,
    }


def collect(job: dict[str, Any], seconds: int) -> dict[str, Any]:
    """Feed ``seconds`` of synthetic 16 kHz sound to the job's Collector, in this
    process, and save it where the job says."""
    collector = new_collector(job)
    resampler = StreamResampler(RATE, int(job["sample_rate"]))
    step = round(FEED_S * RATE)
    wall_ns = cpu_ns = 0
    for i, start in enumerate(range(0, seconds, BLOCK_S)):
        audio = machine_sound(min(BLOCK_S, seconds - start), seed=100 + i)
        w0, c0 = time.perf_counter_ns(), time.process_time_ns()
        for j in range(0, audio.shape[0], step):
            collector.feed(resampler(audio[j : j + step]))
        wall_ns += time.perf_counter_ns() - w0
        cpu_ns += time.process_time_ns() - c0
    w0, c0 = time.perf_counter_ns(), time.process_time_ns()
    collector.finish()
    wall_ns += time.perf_counter_ns() - w0
    cpu_ns += time.process_time_ns() - c0
    held = held_bytes(collector)
    recordings = collector.recordings()
    parts = recording_bytes(recordings)
    npz = Path(job["collect"]["save"])
    t0 = time.perf_counter()
    size = save_recordings(npz, recordings)
    save_s = time.perf_counter() - t0
    saved = npz_bytes(npz)
    assert saved["file_bytes"] == size
    per_hour = 3600.0 / seconds
    return {
        "windows": collector.windows,
        "pieces": len(recordings),
        "skipped_s": round(collector.skipped_total_s, 1),
        "feed_wall_ms_per_audio_s": round(wall_ns / 1e6 / seconds, 3),
        "feed_cpu_ms_per_audio_s": round(cpu_ns / 1e6 / seconds, 3),
        "feed_cpu_percent_of_core": round(cpu_ns / 1e9 / seconds * 100, 3),
        "collector_held": held,
        "recordings_arrays": parts,
        "npz": saved,
        "per_hour_of_audio": {
            "collector_held_stats_bytes": round(held["stats_bytes"] * per_hour),
            "recordings_stats_bytes": round(parts["stats_bytes"] * per_hour),
            "npz_stats_bytes": round(saved["stats_bytes"] * per_hour),
        },
        "save_s": round(save_s, 3),
    }


def saved_fit_job(root: Path, seconds: int) -> tuple[dict[str, Any], Path, dict[str, Any]]:
    """A learning of ``seconds`` collected here: its fit-only job, the directory, and what
    the collection measured."""
    directory = root / f"fit-{seconds}"
    directory.mkdir()
    job = session_job(root, directory, seconds, RATE)
    collected = collect(job, seconds)
    return fit_only(job), directory, collected


def bench_fit(root: Path, seconds: int) -> tuple[dict[str, Any], dict[str, Any], Path]:
    job, directory, collected = saved_fit_job(root, seconds)
    report = Child(job, directory).finish()
    result = {
        "measurement": "fit",
        "audio_s": seconds,
        "collect_in_process": collected,
        "fit": {k: report.get(k) for k in SHOWN},
    }
    return result, job, directory


# --- 2. the child's collection ----------------------------------------------------------


def as_frames(audio: np.ndarray) -> list[bytes]:
    """48 kHz audio as the session writes it: 0.5 s frames, ``FRAME`` header and float32."""
    step = round(FEED_S * CAPTURE)
    audio = audio.astype(np.float32)
    return [
        FRAME.pack(audio[j : j + step].shape[0], 0) + audio[j : j + step].tobytes()
        for j in range(0, audio.shape[0], step)
    ]


class Cycled:
    """Frame ``i`` of ``blocks`` distinct 60 s of 48 kHz machine sound, cycled."""

    sound = "five distinct 60 s blocks of 48 kHz synthetic machine sound, cycled"

    def __init__(self, blocks: int) -> None:
        self.frames = [
            f for i in range(blocks) for f in as_frames(machine_sound(BLOCK_S, 200 + i, CAPTURE))
        ]

    def __call__(self, i: int) -> bytes:
        return self.frames[i % len(self.frames)]


class Distinct:
    """Frames of machine sound that never repeats, made on a thread while the child
    reads (16 kHz synthetic sound in 60 s blocks of their own seed, ``resample_poly``
    to 48 kHz: cheaper to make than 48 kHz synthesis, as fast as the child takes it)."""

    sound = "distinct throughout: 16 kHz synthetic machine sound upsampled to 48 kHz"

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=240)
        self._stop = threading.Event()
        threading.Thread(target=self._make, daemon=True).start()

    def _make(self) -> None:
        from scipy.signal import resample_poly

        seed = 300
        while not self._stop.is_set():
            for frame in as_frames(resample_poly(machine_sound(BLOCK_S, seed), 3, 1)):
                while not self._stop.is_set():
                    try:
                        self._queue.put(frame, timeout=0.2)
                        break
                    except queue.Full:
                        continue
            seed += 1

    def __call__(self, _i: int) -> bytes:
        return self._queue.get()

    def stop(self) -> None:
        self._stop.set()


def bench_collect(
    root: Path, seconds: int, frames: Cycled | Distinct, *, paced: bool, fit: bool
) -> dict[str, Any]:
    """A live learning of ``seconds`` fed to the child at 48 kHz, as fast as it reads or
    one frame per 0.5 s; the child killed after ``collected_done`` unless ``fit``."""
    mode = ("paced" if paced else "fast") + ("+fit" if fit else "")
    directory = root / f"collect-{seconds}-{mode}"
    directory.mkdir()
    job = session_job(root, directory, seconds, CAPTURE)
    done: dict[str, Any] = {}

    def collected(child: Child, msg: dict[str, Any]) -> None:
        done["at"], done["sample"] = time.perf_counter(), proc_sample(child.pid)
        done["msg"] = msg
        if not fit:
            child.proc.kill()  # the measurement is over; this also ends a blocked write

    child = Child(job, directory, stdin=True, on_collected=collected)
    samples: list[tuple[float, float, float, float]] = []  # (t, rss, hwm, cpu)
    sent = 0
    try:
        child.stdin.write(frames(0))  # returns once the child reads: its startup is over
        child.stdin.flush()
        sent = 1
        t0 = time.perf_counter()
        first = proc_sample(child.pid)
        samples.append((t0, *first))
        while not child.collected.is_set() and child.running():
            if paced:
                time.sleep(max(0.0, t0 + sent * FEED_S - time.perf_counter()))
                if sent % 2 == 0:
                    samples.append((time.perf_counter(), *proc_sample(child.pid)))
                if child.collected.is_set():
                    break
            child.stdin.write(frames(sent))
            child.stdin.flush()
            sent += 1
    except (BrokenPipeError, OSError):  # it stopped reading and ended (or was killed)
        pass
    finally:
        if fit and child.collected.wait(30.0):
            with contextlib.suppress(OSError):
                child.stdin.close()
    if not child.collected.wait(30.0):
        child.proc.kill()
        raise RuntimeError(f"the child did not collect: {child.error}")
    report: dict[str, Any] = {}
    if fit:
        report = child.finish()
    else:
        child.proc.wait()
    (rss0, hwm0, cpu0), (rss1, hwm1, cpu1) = first, done["sample"]
    wall_s = done["at"] - t0
    audio_s = float(done["msg"]["collected"]) - FEED_S  # after the first frame
    result: dict[str, Any] = {
        "measurement": "collect",
        "mode": mode,
        "sound": frames.sound,
        "capture_hz": CAPTURE,
        "frame_s": FEED_S,
        "audio_s": seconds,
        "frames_sent": sent,
        "collected_s": done["msg"]["collected"],
        "skipped": done["msg"].get("skipped"),
        "startup": {  # launch to the first frame read
            "wall_s": round(t0 - child.started, 2),
            "cpu_s": round(cpu0, 2),
            "rss_mb": mb(rss0),
            "hwm_mb": mb(hwm0),
        },
        "collecting": {  # first frame read to collected_done (npz written)
            "wall_s": round(wall_s, 2),
            "cpu_s": round(cpu1 - cpu0, 2),
            "cpu_ms_per_audio_s": round((cpu1 - cpu0) * 1e3 / audio_s, 3),
            "cpu_percent_of_core": round((cpu1 - cpu0) / wall_s * 100, 2),
            "audio_s_per_wall_s": round(audio_s / wall_s, 1),
            "rss_mb_at_start": mb(rss0),
            "rss_mb_at_done": mb(rss1),
            "hwm_mb_at_done": mb(hwm1),
        },
        "npz_bytes": Path(job["collect"]["save"]).stat().st_size,
    }
    if paced:
        rss = [s[1] for s in samples]
        shares = [(b[3] - a[3]) / (b[0] - a[0]) * 100 for a, b in itertools.pairwise(samples)]
        result["collecting"]["sampled"] = {
            "n": len(samples),
            "rss_mb_every_10s": [mb(v) for v in rss[::10]],
            "rss_mb_max": mb(max(rss)),
            "cpu_percent_median": round(float(np.median(shares)), 2) if shares else None,
            "cpu_percent_max": round(max(shares), 2) if shares else None,
        }
    if fit:
        result["fit"] = {k: report.get(k) for k in SHOWN}
    return result


# --- 3. the tick while a fit runs -------------------------------------------------------


class Ticker:
    """One monitor on the shipped level model, fed one hop per tick (as bench_tick.py)."""

    def __init__(self) -> None:
        detector = Detector(MODEL, threads=1)
        self.ring = RingBuffer(60 * RATE)
        self.monitor = Monitor(
            "bench", detector, DecisionPolicy(detector.threshold), self.ring, RATE, 0.5
        )
        self.hop = RATE // 2
        self.audio = (0.05 * np.random.default_rng(0).standard_normal(self.hop * 8)).astype(
            np.float32
        )
        self.i = 0
        for _ in range(4):  # fill the first window
            self.tick()

    def tick(self) -> int:
        """One hop of audio in, one tick; its duration in ns."""
        k = self.i % 8
        self.i += 1
        self.ring.write(self.audio[k * self.hop : (k + 1) * self.hop])
        t0 = time.perf_counter_ns()
        self.monitor.tick()
        return time.perf_counter_ns() - t0

    def measure(self, n: int, pace_s: float) -> list[int]:
        """``n`` ticks, ``pace_s`` apart (0: back to back)."""
        durations = []
        for _ in range(n):
            durations.append(self.tick())
            if pace_s:
                time.sleep(pace_s)
        return durations

    def measure_fits(
        self, job: dict[str, Any], directory: Path, n: int, pace_s: float
    ) -> tuple[list[int], list[float]]:
        """Ticks ``pace_s`` apart while whole fits run one after the other, until at least
        ``n`` ticks are in: only the ticks that start and end while a child runs count.
        Also each fit's CPU seconds."""
        durations: list[int] = []
        cpu_s: list[float] = []
        while len(durations) < n:
            child = Child(job, directory, watch=False)
            while child.running():
                ns = self.tick()
                if child.running():
                    durations.append(ns)
                if pace_s:
                    time.sleep(pace_s)
            cpu_s.append(child.finish()["cpu_s"])
        return durations, cpu_s


def bench_tick(
    root: Path, fit_job: tuple[dict[str, Any], Path] | None, ticks: int, paced: int, hops: int
) -> dict[str, Any]:
    """``fit_job``: the 10 min fit-only job and its directory (collected here if None)."""
    if fit_job is None:
        job, directory, _ = saved_fit_job(root, 600)
    else:
        job, directory = fit_job
    ticker = Ticker()
    results: dict[str, Any] = {
        "measurement": "tick",
        "model": MODEL.name,
        "capture_hz": RATE,
        "hop_s": 0.5,
        "threads": 1,
        "fit_audio_s": 600,
    }
    cases = (("back_to_back", ticks, 0.0), ("paced_20ms", paced, 0.02), ("paced_500ms", hops, 0.5))
    for name, n, pace in cases:
        idle = stats_us(ticker.measure(n, pace))
        busy, cpu_s = ticker.measure_fits(job, directory, n, pace)
        results[name] = {"no_fit": idle, "during_fit": stats_us(busy), "fits_cpu_s": cpu_s}
    return results


# --- 4. the daemon while it learns ------------------------------------------------------


def phase_summary(samples: list[tuple[float, ...]]) -> dict[str, Any]:
    """Samples (RSS MB, CPU % of a core[, VmHWM MB]) of one phase."""
    if not samples:
        return {"n": 0}
    rss = np.array([s[0] for s in samples])
    cpu = np.array([s[1] for s in samples])
    out = {
        "n": len(samples),
        "rss_mb_median": mb(float(np.median(rss))),
        "rss_mb_max": mb(float(rss.max())),
        "rss_mb_first": mb(float(rss[0])),
        "rss_mb_last": mb(float(rss[-1])),
        "cpu_percent_median": round(float(np.median(cpu)), 2),
        "cpu_percent_max": round(float(cpu.max()), 2),
        "cpu_percent_mean": round(float(cpu.mean()), 2),
        "rss_mb_every_10s": [mb(float(v)) for v in rss[::10]],
    }
    if len(samples[0]) > 2:
        out["hwm_mb_last"] = mb(float(samples[-1][2]))
    return out


DAEMON_STATS = ("timestamp", "tick_p50_ms", "tick_p95_ms", "tick_max_ms", "rss_mb", "cpu_percent")
"""What the daemon's ``daemon_stats`` log record says about its ticks, RSS and CPU."""


def write_config(root: Path, broker: Broker, wav: Path) -> Path:
    """Like ``tests/support/e2e.py::daemon_config``: one monitor on the level model, the
    wav replayed in real time, JSON logs."""
    data: dict[str, Any] = {
        "device_id": DEVICE,
        "state_dir": str(root / "state"),
        "input": {"device": f"file:{wav}", "sample_rate": RATE},
        "monitors": [{"name": MONITOR_NAME, "model": str(MODEL)}],
        "mqtt": {"host": broker.host, "port": broker.port},
        "logging": {"format": "json", "level": "info"},
    }
    path = root / "asd-edge.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def bench_daemon(
    root: Path, learn_s: int, before_s: float, after_s: float, *, learn: bool = True
) -> dict[str, Any]:
    """The daemon learning ``learn_s`` seconds; not ``learn``: the control, the daemon
    sampled as long with no learning (what its RSS does on its own)."""
    directory = root / ("daemon" if learn else "control")
    directory.mkdir()
    wav = directory / "machine.wav"
    total_s = before_s + learn_s + after_s + 60.0  # room for the fit and the hand-over
    # -6 dB: the level model (threshold -20 dBFS) stays quiet on the -22 dBFS machine
    write_wav(wav, 0.5 * machine_sound(total_s, seed=7), RATE)
    broker = Broker(directory / "broker")
    broker.start()
    try:
        sub = broker.subscriber(f"{PREFIX}/learn")
        daemon = DaemonProcess(
            write_config(directory, broker, wav),
            env=dict(os.environ),
            log_path=directory / "daemon.log",
        )
        try:
            daemon.wait_for("daemon_started", 30)
            if learn:
                sampled = sample_phases(daemon, broker, sub, learn_s, before_s, after_s, total_s)
            else:  # as long as a learning's run: before, collecting, ~5 s fit, after
                sampled = sample_alone(daemon, before_s + learn_s + 5.0 + after_s)
            return {
                "measurement": "daemon" if learn else "daemon_control",
                "model": MODEL.name,
                "capture_hz": RATE,
                "learn_s": learn_s if learn else 0,
                "wav_s": total_s,
                **sampled,
                "daemon_stats": [  # its own figures, logged every minute
                    {k: r.get(k) for k in DAEMON_STATS} for r in daemon.events("daemon_stats")
                ],
            }
        finally:
            code = daemon.stop()
            if code != 0:
                print(f"daemon exit {code}:\n{daemon.log_tail()}", file=sys.stderr)
    finally:
        broker.close()


def sample_alone(daemon: DaemonProcess, seconds: float) -> dict[str, Any]:
    """The daemon's RSS and CPU every second for ``seconds``, nothing asked of it."""
    samples: list[tuple[float, float]] = []
    start = prev_t = time.monotonic()
    _, _, prev_cpu = proc_sample(daemon.pid)
    while prev_t - start < seconds:
        time.sleep(max(0.0, prev_t + 1.0 - time.monotonic()))
        now = time.monotonic()
        rss, _, cpu = proc_sample(daemon.pid)
        samples.append((rss, (cpu - prev_cpu) / (now - prev_t) * 100))
        prev_cpu, prev_t = cpu, now
    return {"seconds": round(prev_t - start), "alone": phase_summary(samples)}


class ChildWatch:
    """The daemon's learning child, sampled once a second: (RSS, CPU %, VmHWM) per
    second it was seen (its CPU counted from its start the first time); its VmHWM also
    every 50 ms from then on."""

    def __init__(self, parent: int) -> None:
        self.parent = parent
        self.pid: int | None = None
        self.prev_cpu = 0.0
        self.hwm: HwmWatch | None = None

    def sample(self, elapsed_s: float) -> tuple[float, float, float] | None:
        if self.pid is None:
            self.pid = learning_child(self.parent)
            self.prev_cpu = 0.0
            if self.pid is not None:
                self.hwm = HwmWatch(self.pid, every_s=0.05)
        if self.pid is None:
            return None
        try:
            rss, hwm, cpu = proc_sample(self.pid)
        except (OSError, ValueError):  # it ended
            self.pid = None
            return None
        share = (cpu - self.prev_cpu) / elapsed_s * 100
        self.prev_cpu = cpu
        return rss, share, hwm


def sample_phases(
    daemon: DaemonProcess,
    broker: Broker,
    sub: Subscriber,
    learn_s: int,
    before_s: float,
    after_s: float,
    total_s: float,
) -> dict[str, Any]:
    """Sample the daemon (and its learning child) every second from now until
    ``after_s`` past the learning's end."""

    def state() -> dict[str, Any] | None:
        for m in reversed(sub.on(f"{PREFIX}/learn")):
            payload = json.loads(m.payload)
            if payload.get("id") == "b1":
                return dict(payload)
        return None

    def phase(sent: bool) -> str:
        last = state()
        if not sent or last is None:
            return "before"
        return str(last["state"])

    phases: dict[str, list[tuple[float, float]]] = {}
    child_phases: dict[str, list[tuple[float, float, float]]] = {}
    watch = ChildWatch(daemon.pid)
    changes: list[tuple[str, float]] = []
    start = time.monotonic()
    sent, ended_at = False, None
    prev_phase, (_, _, prev_cpu), prev_t = "before", proc_sample(daemon.pid), start
    while True:
        time.sleep(max(0.0, prev_t + 1.0 - time.monotonic()))
        now = time.monotonic()
        rss, _, cpu = proc_sample(daemon.pid)
        child = watch.sample(now - prev_t)
        current = phase(sent)
        # a second goes to the phase it began in: a state is announced once its work
        # is done (collecting ends with the child's save of the npz, fitting with the
        # install)
        share = (cpu - prev_cpu) / (now - prev_t) * 100
        phases.setdefault(prev_phase, []).append((rss, share))
        if child is not None:
            child_phases.setdefault(prev_phase, []).append(child)
        if current != prev_phase:
            changes.append((current, round(now - start, 1)))
        prev_phase, prev_cpu, prev_t = current, cpu, now
        if current in ("failed", "cancelled"):
            raise RuntimeError(f"learning {current}: {state()}\n{daemon.log_tail()}")
        if not sent and now - start >= before_s:
            broker.publish(f"{PREFIX}/cmd/learn", json.dumps({"id": "b1", "seconds": learn_s}))
            sent = True
            changes.append(("sent", round(time.monotonic() - start, 1)))
        if current == "done" and ended_at is None:
            ended_at = now
        if ended_at is not None and now - ended_at >= after_s:
            break
        if now - start > total_s:
            raise RuntimeError(f"learning did not end in {total_s:g} s: {state()}")
    last = state() or {}
    before = phases.get("before", [])
    after = phases.get("done", [])
    return {
        "phases": {name: phase_summary(s) for name, s in phases.items()},
        "child_phases": {name: phase_summary(s) for name, s in child_phases.items()},
        "child_vmhwm_mb": None if watch.hwm is None else mb(watch.hwm.hwm_mb),
        "rss_mb_done_minus_before": (
            mb(float(np.median([s[0] for s in after]) - np.median([s[0] for s in before])))
            if before and after
            else None
        ),
        "changes_at_s": changes,
        "fit": last.get("fit"),
        "learned_model": last.get("model"),
        "seconds_collected": last.get("seconds_collected"),
        "skipped": last.get("skipped"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a shorter run: 60 s and 10 min fits and collections, fewer ticks, 30 s of learning",
    )
    parser.add_argument(
        "--only",
        choices=("fit", "collect", "tick", "daemon", "control"),
        help="run one of the parts (control: the daemon sampled as long with no learning, "
        "only run when asked)",
    )
    args = parser.parse_args()
    durations = [60, 600] if args.quick else [60, 600, 3600]
    ticks, paced, hops = (1000, 200, 10) if args.quick else (5000, 1000, 60)
    learn_s, quiet_s = (30, 5.0) if args.quick else (120, 20.0)
    paced_s = 30 if args.quick else 60
    measured = commit()

    def keep(result: dict[str, Any]) -> None:
        record("learning", {**result, **measured})

    with tempfile.TemporaryDirectory(prefix="asd-bench-learn-") as tmp:
        root = Path(tmp)
        fit_job: tuple[dict[str, Any], Path] | None = None
        if args.only in (None, "fit"):
            for seconds in durations:
                result, job, directory = bench_fit(root, seconds)
                keep(result)
                if seconds == 600:
                    fit_job = (job, directory)
        if args.only in (None, "collect"):
            cycled = Cycled(5)
            for seconds in durations:
                keep(bench_collect(root, seconds, cycled, paced=False, fit=False))
            keep(bench_collect(root, paced_s, cycled, paced=True, fit=True))
            del cycled
            distinct = Distinct()
            try:  # the longest learning collected and fitted in the one child
                keep(bench_collect(root, durations[-1], distinct, paced=False, fit=True))
            finally:
                distinct.stop()
        if args.only in (None, "tick"):
            keep(bench_tick(root, fit_job, ticks, paced, hops))
        if args.only in (None, "daemon"):
            keep(bench_daemon(root, learn_s, quiet_s, quiet_s))
        if args.only == "control":
            keep(bench_daemon(root, learn_s, quiet_s, quiet_s, learn=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
