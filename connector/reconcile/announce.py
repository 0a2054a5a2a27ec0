"""The one place a pass says that a termination's state changed.

The PSA ticket note, the daemon's alerts and its metrics all hear the same announcement,
so none of them re-derives states from the store, and none of them can fail the pass: a
listener that raises is logged and the others still hear it. A dry run announces nothing,
because nothing really changed.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Callable, Iterable

from ..config import Config
from ..errors import OffboardError
from ..providers.connectwise.api import ConnectWise
from ..store import Store

log = logging.getLogger(__name__)

#: the states a termination's ticket hears about: finished, or waiting for a person
NOTED = ("done", "needs_human", "held")


@dataclass(frozen=True)
class StateChange:
    termination_id: str
    tenant: str
    before: str | None           # None: the termination was first seen in this pass
    after: str
    reason: str
    run_id: str


Listener = Callable[[StateChange], None]


class Announcer:
    def __init__(self, listeners: Iterable[Listener] = ()):
        self.listeners = tuple(listeners)

    def __call__(self, change: StateChange) -> None:
        if change.before == change.after:
            return
        for listener in self.listeners:
            try:
                listener(change)
            except Exception:  # a listener's failure is its own, never the pass's
                log.exception("a state listener failed on %s (%s -> %s)", change.termination_id, change.before,
                              change.after)

    def differences(self, tenant: str, before: dict[str, str], store: Store, run_id: str) -> None:
        """Announce every state of `tenant` that differs from `before` (id -> state), e.g. around intake."""
        if not self.listeners:
            return
        for row in store.terminations(tenant):
            if before.get(row["id"]) != row["state"]:
                self(StateChange(row["id"], tenant, before.get(row["id"]), row["state"], row["reason"] or "", run_id))


PENDING = "note-pending:"          # store cursors: a note the PSA refused, kept for `retry_pending`


class TicketNotes:
    """The engine's own listener: one internal note on the termination's ticket when it is done, needs a
    person or is held. The note ends with a tag of what it says, so the same news is never posted twice."""

    def __init__(self, config: Config, store: Store):
        self.config, self.store = config, store

    def __call__(self, change: StateChange) -> None:
        row = self.store.termination(change.termination_id)
        if change.after not in NOTED or self.config.psa is None or not row or not str(row["ticket"] or "").isdigit():
            return
        text = note_text(row, self.store.actions(row["id"]))
        try:
            with ConnectWise(self.config.psa) as psa:
                posted = psa.add_note_once(int(row["ticket"]), text, note_tag(row, self.store.actions(row["id"])))
        except OffboardError as e:
            self.store.audit("ticket_note_failed", row["id"], change.run_id, ticket=row["ticket"], reason=str(e))
            self.store.set_cursor(PENDING + row["id"], row["state"])       # `retry_pending` tries it again
            raise
        if self.store.cursor(PENDING + row["id"]) is not None:
            self.store.set_cursor(PENDING + row["id"], None)
        if posted:
            self.store.audit("ticket_note_posted", row["id"], change.run_id, ticket=row["ticket"], state=row["state"])


    def retry_pending(self) -> int:
        """Post again the notes a PSA that was down refused (the daemon calls this on a timer); how many went."""
        sent = 0
        for key in self.store.cursors(PENDING):
            row = self.store.termination(key[len(PENDING):])
            if row is None or row["state"] not in NOTED or self.config.psa is None:
                self.store.set_cursor(key, None)
                continue
            try:
                self(StateChange(row["id"], row["tenant"], None, row["state"], row["reason"] or "", None))
                sent += 1
            except OffboardError:
                continue                                         # still down: the next round tries again
        return sent


class TicketOpener:
    """The engine's own listener, with `[psa] ticket_board` set: a termination an HR feed brought in gets a
    ticket on that board, in the tenant's company, so its progress is noted somewhere a technician looks."""

    def __init__(self, config: Config, store: Store):
        self.config, self.store = config, store

    def __call__(self, change: StateChange) -> None:
        psa, row = self.config.psa, self.store.termination(change.termination_id)
        tenant = next((t for t in self.config.tenants if t.id == change.tenant), None)
        if change.before is not None or change.after not in ("scheduled", "held") or not row or row["ticket"] \
                or row["source"] == "on-demand" \
                or tenant is None or tenant.psa_company_id is None:
            return
        body = {"summary": f"Offboard: {row['email'] or row['employee_id']}"[:100],
                "company": {"id": tenant.psa_company_id}, "board": {"name": psa.ticket_board},
                "initialDescription": f"offboard-connector: {row['id']} from {row['source']}, due {row['due_at']}."}
        body.update({key: {"name": value} for key, value in (("status", psa.ticket_status), ("type", psa.ticket_type))
                     if value})
        with ConnectWise(psa) as api:
            ticket = api.post("/service/tickets", body)
        if self.store.set_state(row["id"], row["state"], row["reason"] or "", expect=(row["state"],),
                                ticket=str(ticket["id"])):
            self.store.audit("ticket_opened", row["id"], change.run_id, ticket=str(ticket["id"]))


def note_tag(row: dict, actions: list[dict]) -> str:
    """Names the termination and a digest of its state and outcomes (not their times): equal news, equal tag."""
    facts = "|".join([row["state"], row["reason"] or ""] + sorted(
        f"{a['provider']}/{a['action']}={a['status']}:{a['reason'] or ''}" for a in actions))
    return f"[offboard-connector {row['id']} {hashlib.sha256(facts.encode()).hexdigest()[:12]}]"


def note_text(row: dict, actions: list[dict]) -> str:
    """A Markdown table a technician reads in the ticket: every action, its outcome and time, then what is open."""
    cell = lambda value: str(value or "").replace("|", "/").replace("\n", " ")[:200]
    lines = [f"Offboarding of {cell(row['email'] or row['employee_id'])} ({row['id']}): **{row['state']}**", "",
             "| phase | system | action | outcome | at | reason |", "|---|---|---|---|---|---|"]
    lines += [f"| {a['phase']} | {cell(a['provider'])} | {a['action']} | {a['status']} | {cell(a['finished_at'])} "
              f"| {cell(a['reason'])} |" for a in actions]
    waiting = [f"- {a['provider']}/{a['action']}: {cell(a['reason'])}" for a in actions
               if a["status"] in ("needs_human", "failed")]
    if row["state"] == "held" and row["reason"]:
        waiting.insert(0, f"- held: {cell(row['reason'])}")
    lines += ["", "Still needs a person:" if waiting else "Nothing needs a person.", *waiting, "",
              note_tag(row, actions)]
    return "\n".join(lines)
