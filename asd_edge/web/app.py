"""The dashboard assembled from its parts: the fleet's state, the MQTT bridge, the hub of
open pages and the HTTP application."""

from __future__ import annotations

import dataclasses

from starlette.applications import Starlette

from ..config import Config
from .bridge import Bridge
from .fleet import Fleet
from .hub import Hub
from .server import create_app

__all__ = ["build_app"]


def build_app(config: Config, *, host: str | None = None) -> Starlette:
    """The ASGI application for ``config`` (``host`` overrides ``web.host``, which decides
    whether a password is required). ConfigError when it would be exposed without one."""
    if host is not None and host != config.web.host:
        config = dataclasses.replace(config, web=dataclasses.replace(config.web, host=host))
    hub: Hub
    fleet = Fleet(config.mqtt.topic_prefix or f"asd/{config.device_id}", fleet=config.web.fleet)
    bridge = Bridge(config, fleet)

    def renew(key: str, seconds: float) -> bool:
        prefix = fleet.prefix_of(key)
        if prefix is None:
            return False
        bridge.send(prefix, "live", {"seconds": seconds, "id": bridge.new_id("live")})
        return True

    hub = Hub(lease_s=config.web.live_s, renew=renew)
    fleet.on_update = hub.publish
    return create_app(config, bridge, fleet, hub)
