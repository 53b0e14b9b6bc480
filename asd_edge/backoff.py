"""Capped, doubling, jittered delays between retries of a long-lived resource."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Capped exponential delays with jitter: 1 s, 2 s, 4 s ... ``max_s``, each ±``jitter``."""

    def __init__(
        self,
        initial_s: float = 1.0,
        max_s: float = 60.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max(max_s, 0.0)
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.attempts = 0
        """Delays handed out since the last ``reset``."""

    def next_delay(self) -> float:
        """The delay before the next attempt (never above ``max_s``)."""
        base = min(self.initial_s * 2.0 ** min(self.attempts, 62), self.max_s)
        self.attempts += 1
        return min(base * self._rng.uniform(1.0 - self.jitter, 1.0 + self.jitter), self.max_s)

    def reset(self) -> None:
        """Start again from ``initial_s`` (after a success)."""
        self.attempts = 0
