"""ConnectWise Manage as the tenant's PSA: the `bill` phase and the leaver's contact.

Billing is level-based, never a blind decrement: each agreement addition of `[tenant.billing]`
is set to the licences the tenant really has assigned now (read through the engine's facts,
from Microsoft 365), so a second run, or two leavers in one pass, leave the right number. With
`billing_basis = "subscribed"` it is set to the distributor's seats instead, as NCE lets them drop
now (the facts again, from the distributor), and comes back when queued seats may go at a renewal.
A count never goes below zero; at zero the addition gets a `cancelledDate`, as ConnectWise
expects, and is not deleted; a count that would rise is reported, not written, unless
`[psa] allow_increase`. The leaver's contacts (by email, in the tenant's `psa_company_id`)
are made inactive, and lose portal login where the record has that flag.

The PSA is one for the whole MSP (`[psa]`), so the engine builds this provider for every
tenant with a `psa_company_id` and hands it the tenant's facts.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from ...errors import OffboardError, PermanentError
from ...model import ActionContext, Match, PlannedAction, Result, Subject, Termination
from ..base import Provider
from ..facts import Facts, TenantFacts
from .api import ConnectWise

CONTACT_FLAGS = ("inactiveFlag", "disablePortalLoginFlag")


def quantity_text(entry: dict) -> str:
    return f"{entry['quantity']:g}" + (" (cancelled)" if entry.get("cancelledDate") else "")


class ConnectWiseProvider(Provider):
    type = "connectwise"
    actions: ClassVar[dict[str, str]] = {"deactivate_contact": "bill", "sync_billing": "bill",
                                         "reactivate_contact": "restore", "resync_billing": "restore"}
    undo: ClassVar[dict[str, str]] = {"deactivate_contact": "reactivate_contact", "sync_billing": "resync_billing"}

    def __init__(self, name, options, tenant, where="", facts: Facts | None = None):
        super().__init__(name, options, tenant, where or "psa")
        self.api = ConnectWise(options, self.where)
        self.facts = facts or TenantFacts([], self.where)

    def check_online(self) -> None:
        self.api.check()

    def close(self) -> None:
        self.api.close()

    # -- reading -----------------------------------------------------------
    def match(self, termination: Termination) -> Match:
        """Always matched: the tenant's invoice is this leaver's business even without a contact.

        A PSA that cannot be read now must not hold the leaver's other systems (matching is
        journaled with revoke, which gates every later phase): the contact is then looked up
        again when `deactivate_contact` runs, in `bill`."""
        try:
            contacts = self.api.contacts(self.tenant.psa_company_id, termination.email) if termination.email else []
        except OffboardError:
            contacts = None
        names = [termination.email] + [f"{c.get('firstName', '')} {c.get('lastName', '')}".strip()
                                       for c in contacts or []]
        native = ",".join(str(c["id"]) for c in contacts or []) or f"company/{self.tenant.psa_company_id}"
        return Match("matched", Subject(self.name, native, [n for n in names if n], {"contacts": contacts}))

    def plan(self, subject: Subject, termination: Termination) -> list[PlannedAction]:
        wanted = []
        contacts = subject.state["contacts"]
        if contacts is None or any(self.contact_change(c) for c in contacts):
            wanted.append(self.planned("deactivate_contact", "make the leaver's PSA contact inactive"))
        if self.tenant.billing:
            wanted.append(self.planned("sync_billing", "set the agreement additions to the licences assigned now"))
        return wanted

    # -- the contact ---------------------------------------------------------
    @staticmethod
    def contact_change(contact: dict) -> dict[str, bool]:
        return {flag: True for flag in CONTACT_FLAGS if flag in contact and contact[flag] is not True}

    def deactivate_contact(self, action: PlannedAction, ctx: ActionContext) -> Result:
        contacts = self.api.contacts(self.tenant.psa_company_id, ctx.termination.email)
        before = {str(c["id"]): {f: c[f] for f in CONTACT_FLAGS if f in c} for c in contacts}
        after = {cid: {f: True for f in flags} for cid, flags in before.items()}
        return self._set_contacts(before, after, ctx)

    def reactivate_contact(self, action: PlannedAction, ctx: ActionContext) -> Result:
        """Undo: each contact's flags back to the journaled before-state."""
        wanted = dict(action.params).get("before") or {}
        before = {cid: {f: self.api.get(f"/company/contacts/{int(cid)}").get(f) for f in flags}
                  for cid, flags in wanted.items()}
        return self._set_contacts(before, wanted, ctx)

    def _set_contacts(self, before: dict, after: dict, ctx: ActionContext) -> Result:
        result = self.outcome(before, after, ctx.dry_run)
        if result.outcome == "changed":
            for cid, flags in after.items():
                ops = [{"op": "replace", "path": f, "value": v} for f, v in flags.items() if before[cid].get(f) != v]
                if ops:
                    self.api.patch(f"/company/contacts/{int(cid)}", ops)
        return result

    # -- billing ------------------------------------------------------------
    def sync_billing(self, action: PlannedAction, ctx: ActionContext) -> Result:
        if self.tenant.billing_basis == "subscribed":
            counts, follow_at = self.facts.subscribed_units(ctx.now or dt.datetime.now(dt.timezone.utc))
        else:
            counts, follow_at = self.facts.consumed_units(), None
        agreement = self.tenant.psa_agreement_id
        before, after, notes, writes = {}, {}, [], []
        for sku, addition_id in sorted(self.tenant.billing.items()):
            path = f"/finance/agreements/{int(agreement)}/additions/{int(addition_id)}"
            addition = self.api.get(path)
            have = {"addition": addition_id, "quantity": number(addition.get("quantity"), path),
                    "cancelledDate": addition.get("cancelledDate")}
            before[sku] = have
            if sku not in counts:
                notes.append(f"{sku}: the tenant has no such licence (subscribedSkus): addition {addition_id} "
                             "left as it is")
                after[sku] = have
                continue
            want = self.wanted(have, max(0, int(counts[sku])), ctx.local_date or dt.date.today())
            if want["quantity"] > have["quantity"] and not self.options.allow_increase:
                notes.append(f"{sku}: {quantity_text(have)} -> {want['quantity']:g} would rise: not written "
                             "([psa] allow_increase = false)")
                after[sku] = have
                continue
            after[sku] = want
            notes.append(f"{sku} (addition {addition_id}): {quantity_text(have)} -> {quantity_text(want)}"
                         if want != have else f"{sku} (addition {addition_id}): {quantity_text(have)}, unchanged")
            ops = [{"op": "replace", "path": key, "value": want[key]} for key in ("quantity", "cancelledDate")
                   if want[key] != have[key]]
            if ops:
                writes.append((path, ops))
        if ctx.dry_run:
            notes.append("counted now: licences this run would still reclaim are in the count")
        result = self.outcome(before, after, ctx.dry_run, "; ".join(notes))
        result.next_attempt_at = follow_at     # seats paid until a renewal: the invoice follows when they go
        if result.outcome == "changed":
            for path, ops in writes:
                self.api.patch(path, ops)
        return result

    resync_billing = sync_billing      # undo: the real count again, by the same rules

    @staticmethod
    def wanted(have: dict, count: int, today: dt.date) -> dict[str, Any]:
        """At zero, ConnectWise's convention: keep the addition and cancel it; above zero, it runs."""
        if count == 0:
            cancelled = have["cancelledDate"] or f"{today.isoformat()}T00:00:00Z"
        else:
            cancelled = None
        return {**have, "quantity": count, "cancelledDate": cancelled}


def number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PermanentError(f"{where}: quantity is not a number: {str(value)[:40]!r}")
    return value
