"""Match, plan and execute the due terminations of one tenant, phase by phase.

Phases run in order across all due leavers, so every leaver is revoked before
anyone's mailbox is touched; within a phase the providers work concurrently, each
on its own thread with its own connection. A leaver enters a phase only when every
action of the earlier phases succeeded. Each external call is bracketed by journal
writes (intent, then outcome), so a crash between them is resumed by re-reading.
"""
from __future__ import annotations

import datetime as dt
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..config import Tenant
from ..errors import ConfigError, NeedsHuman, NotYet, OffboardError, PermanentError, RetryableError
from ..model import PHASES, ActionContext, PlannedAction, Result, Subject, Termination
from ..providers.base import Provider
from ..store import Store, parse_iso
from .schedule import local_date

log = logging.getLogger(__name__)

FINISHED = ("changed", "unchanged", "skipped")
SUCCESS = FINISHED + ("planned",)


@dataclass
class Leaver:
    row: dict
    termination: Termination
    subjects: dict[str, Subject] = field(default_factory=dict)
    actions: list[PlannedAction] = field(default_factory=list)
    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)   # action id -> (phase, status) this pass

    @property
    def id(self) -> str:
        return self.row["id"]

    def action_id(self, action: PlannedAction) -> str:
        return f"{self.id}/{action.provider}/{action.action}"


def termination_from_row(row: dict) -> Termination:
    return Termination(tenant=row["tenant"], employee_id=row["employee_id"], email=row["email"],
                       first_name=row["first_name"] or "", last_name=row["last_name"] or "",
                       manager_email=row["manager_email"] or "",
                       termination_date=dt.date.fromisoformat(row["termination_date"]),
                       termination_time=dt.time.fromisoformat(row["termination_time"]) if row["termination_time"] else None,
                       kind=row["kind"], source=row["source"] or "", ticket=row["ticket"] or "")


class Executor:
    def __init__(self, tenant: Tenant, store: Store, providers: list[Provider], run_id: str,
                 dry_run: bool, now: dt.datetime):
        self.tenant = tenant
        self.store = store
        self.providers = {p.name: p for p in providers}
        self.run_id = run_id
        self.dry_run = dry_run
        self.now = now
        self.config_errors: list[ConfigError] = []   # one per refused credential, however many actions hit it
        self.stopped: set[str] = set()     # providers whose credential was refused this pass

    # -- matching and planning --------------------------------------------------
    def prepare(self, leavers: list[Leaver]) -> None:
        terminations = [lv.termination for lv in leavers]
        for name, provider in self.providers.items():
            try:
                provider.prepare(terminations)
            except OffboardError as e:
                self._provider_down(name, e, leavers)
        for lv in leavers:
            journal = {row["id"]: row for row in self.store.actions(lv.id)}
            for name, provider in self.providers.items():
                if name in self.stopped:
                    continue
                try:
                    self._match_and_plan(lv, name, provider, journal)
                except OffboardError as e:
                    self._journal_decision(lv, name, "match_account", "revoke", "failed", str(e),
                                           error_class=type(e).__name__)
                except Exception as e:  # a provider bug fails this leaver there, not the pass
                    log.exception("%s: matching %s crashed", provider.where, lv.id)
                    self._journal_decision(lv, name, "match_account", "revoke", "failed",
                                           f"internal error: {type(e).__name__}: {e}", error_class="PermanentError")

    def _provider_down(self, name: str, error: OffboardError, leavers: list[Leaver]) -> None:
        """A provider that cannot even read: its leavers' actions fail (retry) or, on a refused credential, stop."""
        self._stop(name, error.at(self.providers[name].where))
        for lv in leavers:
            self._journal_decision(lv, name, "match_account", "revoke", "failed", str(error),
                                   error_class=type(error).__name__)

    def _match_and_plan(self, lv: Leaver, name: str, provider: Provider, journal: dict) -> None:
        match = provider.match(lv.termination)
        if match.status == "not_found":
            self._journal_decision(lv, name, "match_account", "revoke", "skipped",
                                   match.reason or "no account for this person")
            return
        if match.status == "ambiguous":
            self._journal_decision(lv, name, "match_account", "revoke", "needs_human",
                                   f"ambiguous: {match.reason or ', '.join(match.candidates)}")
            return
        subject = match.subject
        lv.subjects[name] = subject
        planned = provider.plan(subject, lv.termination)
        guard = "" if lv.row.get("override_at") else self._guard(subject)
        wanted = set()
        for action in planned:
            aid = lv.action_id(action)
            wanted.add(aid)
            previous = journal.get(aid)
            if previous and previous["status"] in FINISHED:
                continue
            if guard:
                self._journal_decision(lv, name, action.action, action.phase, "needs_human", guard)
                continue
            if previous and previous["status"] == "needs_human":
                lv.outcomes[aid] = (action.phase, "needs_human")
                continue
            if previous and previous["status"] in ("failed", "pending") and previous["next_attempt_at"] \
                    and parse_iso(previous["next_attempt_at"]) > self.now:
                lv.outcomes[aid] = (action.phase, previous["status"])
                continue
            lv.actions.append(action)
        for aid, previous in journal.items():
            # read back as already done: a step that failed or crashed mid-way but is no longer needed
            if previous["provider"] == name and aid not in wanted and previous["action"] != "match_account" \
                    and previous["status"] in ("failed", "in_flight", "pending"):
                self.store.record_outcome(aid, "unchanged", reason="already in the wanted state on re-read")
        match_id = f"{lv.id}/{name}/match_account"
        if match_id in journal and journal[match_id]["status"] != "skipped":
            self.store.upsert_action_status(match_id, lv.id, name, "match_account", "revoke", "unchanged",
                                            f"matched {subject.native_id}")

    def _guard(self, subject: Subject) -> str:
        pattern = self.tenant.is_protected(subject.names)
        if pattern:
            return f"protected account (matches {pattern!r}): a person must offboard it or `offboard approve` it"
        if subject.is_admin:
            return f"holds admin rights ({subject.admin_reason or 'privileged group'}): a person must decide"
        return ""

    def _journal_decision(self, lv: Leaver, provider: str, action: str, phase: str, status: str, reason: str,
                          error_class: str = "") -> None:
        aid = f"{lv.id}/{provider}/{action}"
        lv.outcomes[aid] = (phase, status)
        self.store.upsert_action_status(aid, lv.id, provider, action, phase, status, reason)
        if error_class:
            self.store.record_outcome(aid, status, reason=reason, error_class=error_class)
        self.store.audit(f"action_{status}", lv.id, self.run_id, provider=provider, action=action, reason=reason)

    # -- executing ------------------------------------------------------------
    def execute(self, leavers: list[Leaver]) -> None:
        for phase in PHASES:
            eligible = [lv for lv in leavers if self._earlier_phases_succeeded(lv, phase)]
            work: dict[str, list[tuple[Leaver, PlannedAction]]] = {}
            for lv in eligible:
                for action in lv.actions:
                    if action.phase == phase and action.provider not in self.stopped:
                        work.setdefault(action.provider, []).append((lv, action))
            if not work:
                continue
            with ThreadPoolExecutor(max_workers=len(work), thread_name_prefix=f"{self.tenant.id}-{phase}") as pool:
                for future in [pool.submit(self._run_provider, name, items) for name, items in work.items()]:
                    future.result()

    @staticmethod
    def _earlier_phases_succeeded(lv: Leaver, phase: str) -> bool:
        earlier = PHASES[:PHASES.index(phase)]
        if any(p in earlier and status not in SUCCESS for p, status in lv.outcomes.values()):
            return False
        return all(lv.action_id(a) in lv.outcomes for a in lv.actions if a.phase in earlier)

    def _run_provider(self, name: str, items: list[tuple[Leaver, PlannedAction]]) -> None:
        provider = self.providers[name]
        batch = []
        for lv, action in items:
            aid = lv.action_id(action)
            previous = self.store.action(aid)
            since = parse_iso(previous["first_intent_at"]) if previous and previous.get("first_intent_at") else None
            row = self.store.record_intent(aid, lv.id, name, action.action, action.phase, self.run_id)
            since = since or parse_iso(row["first_intent_at"])
            ctx = ActionContext(termination=lv.termination, subject=lv.subjects[name], dry_run=self.dry_run,
                                since=since, ticket=lv.termination.ticket,
                                local_date=local_date(self.now, self.tenant))
            batch.append((action, ctx))
        try:
            results = provider.apply_many(batch)
        except OffboardError as e:
            results = [e] * len(batch)
        except Exception as e:  # a provider bug must not take the other providers down
            log.exception("%s crashed", provider.where)
            results = [PermanentError(f"internal error: {type(e).__name__}: {e}", provider.where)] * len(batch)
        for (lv, action), result in zip(items, results):
            self._record(lv, action, result)

    def _record(self, lv: Leaver, action: PlannedAction, result: Result | OffboardError) -> None:
        aid = lv.action_id(action)
        if isinstance(result, OffboardError):
            status, reason, cls = self._classify(action, result)
            next_at = self.now + dt.timedelta(seconds=result.delay) if isinstance(result, RetryableError) else None
            before = after = None
        else:
            status, reason, cls, next_at = result.outcome, result.reason, "", None
            before, after = result.before, result.after
        lv.outcomes[aid] = (action.phase, status)
        self.store.record_outcome(aid, status, before=before, after=after, reason=reason, error_class=cls,
                                  next_attempt_at=next_at)
        self.store.audit(f"action_{status}", lv.id, self.run_id, provider=action.provider, action=action.action,
                         phase=action.phase, before=before, after=after, reason=reason)

    def _classify(self, action: PlannedAction, error: OffboardError) -> tuple[str, str, str]:
        error.at(self.providers[action.provider].where)
        cls = type(error).__name__
        if isinstance(error, NotYet):
            return "pending", f"waiting: {error}", cls
        if isinstance(error, NeedsHuman):
            return "needs_human", str(error), cls
        if isinstance(error, ConfigError):
            self._stop(action.provider, error)
        return "failed", str(error), cls

    def _stop(self, provider: str, error: OffboardError) -> None:
        self.stopped.add(provider)
        if isinstance(error, ConfigError) and all(str(e) != str(error) for e in self.config_errors):
            self.config_errors.append(error)
