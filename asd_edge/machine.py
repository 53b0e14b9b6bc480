"""Whether the monitored machine runs: a window-level rule with hold and hysteresis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "RUNNING_MARGIN_DB",
    "STOPPED_HOLD_S",
    "STOPPING_STEP_DB",
    "MachineChange",
    "MachineState",
]

RUNNING_MARGIN_DB = 3.0
"""Hysteresis: a stopped machine counts as running again only once its windows are at
or above ``stopped_below_dbfs`` + this many dB (a level hovering at the stopped level
does not flap)."""
STOPPING_STEP_DB = 3.0
"""A window quieter than the normal range (below the model's ``level.p01``) and this many
dB under the window before it is a machine stopping, not an anomaly: the 1 s windows that
straddle a stop hold part machine, part room, and would otherwise raise an alert at every
stop (measured on the virtual microphone: a start alert 1 s into the stop, ended when the
stop was confirmed). A fault that makes the machine quieter is still alerted once its
level stops falling, one or two windows later."""
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

    def __init__(
        self,
        stopped_below_dbfs: float,
        hold_s: float,
        *,
        stopped: bool = False,
        quiet_below_dbfs: float | None = None,
    ) -> None:
        if hold_s < 0:
            raise ValueError(f"hold_s must not be negative, got {hold_s}")
        self.stopped_below_dbfs = stopped_below_dbfs
        self.quiet_below_dbfs = quiet_below_dbfs
        """Below this (the normal windows' 1st percentile), a falling window is a stop in
        progress (``STOPPING_STEP_DB``); None turns that rule off."""
        self._previous: float | None = None
        self._last: float | None = None
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
        not an anomaly, even before the hold has passed), or it is quieter than normal
        and falling by ``STOPPING_STEP_DB`` or more from the window before (a stop in
        progress; ``update`` must have been given this window first)."""
        if self._stopped or level_dbfs < self.stopped_below_dbfs:
            return True
        return (
            self.quiet_below_dbfs is not None
            and self._previous is not None
            and level_dbfs < self.quiet_below_dbfs
            and level_dbfs <= self._previous - STOPPING_STEP_DB
        )

    def update(self, level_dbfs: float, now_s: float) -> MachineChange | None:
        """Take the level of the window ending at ``now_s``; return the change, if any."""
        self._previous, self._last = self._last, level_dbfs
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
