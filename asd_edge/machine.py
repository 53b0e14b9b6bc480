"""Whether the monitored machine runs: a window-level rule with hold and hysteresis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["RUNNING_MARGIN_DB", "STOPPED_HOLD_S", "MachineChange", "MachineState"]

RUNNING_MARGIN_DB = 3.0
"""Hysteresis: a stopped machine counts as running again only once its windows are at
or above ``stopped_below_dbfs`` + this many dB (a level hovering at the stopped level
does not flap)."""
STOPPED_HOLD_S = 2.0
"""Default of ``monitors[].stopped_hold_s``: how long the windows must stay on the other
side of the level before the state changes."""

MachineStateName = Literal["running", "stopped"]


@dataclass(frozen=True, slots=True)
class MachineChange:
    """The machine was judged stopped, or running again. Times are the caller's (stream
    seconds of window ends, like ``Decision``)."""

    state: MachineStateName
    """The new state."""
    at_s: float
    """When the change was decided (end of the window that completed the hold)."""
    since_s: float
    """End of the first window of the run that led to it (``at_s - since_s >= hold_s``)."""
    level_dbfs: float
    """The level of the window that decided it."""
    limit_dbfs: float
    """The level it crossed: ``stopped_below_dbfs`` for a stop, that plus
    ``RUNNING_MARGIN_DB`` for a restart."""


class MachineState:
    """A monitor's machine state, fed ``(window level, now)`` once per window; no clock.

    Starts ``running`` (a daemon that starts beside a stopped machine says so after
    ``hold_s``; meanwhile quiet windows are not anomalous anyway: ``suppresses``).
    ``running`` → ``stopped`` once every window for ``hold_s`` was below
    ``stopped_below_dbfs``; ``stopped`` → ``running`` once every window for ``hold_s``
    was at or above ``stopped_below_dbfs + RUNNING_MARGIN_DB``. A window on the other
    side restarts the count.
    """

    def __init__(self, stopped_below_dbfs: float, hold_s: float, *, stopped: bool = False) -> None:
        if hold_s < 0:
            raise ValueError(f"hold_s must not be negative, got {hold_s}")
        self.stopped_below_dbfs = stopped_below_dbfs
        self.running_from_dbfs = stopped_below_dbfs + RUNNING_MARGIN_DB
        self.hold_s = hold_s
        self._stopped = stopped
        self._since: float | None = None

    @property
    def stopped(self) -> bool:
        """Whether the machine is judged stopped now."""
        return self._stopped

    @property
    def state(self) -> MachineStateName:
        """``running`` or ``stopped``."""
        return "stopped" if self._stopped else "running"

    def suppresses(self, level_dbfs: float) -> bool:
        """Whether a window at this level must not count as anomalous: the machine is
        stopped, or this window is below the stopped level (a machine spinning down is
        not an anomaly, even before the hold has passed)."""
        return self._stopped or level_dbfs < self.stopped_below_dbfs

    def update(self, level_dbfs: float, now_s: float) -> MachineChange | None:
        """Take the level of the window ending at ``now_s``; return the change, if any."""
        if self._stopped:
            toward = level_dbfs >= self.running_from_dbfs
        else:
            toward = level_dbfs < self.stopped_below_dbfs
        if not toward:
            self._since = None
            return None
        if self._since is None:
            self._since = now_s
        if now_s - self._since < self.hold_s:
            return None
        since, self._since = self._since, None
        self._stopped = not self._stopped
        return MachineChange(
            state=self.state,
            at_s=now_s,
            since_s=since,
            level_dbfs=level_dbfs,
            limit_dbfs=self.stopped_below_dbfs if self._stopped else self.running_from_dbfs,
        )
