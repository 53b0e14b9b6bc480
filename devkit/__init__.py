"""Private PulseAudio and mosquitto for development, tests and the demo (not installed)."""

from __future__ import annotations

__all__ = ["DevkitError", "Unavailable"]


class DevkitError(RuntimeError):
    """A devkit service failed: it would not start, answer or play; the message says why."""


class Unavailable(DevkitError):
    """A tool a devkit service needs is not installed; the message says what to install."""
