"""Find providers and sources through entry points, so third parties can add their own."""
from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import ClassVar

from .config import PluginOptions, Tenant
from .errors import ConfigError

GROUPS = {"providers": "offboard_connector.providers", "sources": "offboard_connector.sources",
          "psa": "offboard_connector.psa", "distributor": "offboard_connector.distributor"}


@cache
def available(kind: str) -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=GROUPS[kind])}


def load(kind: str, name: str, where: str = ""):
    eps = available(kind)
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none installed"
        raise ConfigError(f"unknown {kind[:-1]} type {name!r} (known: {known})", where)
    return eps[name].load()


class Plugin:
    """What providers and sources share: a type name, the model of their config block, a place in the config."""

    type: ClassVar[str] = ""
    options_model: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, name: str, options: PluginOptions, tenant: Tenant, where: str = ""):
        self.name = name
        self.options = options
        self.tenant = tenant
        self.where = where or f"{tenant.id}/{name}"

    def check_online(self) -> None:
        """Prove the credential (and permissions) with one read-only call."""

    def close(self) -> None:
        """Release connections."""
