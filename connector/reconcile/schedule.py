"""When a termination becomes due, in the tenant's own zone (DST included), and what is workable when.

A termination's life has three instants: the start of its notice-period restriction
(`restrict_days_before` the due instant, same local wall-clock time), the due instant, and
the end of retention (`delete_after_days` after the due instant). Each decides which phases
a pass may run; `next_wakeup` tells the daemon the next of them, so it wakes at the instant
instead of at the next poll.
"""
from __future__ import annotations

import datetime as dt
from typing import Collection

from ..config import Config, Tenant
from ..model import PHASES, Termination
from ..store import StateStore, parse_iso

#: what a pass may do for a termination in each window of its life
RESTRICT_ONLY = ("restrict",)
OFFBOARD = tuple(p for p in PHASES if p not in ("restrict", "retain"))
RETAIN_ONLY = ("retain",)
#: a `done` termination's later job: a seat reduction queued for a licence's renewal window (its `bill` action
#: finished, with a `next_attempt_at`); it does not reopen the termination while it waits
QUEUED = ("bill",)
LATER = ("done", "deleted")       # a deleted leaver's queued seat still goes at its renewal: retention is often shorter


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


def shifted(when: dt.datetime, days: int, tenant: Tenant) -> dt.datetime:
    """`days` calendar days from `when` at the same local wall-clock time (a DST change between keeps the hour)."""
    local = when.astimezone(tenant.zone)
    moved = dt.datetime.combine(local.date() + dt.timedelta(days=days), local.time(), tzinfo=tenant.zone)
    return moved.astimezone(dt.timezone.utc)


def restrict_at(due: dt.datetime, tenant: Tenant) -> dt.datetime | None:
    days = tenant.policy.restrict_days_before
    return shifted(due, -days, tenant) if days else None


def retain_at(due: dt.datetime, tenant: Tenant) -> dt.datetime | None:
    days = tenant.policy.delete_after_days
    return shifted(due, days, tenant) if days else None


def workable_phases(row: dict, tenant: Tenant, now: dt.datetime,
                    queued: list[dt.datetime] | tuple = ()) -> tuple[str, ...]:
    """The phases a pass may run now for this termination row; () when it has nothing to do yet.

    Before its restriction starts: nothing. In the notice period: restrict only (a restricted
    one waits for its due instant). Due: revoke to bill. Retain runs only for a `done` one once
    retention is over (it is not reopened before): what the account anchors is judged on the
    state the whole offboarding left, never before a mailbox became shared. A `done` or `deleted`
    one's `bill` runs again once one of its `queued` later jobs comes due.
    """
    due = parse_iso(row["due_at"])
    retain = retain_at(due, tenant)
    retention_over = retain is not None and retain <= now
    if row["state"] == "done" and retention_over:
        return RETAIN_ONLY
    if row["state"] in LATER:
        return QUEUED if any(q <= now for q in queued) else ()
    if due <= now:
        return OFFBOARD
    start = restrict_at(due, tenant)
    if start is not None and start <= now and row["state"] in ("scheduled", "due", "in_progress"):
        return RESTRICT_ONLY
    return ()


def next_wakeup(config: Config, store: StateStore, now: dt.datetime,
                tenants: Collection[str] | None = None) -> dt.datetime | None:
    """The earliest instant after `now` at which something becomes workable: a due instant, the start of a
    restriction, an action's `next_attempt_at` (a retry, or a queued seat reduction's renewal window), the end of a
    retention; None when nothing waits. `tenants` narrows it to those (a daemon's own share)."""
    instants: list[dt.datetime] = []
    states = ("scheduled", "due", "restricted", "in_progress", *LATER)
    for tenant in config.tenants:
        if tenants is not None and tenant.id not in tenants:
            continue
        waits = store.next_attempts(tenant.id, states)
        for row in store.terminations(tenant.id, states):
            due = parse_iso(row["due_at"])
            instants += waits.get(row["id"], [])
            if row["state"] in LATER:
                instants.append(retain_at(due, tenant) if row["state"] == "done" else None)
            else:
                instants += [due, restrict_at(due, tenant) if row["state"] != "restricted" else None]
    future = [i for i in instants if i is not None and i > now]
    return min(future, default=None)


def next_due(config: Config, store: StateStore, after: dt.datetime,
             tenants: Collection[str] | None = None) -> tuple[dt.datetime, list[dict]] | None:
    """The earliest due instant after `after` of a termination not yet worked on (scheduled, or in its
    notice period), and those due then: what a pass can read and plan for ahead of the instant."""
    rows = [row for tenant in config.tenants if tenants is None or tenant.id in tenants
            for row in store.terminations(tenant.id, ("scheduled", "restricted"))
            if parse_iso(row["due_at"]) > after]
    if not rows:
        return None
    first = min(parse_iso(row["due_at"]) for row in rows)
    return first, [row for row in rows if parse_iso(row["due_at"]) == first]
