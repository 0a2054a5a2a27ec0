"""What one provider may read from the others of its tenant, without holding them or the engine.

The PSA's `bill` phase invoices what Microsoft 365 really has assigned; the engine hands it
this read-only view of the tenant's providers, so the PSA never imports a Microsoft 365
provider (or `connector.reconcile`) and a tenant without one is a clear error, not a zero.
"""
from __future__ import annotations

from typing import Protocol

from ..errors import ConfigError


class Facts(Protocol):
    def consumed_units(self) -> dict[str, int]:
        """Licences assigned now, per SKU part number (Graph `subscribedSkus[].consumedUnits`)."""


class TenantFacts:
    def __init__(self, providers: list, where: str = ""):
        self._counters = [p for p in providers if callable(getattr(p, "consumed_units", None))]
        self.where = where

    def consumed_units(self) -> dict[str, int]:
        if not self._counters:
            raise ConfigError("billing needs the tenant's licence counts: add an entra provider", self.where)
        return self._counters[0].consumed_units()
