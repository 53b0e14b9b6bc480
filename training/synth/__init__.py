"""Deterministic machine-like sound with anomalies (numpy and scipy only): ``asd-train synth``.

- ``machine``: the machine model. A :class:`Machine` is a fixed voice (hum, noise,
  mechanical ticks) chosen from its ``machine_id`` and ``seed``, varied from file to
  file; :func:`make_stream` renders one continuous stream with anomalies where asked.
- ``faults``: the anomaly generators (``bearing``, ``shift``, ``imbalance``,
  ``impact``, ``squeal``: :data:`ANOMALY_KINDS`), each changing the sound the way its
  name says while keeping the level near normal, so a level meter alone does not
  catch them.
- ``datasets``: files of synthetic machines (DCASE-style folders, or a prepared
  dataset with a manifest).
- ``stream``: one continuous :class:`Stream` with its :class:`Anomaly` list, written
  as ``stream.wav`` and ``stream.json`` (``asd-train synth --stream`` and the demo).
- ``cli``: ``asd-train synth``.

The package must import where only the daemon's dependencies exist (the demo player
and end-to-end tests use it), so it uses numpy and scipy only; tqdm is optional.
"""

from __future__ import annotations

from .cli import configure, run
from .datasets import machine_name, write_dataset, write_labelled_dataset
from .faults import ANOMALY_KINDS, decaying_tone, place_pulses
from .machine import Machine, make_stream
from .stream import Anomaly, Stream, parse_anomalies

__all__ = [
    "ANOMALY_KINDS",
    "Anomaly",
    "Machine",
    "Stream",
    "configure",
    "decaying_tone",
    "machine_name",
    "make_stream",
    "parse_anomalies",
    "place_pulses",
    "run",
    "write_dataset",
    "write_labelled_dataset",
]
