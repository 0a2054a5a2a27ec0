"""Pull the HR feeds of one tenant and bring the store's terminations up to date.

The feed is the most dangerous input the daemon has: a broken export can look
like a mass layoff. So a source that fails contributes nothing, a whole read that
suddenly names nobody cancels nothing, and new terminations beyond the tenant's
limits are recorded as `held` and acted on only after `offboard approve`.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from .. import plugins
from ..config import Tenant
from ..errors import ConfigError, InputRejected, OffboardError, SourceError
from ..model import Termination
from ..sources.base import Pull
from ..store import PERSONAL_FIELDS, Store, iso
from .schedule import due_at

OPEN_BEFORE_DUE = ("scheduled", "held")
BEFORE_LOOKBACK = ("left more than lookback_days before the connector first saw it: not acted on "
                   "(offboard it with `offboard run` if it still needs doing)")
FINISHED = ("done", "cancelled")


def restriction_stays(termination_id: str, what: str) -> str:
    """DESIGN.md: a changed or withdrawn date during a notice period undoes nothing by itself."""
    return (f"{what} while the notice-period restriction is on: the restriction stays "
            f"(`offboard restore {termination_id}` undoes it)")
REVIVING = {"termination_date", "termination_time", "kind", "due_at", "email"}


@dataclass
class Intake:
    new: list[str] = field(default_factory=list)
    errors: list[OffboardError] = field(default_factory=list)        # source failures (exit 2) and config errors (exit 1)
    rejected: list[InputRejected] = field(default_factory=list)      # bad rows (exit 2)


def pull_sources(tenant: Tenant, store: Store, full: bool, intake: Intake) -> list[tuple[str, Pull]]:
    pulls = []
    for pc in tenant.sources:
        key = f"{tenant.id}/{pc.name}"
        try:
            source = plugins.load("sources", pc.type, pc.where)(pc.name, pc.options, tenant, pc.where)
            pull = source.pull(None if full else store.cursor(key))
        except (SourceError, ConfigError) as e:
            intake.errors.append(e.at(pc.where))
            continue
        except OffboardError as e:
            intake.errors.append(SourceError(str(e), pc.where))
            continue
        intake.rejected.extend(pull.rejected)
        pulls.append((pc.name, pull))
    return pulls


def termination_row(t: Termination, tenant: Tenant, stamp: str) -> dict:
    return {"id": t.id, "tenant": t.tenant, "employee_id": t.employee_id, "email": t.email,
            "first_name": t.first_name, "last_name": t.last_name, "manager_email": t.manager_email,
            "termination_date": t.termination_date.isoformat(),
            "termination_time": t.termination_time.strftime("%H:%M") if t.termination_time else None,
            "kind": t.kind, "source": t.source, "ticket": t.ticket, "due_at": iso(due_at(t, tenant)),
            "updated_at": stamp}


SCHEDULE_FIELDS = ("termination_date", "termination_time", "kind", "due_at", "email", "manager_email",
                   "first_name", "last_name", "ticket")


def record(tenant: Tenant, store: Store, terminations: list[Termination], now: dt.datetime, run_id: str,
           intake: Intake, on_demand: bool = False) -> None:
    """Insert new terminations, reschedule changed ones, cancel or flag the ones the feed says are active.

    `on_demand`: a person named these (`offboard run`, a ticket): no lookback, and a cancelled
    or finished one is opened again.
    """
    stamp = iso(now)
    horizon = dt.date.min if on_demand else now.astimezone(tenant.zone).date() - dt.timedelta(days=tenant.lookback_days)
    existing = {r["id"]: r for r in store.terminations(tenant.id)}
    seen_new: list[dict] = []
    writes: list[dict] = []
    events: list[tuple] = []
    for t in terminations:
        old = existing.get(t.id)
        if old and old["state"] == "restored" and not t.active and \
                (on_demand or t.termination_date.isoformat() != old["termination_date"]):
            archived = store.archive_termination(t.id)          # leaving again after a restore: a new termination
            events.append(("termination_archived", archived, run_id, {"was": t.id}))
            old = existing[t.id] = None
        if t.active:
            _active_again(store, old, t.source, run_id)
            continue
        row = termination_row(t, tenant, stamp)
        if old and old.get("ticket") and not row["ticket"]:
            row["ticket"] = old["ticket"]        # the ticket the connector opened: a feed without one keeps it
        if old is None and t.termination_date < horizon:
            row.update(state="cancelled", first_seen_at=stamp, approved_at=stamp, reason=BEFORE_LOOKBACK)
            writes.append(row)
            events.append(("termination_ignored", t.id, run_id, {"reason": BEFORE_LOOKBACK}))
        elif old is None:
            row.update(state="scheduled", first_seen_at=stamp, reason="")
            seen_new.append(row)
        else:
            changed = {k: row[k] for k in SCHEDULE_FIELDS if row[k] and row[k] != old.get(k)
                       and not (old.get("purged_at") and k in PERSONAL_FIELDS)}   # blanked by retention, not changed
            if on_demand and old["state"] in FINISHED:
                writes.append({**row, "state": "scheduled", "reason": ""})
                events.append(("termination_reopened", t.id, run_id, {"previous_state": old["state"]}))
            elif changed and old["state"] == "restricted":
                writes.append({**row, "state": "restricted", "reason": restriction_stays(t.id, "the date changed")})
                events.append(("termination_changed", t.id, run_id,
                               {"changes": changed, "reason": restriction_stays(t.id, "the date changed")}))
            elif changed and (old["state"] in OPEN_BEFORE_DUE + ("due",) or revived(old, changed)):
                if old["state"] == "cancelled" or counts_as_new(old, row, now):
                    # re-dated, re-addressed or revived: new to the limits, so a mass re-dating is held
                    row.update(state="scheduled", first_seen_at=stamp, approved_at=None, reason="")
                    seen_new.append(row)
                else:
                    writes.append({**row, "state": old["state"]})
                events.append(("termination_changed", t.id, run_id, {"changes": changed}))
        if old is None:
            existing[t.id] = row          # a person listed twice in one pull is new only once
    limit = _limit_reason(tenant, store, len(seen_new), now)
    for row in seen_new:
        if limit:
            row.update(state="held", reason=limit)
        events.append(("termination_seen", row["id"], run_id,
                       {"source": row["source"], "due_at": row["due_at"], "state": row["state"]}))
        intake.new.append(row["id"])
    store.upsert_terminations(writes + seen_new)
    store.audit_many(events)
    if limit and seen_new:
        store.add_hold(tenant.id, limit, [r["id"] for r in seen_new])
        store.audit("tenant_held", None, run_id, tenant=tenant.id, reason=limit, count=len(seen_new))


def revived(old: dict, changed: dict) -> bool:
    """A cancelled termination whose date or address the feed changes is a leaver again (not one
    cancelled for leaving before the connector's lookback: editing an old record revives nothing)."""
    return old["state"] == "cancelled" and old["reason"] != BEFORE_LOOKBACK and bool(changed.keys() & REVIVING)


def counts_as_new(old: dict, row: dict, now: dt.datetime) -> bool:
    """DESIGN.md: a date that moves to now or earlier, or a changed email, counts as first seen."""
    was_future = old["due_at"] > iso(now)
    return (was_future and row["due_at"] <= iso(now)) or row["email"] != old["email"]


def _active_again(store: Store, old: dict | None, source: str, run_id: str) -> None:
    """A feed that says a person is active withdraws only a termination that feed reported (as absence from a
    whole read does): BambooHR reports everyone not terminated as active, which says nothing of a leaver that a
    ticket or another feed reported. That one stays, and the disagreement is in its history."""
    if old is None or old["state"] == "cancelled":
        return
    if old["source"] != source:
        store.audit("termination_kept", old["id"], run_id, reason=f"{source} reports this person active; the "
                    f"termination came from {old['source'] or 'a person'} and only that source withdraws it")
        return
    if old["state"] in OPEN_BEFORE_DUE:
        store.set_state(old["id"], "cancelled", "the HR feed says this person is active again")
        store.audit("termination_cancelled", old["id"], run_id, reason="active again before it was due")
    elif old["state"] == "restricted":
        withdrawn(store, old["id"], run_id, "the HR feed says this person is active again")
    elif old["state"] not in ("needs_human", "restored", "deleted"):
        reason = f"rehired after offboarding: `offboard restore {old['id']}` gives the access back"
        store.set_state(old["id"], "needs_human", reason)
        before = {f"{a['provider']}/{a['action']}": json.loads(a["before"]) for a in store.actions(old["id"])
                  if a["status"] == "changed" and a["before"]}
        store.audit("termination_rehired", old["id"], run_id, reason=reason, restore=before)


def cancel_missing(tenant: Tenant, store: Store, pulls: list[tuple[str, Pull]], run_id: str,
                   intake: Intake) -> None:
    """A whole read that no longer names a scheduled leaver cancels them, within limits.

    One that names nobody is not believed. One that would cancel more than
    `max_terminations_per_run` is a suspect feed: the cancellations are held for a person
    (exit 3) and nothing changes. A rejected row still counts as present for the ids it names.
    """
    for name, pull in pulls:
        if not pull.complete:
            continue
        present = {t.id for t in pull.terminations} | {i for r in pull.rejected for i in r.ids}
        waiting = [r for r in store.terminations(tenant.id, OPEN_BEFORE_DUE + ("restricted",)) if r["source"] == name]
        missing = [r for r in waiting if r["id"] not in present]
        if not missing:
            continue
        if not pull.terminations:
            intake.errors.append(SourceError(f"a whole read returned nobody while {len(waiting)} termination(s) "
                                             "are scheduled: not believed, nothing cancelled", f"{tenant.id}/{name}"))
            continue
        if len(missing) > tenant.max_terminations_per_run:
            ids = [r["id"] for r in missing]
            if not any(set(json.loads(h["terminations"])) == set(ids) for h in store.open_holds(tenant.id, "cancel")):
                reason = (f"a read of {name} would cancel {len(ids)} scheduled terminations, more than "
                          f"max_terminations_per_run = {tenant.max_terminations_per_run}: suspect feed, nothing "
                          f"cancelled (`offboard approve --tenant {tenant.id}` cancels them)")
                store.add_hold(tenant.id, reason, ids, kind="cancel")
                store.audit("cancellations_held", None, run_id, tenant=tenant.id, source=name, terminations=ids)
            continue
        for r in missing:
            if r["state"] == "restricted":
                withdrawn(store, r["id"], run_id, "the termination disappeared from the HR feed")
                continue
            store.set_state(r["id"], "cancelled", "no longer in the HR feed before it was due")
            store.audit("termination_cancelled", r["id"], run_id, reason="disappeared from the feed before it was due")


def withdrawn(store: Store, termination_id: str, run_id: str, what: str) -> None:
    """A restricted termination the feed withdraws: a person decides (restore), nothing is undone by itself."""
    reason = restriction_stays(termination_id, what)
    store.set_state(termination_id, "needs_human", reason, expect=("restricted",))
    store.audit("termination_withdrawn", termination_id, run_id, reason=reason)


def _limit_reason(tenant: Tenant, store: Store, new: int, now: dt.datetime) -> str:
    if store.open_hold(tenant.id):
        return "the tenant is held by a safety limit: release it with `offboard approve --tenant " + tenant.id + "`"
    if new > tenant.max_terminations_per_run:
        return (f"{new} new terminations in one pull exceed max_terminations_per_run = "
                f"{tenant.max_terminations_per_run}: check the feed, then `offboard approve --tenant {tenant.id}`")
    recent = store.count_first_seen_since(tenant.id, now - dt.timedelta(hours=24))
    if new and recent + new > tenant.max_terminations_per_day:
        return (f"{recent + new} new terminations in 24 hours exceed max_terminations_per_day = "
                f"{tenant.max_terminations_per_day}: check the feed, then `offboard approve --tenant {tenant.id}`")
    return ""
