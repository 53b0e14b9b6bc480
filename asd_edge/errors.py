"""The exception tree of asd-edge: every error the daemon raises on purpose.

Every public exception is defined here, so that a caller can catch a whole branch
and a reader sees them all at once::

    AsdEdgeError
    ├── ConfigError       the configuration is invalid (one problem per bad key)
    ├── ModelError        a model file cannot be served (names the file and the field)
    ├── Unfit             a model loads but cannot serve this input (rate, ring, scores)
    ├── AudioError        the audio input cannot be opened or stopped delivering
    │   └── AudioDecodeError  an audio file cannot be read (names the file)
    ├── OutboxError       the outbox file cannot be opened or created
    ├── FileRejected      a file not read: not a regular file, or over its size bound
    ├── CommandError      an MQTT command is malformed or cannot be carried out
    ├── Refused           a model push, rollback or file change is refused (names the field)
    ├── KeyFileError      a push key file cannot be used (names the file)
    ├── LearnError        normal sound cannot be learned: too little, or the fit failed
    └── ChildFailed       a short-lived child (a clip's picture, a key check) gave no answer

Errors that never leave the module that raises them (e.g. a corrupt SQLite file
the outbox moves aside) stay private there.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = [
    "AsdEdgeError",
    "AudioDecodeError",
    "AudioError",
    "ChildFailed",
    "CommandError",
    "ConfigError",
    "FileRejected",
    "KeyFileError",
    "LearnError",
    "ModelError",
    "OutboxError",
    "Refused",
    "Unfit",
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

    @classmethod
    def check_all(cls, *checks: Callable[[], object]) -> None:
        """Run every one of ``checks``; if any raised a ConfigError, raise one listing all
        their problems, in order (a user fixes them in one go)."""
        problems: list[str] = []
        for check in checks:
            try:
                check()
            except ConfigError as exc:
                problems.extend(exc.problems)
        if problems:
            raise cls(problems)


class ModelError(AsdEdgeError):
    """A model file cannot be served; the message names the file and the field."""

    def __init__(self, path: str, field: str, problem: str) -> None:
        self.path = path
        self.field = field
        self.problem = problem
        super().__init__(f"{path}: {field}: {problem}")


class Unfit(AsdEdgeError):
    """A model that loads but cannot serve this input; the message is one sentence
    naming the field (the rate, the window against the ring, the scores)."""


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
    create the outbox: unable to open database file``. ``salvaged`` holds what was read
    of a damaged file before no new one could be made (``mqtt.outbox.OutboxContents``),
    for the caller to keep elsewhere; None otherwise.
    """

    def __init__(self, message: str, *, salvaged: object = None) -> None:
        super().__init__(message)
        self.salvaged = salvaged


class FileRejected(AsdEdgeError, OSError):
    """A file that is not read at all: not a regular file (a FIFO would block the reader,
    ``/dev/zero`` never ends) or larger than the bound its reader sets.

    Also an OSError, so each reader reports it where it reports a file it cannot read,
    naming the file and the key; ``problem`` (and ``strerror``) say why, e.g.
    ``not a regular file (a FIFO)`` or ``too large: 2,147,483,692 bytes (at most
    32,000,000)``; ``path`` is the file (``durable.open_regular``).
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(problem)
        self.strerror = problem


class CommandError(AsdEdgeError):
    """A command is malformed or cannot be carried out; ``reason`` says why."""

    def __init__(self, reason: str, *, command: str | None = None, id: str | None = None) -> None:
        self.reason = reason
        self.command = command
        self.id = id
        super().__init__(reason)


class Refused(AsdEdgeError):
    """A model push, rollback, reset or file change is refused: the running model stays.

    ``reason`` is one sentence naming the field (and, for a file, the file). Raised
    while a request is checked; the model manager also hands refusals back to the
    daemon as values (``ModelManager.take_results``), with what they were for:
    ``monitor`` (None when the request named no known one), ``request_id`` and
    ``command`` (``model``, ``model/rollback`` or ``model/reset``; None for a file
    change) and ``source`` (``file``, ``push``, ``rollback``, ``learn`` or ``reset``;
    None until the manager knows it).
    """

    def __init__(
        self,
        reason: str,
        *,
        monitor: str | None = None,
        request_id: str | None = None,
        command: str | None = None,
        source: str | None = None,
    ) -> None:
        self.reason = reason
        self.monitor = monitor
        self.request_id = request_id
        self.command = command
        self.source = source
        super().__init__(reason)

    def __repr__(self) -> str:
        return (
            f"Refused({self.reason!r}, monitor={self.monitor!r}, request_id="
            f"{self.request_id!r}, command={self.command!r}, source={self.source!r})"
        )


class KeyFileError(AsdEdgeError):
    """A key file cannot be used; the message names the file and what is wrong with it."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class LearnError(AsdEdgeError):
    """Normal sound cannot be learned (too little usable audio, a bad parameter, an
    export that disagrees with numpy); the message is one sentence saying why."""


class ChildFailed(AsdEdgeError):
    """A short-lived child interpreter (``childproc``: a clip's picture, a push key check)
    could not start, took too long, failed or gave no usable answer; the message says
    which, with the child's last line on stderr. Nothing it was to decide is decided."""
