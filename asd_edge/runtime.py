"""Process-wide settings of the daemon's command line, applied before numpy loads."""

from __future__ import annotations

import os

__all__ = ["MATH_THREAD_VARIABLES", "pin_math_threads"]

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
