"""The monthly evidence a client and its auditor ask for after every leaver: proof that access went, and how fast.

Every figure comes from the action journal and the audit head, and nothing else: the report reads a
copy of the store (as `plan` does), so what it says can be checked against `offboard audit verify`
and `offboard history`, and making it changes nothing.

Time to revoke runs from the due instant to the last revoke write confirmed (the latest `finished_at`
of the revoke phase, once every revoke action is changed, unchanged or skipped). A leaver whose revoke
phase is not confirmed counts as neither within 1 h nor within 24 h. Percentiles are nearest-rank
over the confirmed leavers. Seats freed are the licences `remove_licenses` journaled as removed. Until
when each is paid, and what it cost a month, come from the distributor's first journaled decision for the
leaver (`reduce_seats`: the renewal date of a seat that had to wait for it, else the day its seat went,
and Pax8's partner cost), else from the terms declared in `[tenant.licences]` (annual and triennial: the
`renews` date; monthly: the end of the month the seat was freed, the anniversary being unknown), with a
declared `price` first. Where neither says, the seat shows none, and the report says so instead of
guessing. The cost avoided is the monthly price of every priced seat freed.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import statistics
from importlib import resources

import jinja2

from ..config import Tenant
from ..store import Store, parse_iso

CONFIRMED = ("changed", "unchanged", "skipped")
NOT_LEAVERS = ("scheduled", "cancelled")     # not yet due, or never left
HOUR, DAY = 3600, 86400
NO_DISTRIBUTOR = "no distributor data: paid-until dates need the distributor's licence terms"
NO_PRICES = "no prices in config: cost avoided is not shown"
CSV_FIELDS = ("record", "id", "employee_id", "email", "name", "state", "ticket", "hr_date", "first_seen_at",
              "due_at", "revoked_at", "revoke_seconds", "phase", "provider", "action", "outcome", "at", "reason",
              "licence", "via", "paid_until", "monthly_cost", "key", "value")


def month_bounds(month: str, zone) -> tuple[dt.datetime, dt.datetime]:
    """`YYYY-MM` -> [first instant, first instant of the next month) in the tenant's zone."""
    start = dt.datetime.strptime(month, "%Y-%m").replace(tzinfo=zone)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start, end


def build(store: Store, tenant: Tenant, month: str) -> dict:
    """The report's facts: every output format renders exactly these."""
    start, end = month_bounds(month, tenant.zone)
    leavers = [leaver(store, row, tenant) for row in store.terminations(tenant.id)
               if row["state"] not in NOT_LEAVERS and row["due_at"] and start <= parse_iso(row["due_at"]) < end]
    leavers.sort(key=lambda x: (x["due_at"], x["id"]))
    freed = [seat for x in leavers for seat in x["seats_freed"]]
    notes = [note for note, missing in ((NO_DISTRIBUTOR, [s for s in freed if not s["paid_until"]]),
                                        (NO_PRICES, [s for s in freed if s["monthly_cost"] is None]))
             if missing or not freed]
    return {"tenant": tenant.id, "company": tenant.name, "timezone": tenant.timezone, "month": month,
            "summary": summary(leavers), "leavers": leavers, "audit_head": store.audit_head(), "notes": notes}


def leaver(store: Store, row: dict, tenant: Tenant) -> dict:
    actions = store.actions(row["id"])
    revoke = [a for a in actions if a["phase"] == "revoke"]
    confirmed = bool(revoke) and all(a["status"] in CONFIRMED for a in revoke)
    revoked_at = max(a["finished_at"] for a in revoke) if confirmed else None
    seconds = max(0, int((parse_iso(revoked_at) - parse_iso(row["due_at"])).total_seconds())) if revoked_at else None
    hr_date = " ".join(filter(None, (row["termination_date"], row["termination_time"])))
    return {
        "id": row["id"], "employee_id": row["employee_id"], "email": row["email"] or "",
        "name": " ".join(filter(None, (row["first_name"], row["last_name"]))), "state": row["state"],
        "ticket": row["ticket"] or "", "hr_date": hr_date, "first_seen_at": row["first_seen_at"] or "",
        "due_at": row["due_at"], "revoked_at": revoked_at, "revoke_seconds": seconds,
        "actions": [{"phase": a["phase"], "provider": a["provider"], "action": a["action"], "outcome": a["status"],
                     "at": a["finished_at"] or "", "reason": a["reason"] or ""} for a in actions],
        "needs_person": [f"{a['provider']}/{a['action']}: {a['reason'] or 'needs a person'}"
                         for a in actions if a["status"] == "needs_human"],
        "seats_freed": [seat for a in actions if a["action"] == "remove_licenses" and a["status"] == "changed"
                        for seat in seats(a, seat_terms(store, row["id"]), tenant)],
    }


def seats(action: dict, terms: dict[str, dict], tenant: Tenant) -> list[dict]:
    """What one journaled licence removal freed: direct SKUs, and licence groups left (their seats go with them),
    each with the date it is paid until and its monthly cost where the distributor or the config says."""
    before, after = (json.loads(action[k]) if action[k] else None for k in ("before", "after"))
    if not isinstance(before, dict) or not isinstance(after, dict):      # purged by retention, or not a removal
        return []
    freed_on = parse_iso(action["finished_at"]).astimezone(tenant.zone).date() if action["finished_at"] else None
    out = []
    for key, via in (("skus", "direct"), ("groups", "group")):
        for name in before.get(key, []):
            if name in after.get(key, []):
                continue
            known, declared = terms.get(name, {}), tenant.licences.get(name)
            paid_until = known.get("paid_until") or (declared_until(declared, freed_on) if declared else "")
            price = declared.price if declared and declared.price is not None else known.get("price")
            out.append({"licence": name, "via": via, "paid_until": paid_until, "monthly_cost": price})
    return out


def seat_terms(store: Store, termination_id: str) -> dict[str, dict]:
    """SKU -> {paid_until, price} from the distributor's first decision for this leaver (its audit entry, which the
    journal's later runs do not overwrite): a seat that waited is paid until the renewal, one cut then (by this
    leaver's action or another's in the same pass) until that day."""
    for entry in store.audit_trail(termination_id):
        data = json.loads(entry["data"]) if entry["data"] else {}
        if entry["event"] in ("action_changed", "action_unchanged") and data.get("action") == "reduce_seats":
            return {sku: {"paid_until": a.get("paid_until") or "", "price": a.get("price")}
                    for sku, a in (data.get("after") or {}).items() if isinstance(a, dict) and "term" in a}
    return {}


def declared_until(term, freed_on: dt.date | None) -> str:
    """`[tenant.licences]`: the renewal date declared; monthly, the end of the month the seat was freed."""
    if term.renews is not None:
        return term.renews.isoformat()
    if freed_on is None:
        return ""
    return ((freed_on.replace(day=1) + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)).isoformat()


def nearest_rank(values: list[int], share: float) -> int | None:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)] if ordered else None


def summary(leavers: list[dict]) -> dict:
    times = [x["revoke_seconds"] for x in leavers if x["revoke_seconds"] is not None]
    within = lambda limit: round(sum(t <= limit for t in times) / len(leavers), 4) if leavers else None
    return {"leavers": len(leavers), "revoked": len(times),
            "median_seconds": statistics.median(times) if times else None, "p95_seconds": nearest_rank(times, 0.95),
            "within_1h": within(HOUR), "within_24h": within(DAY),
            "licences_reclaimed": sum(len(x["seats_freed"]) for x in leavers),
            "cost_avoided_monthly": round(sum(seat["monthly_cost"] or 0 for x in leavers for seat in x["seats_freed"]), 2),
            "needs_person": sum(bool(x["needs_person"]) for x in leavers)}


def to_json(facts: dict) -> str:
    return json.dumps(facts, indent=2, sort_keys=True, default=str) + "\n"


def to_csv(facts: dict) -> str:
    """One file, one record kind per row (`summary`, `audit_head`, `note`, `leaver`, `action`, `seat`, `needs_person`)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    meta = {k: facts[k] for k in ("tenant", "company", "timezone", "month")}
    for key, value in [*meta.items(), *facts["summary"].items()]:
        writer.writerow({"record": "summary", "key": key, "value": value})
    for key, value in facts["audit_head"].items():
        writer.writerow({"record": "audit_head", "key": key, "value": value})
    for note in facts["notes"]:
        writer.writerow({"record": "note", "value": note})
    for x in facts["leavers"]:
        writer.writerow({"record": "leaver", **{k: v for k, v in x.items() if k in CSV_FIELDS}})
        for a in x["actions"]:
            writer.writerow({"record": "action", "id": x["id"], **a})
        for s in x["seats_freed"]:
            writer.writerow({"record": "seat", "id": x["id"], **s})
        for text in x["needs_person"]:
            writer.writerow({"record": "needs_person", "id": x["id"], "reason": text})
    return out.getvalue()


def duration(seconds: int | None) -> str:
    if seconds is None:
        return "revoke not confirmed"
    hours, rest = divmod(int(seconds), HOUR)
    return f"{hours // 24}d {hours % 24}h {rest // 60}m" if hours >= 24 else f"{hours}h {rest // 60}m"


def chart(leavers: list[dict], width: int = 640, row: int = 22) -> dict:
    """Bars on a log scale (minutes to days side by side), with the 1 h and 24 h marks."""
    longest = max([DAY * 2] + [x["revoke_seconds"] or 0 for x in leavers])
    scale = lambda s: round(width * math.log1p(s / 60) / math.log1p(longest / 60), 1)
    bars = [{"id": x["id"], "y": i * row, "width": max(2.0, scale(x["revoke_seconds"] or 0)),
             "revoked": x["revoke_seconds"] is not None, "label": duration(x["revoke_seconds"])}
            for i, x in enumerate(leavers)]
    return {"width": width, "height": max(1, len(leavers)) * row, "row": row, "bars": bars,
            "lines": [{"x": scale(HOUR), "label": "1 h"}, {"x": scale(DAY), "label": "24 h"}]}


def to_html(facts: dict) -> str:
    env = jinja2.Environment(loader=jinja2.FunctionLoader(
        lambda name: resources.files(__package__).joinpath("templates", name).read_text()),
        autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["duration"] = duration
    env.filters["percent"] = lambda v: "" if v is None else f"{v * 100:.0f}%"
    return env.get_template("report.html.j2").render(facts=facts, chart=chart(facts["leavers"]))


RENDER = {"html": to_html, "csv": to_csv, "json": to_json}
