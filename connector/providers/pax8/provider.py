"""Pax8 as the tenant's distributor: the seats `reclaim` freed stop being paid for, when NCE allows.

`reduce_seats` (phase `bill`, after every provider's `reclaim`) reads, for each SKU of
`[tenant.pax8_subscriptions]`, the subscription (quantity, billingTerm, commitmentTerm) and its history,
and the licences the tenant has assigned now (through the engine's facts, from Microsoft 365). The rule
of connector/providers/pax8/nce.py decides what may go now: inside the seats' 168-hour window it sets
the quantity with `PUT /subscriptions/{id}` to the seats still assigned (level-based, never a blind
decrement; a quantity that would rise is never written); outside it nothing is cut, the seats show as
`paid until YYYY-MM-DD`, and the result names the renewal as its `next_attempt_at`, so the engine
brings the action back when that window opens and it counts again. Before and after, with each SKU's
paid-until date (the renewal for seats that wait, else the pass's day: a seat freed now goes now) and price per seat (config `[tenant.licences]` first, else the partner cost Pax8
answers), go to the journal: the report reads them from there.

The distributor is one for the whole MSP (`[distributor]`): the engine builds this provider for every
tenant with a `pax8_company_id` and hands it the tenant's facts; the PSA reads `subscribed_units`
back through its own facts where the tenant bills on subscribed seats.
"""
from __future__ import annotations

import datetime as dt
from typing import ClassVar

from ...model import ActionContext, Match, PlannedAction, Result, Subject, Termination
from ..base import Provider
from ..facts import Facts, TenantFacts
from .api import Pax8
from .nce import TERM_MONTHS, Decision, decide


def seats(n: int) -> str:
    return f"{n} seat" + ("" if n == 1 else "s")


class Pax8Provider(Provider):
    type = "pax8"
    actions: ClassVar[dict[str, str]] = {"reduce_seats": "bill"}

    def __init__(self, name, options, tenant, where="", facts: Facts | None = None):
        super().__init__(name, options, tenant, where or "distributor")
        self.api = Pax8(options, self.where)
        self.facts = facts or TenantFacts([], self.where)

    def check_online(self) -> None:
        self.api.check(self.tenant.pax8_company_id)

    def close(self) -> None:
        self.api.close()

    def match(self, termination: Termination) -> Match:
        """Always matched: the tenant's seats are every leaver's business; the distributor has no user."""
        return Match("matched", Subject(self.name, f"company/{self.tenant.pax8_company_id}",
                                        [termination.email] if termination.email else []))

    def plan(self, subject: Subject, termination: Termination) -> list[PlannedAction]:
        if not self.tenant.pax8_subscriptions:
            return []
        return [self.planned("reduce_seats", "cut the distributor's seats to the licences assigned, where NCE allows")]

    # -- deciding ------------------------------------------------------------------
    def decisions(self, now: dt.datetime) -> dict[str, tuple[dict, Decision | str]]:
        """SKU -> (its subscription, the rule's decision, or why it is left as it is)."""
        counts = self.facts.consumed_units()
        out = {}
        for sku, sid in sorted(self.tenant.pax8_subscriptions.items()):
            subscription = self.api.subscription(sid)
            term = subscription.get("billingTerm")
            if sku not in counts:
                out[sku] = (subscription, f"{sku}: the tenant has no such licence (subscribedSkus): subscription "
                                          f"{sid} left as it is")
            elif term not in TERM_MONTHS:
                out[sku] = (subscription, f"{sku}: billing term {term!r} of subscription {sid} is not one NCE's rule "
                                          "covers (Monthly, Annual, 2-Year, 3-Year): left as it is")
            else:
                out[sku] = (subscription, decide(subscription, self.api.history(sid), counts[sku], now,
                                                 f"{self.where}: subscription {sid} ({sku})"))
        return out

    def subscribed_units(self, now: dt.datetime) -> tuple[dict[str, int], dt.datetime | None]:
        """The facts seam: what the distributor charges once the reductions NCE allows now are made, and the
        next renewal at which a freed seat may go."""
        decided = [(sku, d) for sku, (_, d) in self.decisions(now).items() if isinstance(d, Decision)]
        return ({sku: d.new_quantity for sku, d in decided},
                min((d.next_window for _, d in decided if d.next_window), default=None))

    def price(self, sku: str, subscription: dict) -> float | None:
        """Per seat and month: `[tenant.licences]` first, else Pax8's partner cost (what the MSP pays), else price."""
        declared = self.tenant.licences.get(sku)
        if declared is not None and declared.price is not None:
            return declared.price
        for key in ("partnerCost", "price"):
            if isinstance(subscription.get(key), (int, float)) and not isinstance(subscription.get(key), bool):
                return float(subscription[key])
        return None

    # -- acting ----------------------------------------------------------------------
    def reduce_seats(self, action: PlannedAction, ctx: ActionContext) -> Result:
        now = ctx.now or dt.datetime.now(dt.timezone.utc)
        before, after, notes, writes, windows = {}, {}, [], [], []
        for sku, (subscription, d) in self.decisions(now).items():
            sid = self.tenant.pax8_subscriptions[sku]
            have = {"subscription": sid, "quantity": subscription.get("quantity")}
            before[sku] = have
            if not isinstance(d, Decision):
                notes.append(d)
                after[sku] = have
                continue
            after[sku] = {**have, "quantity": d.new_quantity, "term": d.term, "freed": max(0, d.quantity - d.assigned),
                          "waiting": d.waiting, "paid_until": (d.paid_until or now.date()).isoformat(),
                          "price": self.price(sku, subscription)}
            text = f"{sku} ({d.term}, subscription {sid}): {d.quantity}"
            if d.new_quantity < d.quantity:
                writes.append((sid, d.new_quantity))
                text += f" -> {d.new_quantity}"
            if d.waiting:
                windows.append(d.next_window)
                text += (f"; {seats(d.waiting)} paid until {d.paid_until.isoformat()}: reduction queued for the "
                         f"renewal window then")
            elif d.assigned > d.quantity:
                text += f"; {d.assigned} assigned would rise: not written"
            elif d.new_quantity == d.quantity:
                text += ", unchanged; " + (f"{seats(d.in_window)} inside their 168 h window" if d.in_window else
                                           f"a seat freed now stays paid until {d.term_end.date().isoformat()}")
            notes.append(text)
        if ctx.dry_run:
            notes.append("counted now: licences this run would still reclaim are in the count")
        outcome = ("planned" if ctx.dry_run else "changed") if writes else "unchanged"
        if outcome == "changed":
            for sid, quantity in writes:
                self.api.set_quantity(sid, quantity)
        return Result(outcome, before, after, "; ".join(notes), min(windows, default=None))
