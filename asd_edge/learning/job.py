"""The fit as a child of the daemon: ``python -m asd_edge.learning.job JOB.json``.

The daemon collects the statistics (``windows.Collector``) and saves them; this process
fits, calibrates and exports the model (``fitting.fit_recordings``) so that neither its
memory (onnx, scipy.stats, the cross-fitting arrays) nor its CPU touch the daemon: it
runs at the lowest priority, with one BLAS thread, and dies with its parent. The model
is written atomically only once it is complete, so a kill at any moment leaves no
partial model; the daemon validates it like any candidate before it runs.

``JOB.json``: ``{"data": [npz paths], "out": path, "report": path, "name", "kind",
"sample_rate", "n_mels", "window_s", "calibration": {CalibrationConfig fields},
"training": {...}, "seed"}``. Progress goes to stdout as JSON lines: ``{"progress":
0..1}``, ``{"log": "..."}``, ``{"error": "..."}``. Exit 0: the model is written; 65: the
data cannot make a model (the error says why); 70: a bug.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import resource
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

__all__ = ["EXIT_DATA", "EXIT_OK", "EXIT_SOFTWARE", "PARENT_ENV", "main"]

EXIT_OK = 0
EXIT_DATA = 65
EXIT_SOFTWARE = 70
_PR_SET_PDEATHSIG = 1
PARENT_ENV = "ASD_EDGE_LEARN_PARENT"
"""The daemon's pid, set by the daemon: a fit whose daemon died before it started stops."""


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


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Fit the job; returns the report (also written to ``job["report"]``)."""
    from ..durable import write_atomic
    from .calibration import CalibrationConfig
    from .fitting import fit_recordings
    from .recording import MARKED_PREFIX
    from .windows import features_for, load_recordings

    data = [Path(p) for p in job["data"]]
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
    usage = resource.getrusage(resource.RUSAGE_SELF)
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
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
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
    with contextlib.suppress(OSError):  # already at the lowest priority
        os.nice(19)
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
