"""Clips: the audio around each event, kept on disk with a picture and a sidecar.

The tick side records, a thread writes, so no tick waits for a disk:

- ``types``: ``ClipRequest`` (what the tick hands over) and ``ClipResult`` (what came of it).
- ``recorder``: ``ClipRecorder``, on the tick thread: which clips are open, their audio
  copied out of the ring a tick at a time, each cut and submitted when its end is in.
- ``writer``: ``ClipStore``, the writer thread: audio (WAV/FLAC), picture, sidecar, each
  written atomically, the sidecar last.
- ``retention``: the index of what is on disk, age and size limits, crash recovery, and
  ``saved_clip``: a clip as a restart finds it.
- ``lookup``: an alert's saved clip found by its id; ``sender``: ``ClipSender``, which
  publishes one on ``cmd/clip``.
- ``status``: the ``clip`` object of an alert: saved, skipped, or lost to a killed daemon
  (unless a restart finds its audio).
- ``spectrogram``: the levels of a clip's spectrogram on a fixed dB scale (numpy only).
- ``picture``: the PNG beside each clip: that spectrogram with axes, colour bar, the event
  marked and a title (Pillow); ``painter`` draws it in a child process, so the daemon
  never loads Pillow.
"""

from typing import TYPE_CHECKING

from ..faces import lazy_face

if TYPE_CHECKING:
    from .lookup import find_clip, newest_clip
    from .recorder import ClipRecorder
    from .retention import saved_clip
    from .sender import ClipSender
    from .status import CLIP_LOST, clip_facts, found_clip, lost_clip
    from .types import ClipRequest, ClipResult
    from .writer import ClipStore, ClipUsage

_WHERE = {
    "CLIP_LOST": "status",
    "ClipRecorder": "recorder",
    "ClipRequest": "types",
    "ClipResult": "types",
    "ClipSender": "sender",
    "ClipStore": "writer",
    "ClipUsage": "writer",
    "clip_facts": "status",
    "find_clip": "lookup",
    "found_clip": "status",
    "lost_clip": "status",
    "newest_clip": "lookup",
    "saved_clip": "retention",
}
"""Which module defines each name of the face: each is imported at its first use
(PEP 562), so that importing one module of the package (a child process's entry) loads
only that module."""


if not TYPE_CHECKING:  # mypy sees only the imports above: a misspelt name is an error
    __getattr__ = lazy_face(__name__, _WHERE)

__all__ = [
    "CLIP_LOST",
    "ClipRecorder",
    "ClipRequest",
    "ClipResult",
    "ClipSender",
    "ClipStore",
    "ClipUsage",
    "clip_facts",
    "find_clip",
    "found_clip",
    "lost_clip",
    "newest_clip",
    "saved_clip",
]
