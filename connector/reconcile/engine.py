"""One reconcile pass: intake from the feeds, then execution of what is due, per tenant."""
from __future__ import annotations

import datetime as dt
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
import threading
import time
from typing import Callable, Collection, Iterable

from .. import plugins
from ..config import Config, DistributorSettings, PsaSettings, Tenant
from ..errors import ConfigError, InputRejected, OffboardError
from ..model import FRESH_READ, Termination
from ..providers.base import Provider
from ..providers.facts import TenantFacts
from ..store import Store, iso, now as utcnow
from .announce import Announcer, Listener, StateChange, TicketNotes, TicketOpener
from .execute import Executor, Leaver, each_provider, termination_from_row
from .intake import Intake, cancel_missing, pull_sources, record
from .leases import Leases, owner_id
from .schedule import LATER, QUEUED, RESTRICT_ONLY, workable_phases

log = logging.getLogger(__name__)

#: how long before a pass's instant its actions re-read what they compare (`not_before`): then only the writes remain
REREAD_AHEAD = FRESH_READ   # seconds
WORKABLE = ("scheduled", "due", "in_progress")
# states a pass looks at: a restricted one becomes due at its instant, a done one is retained after delete_after_days,
# a done or deleted one's seat reduction queued for a renewal is made then
PICKED = WORKABLE + ("restricted", *LATER)
# nothing left for this pass to do (a dry run's `due` is what it would do)
CONVERGED = ("done", "scheduled", "restricted", "cancelled", "held", "deleted", "restored")


@dataclass
class Report:
    run_id: str
    dry_run: bool
    terminations: list[str] = field(default_factory=list)
    config_errors: list[OffboardError] = field(default_factory=list)
    source_errors: list[OffboardError] = field(default_factory=list)
    rejected: list[InputRejected] = field(default_factory=list)
    holds: dict[str, str] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    needs_human: list[str] = field(default_factory=list)   # every open termination still waiting for a person

    def absorb(self, part: "Report") -> None:
        for name in ("config_errors", "source_errors", "rejected"):
            getattr(self, name).extend(getattr(part, name))
        self.terminations.extend(t for t in part.terminations if t not in self.terminations)
        self.holds.update(part.holds)

    @property
    def exit_code(self) -> int:
        if self.config_errors:
            return 1
        if self.holds:
            return 3
        if self.source_errors or self.rejected or self.needs_human or \
                any(r["state"] not in CONVERGED + (("due",) if self.dry_run else ()) for r in self.rows):
            return 2
        return 0


def build_providers(tenant: Tenant, psa: PsaSettings | None = None,
                    distributor: DistributorSettings | None = None) -> list[Provider]:
    """The tenant's providers; the MSP's distributor for a tenant with a `pax8_company_id`, and its PSA for one
    with a `psa_company_id`: each reads the others' licence counts (the PSA also the distributor's seats)
    through read-only facts."""
    built = [plugins.load("providers", pc.type, pc.where)(pc.name, pc.options, tenant, pc.where)
             for pc in tenant.providers]
    if distributor is not None and tenant.pax8_company_id is not None:
        built.append(plugins.load("distributor", distributor.type, "distributor")(
            distributor.type, distributor, tenant, "distributor", facts=TenantFacts(list(built), "distributor")))
    if psa is not None and tenant.psa_company_id is not None:
        built.append(plugins.load("psa", psa.type, "psa")(psa.type, psa, tenant, "psa",
                                                        facts=TenantFacts(list(built), "psa")))
    return built


def config_providers(config: Config) -> Callable[[Tenant], list[Provider]]:
    """What a pass builds for each tenant: its providers, with the MSP's distributor and PSA."""
    return lambda t: build_providers(t, config.psa, config.distributor)


def reconcile(config: Config, store: Store, *, tenant: str | None = None, employee: str | None = None,
              dry_run: bool = False, full: bool = False, trigger: str = "cli", now: dt.datetime | None = None,
              on_demand: list[Termination] | None = None,
              providers: Callable[[Tenant], list[Provider]] | None = None,
              run_id: str | None = None, listeners: tuple[Listener, ...] = (),
              only: Collection[str] | None = None, stop: threading.Event | None = None,
              not_before: dt.datetime | None = None) -> Report:
    """Run one pass. `on_demand` skips the feeds and works on just those terminations; `only` skips
    the feeds and works on the stored terminations with those ids (a webhook recorded them already).
    Once `stop` is set no further action starts: those in flight finish and are journaled.
    `not_before` is a pass started ahead of a due instant: it works as at that instant, checks,
    reads, matches and plans at once; each action re-reads what it compares `REREAD_AHEAD` before
    the instant and makes its first write no earlier than it.

    Every state change of the pass is announced to the ticket notes and to `listeners`
    (not in a dry run: nothing really changed).

    Tenants run side by side in a bounded pool, so one tenant's slow or throttled system
    never delays another tenant's revoke, and one tenant's failure is reported, not spread.
    """
    now = not_before or now or utcnow()
    report = Report(run_id=run_id or uuid.uuid4().hex[:12], dry_run=dry_run)
    report.terminations.extend(only or ())
    tenants = [config.tenant(tenant)] if tenant else config.tenants
    store.start_run(report.run_id, trigger, tenant, dry_run)
    parts = [Report(run_id=report.run_id, dry_run=dry_run) for _ in tenants]
    providers = providers or config_providers(config)
    own = ((TicketOpener(config, store),) if config.psa.ticket_board else ()) + (TicketNotes(config, store),) \
        if config.psa else ()
    announce = Announcer(() if dry_run else (*own, *listeners))

    def one(t: Tenant, part: Report) -> None:
        try:
            _reconcile_tenant(t, store, part, leases, employee=employee, dry_run=dry_run, full=full, now=now,
                              on_demand=on_demand, providers=providers, announce=announce, only=only, stop=stop,
                              not_before=not_before)
        except Exception as e:  # a bug or a hostile input in one tenant must not stop the others
            log.exception("tenant %s: the pass failed", t.id)
            part.source_errors.append(OffboardError(f"internal error, this tenant's pass stopped: "
                                                    f"{type(e).__name__}: {e}", t.id))

    workers = max(1, min(len(tenants), config.connector.workers))
    with Leases(store, owner_id(report.run_id), config.connector.lease_seconds) as leases, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tenant") as pool:
        list(pool.map(one, tenants, parts))
    for part in parts:
        report.absorb(part)
    report.rows = status_rows(store, report.terminations)
    report.needs_human = [r["id"] for t in tenants for r in store.terminations(t.id, ["needs_human"])
                          if employee is None or employee in (r["employee_id"], r["email"], r["id"])]
    store.finish_run(report.run_id, report.exit_code, {"holds": report.holds,
                     "errors": [str(e) for e in report.config_errors + report.source_errors],
                     "rejected": [str(e) for e in report.rejected]}, report.terminations)
    return report


def _reconcile_tenant(tenant: Tenant, store: Store, report: Report, leases: Leases, *, employee, dry_run, full, now,
                      on_demand, providers, announce: Announcer, only, stop, not_before) -> None:
    missing = unresolvable_secrets(tenant)
    if missing:
        report.config_errors.extend(missing)
        return
    try:
        built = providers(tenant)
    except ConfigError as e:
        report.config_errors.append(e)
        return
    try:
        # leavers known before the pass (a webhook's, a ticket's, a person's `run`): a provider whose reading
        # proves its credential is checked by that reading, a round trip sooner to the revoke; with nobody
        # workable nothing needs it, and the next full pass checks every credential
        known = only is not None or on_demand is not None
        down = _online([p for p in built if not (known and p.prepare_checks_online)], report)
        states = {r["id"]: r["state"] for r in store.terminations(tenant.id)} if announce.listeners else {}
        if only is None:
            _intake(tenant, store, report, leases, full=full, now=now, on_demand=on_demand)
            announce.differences(tenant.id, states, store, report.run_id)
        wanted = {t.id for t in on_demand} if on_demand is not None else only
        _execute(tenant, store, report, leases, built, down, employee=employee, dry_run=dry_run, now=now,
                 wanted=wanted, stop=stop, announce=announce, not_before=not_before)
    finally:
        for p in built:
            p.close()


def _online(built: list[Provider], report: Report) -> dict[str, OffboardError]:
    """Prove each provider's credential with one read. One that fails is not dropped: it is `down`,
    and its due leavers' actions are journaled failed, so none of them ends `done` without it."""
    down = each_provider(built, lambda p: p.check_online(), "check online")
    _report(down.values(), report)
    return down


def _report(errors: Iterable[OffboardError], report: Report) -> None:
    for e in errors:
        found = report.config_errors if isinstance(e, ConfigError) else report.source_errors
        if all(str(e) != str(f) for f in found):
            found.append(e)


def _intake(tenant: Tenant, store: Store, report: Report, leases: Leases, *, full, now, on_demand) -> None:
    """Pull the feeds into the store. With several workers one at a time does it per tenant (a lease),
    so cursors, limits and cancellations are counted once; a person's `run` needs no feed."""
    intake = Intake()
    if on_demand is not None:
        with store.transaction():
            record(tenant, store, [t for t in on_demand if t.tenant == tenant.id], now, report.run_id, intake,
                   on_demand=True)
    elif leases.take(f"intake:{tenant.id}"):
        try:
            pulls = pull_sources(tenant, store, full, intake)
            with store.transaction():     # one pull lands whole or not at all
                record(tenant, store, [t for _, pull in pulls for t in pull.terminations], now, report.run_id,
                       intake)
                cancel_missing(tenant, store, pulls, report.run_id, intake)
                for name, pull in pulls:
                    if pull.cursor is not None:
                        store.set_cursor(f"{tenant.id}/{name}", pull.cursor)
        finally:
            leases.release(f"intake:{tenant.id}")
    _report(intake.errors, report)
    report.rejected.extend(intake.rejected)
    report.terminations.extend(i for i in intake.new if i not in report.terminations)


def _execute(tenant: Tenant, store: Store, report: Report, leases: Leases, providers: list[Provider],
             down: dict[str, OffboardError], *, employee, dry_run, now, wanted, stop, announce: Announcer,
             not_before: dt.datetime | None = None) -> None:
    if pause := store.paused(tenant.id):       # a person's pause: intake still records, nothing new starts
        report.holds[tenant.id] = f"{pause['reason']} since {pause['paused_at']} (`offboard resume" + \
            ("`)" if pause["scope"] != tenant.id else f" --tenant {tenant.id}`)")
        return
    holds = store.open_holds(tenant.id)
    if holds:
        report.holds[tenant.id] = "; ".join(h["reason"] for h in holds)
    if store.open_hold(tenant.id):
        return
    queued = store.next_attempts(tenant.id, LATER)
    rows = [(r, phases) for r in store.terminations(tenant.id, PICKED)
            if (phases := workable_phases(r, tenant, now, queued.get(r["id"], ())))
            and (wanted is None or r["id"] in wanted) and (employee is None or employee in (r["employee_id"], r["email"], r["id"]))]
    leavers = [Leaver(row=r, termination=termination_from_row(r), phases=phases) for r, phases in rows
               if _claim(store, leases, r, announce, report.run_id)]
    if not leavers:
        return
    for lv in leavers:
        if lv.id not in report.terminations:
            report.terminations.append(lv.id)
    due = _until(not_before, stop) if not_before is not None and not dry_run else lambda ahead=0.0: None
    executor = Executor(tenant, store, providers, report.run_id, dry_run, now,
                        owns=lambda tid: leases.holds(f"termination:{tid}"), stopping=stop.is_set if stop else lambda: False,
                        wait_until_due=due)
    executor.prepare(leavers, down)
    _report(executor.unreadable.values(), report)    # a system that could not be read this pass is told
    due(REREAD_AHEAD)               # each action's re-read comes now; its write waits for the instant
    executor.execute(leavers)
    _report(executor.config_errors, report)
    names = [p.name for p in providers]
    for lv in leavers:
        if leases.holds(f"termination:{lv.id}"):
            settle(store, lv.id, report.run_id, names, announce, lv.phases, lv.row["state"])
        leases.release(f"termination:{lv.id}")


def _until(instant: dt.datetime, stop: threading.Event | None) -> Callable[..., None]:
    """A wait that returns at `instant`, less `ahead` seconds, however often it is called (measured once, on the
    monotonic clock). Read and planned ahead, the writes wait for their instant; a stop ends the wait early, and
    then no action starts (the executor checks it before each)."""
    deadline = time.monotonic() + (instant - utcnow()).total_seconds()

    def wait(ahead: float = 0.0) -> None:
        (stop or threading.Event()).wait(max(0.0, deadline - ahead - time.monotonic()))
    return wait


def _claim(store: Store, leases: Leases, row: dict, announce: Announcer, run_id: str) -> bool:
    """One worker per termination: the lease first, then the state it was picked in (compare-and-set)."""
    key = f"termination:{row['id']}"
    if not leases.take(key):
        return False             # another process is working on it, or died holding it (taken over on expiry)
    if store.set_state(row["id"], "in_progress", expect=(row["state"],)):
        announce(StateChange(row["id"], row["tenant"], row["state"], "in_progress", "", run_id))
        return True
    leases.release(key)          # a person's hold or cancel got there first
    return False


def unresolvable_secrets(tenant: Tenant) -> list[ConfigError]:
    """A secret that cannot be read is a config error known before anything is pulled or written."""
    errors = []
    for pc in tenant.sources + tenant.providers:
        for secret in pc.options.secrets():
            try:
                secret.reveal()
            except ConfigError as e:
                errors.append(e)
    return errors


def settle(store: Store, termination_id: str, run_id: str, providers: list[str],
           announce: Announcer = Announcer(), phases: tuple[str, ...] = (), was: str = "done") -> str:
    """Derive the termination's state from its journal after a pass that ran `phases`.

    `done` only when every configured provider has journaled its part and every action
    ended changed, unchanged or skipped; after the notice-period pass that is `restricted`,
    after a pass that ran retain `deleted`; `needs_human` once only a person can move it on.
    A later job (a queued seat reduction) leaves the termination what it `was` (`done`, `deleted`)
    while it succeeds or waits to be retried; one that failed for good needs a person.
    Compare-and-set: a person's `cancel` or `hold` made while the pass ran wins, and is not
    overwritten.
    """
    actions = [a for a in store.actions(termination_id) if a["phase"] != "retain" or "retain" in phases]
    statuses = [a["status"] for a in actions]
    silent = [p for p in providers if not any(a["provider"] == p for a in actions)]
    if silent or any(s in ("failed", "pending", "in_flight") for s in statuses):
        state = "in_progress"      # retried first, even beside a step that waits for a person: it holds no other system
    elif "needs_human" in statuses:
        state = "needs_human"
    elif "planned" in statuses:       # a dry run: it would be worked on now
        state = "due"
    elif phases == RESTRICT_ONLY:
        state = "restricted"
    elif "retain" in phases:
        state = "deleted"
    else:
        state = "done"
    if phases == QUEUED and state in ("done", "in_progress"):
        waiting = all(a["next_attempt_at"] for a in actions if a["status"] in ("failed", "pending", "in_flight"))
        state = was if waiting else "needs_human"
    reason = "; ".join(sorted({a["reason"] for a in actions
                               if a["status"] in ("needs_human", "failed") and a["reason"]}))
    if silent:
        reason = "; ".join(filter(None, [reason, "no word yet from " + ", ".join(silent)]))
    keep = state == "deleted" or phases == QUEUED        # a later job leaves the finish as it was
    finished = {} if keep else {"finished_at": iso(utcnow()) if state == "done" else None}
    if store.set_state(termination_id, state, reason, expect=("in_progress",), **finished) and state != "in_progress":
        store.audit(f"termination_{state}", termination_id, run_id, reason=reason)
        announce(StateChange(termination_id, termination_id.split("/", 1)[0], "in_progress", state, reason, run_id))
    return state


def status_rows(store: Store, ids: list[str] | None = None, tenant: str | None = None,
                states: list[str] | None = None) -> list[dict]:
    rows = [store.termination(i) for i in ids] if ids is not None else store.terminations(tenant, states)
    out = []
    for r in filter(None, rows):
        out.append({"id": r["id"], "tenant": r["tenant"], "employee_id": r["employee_id"], "email": r["email"],
                    "state": r["state"], "effective_at": r["due_at"], "reason": r["reason"] or "",
                    "actions": [{"provider": a["provider"], "action": a["action"], "phase": a["phase"],
                                 "outcome": _outcome(a["status"]), "attempts": a["attempts"] or 0,
                                 "reason": a["reason"] or "", "at": a["finished_at"]}
                                for a in store.actions(r["id"])]})
    return out


def _outcome(status: str) -> str:
    return {"in_flight": "failed", "pending": "planned"}.get(status, status)
