"""The configuration's sections: one frozen dataclass per YAML mapping, with the bounds
and patterns ``asd_edge.schema`` checks (field metadata), and the limits they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

__all__ = [
    "CONFIG_MAX_BYTES",
    "DEFAULT_CONFIG_PATH",
    "HOP_MAX_S",
    "HOP_MIN_S",
    "LEARN_MAX_S",
    "LEARN_MIN_S",
    "PUSH_MAX_MB",
    "ClipsConfig",
    "DetectorConfig",
    "HealthConfig",
    "HomeAssistantConfig",
    "InputConfig",
    "LearnConfig",
    "LogFormat",
    "LogLevel",
    "LoggingConfig",
    "MonitorConfig",
    "MqttConfig",
    "OutboxConfig",
    "PushConfig",
    "TlsConfig",
    "WebConfig",
]

DEFAULT_CONFIG_PATH: Final = Path("/etc/asd-edge/config.yaml")
"""Where the daemon reads its configuration when it is not given a path."""
CONFIG_MAX_BYTES: Final = 1 << 20
"""The largest configuration file read (1 MiB): the shipped, fully commented one is about
10 kB; a larger file is a wrong path (a log, a recording, a device), refused unread."""
PUSH_MAX_MB: Final = 32.0
"""The most ``push.max_mb`` may be: a push briefly takes about 6 times the model's size in
memory, and the daemon's share of the unit's memory leaves room for 32 MB. The largest
model file the daemon reads follows from it (``detector.MODEL_MAX_BYTES``)."""

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "console"]

# Field metadata is read by asd_edge.schema: "min"/"max" (numbers, inclusive),
# "pattern" (strings, whole match), "describe" (the expectation shown for a bad
# string), "path" (a non-empty path, resolved against the config file's directory),
# "secret" (redacted by config_to_dict, never echoed in errors), "internal" (not a key).
_DEVICE_ID: Final = r"^[A-Za-z0-9_-]{1,64}$"
"""A device_id goes into MQTT topics, so it is kept to these characters."""


LEARN_MIN_S: Final = 20.0
"""The least normal sound a learn request may ask for: two 10 s pieces for the
cross-fitted calibration (``asd_edge.learning.recording.MIN_PIECE_S``)."""
LEARN_MAX_S: Final = 86400.0
"""The most a learn request may ask for (``learn.max_s`` is at most this)."""
HOP_MIN_S: Final = 0.05
"""Shortest hop between scored windows, in seconds."""
HOP_MAX_S: Final = 10.0
"""Longest hop between scored windows, in seconds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InputConfig:
    """The audio input: one PortAudio stream and a ring buffer per channel."""

    device: str | int | None = field(default=None, metadata={"min": 0})
    """PortAudio device name or index; None opens the system default input."""
    sample_rate: int | None = field(default=None, metadata={"min": 8000, "max": 192000})
    """Capture rate in Hz; None captures at the models' rate when the device allows it."""
    channels: int = field(default=1, metadata={"min": 1, "max": 32})
    """How many input channels to open."""
    block_s: float = field(default=0.1, metadata={"min": 0.001, "max": 1.0})
    """PortAudio block length, in seconds: the audio thread wakes once per block (0.1 s: 10
    wakes a second; a window is scored at most one block after its last sample)."""
    ring_s: float = field(default=60.0, metadata={"min": 5.0, "max": 600.0})
    """Seconds of audio kept in memory per channel."""
    stall_timeout_s: float = field(default=2.0, metadata={"min": 0.2, "max": 60.0})
    """No new samples for this many seconds means the stream is dead."""
    restart_backoff_max_s: float = field(default=30.0, metadata={"min": 1.0, "max": 3600.0})
    """Cap, in seconds, of the back-off between stream restarts."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorConfig:
    """One model watching one input channel, and when its scores make an event."""

    name: str = field(metadata={"pattern": r"^[a-z0-9][a-z0-9_-]{0,63}$"})
    """Unique name of the monitor, used in topics, logs and clip file names."""
    channel: int = field(default=0, metadata={"min": 0})
    """Input channel the model listens to, 0 <= channel < input.channels."""
    model: str = field(
        metadata={"path": True, "pattern": r"^.*\.onnx$", "describe": "a path to a .onnx file"}
    )
    """Absolute path of the ONNX model (relative in the file: against the file's directory)."""
    hop_s: float = field(default=0.5, metadata={"min": HOP_MIN_S, "max": HOP_MAX_S})
    """Seconds between two scores."""
    threshold: float | None = None
    """Score above which a frame is anomalous; None uses the model's calibrated threshold."""
    onset_k: int = field(default=2, metadata={"min": 1, "max": 100})
    """An event starts when onset_k of the last onset_n scores are above threshold."""
    onset_n: int = field(default=3, metadata={"min": 1, "max": 100})
    """How many recent scores the onset rule looks at."""
    hold_s: float = field(default=1.0, metadata={"min": 0.0, "max": 3600.0})
    """Seconds below threshold before an event ends."""
    refractory_s: float = field(default=5.0, metadata={"min": 0.0, "max": 86400.0})
    """Seconds after an event ends during which no new event starts."""
    stopped: Literal["state", "alert"] = "state"
    """What a stopped machine does, for a model whose metadata carries ``level``: ``state``
    reports it (``machine: stopped`` on the monitor topic, health, Home Assistant) and
    suppresses anomalies while it lasts; ``alert`` also raises a ``type: machine`` alert,
    started when it stops and ended when it runs again."""
    stopped_hold_s: float = field(default=2.0, metadata={"min": 0.0, "max": 3600.0})
    """Seconds the window level must stay below the model's ``stopped_below_dbfs`` before
    the machine counts as stopped, and at or above it + 3 dB before it runs again."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorConfig:
    """How the ONNX models are run."""

    threads: int = field(default=1, metadata={"min": 1, "max": 64})
    """onnxruntime intra-op threads per model."""
    watch_s: float = field(default=2.0, metadata={"min": 0.0, "max": 3600.0})
    """Seconds between two checks of each monitor's model file for a replacement; 0: never
    (SIGHUP still reloads)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PushConfig:
    """Models pushed over MQTT (``asd-train push``) and how they are authenticated."""

    key_file: str | None = field(default=None, metadata={"path": True})
    """Ed25519 public key (PEM, ``asd-train keygen``'s device.key) that pushed models must be
    signed with; None: signed pushes cannot be checked and are refused."""
    allow_unsigned: bool = False
    """Accept pushes without a signature (anyone who can publish to the broker can then
    replace the model: for a lab only)."""
    max_mb: float = field(default=16.0, metadata={"min": 0.01, "max": PUSH_MAX_MB})
    """Largest model accepted by push, in megabytes (at most ``PUSH_MAX_MB``)."""
    fleet_prefix: str | None = field(
        default="asd/fleet",
        metadata={
            "pattern": r"^[^+#/\x00](?:[^+#\x00]*[^+#/\x00])?$",
            "describe": "a topic prefix without '+' or '#' that neither starts nor ends with '/'",
        },
    )
    """Prefix whose cmd/model and cmd/model/rollback reach every device (``push --all``);
    None: only this device's own prefix."""
    max_clock_skew_s: float = field(default=300.0, metadata={"min": 0.0, "max": 86400.0})
    """A push or rollback whose ``issued_at`` lies more than this ahead of the device's
    clock is refused: accepted, it would make every later request look like a replay.
    A device whose clock is wrong (no RTC, before NTP has synchronised) refuses every
    push until its clock is set, and says so. A reset of the replay markers
    (``cmd/model/reset``) must lie within this of the device's clock both ways (behind:
    at least ``modelstore.replay.RESET_MIN_AGE_S``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """TLS settings for the broker connection."""

    enabled: bool = False
    """Connect with TLS (usually port 8883)."""
    ca_file: str | None = field(default=None, metadata={"path": True})
    """CA certificate file (PEM); None uses the system's trusted CAs."""
    cert_file: str | None = field(default=None, metadata={"path": True})
    """Client certificate (PEM) for mutual TLS; None: no client certificate."""
    key_file: str | None = field(default=None, metadata={"path": True})
    """Private key of the client certificate (PEM)."""
    insecure: bool = False
    """Skip the broker's host name check (testing only)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HomeAssistantConfig:
    """Home Assistant MQTT discovery of the device and its monitors."""

    enabled: bool = True
    """Publish discovery messages (retained) and republish when Home Assistant restarts."""
    discovery_prefix: str = field(
        default="homeassistant",
        metadata={"pattern": r"^[A-Za-z0-9_-]+$", "describe": "a topic level of A-Z a-z 0-9 _ -"},
    )
    """Home Assistant's discovery prefix; it announces itself on <prefix>/status."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttConfig:
    """The MQTT broker that alerts are published to."""

    host: str = field(
        default="localhost", metadata={"pattern": r"^\S+$", "describe": "a non-empty host name"}
    )
    """Broker host name or address."""
    port: int = field(default=1883, metadata={"min": 1, "max": 65535})
    """Broker TCP port."""
    topic_prefix: str | None = field(
        default=None,
        metadata={
            "pattern": r"^[^+#/\x00](?:[^+#\x00]*[^+#/\x00])?$",
            "describe": "a topic prefix without '+' or '#' that neither starts nor ends with '/'",
        },
    )
    """Prefix of every topic published; None in the file means "asd/<device_id>"."""
    client_id: str | None = None
    """MQTT client id; None in the file means "asd-edge-<device_id>"."""
    username: str | None = None
    """User name for the broker; None connects without credentials."""
    password: str | None = field(default=None, metadata={"secret": True})
    """Password for the broker (redacted when shown); prefer password_file."""
    password_file: str | None = field(default=None, metadata={"path": True})
    """Absolute path of a file holding the password (relative in the file: as for model)."""
    keepalive_s: int = field(default=60, metadata={"min": 5, "max": 3600})
    """MQTT keep-alive interval, in seconds."""
    enabled: bool = True
    """Publish over MQTT; false keeps detecting and saving clips without a broker."""
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    """MQTT protocol version."""
    reconnect_min_s: float = field(default=1.0, metadata={"min": 0.1, "max": 60.0})
    """First back-off, in seconds, before reconnecting to the broker."""
    reconnect_max_s: float = field(default=60.0, metadata={"min": 1.0, "max": 3600.0})
    """Cap, in seconds, of the (jittered, doubling) reconnect back-off."""
    tls: TlsConfig = field(default_factory=TlsConfig)
    """TLS to the broker."""
    health_interval_s: float = field(default=60.0, metadata={"min": 5.0, "max": 3600.0})
    """Seconds between two retained health messages."""
    publish_scores: bool = False
    """Publish per-window scores on <prefix>/score (QoS 0) for dashboards."""
    score_interval_s: float = field(default=1.0, metadata={"min": 0.1, "max": 3600.0})
    """Throttle of the score topic: at most one message per monitor per this many seconds."""
    publish_clips: bool = False
    """Publish each saved clip's bytes on <prefix>/clip/<alert id> (QoS 1)."""
    clip_max_mb: float = field(default=2.0, metadata={"min": 0.01, "max": 256.0})
    """Clips larger than this are not published (the alert says so)."""
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    """Home Assistant MQTT discovery."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxConfig:
    """The durable queue of alerts (SQLite in state_dir) that survives outages and restarts."""

    max_rows: int = field(default=10000, metadata={"min": 10, "max": 10_000_000})
    """Most alerts kept unacknowledged; beyond it the oldest are dropped and counted."""
    max_age_days: float = field(default=30.0, metadata={"min": 0.01, "max": 3650.0})
    """Unacknowledged alerts older than this are dropped and counted."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LearnConfig:
    """Learning a monitor's normal sound on the device (``cmd/learn``, ``asd-edge learn``)."""

    enabled: bool = True
    """Accept ``cmd/learn`` and ``cmd/feedback`` over MQTT and announce the Home Assistant
    buttons (offline ``asd-edge learn --from`` works either way)."""
    default_s: float = field(default=600.0, metadata={"min": LEARN_MIN_S, "max": LEARN_MAX_S})
    """Seconds of normal sound a request without ``seconds`` (the Home Assistant button)
    learns."""
    max_s: float = field(default=3600.0, metadata={"min": LEARN_MIN_S, "max": LEARN_MAX_S})
    """Longest learn request, seconds; the learning's child holds about 7 MB of statistics
    per hour of sound, and its fit peaks at about 340 MB for an hour."""
    target_fa_per_day: float = field(default=1.0, metadata={"min": 0.001, "max": 1000.0})
    """False alarms per day of normal sound the learned threshold is calibrated for."""
    kind: Literal["auto", "bandstat"] = "auto"
    """``auto`` chooses the bandstat scorer by measurement; ``bandstat`` uses topk."""
    sample_rate: int = field(default=16000, metadata={"min": 8000, "max": 48000})
    """The learned model's rate, Hz."""
    n_mels: int = field(default=64, metadata={"min": 8, "max": 128})
    """Mel bands of the learned model."""
    fit_timeout_s: float = field(default=3600.0, metadata={"min": 10.0, "max": 86400.0})
    """A fit that takes longer than this is stopped and the learning fails."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    """How the input's health is judged (reported on the health topic)."""

    silence_dbfs: float = field(default=-80.0, metadata={"min": -200.0, "max": 0.0})
    """A channel whose RMS level stays below this (dBFS) is flagged silent."""
    clipping_ratio: float = field(default=0.001, metadata={"min": 0.0, "max": 1.0})
    """A channel with more than this fraction of samples at full scale is flagged clipping."""
    hold_s: float = field(default=5.0, metadata={"min": 0.5, "max": 60.0})
    """Seconds silence or clipping must last before an input alert is raised, and be gone
    before it clears; an overrun alert starts at once and clears after this long without."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClipsConfig:
    """The audio clips saved around each event."""

    pre_s: float = field(default=5.0, metadata={"min": 0.0, "max": 300.0})
    """Seconds of audio kept from before the event starts; below input.ring_s - 2."""
    post_s: float = field(default=5.0, metadata={"min": 0.0, "max": 300.0})
    """Seconds of audio kept from after the event ends."""
    enabled: bool = True
    """Save a clip around each event."""
    max_clip_s: float | None = field(default=None, metadata={"min": 1.0, "max": 3600.0})
    """Longest clip in seconds (pre-roll included), at most input.ring_s - 2; None: that."""
    format: Literal["wav", "flac"] = "wav"
    """wav (16-bit PCM) or flac (needs the soundfile package)."""
    spectrogram: bool = True
    """Write a spectrogram PNG beside each clip."""
    max_total_mb: float = field(default=1024.0, metadata={"min": 1.0, "max": 10_000_000.0})
    """Most megabytes all clips may take; the oldest are deleted to make room."""
    max_age_days: float | None = field(default=90.0, metadata={"min": 0.01, "max": 36500.0})
    """Clips older than this are deleted; None keeps them until space runs out."""
    min_free_mb: float = field(default=200.0, metadata={"min": 0.0, "max": 10_000_000.0})
    """Free space to leave on the clips' filesystem; the oldest clips are deleted to keep it."""
    queue: int = field(default=8, metadata={"min": 1, "max": 1000})
    """Clips waiting to be written; a clip that finds the queue full is skipped and reported."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    """What the daemon logs and how."""

    level: LogLevel = "info"
    """Lowest level that is logged."""
    format: LogFormat = "auto"
    """json lines, a readable console format, or auto: console on a TTY, json otherwise."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WebConfig:
    """The web dashboard (``asd-edge web``): a separate process, an MQTT client of the same
    broker and an HTTP server. Off unless started (``asd-edge-web.service``)."""

    host: str = field(
        default="127.0.0.1",
        metadata={"pattern": r"^\S+$", "describe": "a non-empty host name or address"},
    )
    """Address the server binds. Anything but a loopback address exposes it, and then
    ``password_hash`` or ``token_hash`` is required."""
    port: int = field(default=8080, metadata={"min": 1, "max": 65535})
    """TCP port of the server."""
    password_hash: str | None = field(default=None, metadata={"secret": True})
    """scrypt hash of the dashboard's password (``asd-edge web --set-password`` writes it);
    None: no password (only allowed on a loopback address)."""
    token_hash: str | None = field(default=None, metadata={"secret": True})
    """sha256 hash of an API token (``asd-edge web --new-token`` prints a token and writes
    its hash) for scripts and Prometheus: ``Authorization: Bearer <token>``."""
    tls_cert_file: str | None = field(default=None, metadata={"path": True})
    """Certificate (PEM) to serve HTTPS with; None: plain HTTP."""
    tls_key_file: str | None = field(default=None, metadata={"path": True})
    """Private key (PEM) of ``tls_cert_file``."""
    cookie_secure: bool | None = None
    """Send the session cookie over HTTPS only; None: when ``tls_cert_file`` is set. Set it
    true behind a reverse proxy that terminates TLS."""
    session_hours: float = field(default=12.0, metadata={"min": 0.1, "max": 720.0})
    """How long a login lasts."""
    fleet: bool = True
    """Show every device on the broker (their retained status, health and model topics),
    not only this one."""
    mqtt_username: str | None = None
    """The dashboard's own user name on the broker; None: the daemon's (``mqtt.username``).
    A broker locked down as the README says (a user per device, user name as client id)
    needs its own: with the daemon's, each would throw the other off."""
    mqtt_password_file: str | None = field(default=None, metadata={"path": True})
    """File holding the password of ``mqtt_username``."""
    signing_key_file: str | None = field(default=None, metadata={"path": True})
    """Ed25519 private key (``asd-train keygen``'s push.key) the dashboard signs rollbacks
    with, for a dashboard on the workstation that already holds it; never copy it to a
    device. None: rollbacks are sent unsigned (a device that checks signatures refuses
    them, and the page says so)."""
    live_s: float = field(default=20.0, metadata={"min": 5.0, "max": 300.0})
    """Lease of ``cmd/live`` the server asks for, renewed while a page is open."""
