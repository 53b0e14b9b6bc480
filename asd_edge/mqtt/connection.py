"""The broker connection's life: attempts with a jittered back-off, CONNACK, drops."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any, Final

import structlog
from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags
from paho.mqtt.reasoncodes import ReasonCode

from ..backoff import Backoff
from ..config import MqttConfig

__all__ = ["CONNACK_TIMEOUT_S", "RECONNECT_JITTER", "STABLE_S", "Backoff", "Connection"]

log = structlog.get_logger()

CONNACK_TIMEOUT_S: Final = 10.0
"""A connection whose CONNACK has not come after this long is dropped and retried."""
STABLE_S: Final = 10.0
"""A connection that lasted this long resets the reconnect back-off."""
RECONNECT_JITTER: Final = 0.5
"""Each reconnect delay is its doubling base times a factor drawn from [0.5, 1.5], so a
fleet that lost its broker does not come back in lockstep."""


class Connection:
    """One paho client's connection: idle, dialing, connecting, connected, and idle again.

    Driven by the link thread, on which paho's callbacks run too. Only the dial
    (``reconnect``: DNS, TCP, TLS, CONNECT, which can block for seconds) runs in a
    short-lived helper thread, which hands its outcome to ``report`` (the link
    thread passes it back to ``dialed``); meanwhile nothing else touches the
    client. A failed attempt or a drop waits a capped, jittered back-off; a
    connection that held for STABLE_S starts the back-off afresh.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        client_id: str,
        clock: Callable[[], float],
        seed: int | None,
        report: Callable[[str | None], None],
    ) -> None:
        self.config = config
        self.client_id = client_id
        self.client: Client | None = None
        """The paho client, once ``attach`` has been called."""
        self.phase = "idle"
        """idle | dialing | connecting | connected."""
        self.dial: threading.Thread | None = None
        """The helper thread of the attempt being dialed, if any."""
        self.connected = False
        """True between a successful CONNACK and the loss of that connection."""
        self.just_connected = False
        """Set on CONNACK; the link thread clears it once it has greeted the broker."""
        self.stopping = False
        """Set when the link shuts down: a drop is then expected and not retried."""
        self.counts = {"connects": 0, "disconnects": 0, "connect_failures": 0}
        self._clock = clock
        self._report = report
        self._backoff = Backoff(
            config.reconnect_min_s, config.reconnect_max_s, RECONNECT_JITTER, random.Random(seed)
        )
        self._next_attempt_s = 0.0
        self._attempt_s = 0.0
        self._connected_s = 0.0

    def attach(self, client: Client) -> None:
        """Own ``client``: its connect and disconnect callbacks come here."""
        self.client = client
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect

    def wait_s(self, now_s: float, longest_s: float) -> float:
        """How long the link thread may sleep: at most ``longest_s``, less if an attempt is due."""
        if self.phase == "idle" and self.config.enabled:
            return min(longest_s, max(0.0, self._next_attempt_s - now_s))
        return longest_s

    def advance(self) -> None:
        """Start an attempt once one is due; give up on one whose CONNACK is late."""
        assert self.client is not None
        if not self.config.enabled:  # mqtt.enabled: false: never dial; alerts wait
            return
        now = self._clock()
        if self.phase == "idle" and now >= self._next_attempt_s:
            self._connect()
        elif self.phase == "connecting" and now - self._attempt_s > CONNACK_TIMEOUT_S:
            self._failed(f"no CONNACK within {CONNACK_TIMEOUT_S:g} s")
            self.client.disconnect()

    def _connect(self) -> None:
        """Dial in a helper thread (DNS, TCP, TLS may block for seconds) while the link
        thread keeps storing alerts; the helper reports back through ``report``."""
        self.phase = "dialing"
        self.dial = threading.Thread(target=self._dial_broker, name="mqtt-dial", daemon=True)
        self.dial.start()

    def _dial_broker(self) -> None:
        """In the helper thread: open the socket and send CONNECT; nothing else touches the
        client meanwhile."""
        assert self.client is not None
        error = None
        try:
            self.client.reconnect()
        except (OSError, ValueError) as exc:
            error = str(exc) or type(exc).__name__
        except Exception as exc:  # reported, never lost with the thread
            error = f"{type(exc).__name__}: {exc}"
        self._report(error)

    def dialed(self, error: str | None) -> None:
        """The helper thread is done: the attempt failed, or CONNACK is now awaited."""
        assert self.client is not None
        self.dial = None
        if error is None and self.client.socket() is None:
            error = "connection closed while connecting"
        self.phase, self._attempt_s = "connecting", self._clock()
        if error is not None:
            self._failed(error)

    def _failed(self, error: str) -> None:
        """A connection attempt failed: back off and say so."""
        self.phase = "idle"
        self.counts["connect_failures"] += 1
        delay = self._backoff.next_delay()
        self._next_attempt_s = self._clock() + delay
        log.warning(
            "mqtt_connect_failed",
            host=self.config.host,
            port=self.config.port,
            error=error,
            retry_in_s=round(delay, 3),
        )

    def _on_connect(
        self, _c: Client, _u: Any, flags: ConnectFlags, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            self.phase = "idle"
            self.counts["connect_failures"] += 1
            delay = self._backoff.next_delay()
            self._next_attempt_s = self._clock() + delay
            log.error(
                "mqtt_connect_refused",
                host=self.config.host,
                port=self.config.port,
                username=self.config.username,
                reason=str(reason),
                retry_in_s=round(delay, 3),
            )
            return
        self.phase, self.connected, self.just_connected = "connected", True, True
        self._connected_s = self._clock()
        self.counts["connects"] += 1
        log.info(
            "mqtt_connected",
            host=self.config.host,
            port=self.config.port,
            client_id=self.client_id,
            protocol=self.config.protocol,
            session_present=flags.session_present,
        )

    def _on_disconnect(
        self, _c: Client, _u: Any, _f: DisconnectFlags, reason: ReasonCode, _p: Any
    ) -> None:
        self.lost(str(reason))

    def lost(self, reason: str) -> None:
        """The socket is gone: while connecting, a failed attempt; while connected, a drop."""
        if self.phase == "dialing":
            return  # called from the dialer thread: its own failure comes back as "dialed"
        was, self.phase, self.connected = self.phase, "idle", False
        if was == "connecting":
            self._failed(f"connection closed before CONNACK: {reason}")
        elif was == "connected":
            self.counts["disconnects"] += 1
            if self.stopping:
                log.info("mqtt_disconnected", reason="stopped")
                return
            if self._clock() - self._connected_s >= STABLE_S:
                self._backoff.reset()
            delay = self._backoff.next_delay()
            self._next_attempt_s = self._clock() + delay
            log.warning("mqtt_disconnected", reason=reason, retry_in_s=round(delay, 3))
