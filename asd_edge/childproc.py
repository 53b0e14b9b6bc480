"""Work done by a short-lived child Python process, so that the daemon never loads what
only rare work needs: Pillow for a clip's picture (``clips.painter``), ``cryptography`` for
a push's signature (``modelstore.devicekey``). Python cannot unload a module, and each
of these would stay in the daemon's memory for good from its first use."""

from __future__ import annotations

import subprocess
import sys

from .errors import ChildFailed

__all__ = ["run_python"]


def run_python(code: str, stdin: bytes, *, timeout_s: float, what: str) -> bytes:
    """Run ``code`` in a new interpreter (``sys.executable -c``) with ``stdin``; its stdout.
    ChildFailed naming ``what`` when it cannot start, runs over ``timeout_s`` (then it is
    killed) or exits with a non-zero status."""
    try:
        done = subprocess.run(
            [sys.executable, "-P", "-c", code],  # -P: nothing from the working directory
            input=stdin,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ChildFailed(f"{what} took over {timeout_s:g} s") from None
    except OSError as exc:
        raise ChildFailed(f"{what} could not start: {exc}") from None
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ChildFailed(
            f"{what} failed: {lines[-1] if lines else f'exit status {done.returncode}'}"
        )
    return done.stdout
