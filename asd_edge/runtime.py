"""Process-wide settings of the daemon's command line, applied before numpy and onnxruntime
load, and the facts of the host it runs on."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType

__all__ = [
    "EARLY_SIGNALS",
    "MATH_THREAD_VARIABLES",
    "RELEASE_EVERY_S",
    "TELEMETRY_SWITCHES",
    "MemoryRelease",
    "hold_early_signals",
    "host_device_id",
    "install_signal_handlers",
    "opt_out_of_telemetry",
    "pin_math_threads",
    "release_free_memory",
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


RELEASE_EVERY_S = 60.0
"""The longest the daemon goes without giving the free memory inside glibc's heaps back
to the system (``MemoryRelease``)."""
_malloc_trim: Callable[[int], int] | None = None
_no_malloc_trim = False


def release_free_memory() -> bool:
    """Give the free pages inside glibc's heaps back to the system (``malloc_trim(0)``);
    False outside glibc.

    A clip written, a model pushed or a learning run frees its memory in the middle of
    the heaps (the clip writer's and the model worker's arena above all), where glibc keeps
    it resident: the trim threshold only returns free memory at a heap's top. Called
    after such work (``MemoryRelease``), this takes 2.5-2.8 MB off the daemon's RSS after
    events and pushes, in 0.2-0.5 ms (measured in the daemon over the scenario of
    benchmarks/bench_cost.py)."""
    global _malloc_trim, _no_malloc_trim
    if _no_malloc_trim:
        return False
    if _malloc_trim is None:
        try:
            trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc: not looked for again
            _no_malloc_trim = True
            return False
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
        _malloc_trim = trim
    _malloc_trim(0)
    return True


class MemoryRelease:
    """When the daemon gives free memory back (``release_free_memory``): at the loop's
    first wake after work that freed some (``after_work``, from any thread: a clip
    written, a model swapped) and at least every ``every_s``. ``poll`` runs on the tick's
    thread between ticks: a trim, which locks each heap in turn, never runs in the middle
    of a tick, and it adds no wake of its own."""

    def __init__(
        self, release: Callable[[], object] = release_free_memory, *, every_s: float | None = None
    ) -> None:
        self._release = release
        self.every_s = RELEASE_EVERY_S if every_s is None else every_s
        self._soon = threading.Event()
        self._next: float | None = None
        self.releases = 0
        """Releases done so far."""

    def after_work(self) -> None:
        """Work that freed memory just ended: release at the next ``poll``."""
        self._soon.set()

    def poll(self, now: float) -> bool:
        """Release if work ended since the last release or ``every_s`` has passed (the
        first call starts the interval); True if it did."""
        if self._next is None:
            self._next = now + self.every_s
        if not self._soon.is_set() and now < self._next:
            return False
        self._soon.clear()
        self._release()
        self.releases += 1
        self._next = now + self.every_s
        return True


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
