"""Fixtures for a real MQTT broker (``devkit.broker``): missing mosquitto skips, timeouts fail."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit import Unavailable
from devkit import broker as _broker
from devkit.broker import HOST, Broker, Received, Subscriber, TlsFiles, free_port

__all__ = [
    "HOST",
    "Broker",
    "Received",
    "Subscriber",
    "TlsFiles",
    "free_port",
    "make_tls_files",
    "mqtt_broker",
    "mqtt_broker_factory",
    "wait_until",
]


def wait_until(condition: Callable[[], Any], timeout_s: float = 10.0, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout_s``."""
    try:
        return _broker.wait_until(condition, timeout_s, what)
    except TimeoutError as exc:
        pytest.fail(str(exc))


def make_tls_files(root: Path) -> TlsFiles:
    """A throwaway CA and certificates (``devkit.broker.make_tls_files``); skips without openssl."""
    try:
        return _broker.make_tls_files(root)
    except Unavailable as exc:
        pytest.skip(str(exc))


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
