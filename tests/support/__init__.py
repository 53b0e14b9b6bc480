"""What the tests import besides the code under test (fixtures live in ``conftest.py``).

- ``support.audio``: test sounds and WAV files (a sparse one of any announced size too).
- ``support.services``: devkit's mosquitto and daemon process and the installed commands,
  as tests use them (a timeout fails the test, a missing tool skips it).
- ``support.alerting``: an AlertSink that records, a monitor's info, a filled ring.
- ``support.clips``: exact int16 noise, small clip settings, a collector of clip results.
- ``support.e2e``: the end-to-end daemon's configuration, topics and sound.
- ``support.files``: paths a reader must refuse unread (a FIFO, /dev/zero, a sparse 2 GB file).
- ``support.importguard``: a prelude that bars the heavy packages from a ``python -c`` run.
- ``support.bands``: tiny real ONNX models with a ``bands`` output, and sound to feed them.
- ``support.machine``: a machine that stops, restarts and fails, and its bands model.
- ``support.mounts``: bad disks: a tmpfs to fill or remount read-only, an ext4 image that
  a disk error turns read-only under open files (root only; others skip).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPO"]

REPO = Path(__file__).resolve().parents[2]
"""The repository's root folder."""
