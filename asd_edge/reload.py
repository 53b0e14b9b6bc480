"""What a SIGHUP may change in a running daemon, and what only a restart can."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import Config

__all__ = ["RELOADABLE", "ReloadPlan", "plan_reload"]

RELOADABLE = ("monitors", "detector", "push", "health", "logging")
"""Top-level sections applied by a reload. The others (the input stream, the state
directory, the device's name, the broker connection, the clip store, the outbox) are
held by threads and open resources that a reload must not disturb: a change to them
is reported and waits for a restart."""


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """The configuration to run after a reload, and the changes it leaves for a restart."""

    config: Config
    """The new file's reloadable sections over the running configuration's others."""
    needs_restart: tuple[str, ...]
    """Dotted keys whose new value is ignored until the daemon restarts."""


def plan_reload(running: Config, loaded: Config) -> ReloadPlan:
    """Merge a freshly loaded configuration into the running one (see ``RELOADABLE``)."""
    pending: list[str] = []
    for item in dataclasses.fields(Config):
        name = item.name
        if name in RELOADABLE or item.metadata.get("internal"):
            continue
        if getattr(running, name) != getattr(loaded, name):
            pending.extend(_changed(name, getattr(running, name), getattr(loaded, name)))
    push = loaded.push
    for key in ("fleet_prefix", "max_mb"):  # the MQTT link's subscriptions, its size limit
        if getattr(push, key) != getattr(running.push, key):
            pending.append(f"push.{key}")
            push = dataclasses.replace(push, **{key: getattr(running.push, key)})
    merged = dataclasses.replace(
        running,
        **{name: getattr(loaded, name) for name in RELOADABLE if name != "push"},
        push=push,
        source=loaded.source,
    )
    return ReloadPlan(config=merged, needs_restart=tuple(pending))


def _changed(prefix: str, old: object, new: object) -> list[str]:
    """The dotted keys under ``prefix`` whose values differ."""
    if dataclasses.is_dataclass(old) and dataclasses.is_dataclass(new):
        keys: list[str] = []
        for item in dataclasses.fields(old):
            a, b = getattr(old, item.name), getattr(new, item.name)
            if a != b:
                keys.extend(_changed(f"{prefix}.{item.name}", a, b))
        return keys
    return [prefix]
