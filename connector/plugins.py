"""Find providers and sources through entry points, so third parties can add their own."""
from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Field, Tenant

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


class Plugin:
    """What providers and sources share: a type name, the keys of their config block, a place in the config."""

    type: ClassVar[str] = ""
    config_schema: ClassVar[dict[str, Field]] = {}

    def __init__(self, name: str, options: dict[str, Any], tenant: Tenant, where: str = ""):
        self.name = name
        self.options = options
        self.tenant = tenant
        self.where = where or f"{tenant.id}/{name}"

    def check_online(self) -> None:
        """Prove the credential (and permissions) with one read-only call."""

    def close(self) -> None:
        """Release connections."""
