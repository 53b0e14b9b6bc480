"""The daemon's configuration: a YAML file parsed once into typed, frozen dataclasses.

- ``sections``: one dataclass per section (``input``, ``monitors[]``, ``mqtt``, ...),
  their bounds and the limits they share;
- ``loading``: ``Config``, the whole file, and ``load_config`` / ``parse_config`` /
  ``config_to_dict``, with the checks across fields.
"""

from .loading import Config, config_to_dict, load_config, parse_config
from .sections import (
    CONFIG_MAX_BYTES,
    DEFAULT_CONFIG_PATH,
    HOP_MAX_S,
    HOP_MIN_S,
    LEARN_MAX_S,
    LEARN_MIN_S,
    PUSH_MAX_MB,
    ClipsConfig,
    DetectorConfig,
    HealthConfig,
    HomeAssistantConfig,
    InputConfig,
    LearnConfig,
    LogFormat,
    LoggingConfig,
    LogLevel,
    MonitorConfig,
    MqttConfig,
    OutboxConfig,
    PushConfig,
    TlsConfig,
    WebConfig,
)

__all__ = [
    "CONFIG_MAX_BYTES",
    "DEFAULT_CONFIG_PATH",
    "HOP_MAX_S",
    "HOP_MIN_S",
    "LEARN_MAX_S",
    "LEARN_MIN_S",
    "PUSH_MAX_MB",
    "ClipsConfig",
    "Config",
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
    "config_to_dict",
    "load_config",
    "parse_config",
]
