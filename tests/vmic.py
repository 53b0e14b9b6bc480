"""The ``virtual_mic`` fixture (``devkit.vmic``): skips where PulseAudio is missing."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from devkit import Unavailable
from devkit import vmic as _vmic
from devkit.vmic import VirtualMic

__all__ = ["VirtualMic", "virtual_mic"]


@pytest.fixture(scope="session")
def virtual_mic() -> Iterator[VirtualMic]:
    """A running virtual microphone for the whole session, its environment set in this
    process (so that PortAudio here hears it too); skips if PulseAudio is missing."""
    saved = {k: os.environ.get(k) for k in _vmic.ENV_KEYS}
    try:
        with _vmic.virtual_mic() as mic:
            os.environ.update(mic.pulse_env)
            _vmic.refresh_portaudio()
            yield mic
    except Unavailable as exc:
        pytest.skip(str(exc))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
