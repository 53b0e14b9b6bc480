"""Shared pytest fixtures: the real recordings, fixture models, mosquitto, the virtual microphone.

File names say what a test file needs. ``test_*_e2e.py`` plays sound into the virtual
microphone (a private PulseAudio heard through ALSA and PortAudio; marker ``realaudio``) in
real time, mostly to the daemon as a subprocess with a real mosquitto: it needs PulseAudio
and a machine that is not overloaded. Any other ``test_*.py`` runs without PulseAudio; it
may use mosquitto (``mqtt_broker``, skipped where missing) or run the installed commands.
Helpers the tests import live in ``support/``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from support import REPO
from support.mounts import Mounts

from asd_edge.config import MqttConfig, OutboxConfig
from asd_edge.mqtt import MqttLink
from asd_edge.mqtt.thread import MAX_MESSAGE_BYTES
from asd_edge.runtime import opt_out_of_telemetry
from devkit import Unavailable
from devkit import vmic as _vmic
from devkit.broker import HOST, Broker
from devkit.vmic import VirtualMic

SHARED_DATA = REPO.parent / "shared" / "data"

# Tests that import onnxruntime themselves (before asd_edge.onnxrt) write no telemetry
# into the runner's HOME either; nothing above has loaded onnxruntime yet.
opt_out_of_telemetry()


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Undo ``configure_logging`` after each test: code run in-process (the CLIs) points
    the loggers at pytest's captured stream, which is closed once the test is over; a
    later test's thread logging there would fail."""
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real recordings in ../shared/data; skips where a clone has none."""
    if not (SHARED_DATA / "MANIFEST.csv").is_file():
        pytest.skip(f"real recordings not found at {SHARED_DATA} (a user's clone has none)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the session's fixture models."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def level_model(model_dir: Path) -> Path:
    """A real log-mel ONNX model (peak band level in dBFS), threshold -30 dBFS, 16 kHz."""
    from training.level import build_level_model, save_model

    return save_model(build_level_model(threshold_dbfs=-30.0), model_dir / "level.onnx")


@pytest.fixture(scope="session")
def waveform_model(model_dir: Path) -> Path:
    """A real waveform ONNX model (window RMS in dBFS) with the seed's band-pass pre-filter."""
    from training.level import build_waveform_level_model, save_model

    prefilter = {"type": "butter_bandpass", "low_hz": 20.0, "high_hz": 7000.0, "order": 4}
    model = build_waveform_level_model(threshold_dbfs=-30.0, prefilter=prefilter)
    return save_model(model, model_dir / "waveform.onnx")


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    """Small file systems the test mounts (tmpfs, ext4: ``support.mounts``), each
    unmounted after the test; where mounting is not permitted the test is skipped."""
    made = Mounts(tmp_path / "mnt")
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def mqtt_broker_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Make and start brokers (``Broker`` keyword arguments); all are killed after the test.

    Skips the test where mosquitto (or mosquitto_passwd for ``users``) is not installed.
    """
    made: list[Broker] = []

    def make(**kw: Any) -> Broker:
        try:
            broker = Broker(tmp_path / f"broker{len(made)}", **kw)
        except Unavailable as exc:
            pytest.skip(str(exc))
        made.append(broker)
        broker.start()
        return broker

    yield make
    for broker in made:
        broker.close()
    if os.environ.get("ASD_EDGE_KEEP_BROKER_LOGS"):
        for broker in made:
            print(broker.log_text())


@pytest.fixture
def mqtt_broker(mqtt_broker_factory: Callable[..., Broker]) -> Broker:
    """A running, anonymous mosquitto on a free port of 127.0.0.1."""
    return mqtt_broker_factory()


@pytest.fixture
def make_link(tmp_path: Path) -> Iterator[Callable[..., MqttLink]]:
    """Build MqttLinks for a broker (or a port) with a fast back-off, as device ``name``
    (prefix ``asd/<name>``, client id ``asd-edge-<name>``); ``cfg`` goes to MqttConfig,
    ``fleet_prefix`` and ``max_message_bytes`` to MqttLink. All are stopped after the test."""
    made: list[MqttLink] = []

    def make(
        broker: Broker | int,
        *,
        name: str = "dev1",
        start: bool = True,
        on_command: Callable[[str, bytes, bool], None] | None = None,
        fleet_prefix: str | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        **cfg: Any,
    ) -> MqttLink:
        port = broker if isinstance(broker, int) else broker.port
        settings: dict[str, Any] = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5, **cfg}
        config = MqttConfig(
            host=HOST,
            port=port,
            topic_prefix=f"asd/{name}",
            client_id=f"asd-edge-{name}",
            **settings,
        )
        link = MqttLink(
            config,
            device_id=name,
            outbox_path=tmp_path / f"{name}.sqlite",
            outbox=OutboxConfig(),
            on_command=on_command,
            fleet_prefix=fleet_prefix,
            seed=len(made),
            max_message_bytes=max_message_bytes,
        )
        made.append(link)
        if start:
            link.start()
        return link

    yield make
    for link in made:
        link.stop(timeout_s=1.0)


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
