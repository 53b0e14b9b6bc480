"""A machine that stops and starts again in its room, with a fault after the restart, and
a bands model of it running (with the ``level`` that tells it stopped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from support.bands import (
    RATE,
    BandsModel,
    boost_band,
    calibrated_bands_model,
    room_tone,
    window_levels,
)
from training.synth import Machine, make_stream

__all__ = [
    "FAULT",
    "FAULT_BAND",
    "ROOM_RMS",
    "SECONDS",
    "STOP",
    "level_bands_model",
    "machine_session",
]

SECONDS = 30.0
STOP = (8.0, 16.0)
"""The machine is stopped from 8 to 16 s (50 ms ramps), the room tone goes on."""
FAULT = (22.0, 27.0)
"""After it restarted, one band is 15 dB up from 22 to 27 s."""
FAULT_BAND = 5
ROOM_RMS = 0.0076
"""The room tone: -42 dBFS, 20 dB under the running machine (-22 dBFS)."""


def machine_session(model: BandsModel) -> np.ndarray:
    """30 s of the machine (seed 3) in its room: stopped during ``STOP``, a 15 dB fault in
    band ``FAULT_BAND`` during ``FAULT``."""
    machine = make_stream(SECONDS, [], machine=Machine(0, 0), seed=3)
    gate = np.ones(machine.size)
    ramp = round(0.05 * RATE)
    a, b = round(STOP[0] * RATE), round(STOP[1] * RATE)
    gate[a:b] = 0.0
    gate[a - ramp : a] = np.linspace(1.0, 0.0, ramp)
    gate[b : b + ramp] = np.linspace(0.0, 1.0, ramp)
    audio = (machine * gate + room_tone(SECONDS, ROOM_RMS)).astype(np.float32)
    return boost_band(audio, model.core_hz(FAULT_BAND), 15.0, FAULT)


def level_bands_model(path: Path, *, with_level: bool = True) -> BandsModel:
    """A bands model of the running machine in its room (seed 3, another room-tone seed),
    threshold 6 spreads of at least 1.5 dB; ``level`` from the same windows with the
    stopped level 8 dB under their 1st percentile (what a training run might choose)."""
    running = make_stream(SECONDS, [], machine=Machine(0, 0), seed=3)
    running = running + room_tone(SECONDS, ROOM_RMS, seed=2)
    levels = window_levels(running)
    p01, p50, p99 = (float(np.percentile(levels, q)) for q in (1, 50, 99))
    level = {
        "unit": "dBFS",
        "measure": "window_mean_square",
        "p01": round(p01, 2),
        "p50": round(p50, 2),
        "p99": round(p99, 2),
        "stopped_below_dbfs": round(p01 - 8.0, 2),
    }
    return calibrated_bands_model(
        path, running, threshold=6.0, min_spread_db=1.5, level=level if with_level else None
    )
