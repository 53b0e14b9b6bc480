"""Process-wide settings of the daemon's command line, applied before numpy loads."""

from __future__ import annotations

import os
import signal
from types import FrameType

__all__ = [
    "EARLY_SIGNALS",
    "MATH_THREAD_VARIABLES",
    "hold_early_signals",
    "pin_math_threads",
    "take_early_signals",
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


EARLY_SIGNALS = (signal.SIGHUP, signal.SIGTERM)
"""What ``asd-edge run`` holds from its first instruction until the daemon's own handlers
are in place: SIGHUP (systemd's ExecReload) and SIGTERM (systemctl stop), whose default
action would otherwise kill the process while it imports numpy and loads its models."""

_held: list[signal.Signals] = []


def _hold(signum: int, _frame: FrameType | None) -> None:
    _held.append(signal.Signals(signum))


def hold_early_signals() -> None:
    """Record ``EARLY_SIGNALS`` instead of dying of them, until ``take_early_signals``."""
    for signum in EARLY_SIGNALS:
        signal.signal(signum, _hold)


def take_early_signals() -> list[signal.Signals]:
    """The signals held since ``hold_early_signals``, in order (each once); the daemon
    installs its own handlers right before it calls this."""
    taken = list(dict.fromkeys(_held))
    _held.clear()
    return taken
