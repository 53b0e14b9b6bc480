"""The device's push key as the daemon holds it: its raw 32 bytes, with every use of
``cryptography`` in a short-lived child process.

``cryptography`` adds about 8 MB to a process from its first use, for good. A device
checks a signature a few times a month (a push, a rollback, a reset), so the daemon reads
its key file and checks each signature in a child (``python`` running ``main``: about
0.1 s) and never loads ``cryptography`` itself. The child uses the same code as the
workstation (``keyfiles.load_public_key``, ``Ed25519PublicKey.verify``).

The child reads one JSON object on stdin and writes one on stdout:
``{"op": "load", "path": P}`` -> ``{"raw": HEX}`` or ``{"problem": TEXT}``;
``{"op": "verify", "raw": HEX, "signature": B64, "data": B64}`` -> ``{"valid": BOOL}``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Final

from ..childproc import run_python
from ..errors import ChildFailed, KeyFileError

__all__ = ["CHILD_TIMEOUT_S", "VERIFY_TIMEOUT_S", "DeviceKey", "load_device_key", "main"]

CHILD_TIMEOUT_S: Final = 5.0
"""The longest the child reading the key file may take (it answers in about 0.1 s). A
reload reads the key on the tick thread, so ``LOAD_ATTEMPTS`` of these stay well under
the unit's ``WatchdogSec`` (30 s)."""
VERIFY_TIMEOUT_S: Final = 20.0
"""The longest a signature check may take: it runs on the model worker thread, where no
watchdog waits, and a refusal on a slow cold start would make the sender push again."""
CHILD_NICE: Final = 10
"""The child's niceness: a key check yields the CPU to the tick."""
LOAD_ATTEMPTS: Final = 3
"""Tries to read the key file in a child before saying it cannot be checked now (a child
that cannot start at boot, on a loaded board, is worth another try)."""
_CHILD: Final = (
    f"import os, sys; os.nice({CHILD_NICE}); from {__name__} import main; sys.exit(main())"
)
_REQUEST_MAX_BYTES: Final = 1 << 16
_loaded: dict[tuple[str, int, int, int, int, int], DeviceKey] = {}


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """An Ed25519 public key (``push.key_file``) as the daemon holds it."""

    raw: bytes
    """The raw 32-byte public key."""
    path: str
    """The file it came from."""

    @property
    def key_id(self) -> str:
        """First 16 hex digits of the sha256 of the raw key (as ``keyfiles.key_id``)."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is this key's Ed25519 signature of ``data`` (checked in a
        child); ChildFailed when the child cannot answer."""
        answer = _ask(
            {
                "op": "verify",
                "raw": self.raw.hex(),
                "signature": base64.b64encode(signature).decode("ascii"),
                "data": base64.b64encode(data).decode("ascii"),
            },
            VERIFY_TIMEOUT_S,
        )
        valid = answer.get("valid")
        if not isinstance(valid, bool):
            raise ChildFailed(f"the key check gave no verdict: {answer!r:.80}")
        return valid


def load_device_key(path: str | os.PathLike[str]) -> DeviceKey:
    """The Ed25519 public key in the PEM file ``path``, read and checked by
    ``keyfiles.load_public_key`` in a child; KeyFileError naming the file if it cannot be
    used (its problem as the workstation would say it); ChildFailed if the child gave no
    answer in ``LOAD_ATTEMPTS`` tries (nothing is known about the file: not a
    configuration error). The same unchanged file (inode, size, mtime) is not read again."""
    name = os.fspath(path)
    try:
        facts = os.stat(name)
        stamp = (
            name,
            facts.st_dev,
            facts.st_ino,
            facts.st_size,
            facts.st_mtime_ns,
            facts.st_ctime_ns,
        )
    except OSError:
        stamp = None  # the child says what is wrong with it
    if stamp is not None and stamp in _loaded:
        return _loaded[stamp]
    for attempt in range(1, LOAD_ATTEMPTS + 1):
        try:
            answer = _ask({"op": "load", "path": name})
            break
        except ChildFailed as exc:
            if attempt == LOAD_ATTEMPTS:
                raise ChildFailed(f"{name}: cannot be checked now: {exc}") from None
    problem, raw = answer.get("problem"), answer.get("raw")
    if isinstance(problem, str):
        raise KeyFileError(path, problem)
    try:
        key = bytes.fromhex(raw) if isinstance(raw, str) else b""
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ChildFailed(f"{name}: cannot be checked now: the key check answered {answer!r:.80}")
    loaded = DeviceKey(key, name)
    if stamp is not None:
        _loaded.clear()  # one key file per device
        _loaded[stamp] = loaded
    return loaded


def _ask(request: dict[str, Any], timeout_s: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """One request to a new child; its answer."""
    try:
        out = run_python(
            _CHILD,
            json.dumps(request).encode("utf-8"),
            timeout_s=timeout_s,
            what="the key check",
        )
        answer = json.loads(out)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ChildFailed("the key check failed: its answer is not a JSON object")
    return answer


def main() -> int:
    """The child: one request on stdin, its answer on stdout."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from .keyfiles import load_public_key, raw_public_bytes

    request = json.loads(sys.stdin.buffer.read(_REQUEST_MAX_BYTES))
    answer: dict[str, Any]
    if request["op"] == "load":
        try:
            answer = {"raw": raw_public_bytes(load_public_key(request["path"])).hex()}
        except KeyFileError as exc:
            answer = {"problem": exc.problem}
    elif request["op"] == "verify":
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(request["raw"]))
        try:
            key.verify(base64.b64decode(request["signature"]), base64.b64decode(request["data"]))
            answer = {"valid": True}
        except InvalidSignature:
            answer = {"valid": False}
    else:
        print(f"unknown op {request['op']!r}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(answer))
    return 0
