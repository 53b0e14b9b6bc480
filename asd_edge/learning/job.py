"""The learning as a child of the daemon: ``python -m asd_edge.learning.job JOB.json``.

Everything that costs memory or CPU happens here, never in the daemon: turning the live
audio into the kind's statistics (``windows.Collector``), saving them, the fit, the
calibration and the export (``fitting.fit_recordings``). The child runs at the lowest
priority with one BLAS thread and dies with its parent; the model is written atomically
only once it is complete, so a kill at any moment leaves no partial model, and the
daemon validates it like any candidate before it runs.

``JOB.json``: the fit (``"data"``: earlier ``.npz`` files, ``"out"``, ``"report"``,
``"name"``, ``"kind"``, ``"sample_rate"``, ``"n_mels"``, ``"window_s"``,
``"calibration"``: CalibrationConfig fields, ``"training"``, ``"seed"``) and what to
collect first, ``"collect"``:

- ``{"mode": "live", "seconds", "capture_rate", "source", "piece_s", "silence_dbfs",
  "clipping_ratio", "hop_s", "save"}``: capture audio arrives on stdin in frames (a
  header ``<II``: samples that follow as float32, samples lost before them); collection
  ends once ``seconds`` of usable sound are in, or fails once the skipped audio passes
  half of it; the statistics go to ``save``;
- ``{"mode": "clip", "path", "source", ..., "save"}``: a false alarm's clip, read here.

Progress goes to stdout as JSON lines: ``{"collected", "skipped"}``, ``{"collected_done"}``,
``{"progress": 0..1}`` (the fit), ``{"log"}``, ``{"error"}``, ``{"done", "report"}``.
Exit 0: the model is written; 65: the sound cannot make a model (the error says why);
70: a bug.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import resource
import signal
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:  # the child loads numpy and the windows only once it runs
    from .windows import Collector

__all__ = ["EXIT_DATA", "EXIT_OK", "EXIT_SOFTWARE", "FRAME", "PARENT_ENV", "main"]

EXIT_OK = 0
EXIT_DATA = 65
EXIT_SOFTWARE = 70
_PR_SET_PDEATHSIG = 1
PARENT_ENV = "ASD_EDGE_LEARN_PARENT"
"""The daemon's pid, set by the daemon: a child whose daemon died before it started stops."""
FRAME = struct.Struct("<II")
"""A live frame's header: float32 samples that follow, samples lost before them."""
MOSTLY_BAD = 0.5
"""Collection fails once the skipped audio passes this share of the audio asked for."""
PROGRESS_EVERY_S = 1.0


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _die_with_parent() -> bool:
    """SIGKILL this process when its parent (the daemon) dies (Linux ``prctl``); False
    when the parent named by ``PARENT_ENV`` is already gone (it died while this process
    started, before the request could take effect)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the daemon kills it on its way out
        pass
    parent = os.environ.get(PARENT_ENV)
    return parent is None or str(os.getppid()) == parent


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM), MB; None where /proc has none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        part = stream.read(n - len(data))
        if not part:
            return None
        data += part
    return data


def new_collector(job: dict[str, Any]) -> Collector:
    """The Collector ``job["collect"]`` describes, begun on its source."""
    from .windows import Collector, features_for

    spec = job["collect"]
    collector = Collector(
        features_for(int(job["sample_rate"]), float(job["window_s"]), int(job["n_mels"])),
        float(job["window_s"]),
        float(spec["hop_s"]),
        piece_s=spec.get("piece_s"),
        silence_dbfs=float(spec["silence_dbfs"]),
        clipping_ratio=float(spec["clipping_ratio"]),
    )
    collector.begin(str(spec["source"]))
    return collector


def collect(job: dict[str, Any], stdin: BinaryIO) -> Path:
    """Collect what ``job["collect"]`` says; the saved statistics. LearnError when the
    input is unusable for most of the period, or ends before enough sound is in."""
    import numpy as np

    from ..errors import AudioDecodeError, LearnError
    from ..resample import StreamResampler
    from .windows import save_recordings

    spec = job["collect"]
    rate = int(job["sample_rate"])
    c = new_collector(job)
    if spec["mode"] == "clip":
        from ..audiofile import open_audio, to_mono

        try:
            with open_audio(spec["path"]) as reader:
                resampler = StreamResampler(reader.sample_rate, rate)
                for block in reader.blocks():
                    c.feed(resampler(to_mono(block, None)))
                c.feed(resampler.flush())
        except AudioDecodeError as exc:
            raise LearnError(f"the clip cannot be read: {exc}") from None
    else:
        wanted, capture = float(spec["seconds"]), int(spec["capture_rate"])
        resampler = StreamResampler(capture, rate)
        last = 0.0
        while c.seconds < wanted:
            head = _read_exactly(stdin, FRAME.size)
            if head is None:
                raise LearnError("the daemon stopped sending audio")
            count, lost = FRAME.unpack(head)
            raw = _read_exactly(stdin, 4 * count) if count else b""
            if raw is None:
                raise LearnError("the daemon stopped sending audio")
            if lost:
                c.skipped_s["input_lost"] = c.skipped_s.get("input_lost", 0.0) + lost / capture
                resampler.reset()
                c.gap()
            if count:
                c.feed(resampler(np.frombuffer(raw, dtype=np.float32)))
            if c.skipped_total_s > MOSTLY_BAD * wanted:
                shown = ", ".join(
                    f"{k} {v:.0f} s" for k, v in sorted(c.skipped_s.items(), key=lambda i: -i[1])
                )
                raise LearnError(
                    f"the input was unusable for most of the period ({shown}): "
                    f"{c.seconds:.0f} s of usable sound of {wanted:g} s asked for; "
                    "the model that runs now keeps running"
                )
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                _emit(collected=round(c.seconds, 1), skipped=c.skipped_s)
        with contextlib.suppress(OSError):  # the daemon's next write fails: it stops feeding
            stdin.close()
    recordings = c.recordings()
    if not recordings:
        raise LearnError("no usable window of sound")
    save = Path(spec["save"])
    save_recordings(save, recordings)
    _emit(collected_done=True, collected=round(c.seconds, 1), skipped=c.skipped_s)
    return save


def run(job: dict[str, Any], stdin: BinaryIO | None = None) -> dict[str, Any]:
    """Collect (if the job says so) and fit; returns the report (also written to
    ``job["report"]``)."""
    data = [Path(p) for p in job["data"]]
    if job.get("collect"):  # before the fit's imports (onnx, onnxruntime, scipy.stats)
        data.append(collect(job, stdin or sys.stdin.buffer))
    from ..durable import write_atomic
    from .calibration import CalibrationConfig
    from .fitting import fit_recordings
    from .recording import MARKED_PREFIX
    from .windows import features_for, load_recordings

    everything = [r for path in data for r in load_recordings(path)]
    recordings = [r for r in everything if not r.source.startswith(MARKED_PREFIX)]
    marked = [r for r in everything if r.source.startswith(MARKED_PREFIX)]
    window_s = float(job["window_s"])
    features = features_for(int(job["sample_rate"]), window_s, int(job["n_mels"]))
    learned = fit_recordings(
        recordings,
        kind=str(job["kind"]),
        params={"n_mels": int(job["n_mels"])},
        features=features,
        window_s=window_s,
        config=CalibrationConfig(**job["calibration"]),
        name=str(job["name"]),
        data_sha256=_sha256(data),
        training=dict(job.get("training", {})),
        pieces=True,
        seed=int(job.get("seed", 0)),
        progress=lambda done, total: _emit(progress=round(done / total, 4)),
        log=lambda line: _emit(log=line),
        marked=marked,
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)  # CPU only: ru_maxrss counts the
    # parent's peak in a child it vforked; the kernel's own high-water mark does not
    report = {
        "name": learned.metadata["name"],
        "version": learned.metadata["version"],
        "chosen": learned.chosen.name,
        "threshold": learned.threshold,
        "predicted_fa_per_day": learned.calibration.get("predicted_fa_per_day"),
        "injected_recall_mean": learned.calibration.get("injected_recall_mean"),
        "windows": learned.windows,
        "seconds": round(learned.seconds, 1),
        "sources": learned.sources,
        "warning": learned.warning,
        "fit_s": round(learned.fit_s, 2),
        "bytes": len(learned.onnx),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": _peak_rss_mb(),
        "data": [str(p) for p in data],
        "marked": {
            r.source: round(float(learned.model.score_of(r.stats)[0].max()), 4) for r in marked
        },
    }
    write_atomic(Path(job["out"]), learned.onnx, mode=0o600)
    write_atomic(Path(job["report"]), json.dumps(report).encode(), mode=0o600)
    return report


def main(argv: list[str] | None = None) -> int:
    """Run one job file; the exit code says how it ended (see the module doc)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(__doc__)
        return EXIT_OK if args and args[0] in ("-h", "--help") else 2
    if not _die_with_parent():
        return EXIT_SOFTWARE
    try:
        os.nice(19)
    except OSError as exc:  # a system call filter that denies it: say so, go on
        _emit(log=f"cannot lower the priority ({exc.strerror or exc}): running at normal priority")
    from ..errors import LearnError

    try:
        job = json.loads(Path(args[0]).read_text(encoding="utf-8"))
        report = run(job)
    except LearnError as exc:
        _emit(error=str(exc))
        return EXIT_DATA
    except Exception as exc:  # the boundary: the daemon reports it
        _emit(error=f"internal error: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        return EXIT_SOFTWARE
    _emit(done=True, report=report)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
