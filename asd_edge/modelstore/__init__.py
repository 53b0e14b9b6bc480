"""The model store wing: which model each monitor runs, and how a new one gets there.

``ModelManager`` is the face the daemon talks to; it validates candidates on its
own thread and hands the daemon swaps to apply between two ticks:

- ``manager``: ``ModelManager``, the API the daemon's and the MQTT threads call:
  pushes, rollbacks and replaced model files, each checked, stored and handed over
  as a ``Swap`` (or refused, ``errors.Refused``).
- ``worker``: ``ModelWorker``, the thread that does the slow work: validating
  candidates, watching the config's model files, writing the store.
- ``shared``: ``SharedState``, what the two share behind one lock, and ``Swap``.
- ``slot`` and ``files``: one monitor's slot (what runs, where it came from) and its
  files on disk (``active.onnx``, ``previous.onnx``, ``state.json``).
- ``checks``: what a candidate must pass beside the running model.
- ``requests`` and ``signing``: a push, rollback or reset as the device checks it
  (target, signature), and the signed message format ``asd-train push`` sends.
- ``replay`` and ``reset``: the replay markers (each monitor's, and the device-wide
  floor in ``replay.json``) with their clock checks, and the signed reset
  (``cmd/model/reset``, ``asd-train reset``) that replaces a marker dated ahead.
- ``keyfiles``: the Ed25519 key files (cryptography loads only when a key is used);
  ``devicekey``: the daemon's key, read and used in a child process, so that the daemon
  never loads cryptography (about 8 MB).

Named ``modelstore`` rather than ``models`` because the repository's top-level
``models/`` holds ONNX files: this package is the device's store of them, not models.
"""

from typing import TYPE_CHECKING

from ..faces import lazy_face

if TYPE_CHECKING:
    from .keyfiles import generate_keys, key_id, load_private_key, load_public_key
    from .manager import ModelManager
    from .requests import load_key
    from .shared import Swap
    from .signing import push_message, rollback_message
    from .slot import running_model

_WHERE = {
    "ModelManager": "manager",
    "Swap": "shared",
    "generate_keys": "keyfiles",
    "key_id": "keyfiles",
    "load_key": "requests",
    "load_private_key": "keyfiles",
    "load_public_key": "keyfiles",
    "push_message": "signing",
    "rollback_message": "signing",
    "running_model": "slot",
}
"""Which module defines each name of the face: each is imported at its first use
(PEP 562), so that importing one module of the package (a child process's entry) loads
only that module."""


if not TYPE_CHECKING:  # mypy sees only the imports above: a misspelt name is an error
    __getattr__ = lazy_face(__name__, _WHERE)

__all__ = [
    "ModelManager",
    "Swap",
    "generate_keys",
    "key_id",
    "load_key",
    "load_private_key",
    "load_public_key",
    "push_message",
    "rollback_message",
    "running_model",
]
