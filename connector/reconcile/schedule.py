"""When a termination becomes due, in the tenant's own zone (DST included)."""
from __future__ import annotations

import datetime as dt

from ..config import Tenant
from ..model import Termination


def due_at(termination: Termination, tenant: Tenant) -> dt.datetime:
    """At the record's time on its date; else the policy's `revoke_at`; `immediate` without a time at once.

    "At once" for an immediate record means the start of its date: a same-day or
    past record is due now, one dated tomorrow waits for tomorrow.
    """
    if termination.termination_time is not None:
        at = termination.termination_time
    elif termination.kind == "immediate":
        at = dt.time(0, 0)
    else:
        at = tenant.policy.revoke_at
    local = dt.datetime.combine(termination.termination_date, at, tzinfo=tenant.zone)
    return local.astimezone(dt.timezone.utc)


def local_date(when: dt.datetime, tenant: Tenant) -> dt.date:
    return when.astimezone(tenant.zone).date()
