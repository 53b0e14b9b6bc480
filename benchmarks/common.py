"""Shared helpers of the benchmarks: timing statistics, machine description, results file."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def stats_us(durations_ns: list[int] | np.ndarray) -> dict[str, float]:
    """Median, p95, p99 and max of durations, in microseconds."""
    us = np.asarray(durations_ns, dtype=np.float64) / 1e3
    return {
        "n": int(us.size),
        "median_us": round(float(np.median(us)), 2),
        "p95_us": round(float(np.percentile(us, 95)), 2),
        "p99_us": round(float(np.percentile(us, 99)), 2),
        "max_us": round(float(us.max()), 2),
    }


def record(name: str, results: dict[str, Any]) -> Path:
    """Append one JSON line (machine + results) to ``results/<name>.jsonl``; print it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    entry = {"benchmark": name, "machine": machine(), "results": results}
    path = RESULTS / f"{name}.jsonl"
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
    print(json.dumps(entry, indent=2))
    return path
