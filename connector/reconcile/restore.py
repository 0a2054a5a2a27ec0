"""`offboard restore ID`: a rehire or a mistake, undone from the journal's before-states.

Every action the journal shows `changed` is put back by the action its provider names in
`undo`, in reverse phase order (retain first: a soft-deleted user must exist before anything
else is put back into it; licences before the mailbox that needs one), each step journaled
before and after like any other action and idempotent, so a second restore changes nothing.
An action with no undo entry is `needs_human`, by name. Passwords are never restored: the
providers show the operator a new password or a Temporary Access Pass once (`shown`), which
reaches neither the journal nor a log. The termination ends `restored`; anything left for a
person makes it `needs_human`, so no pass takes up the offboarding again.
"""
from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from typing import Callable

from ..config import Config, Tenant
from ..errors import ConfigError, OffboardError, PermanentError
from ..model import PHASES, RESTORE, ActionContext, PlannedAction, Result, Subject
from ..providers.base import Provider
from ..store import Store, now as utcnow, parse_iso
from .engine import build_providers
from .execute import FINISHED, Executor, termination_from_row
from .leases import Leases, owner_id
from .person import Observation


@dataclass
class Restored:
    termination_id: str
    run_id: str
    dry_run: bool
    state: str = ""
    reason: str = ""
    steps: list[dict] = field(default_factory=list)     # {provider, action, undoes, outcome, reason}
    shown: list[str] = field(default_factory=list)      # for the operator's eyes once: never stored or logged
    config_errors: list[OffboardError] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.config_errors:
            return 1
        return 0 if all(s["outcome"] in FINISHED + ("planned",) for s in self.steps) else 2


def undo_order(journal: list[dict], providers: dict[str, Provider]) -> list[dict]:
    """The changed actions, latest phase first and, within a phase, each provider's actions in reverse."""
    def key(row: dict) -> tuple[int, int]:
        order = list(providers[row["provider"]].actions) if row["provider"] in providers else []
        return (-PHASES.index(row["phase"]),
                -(order.index(row["action"]) if row["action"] in order else len(order)))
    return sorted((r for r in journal if r["status"] == "changed" and r["phase"] in PHASES), key=key)


def restore(config: Config, store: Store, termination_id: str, *, dry_run: bool = False,
            providers: Callable[[Tenant], list[Provider]] = build_providers, now: dt.datetime | None = None,
            run_id: str | None = None) -> Restored:
    row = store.termination(termination_id)
    if row is None:
        raise ConfigError("no such termination (see `offboard status --all`)", termination_id)
    tenant = config.tenant(row["tenant"])
    report = Restored(termination_id, run_id or uuid.uuid4().hex[:12], dry_run)
    with Leases(store, owner_id(report.run_id), config.connector.lease_seconds) as leases:
        if not leases.take(f"termination:{termination_id}"):
            raise ConfigError("another worker is working on this termination now: try again when its pass ends",
                              termination_id)
        store.start_run(report.run_id, "restore", tenant.id, dry_run)
        built = providers(tenant)
        try:
            _Restore(tenant, store, built, row, report, now or utcnow()).run()
        finally:
            for p in built:
                p.close()
        store.finish_run(report.run_id, report.exit_code, {"restore": termination_id, "state": report.state},
                         [termination_id])
    return report


class _Restore:
    def __init__(self, tenant: Tenant, store: Store, built: list[Provider], row: dict, report: Restored,
                 now: dt.datetime):
        self.tenant, self.store, self.row, self.report = tenant, store, row, report
        self.providers = {p.name: p for p in built}
        self.termination = termination_from_row(row)
        self.executor = Executor(tenant, store, built, report.run_id, report.dry_run, now)
        self.journal = store.actions(row["id"])
        self.subjects: dict[str, Subject | None] = {}
        self.down: dict[str, OffboardError] = {}
        self.coming_back: set[str] = set()        # providers whose account a dry run would bring back first

    def run(self) -> None:
        for name, provider in self.providers.items():
            try:
                provider.check_online()
            except OffboardError as e:
                self.down[name] = e.at(provider.where)
                if isinstance(e, ConfigError):
                    self.report.config_errors.append(e)
        steps = undo_order(self.journal, self.providers)
        for row in [r for r in steps if r["phase"] == "retain"]:
            if self.step(row, self.remembered(row["provider"])) == "planned":
                self.coming_back.add(row["provider"])
        for row in [r for r in steps if r["phase"] != "retain"]:
            self.step(row, self.subject(row["provider"]))
        self.settle()

    def remembered(self, name: str) -> Subject | None:
        """The account as the journal last saw it: what undoes a deletion (the account cannot be matched)."""
        stored = next((r["after"] for r in self.journal if r["id"] == f"{self.row['id']}/{name}/match_account"), None)
        seen = Observation.load(json.loads(stored) if stored else None)
        return seen and Subject(name, seen.native_id, seen.names, anchor=seen.anchor)

    def subject(self, name: str) -> Subject | None:
        """The account as it is now (after any undeletion), matched once."""
        if name not in self.subjects and name in self.providers and name not in self.down:
            provider = self.providers[name]
            try:
                provider.prepare([self.termination])
                match = provider.match(self.termination)
                self.subjects[name] = match.subject if match.status == "matched" else None
            except OffboardError as e:
                self.down[name] = e.at(provider.where)
        return self.subjects.get(name)

    def step(self, original: dict, subject: Subject | None) -> str:
        """Undo one journaled action; -> the outcome."""
        name, action = original["provider"], original["action"]
        provider = self.providers.get(name)
        undo = provider.undo.get(action) if provider else None
        if undo == "":
            return self.record(name, action, f"undo_{action}", Result("skipped", reason="nothing to put back"))
        if undo is None:
            return self.record(name, action, f"undo_{action}", Result(
                "needs_human", reason=f"{name}/{action} cannot be undone automatically: put it back by hand "
                                      f"(before: {original['before']})"))
        if name in self.down:
            return self.record(name, action, undo, self.down[name])
        if subject is None:
            return self.record(name, action, undo, Result("planned", reason="once the account is back")
                               if name in self.coming_back else
                               PermanentError(f"the account is not found in {name}: nothing to put back into"))
        aid = f"{self.row['id']}/{name}/undo_{action}"
        previous = self.store.action(aid)
        intent = self.store.record_intent(aid, self.row["id"], name, undo, RESTORE, self.report.run_id)
        since = parse_iso((previous or intent)["first_intent_at"])
        planned = PlannedAction(name, undo, RESTORE, f"undo {action}",
                                (("action", action), ("before", json.loads(original["before"] or "null"))))
        ctx = ActionContext(self.termination, subject, dry_run=self.report.dry_run, since=since,
                            ticket=self.termination.ticket, show_once=self.report.shown.append)
        try:
            result: Result | OffboardError = provider.apply(planned, ctx)
        except OffboardError as e:
            result = e
        except Exception as e:  # a provider bug fails this step, not the restore
            result = PermanentError(f"internal error: {type(e).__name__}: {e}", provider.where)
        return self.record(name, action, undo, result, intended=True)

    def record(self, name: str, action: str, undo: str, result: Result | OffboardError, intended: bool = False) -> str:
        aid = f"{self.row['id']}/{name}/undo_{action}"
        if isinstance(result, OffboardError):
            status, reason, cls = self.executor.classify(name, result)
            before = after = None
            next_at = self.executor.retry_at(result)
        else:
            status, reason, cls, next_at, before, after = result.outcome, result.reason, "", None, result.before, \
                result.after
        if not intended:          # a decision that involved no call: no intent row was written
            self.store.upsert_action_status(aid, self.row["id"], name, undo, RESTORE, status, reason)
        self.store.record_outcome(aid, status, before=before, after=after, reason=reason, error_class=cls,
                                  next_attempt_at=next_at)
        self.store.audit(f"action_{status}", self.row["id"], self.report.run_id, provider=name, action=undo,
                         phase=RESTORE, undoes=action, before=before, after=after, reason=reason)
        self.report.steps.append({"provider": name, "action": undo, "undoes": action, "outcome": status,
                                  "reason": reason})
        return status

    def settle(self) -> None:
        report = self.report
        if report.dry_run:
            report.state = self.row["state"]
            return
        left = [f"{s['provider']}/{s['action']}: {s['reason']}" for s in report.steps if s["outcome"] not in FINISHED]
        if left:
            report.state = "needs_human"
            report.reason = (f"restore incomplete (run `offboard restore {self.row['id']}` again once resolved): "
                             + "; ".join(left))
        else:
            report.state = "restored"
            report.reason = "restored from the journal by a person (rehire or mistake)"
        self.store.set_state(self.row["id"], report.state, report.reason)
        self.store.audit(f"termination_{'restored' if report.state == 'restored' else 'restore_incomplete'}",
                         self.row["id"], report.run_id, reason=report.reason)
