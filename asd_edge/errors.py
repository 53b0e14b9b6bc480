"""The exception tree of asd-edge: every error the daemon raises on purpose."""

from __future__ import annotations

__all__ = [
    "AsdEdgeError",
    "AudioDecodeError",
    "AudioError",
    "ConfigError",
    "ModelError",
    "OutboxError",
]


class AsdEdgeError(Exception):
    """Base class of every error asd-edge raises on purpose."""


class ConfigError(AsdEdgeError):
    """The configuration is invalid; ``problems`` holds one line per bad key.

    Each line names the dotted path, what was expected and what was found,
    e.g. ``mqtt.port: expected an integer 1-65535, got 'abc'``.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class ModelError(AsdEdgeError):
    """A model file cannot be served; the message names the file and the field."""

    def __init__(self, path: str, field: str, problem: str) -> None:
        self.path = path
        self.field = field
        self.problem = problem
        super().__init__(f"{path}: {field}: {problem}")


class AudioError(AsdEdgeError):
    """The audio input cannot be opened or has stopped delivering samples."""


class AudioDecodeError(AudioError):
    """An audio file cannot be read; the message names the file."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class OutboxError(AsdEdgeError):
    """The outbox file cannot be opened or created, even after moving a bad one aside.

    The message names the file, e.g. ``/var/lib/asd-edge/outbox.sqlite: cannot
    create the outbox: unable to open database file``.
    """
