"""Find providers and sources through entry points, so third parties can add their own."""
from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from .errors import ConfigError

GROUPS = {"providers": "offboard_connector.providers", "sources": "offboard_connector.sources"}


@cache
def available(kind: str) -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=GROUPS[kind])}


def load(kind: str, name: str, where: str = ""):
    eps = available(kind)
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none installed"
        raise ConfigError(f"unknown {kind[:-1]} type {name!r} (known: {known})", where)
    return eps[name].load()
