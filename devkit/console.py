"""The demo's terminal: step and alert lines on stdout, a playback progress bar on stderr."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["Console"]

PROGRESS_EVERY_S = 15.0
"""Without a terminal, a playback line this often instead of the bar."""


class Console:
    """Step lines and alert lines on stdout; a playback progress bar on stderr (TTY only).

    Alert lines come from paho's thread: a lock keeps lines whole, and they are
    written above the progress bar.
    """

    def __init__(self, *, quiet: bool, out: TextIO = sys.stdout) -> None:
        self.quiet = quiet
        self.out = out
        self._lock = threading.Lock()
        self._bar: Any = None
        self._step = 0

    def step(self, text: str) -> None:
        """A numbered step line (not with --quiet)."""
        self._step += 1
        self.note(f"[{self._step}] {text}")

    def note(self, text: str) -> None:
        """A line of progress (not with --quiet)."""
        if not self.quiet:
            self.say(text)

    def say(self, text: str) -> None:
        """A line that is always shown."""
        with self._lock:
            if self._bar is not None:
                self._bar.write(text, file=self.out)
            else:
                print(text, file=self.out, flush=True)

    @contextmanager
    def playback(self, total_s: float) -> Iterator[Callable[[float], None]]:
        """A progress bar of elapsed / total seconds (tqdm, stderr, TTY only; otherwise
        a line every ``PROGRESS_EVERY_S``); yields ``update(elapsed_s)``."""
        bar = None
        if not self.quiet and sys.stderr.isatty():
            try:
                from tqdm import tqdm  # type: ignore[import-untyped]

                bar = tqdm(
                    total=round(total_s, 1),
                    file=sys.stderr,
                    bar_format="  playing {n:5.1f} / {total:.1f} s |{bar}|",
                    leave=False,
                    ncols=72,
                )
            except ImportError:
                bar = None
        with self._lock:
            self._bar = bar
        next_note = PROGRESS_EVERY_S

        def update(elapsed_s: float) -> None:
            nonlocal next_note
            if bar is not None:
                with self._lock:
                    bar.n = round(min(elapsed_s, total_s), 1)
                    bar.refresh()
            elif elapsed_s >= next_note:
                self.note(f"  playing {next_note:.0f} / {total_s:.0f} s")
                next_note += PROGRESS_EVERY_S

        try:
            yield update
        finally:
            with self._lock:
                self._bar = None
            if bar is not None:
                bar.close()
