"""Match, plan and execute the due terminations of one tenant, phase by phase.

Phases run in order across all due leavers, so every leaver is revoked before
anyone's mailbox is touched; within a phase the providers work concurrently, each
on its own thread with its own connection. A leaver enters a phase only when every
action of the earlier phases succeeded. Each external call is bracketed by journal
writes (intent, then outcome), so a crash between them is resumed by re-reading.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from ..config import Tenant
from ..errors import ConfigError, NeedsHuman, NotYet, OffboardError, PermanentError, RetryableError, Stopped
from ..model import PHASES, ActionContext, Match, PlannedAction, Result, Subject, Termination
from ..providers.base import Provider
from ..store import Store, parse_iso
from .person import Observation, choose_successor, person_hold
from .schedule import OFFBOARD, local_date

log = logging.getLogger(__name__)

FINISHED = ("changed", "unchanged", "skipped")
MAX_DELAY = 86400.0          # seconds: a Retry-After of 1e12 still comes back tomorrow
SUCCESS = FINISHED + ("planned",)


@dataclass
class Leaver:
    row: dict
    termination: Termination
    subjects: dict[str, Subject] = field(default_factory=dict)
    actions: list[PlannedAction] = field(default_factory=list)
    outcomes: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # action id -> (provider, phase, status)
    approved: dict[str, frozenset[str]] = field(default_factory=dict)    # action id -> reasons a person approved
    phases: tuple[str, ...] = OFFBOARD     # what this pass may run for it (schedule.workable_phases)

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


def _loads(text: str | None):
    return json.loads(text) if text else None


def each_provider(providers: list[Provider], work: Callable[[Provider], object], doing: str) -> dict[str, OffboardError]:
    """`work` on every provider at once (each has its own connection), so one system's reads never wait
    for another's; -> the error of each that failed, by name. A provider bug fails that provider only."""
    def one(provider: Provider) -> OffboardError | None:
        try:
            work(provider)
        except OffboardError as e:
            return e.at(provider.where)
        except Exception as e:
            log.exception("%s: %s crashed", provider.where, doing)
            return PermanentError(f"internal error: {type(e).__name__}: {e}", provider.where)
        return None

    with ThreadPoolExecutor(max_workers=max(1, len(providers)), thread_name_prefix=doing.replace(" ", "-")) as pool:
        errors = list(pool.map(one, providers))
    return {p.name: e for p, e in zip(providers, errors) if e is not None}


def approved(approvals: list[dict], provider: str, action: str, reason: str) -> bool:
    """Did a person approve exactly this reason, for every provider or for this action?"""
    return any(a["reason"] == reason and a["scope"] in ("*", f"{provider}/{action}") for a in approvals)


class Executor:
    def __init__(self, tenant: Tenant, store: Store, providers: list[Provider], run_id: str,
                 dry_run: bool, now: dt.datetime, owns: Callable[[str], bool] = lambda termination_id: True,
                 stopping: Callable[[], bool] = lambda: False, wait_until_due: Callable[[], None] = lambda: None):
        self.tenant = tenant
        self.store = store
        self.providers = {p.name: p for p in providers}
        self.run_id = run_id
        self.dry_run = dry_run
        self.now = now
        self.owns = owns                   # is this pass still the one worker of a termination (its lease)?
        self.stopping = stopping           # the daemon is shutting down: start nothing more
        self.wait_until_due = wait_until_due   # read and planned ahead of its instant: no write before it
        self.config_errors: list[ConfigError] = []   # one per refused credential, however many actions hit it
        self.stopped: set[str] = set()     # providers whose credential was refused this pass
        self.unreadable: dict[str, OffboardError] = {}   # providers whose reading failed this pass, and why

    # -- matching and planning --------------------------------------------------
    def prepare(self, leavers: list[Leaver], down: dict[str, OffboardError] | None = None) -> None:
        """Match every leaver in every provider, decide about each person once, then plan.

        `down` names the providers that failed their start-of-pass check: they are not
        dropped, their leavers' `match_account` is journaled failed (retried) so no
        termination can end `done` while a system has not done its part.
        """
        down = dict(down or {})
        terminations = [lv.termination for lv in leavers]
        up = [p for name, p in self.providers.items() if name not in down]
        self.unreadable = each_provider(up, lambda provider: provider.prepare(terminations), "reading")
        down |= self.unreadable
        for name, error in down.items():
            self._stop(name, error.at(self.providers[name].where))
        for lv in leavers:
            self._prepare_leaver(lv, down)

    def _prepare_leaver(self, lv: Leaver, down: dict[str, OffboardError]) -> None:
        journal = {row["id"]: row for row in self.store.actions(lv.id)}
        matches: dict[str, Match] = {}
        unread = dict(down)
        for name, provider in self.providers.items():
            if name in unread:
                continue
            try:
                matches[name] = provider.match(lv.termination)
            except OffboardError as e:
                unread[name] = e.at(provider.where)
            except Exception as e:  # a provider bug fails this leaver there, not the pass
                log.exception("%s: matching %s crashed", provider.where, lv.id)
                unread[name] = PermanentError(f"internal error: {type(e).__name__}: {e}", provider.where)
        for name, error in unread.items():
            self._journal_error(lv, name, "match_account", self._match_phase(name), error)
        remembered = {name: o for name in unread
                      if (o := Observation.load(_loads(journal.get(f"{lv.id}/{name}/match_account", {}).get("after"))))}
        found = person_hold(self.tenant, matches, remembered)
        hold = f"held for the whole person: {found}" if found else ""
        subjects = [m.subject for m in matches.values() if m.status == "matched" and m.subject]
        successor = choose_successor(subjects, {n: p.manager_authority for n, p in self.providers.items()},
                                     self.tenant.policy.successor, self._is_leaving)
        lv.termination = dataclasses.replace(lv.termination, successor=successor)
        approvals = _loads(lv.row.get("approvals")) or []
        planned = {}
        for name, match in matches.items():
            if match.status == "matched" and match.subject:
                planned[name] = [a for a in self.providers[name].plan(match.subject, lv.termination)
                                 if a.phase in lv.phases]
        anchored = self._anchors(lv, matches, planned, journal)
        for name, match in matches.items():
            self._plan(lv, name, match, planned.get(name, []), journal, hold, approvals, anchored)

    def _match_phase(self, name: str) -> str:
        """The phase a provider's matching counts in: `revoke` for a provider that revokes (until it is read,
        nobody knows the person is locked out there, so every later phase waits), else its own first phase
        (a PSA that is down holds only billing, a phone system only its own hand-over)."""
        phases = {p for p in self.providers[name].actions.values() if p in PHASES}
        if not phases or phases & {"restrict", "revoke"}:
            return "revoke"
        return min(phases, key=PHASES.index)

    def _is_leaving(self, address: str) -> bool:
        other = self.store.find_termination(self.tenant.id, address)
        return bool(other) and other["state"] not in ("cancelled", "restored")

    def _anchors(self, lv: Leaver, matches: dict[str, Match], planned: dict[str, list[PlannedAction]],
                 journal: dict) -> str:
        """Before any deletion: what the person's accounts still anchor, in every provider, and any hand-over
        still open. '' when nothing is deleted this pass, or nothing stands in the way."""
        if not any(a.phase == "retain" and journal.get(lv.action_id(a), {}).get("status") not in FINISHED
                   for actions in planned.values() for a in actions):
            return ""
        found = [f"an open hand-over ({row['provider']}/{row['action']} is {row['status']})"
                 for row in journal.values() if row["phase"] == "preserve" and row["status"] not in FINISHED]
        for name, match in sorted(matches.items()):
            if match.status != "matched" or not match.subject:
                continue
            try:
                found += [f"{name}: {anchor}" for anchor in self.providers[name].anchors(match.subject, lv.termination)]
            except OffboardError as e:
                found.append(f"{name}: cannot tell what the account anchors ({e})")
        return "the account still anchors " + "; ".join(found) + ": nothing is deleted until it is resolved" \
            if found else ""

    def _plan(self, lv: Leaver, name: str, match: Match, planned: list[PlannedAction], journal: dict, hold: str,
              approvals: list[dict], anchored: str) -> None:
        if match.status == "not_found":
            self._journal_decision(lv, name, "match_account", self._match_phase(name), "skipped",
                                   match.reason or "no account for this person")
            return
        if match.status == "ambiguous":
            self._journal_decision(lv, name, "match_account", self._match_phase(name), "needs_human",
                                   f"ambiguous: {match.reason or ', '.join(match.candidates)}")
            return
        subject = match.subject
        lv.subjects[name] = subject
        match_id = f"{lv.id}/{name}/match_account"
        self.store.upsert_action_status(match_id, lv.id, name, "match_account", self._match_phase(name),
                                        "unchanged", f"matched {subject.native_id}")
        self.store.record_outcome(match_id, "unchanged", after=Observation.of(subject).dump(),
                                  reason=f"matched {subject.native_id}")
        wanted = set()
        for action in planned:
            aid = lv.action_id(action)
            wanted.add(aid)
            previous = journal.get(aid)
            if previous and previous["status"] in FINISHED and not self._come_back(previous):
                continue
            if hold and not approved(approvals, name, action.action, hold):
                self._journal_decision(lv, name, action.action, action.phase, "needs_human", hold)
                continue
            if anchored and action.phase == "retain":
                self._journal_decision(lv, name, action.action, action.phase, "needs_human", anchored)
                continue
            if previous and previous["status"] == "needs_human":
                lv.outcomes[aid] = (name, action.phase, "needs_human")
                continue
            if previous and previous["status"] in ("failed", "pending") and previous["next_attempt_at"] \
                    and parse_iso(previous["next_attempt_at"]) > self.now:
                lv.outcomes[aid] = (name, action.phase, previous["status"])
                continue
            lv.actions.append(action)
            lv.approved[aid] = frozenset(a["reason"] for a in approvals
                                         if a["scope"] in ("*", f"{name}/{action.action}"))
        for aid, previous in journal.items():
            # read back as already done: a step that failed or crashed mid-way but is no longer needed
            if previous["provider"] == name and aid not in wanted and previous["action"] != "match_account" \
                    and previous["phase"] in lv.phases and previous["status"] in ("failed", "in_flight", "pending"):
                self.store.record_outcome(aid, "unchanged", reason="already in the wanted state on re-read")

    def _come_back(self, previous: dict) -> bool:
        """A finished action that asked to come back (a queued seat reduction) and whose time has come."""
        return bool(previous["next_attempt_at"]) and parse_iso(previous["next_attempt_at"]) <= self.now

    def _journal_decision(self, lv: Leaver, provider: str, action: str, phase: str, status: str, reason: str) -> None:
        """Record a decision that involved no call to the provider."""
        aid = f"{lv.id}/{provider}/{action}"
        lv.outcomes[aid] = (provider, phase, status)
        self.store.upsert_action_status(aid, lv.id, provider, action, phase, status, reason)
        self._tell(lv, provider, action, phase, status, reason)

    def _journal_error(self, lv: Leaver, provider: str, action: str, phase: str, error: OffboardError) -> None:
        """A provider that could not be read for this leaver: failed and retried, never silently dropped."""
        aid = f"{lv.id}/{provider}/{action}"
        status, reason, cls = self.classify(provider, error)
        next_at = self.retry_at(error)
        lv.outcomes[aid] = (provider, phase, status)
        self.store.upsert_action_status(aid, lv.id, provider, action, phase, status, reason)
        self.store.record_outcome(aid, status, reason=reason, error_class=cls, next_attempt_at=next_at)
        self._tell(lv, provider, action, phase, status, reason, cls)

    def _tell(self, lv: Leaver, provider: str, action: str, phase: str, status: str, reason: str, error: str = "",
              **data) -> None:
        """Every outcome goes to the audit log (the daemon's counters read it) and to the log, with its fields."""
        self.store.audit(f"action_{status}", lv.id, self.run_id, provider=provider, action=action, phase=phase,
                         reason=reason, **({"error": error} if error else {}), **data)
        log.info("%s %s/%s: %s%s", lv.id, provider, action, status, f" ({reason})" if reason else "",
                extra={"tenant": self.tenant.id, "employee": lv.termination.employee_id, "termination": lv.id,
                       "provider": provider, "action": action, "phase": phase, "outcome": status,
                       "error": error, "run_id": self.run_id})

    # -- executing ------------------------------------------------------------
    def execute(self, leavers: list[Leaver]) -> None:
        for phase in PHASES:
            work: dict[str, list[tuple[Leaver, PlannedAction]]] = {}
            for lv in leavers:
                if not self.still_ours(lv):
                    continue
                for action in lv.actions:
                    if action.phase == phase and action.provider not in self.stopped \
                            and self._may_start(lv, action):
                        work.setdefault(action.provider, []).append((lv, action))
            if not work:
                continue
            with ThreadPoolExecutor(max_workers=len(work), thread_name_prefix=f"{self.tenant.id}-{phase}") as pool:
                for future in [pool.submit(self._run_provider, name, items) for name, items in work.items()]:
                    future.result()
        self._journal_unstarted(leavers)

    def _journal_unstarted(self, leavers: list[Leaver]) -> None:
        """A pass cut short (the daemon stopping, a pause) leaves actions that could have started unstarted:
        they are journaled pending, so `settle` never takes a plan cut short for a finished one. (An action
        an earlier phase holds back needs no row: the journal shows what holds it.)"""
        for lv in leavers:
            if not self.owns(lv.id):
                continue
            for action in lv.actions:
                aid = lv.action_id(action)
                if aid not in lv.outcomes and self._may_start(lv, action):
                    self.store.upsert_action_status(aid, lv.id, action.provider, action.action, action.phase,
                                                    "pending", "not started: the pass was cut short")

    def still_ours(self, lv: Leaver) -> bool:
        """False once a person cancelled or held the termination, or paused its tenant or every tenant,
        or another worker took it, or the daemon is stopping, mid-pass: the action in flight finishes,
        no further one starts."""
        return not self.stopping() and self.owns(lv.id) and self.store.state_of(lv.id) == "in_progress" \
            and not self.store.paused(self.tenant.id)

    @staticmethod
    def _may_start(lv: Leaver, action: PlannedAction) -> bool:
        """DESIGN.md's ordering: revoke everywhere first; then each provider in its own order; bill after all reclaim.

        An action of a phase starts only when every action planned for an earlier phase that
        gates it (revoke: every provider's; preserve and reclaim: its own provider's; bill and
        retain: every provider's) has succeeded this pass or earlier. Restrict gates nothing.
        """
        phase = PHASES.index(action.phase)
        gated_by_all = action.phase in ("bill", "retain")

        def gates(provider: str, other_phase: str) -> bool:
            earlier = other_phase != "restrict" and PHASES.index(other_phase) < phase   # a notice period holds up nothing
            return earlier and (other_phase == "revoke" or gated_by_all or provider == action.provider)

        for provider, other_phase, status in lv.outcomes.values():
            if gates(provider, other_phase) and status not in SUCCESS:
                return False
        return all(lv.action_id(a) in lv.outcomes for a in lv.actions if gates(a.provider, a.phase))

    def _run_provider(self, name: str, items: list[tuple[Leaver, PlannedAction]]) -> None:
        provider = self.providers[name]
        batch, started = [], []
        for lv, action in items:
            if not self.still_ours(lv):
                continue
            aid = lv.action_id(action)
            previous = self.store.action(aid)
            since = parse_iso(previous["first_intent_at"]) if previous and previous.get("first_intent_at") else None
            row = self.store.record_intent(aid, lv.id, name, action.action, action.phase, self.run_id)
            since = since or parse_iso(row["first_intent_at"])
            ctx = ActionContext(termination=lv.termination, subject=lv.subjects[name], dry_run=self.dry_run,
                                since=since, ticket=lv.termination.ticket,
                                local_date=local_date(self.now, self.tenant), now=self.now,
                                approved=lv.approved.get(aid, frozenset()),
                                proceed=lambda lv=lv: self.still_ours(lv), wait_until_due=self.wait_until_due)
            batch.append((action, ctx))
            started.append((lv, action))
        if not batch:
            return
        try:
            results = provider.apply_many(batch)
        except OffboardError as e:
            results = [e] * len(batch)
        except Exception as e:  # a provider bug must not take the other providers down
            log.exception("%s crashed", provider.where)
            results = [PermanentError(f"internal error: {type(e).__name__}: {e}", provider.where)] * len(batch)
        for (lv, action), result in zip(started, results):
            self._record(lv, action, result)

    def _record(self, lv: Leaver, action: PlannedAction, result: Result | OffboardError) -> None:
        aid = lv.action_id(action)
        if isinstance(result, OffboardError):
            status, reason, cls = self.classify(action.provider, result)
            next_at = self.retry_at(result)
            before = after = None
        else:
            status, reason, cls, next_at = result.outcome, result.reason, "", result.next_attempt_at
            before, after = result.before, result.after
        lv.outcomes[aid] = (action.provider, action.phase, status)
        self.store.record_outcome(aid, status, before=before, after=after, reason=reason, error_class=cls,
                                  next_attempt_at=next_at)
        self._tell(lv, action.provider, action.action, action.phase, status, reason, cls, before=before, after=after)

    def retry_at(self, error: OffboardError) -> dt.datetime | None:
        """When to try again: the error's delay, within [1 s, 1 day] whatever a server claimed."""
        if not isinstance(error, RetryableError):
            return None
        delay = error.delay if error.delay == error.delay else MAX_DELAY       # NaN
        return self.now + dt.timedelta(seconds=min(max(delay, 1.0), MAX_DELAY))

    def classify(self, provider: str, error: OffboardError) -> tuple[str, str, str]:
        error.at(self.providers[provider].where)
        cls = type(error).__name__
        if isinstance(error, Stopped):
            return "pending", f"not started: {error.message}", cls
        if isinstance(error, NotYet):
            return "pending", f"waiting: {error}", cls
        if isinstance(error, NeedsHuman):
            return "needs_human", str(error), cls
        if isinstance(error, ConfigError):
            self._stop(provider, error)
        return "failed", str(error), cls

    def _stop(self, provider: str, error: OffboardError) -> None:
        self.stopped.add(provider)
        if isinstance(error, ConfigError) and all(str(e) != str(error) for e in self.config_errors):
            self.config_errors.append(error)
