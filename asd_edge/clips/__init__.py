"""Clips: the audio around each event, kept on disk with a picture and a sidecar.

The tick side records, a thread writes, so no tick waits for a disk:

- ``types``: ``ClipRequest`` (what the tick hands over) and ``ClipResult`` (what came of it).
- ``recorder``: ``ClipRecorder``, on the tick thread: which clips are open, their audio
  copied out of the ring a tick at a time, each cut and submitted when its end is in.
- ``writer``: ``ClipStore``, the writer thread: audio (WAV/FLAC), picture, sidecar, each
  written atomically, the sidecar last.
- ``retention``: the index of what is on disk, age and size limits, crash recovery, and
  ``saved_clip``: a clip as a restart finds it.
- ``status``: the ``clip`` object of an alert: saved, skipped, or lost to a killed daemon
  (unless a restart finds its audio).
- ``spectrogram``: the PNG pictures (numpy, zlib and struct only).
"""

from .recorder import ClipRecorder
from .retention import saved_clip
from .status import CLIP_LOST, clip_facts, found_clip, lost_clip
from .types import ClipRequest, ClipResult
from .writer import ClipStore, ClipUsage

__all__ = [
    "CLIP_LOST",
    "ClipRecorder",
    "ClipRequest",
    "ClipResult",
    "ClipStore",
    "ClipUsage",
    "clip_facts",
    "found_clip",
    "lost_clip",
    "saved_clip",
]
