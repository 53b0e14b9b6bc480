"""Process-wide settings of the daemon's command line, applied before numpy and onnxruntime
load, and the facts of the host it runs on."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
from collections.abc import Callable
from types import FrameType

__all__ = [
    "EARLY_SIGNALS",
    "MATH_THREAD_VARIABLES",
    "TELEMETRY_SWITCHES",
    "hold_early_signals",
    "host_device_id",
    "install_signal_handlers",
    "opt_out_of_telemetry",
    "pin_math_threads",
    "tune_malloc",
]

MATH_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Environment variables that size the BLAS/OpenMP thread pools of numpy and scipy."""


def pin_math_threads() -> None:
    """One BLAS thread unless the environment says otherwise.

    The daemon multiplies small matrices every hop; worker threads only add
    jitter (benchmarks/bench_tick.py: the tick's worst case falls from ~9.6 ms to
    ~0.8 ms). Must run before numpy is first imported to take effect.
    """
    for variable in MATH_THREAD_VARIABLES:
        os.environ.setdefault(variable, "1")


MALLOC_ARENAS = 2
"""glibc malloc arenas (``M_ARENA_MAX``; glibc's default is 8 per core): each thread that
allocates (the clip writer, the model worker, the learning session, the MQTT link) would
otherwise get an arena of its own, whose freed memory stays in the process."""
MMAP_THRESHOLD_BYTES = 1 << 20
"""Allocations of at least 1 MiB (a long clip, a pushed model, learning buffers) are
mappings of their own, returned to the system when freed (``M_MMAP_THRESHOLD``). Fixed,
it stops glibc's dynamic threshold from rising to the largest block ever freed, after
which such blocks stay in the heap. Not lower: at 128 kB every tick mapped and unmapped
its feature arrays (the tick's median 0.25 -> 0.69 ms, bench_tick.py)."""
TRIM_THRESHOLD_BYTES = 4 << 20
"""Free memory at the top of the heap is given back once it exceeds 4 MiB
(``M_TRIM_THRESHOLD``): more than a tick's arrays, so a tick does not give back what the
next one takes again (with the default 128 kB the tick cost almost twice as much)."""
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_malloc() -> dict[str, int]:
    """Keep a months-long process's memory flat: ``MALLOC_ARENAS`` arenas, a fixed mmap
    threshold and a trim threshold (measured in benchmarks/bench_cost.py and
    bench_tick.py). A setting already given in the environment (``MALLOC_ARENA_MAX``,
    ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) is left as it is; outside
    glibc nothing is done. Returns what was set."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no mallopt: not glibc
        return {}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done: dict[str, int] = {}
    for variable, param, value in (
        ("MALLOC_ARENA_MAX", _M_ARENA_MAX, MALLOC_ARENAS),
        ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        ("MALLOC_TRIM_THRESHOLD_", _M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
    ):
        if variable not in os.environ and mallopt(param, value) == 1:
            done[variable] = value
    return done


TELEMETRY_SWITCHES = {"ORT_DISABLE_TELEMETRY": "1"}
"""Environment variables that keep the libraries the daemon loads from collecting usage
data: onnxruntime's 1DS telemetry (a device id in ``~/.cache`` and an uploader) is off
when ``ORT_DISABLE_TELEMETRY`` is 1 as it is imported (``asd_edge.onnxrt``)."""


def opt_out_of_telemetry() -> None:
    """Turn the libraries' telemetry off (``TELEMETRY_SWITCHES``) unless the environment
    already says otherwise. Must run before onnxruntime is first imported to take effect."""
    for variable, value in TELEMETRY_SWITCHES.items():
        os.environ.setdefault(variable, value)


EARLY_SIGNALS = (signal.SIGHUP, signal.SIGTERM)
"""What ``asd-edge run`` holds from its first instruction until the daemon's own handlers
are in place: SIGHUP (systemd's ExecReload) and SIGTERM (systemctl stop), whose default
action would otherwise kill the process while it imports numpy and loads its models."""

_held: list[signal.Signals] = []


def _hold(signum: int, _frame: FrameType | None) -> None:
    _held.append(signal.Signals(signum))


def hold_early_signals() -> None:
    """Record ``EARLY_SIGNALS`` instead of dying of them, until ``install_signal_handlers``."""
    for signum in EARLY_SIGNALS:
        signal.signal(signum, _hold)


def install_signal_handlers(
    stop: Callable[[str], None], reload: Callable[[], None]
) -> list[signal.Signals]:
    """SIGTERM and SIGINT call ``stop`` with the signal's name, SIGHUP calls ``reload``
    (both must only set flags: they run in a signal handler). Then the signals held
    since ``hold_early_signals`` are acted on the same way, in order, each once; they
    are returned, for the log."""

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: reload())
    early = list(dict.fromkeys(_held))
    _held.clear()
    for signum in early:
        if signum == signal.SIGHUP:
            reload()
        else:
            stop(signum.name)
    return early


def host_device_id() -> str:
    """The device id a configuration without one gets: the host name, each character
    outside ``[A-Za-z0-9_-]`` made ``-``, at most 64 characters (``asd-edge`` if empty)."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64]
    return host or "asd-edge"
