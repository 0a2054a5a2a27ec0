"""What one provider may read from the others of its tenant, without holding them or the engine.

The PSA's `bill` phase invoices what Microsoft 365 really has assigned, or (`billing_basis =
"subscribed"`) the seats the distributor will charge; the distributor's seat reduction needs the
assigned count too. The engine hands each this read-only view of the tenant's other providers, so
neither imports a Microsoft 365 provider (or `connector.reconcile`), and a tenant without the system
a fact comes from is a clear error, not a zero.
"""
from __future__ import annotations

import datetime as dt
from typing import Protocol

from ..errors import ConfigError


class Facts(Protocol):
    def consumed_units(self) -> dict[str, int]:
        """Licences assigned now, per SKU part number (Graph `subscribedSkus[].consumedUnits`)."""

    def subscribed_units(self, now: dt.datetime) -> tuple[dict[str, int], dt.datetime | None]:
        """Seats the distributor charges once the reductions allowed `now` are made, per SKU part number, and
        when the next freed seat that is paid until its renewal may go (billing on subscribed seats follows then)."""


class TenantFacts:
    def __init__(self, providers: list, where: str = ""):
        self._counters = [p for p in providers if callable(getattr(p, "consumed_units", None))]
        self._distributors = [p for p in providers if callable(getattr(p, "subscribed_units", None))]
        self.where = where

    def consumed_units(self) -> dict[str, int]:
        if not self._counters:
            raise ConfigError("billing needs the tenant's licence counts: add an entra provider", self.where)
        return self._counters[0].consumed_units()

    def subscribed_units(self, now: dt.datetime) -> tuple[dict[str, int], dt.datetime | None]:
        if not self._distributors:
            raise ConfigError('billing_basis = "subscribed" needs the distributor: set pax8_company_id and '
                              "[distributor]", self.where)
        return self._distributors[0].subscribed_units(now)
