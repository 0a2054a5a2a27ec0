"""The `offboard` command: every way a person or a timer drives the connector.

Errors are one line, `offboard: error: WHERE: WHAT`; `--debug` adds the traceback.
`plan` and `--dry-run` work on an in-memory copy of the state store, so they write
nothing anywhere.
"""
from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import logging
import os
import sys
import traceback

from . import __version__, config as configmod
from .config import Config, mask_secrets
from .errors import ConfigError, OffboardError
from .logs import setup_logging
from .render import table
from .providers.connectwise.api import ConnectWise
from .providers.pax8.api import Pax8
from .providers.manual import OPEN_STEP
from .reconcile import reconcile, status_rows
from .reconcile.engine import Report, unresolvable_secrets
from .reconcile.schedule import LATER
from .reconcile.tickets import on_demand, run_from_ticket
from .retention import purge_expired
from .store import EVERY_TENANT, PERSON_HOLD, StateStore, Store, copy_store, iso, now as utcnow, open_state
from .store.postgres import masked_url

OPEN = ["scheduled", "due", "restricted", "in_progress", "held", "needs_human"]
ALL = OPEN + ["done", "cancelled", "deleted", "restored"]


def emit(args, objects: list[dict], human: str) -> None:
    if args.json:
        for obj in objects:
            print(json.dumps(obj, default=str, sort_keys=True))
    elif human:
        print(human)


# -- rendering -------------------------------------------------------------------
def render_terminations(rows: list[dict]) -> str:
    if not rows:
        return "No terminations."
    parts = []
    for r in rows:
        head = f"{r['id']}  {r['email']}  {r['state']}  (effective {r['effective_at']})"
        if r.get("reason"):
            head += f"\n  {r['reason']}"
        acts = [[a["phase"], a["provider"], a["action"], a["outcome"], a["attempts"], a["reason"]] for a in r["actions"]]
        parts.append(head + ("\n" + _indent(table(["phase", "provider", "action", "outcome", "tries", "reason"], acts))
                             if acts else ""))
    return "\n\n".join(parts)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def render_report(report: Report) -> str:
    lines = [render_terminations(report.rows) if report.rows else "Nothing was due."]
    for tenant, reason in report.holds.items():
        lines.append(f"HELD {tenant}: {reason}")
    waiting = [i for i in report.needs_human if i not in {r["id"] for r in report.rows}]
    if waiting:
        lines.append(f"still waiting for a person: {', '.join(waiting)} (see `offboard status`)")
    for e in report.rejected:
        lines.append(f"rejected {e}")
    return "\n".join(lines)


def report_objects(report: Report) -> list[dict]:
    out = [dict(r, run_id=report.run_id) for r in report.rows]
    out += [{"type": "hold", "tenant": t, "reason": r} for t, r in report.holds.items()]
    out += [{"type": "rejected", "where": e.where, "error": e.message} for e in report.rejected]
    out += [{"type": "source_error", "where": e.where, "error": e.message} for e in report.source_errors]
    out += [{"type": "config_error", "where": e.where, "error": e.message} for e in report.config_errors]
    out.append({"type": "summary", "run_id": report.run_id, "exit_code": report.exit_code,
                "dry_run": report.dry_run, "terminations": len(report.rows), "needs_human": report.needs_human})
    return out


# -- commands ---------------------------------------------------------------------
def open_store(cfg: Config, scratch: bool = False) -> StateStore:
    return open_state(cfg.connector.state, state_password(cfg), audit_key(cfg), scratch)


def state_password(cfg: Config) -> str | None:
    return cfg.connector.state_password.reveal() if cfg.connector.state_password else None


def audit_key(cfg: Config) -> bytes | None:
    """The key that signs the audit chain (`[connector] audit_key`), or None."""
    ref = cfg.connector.audit_key
    if ref is None:
        return None
    value = ref.reveal()
    if len(value) < 16:
        raise ConfigError("the audit key is shorter than 16 characters (make one: head -c 32 /dev/urandom | base64)",
                          ref.where)
    return value.encode()


def cmd_check(args, cfg: Config) -> int:
    """Offline: every plugin is built (rules across keys, no I/O). Online: secrets resolved, one read each."""
    from . import plugins

    problems = []
    for tenant in cfg.tenants:
        for kind, blocks in (("sources", tenant.sources), ("providers", tenant.providers)):
            for pc in blocks:
                try:
                    plugin = plugins.load(kind, pc.type, pc.where)(pc.name, pc.options, tenant, pc.where)
                    if args.online:
                        plugin.check_online()
                    plugin.close()
                except OffboardError as e:
                    problems.append(e.at(pc.where))
    if cfg.psa is not None and args.online:
        try:
            with ConnectWise(cfg.psa) as psa:
                psa.check()
        except OffboardError as e:
            problems.append(e.at("psa"))
    if cfg.distributor is not None and args.online:
        with Pax8(cfg.distributor) as distributor:
            for i, tenant in enumerate(cfg.tenants):
                if tenant.pax8_company_id is not None:
                    try:
                        distributor.check(tenant.pax8_company_id)      # the credential, and the company's id
                    except OffboardError as e:
                        problems.append(e.at(f"tenant[{i}].pax8_company_id"))
    summary = {"config": cfg.path, "tenants": [t.id for t in cfg.tenants], "online": args.online,
               "ok": not problems, "problems": [str(p) for p in problems]}
    human = f"{cfg.path}: OK ({len(cfg.tenants)} tenant(s): {', '.join(t.id for t in cfg.tenants)})"
    for p in problems:
        print(f"offboard: error: {p}", file=sys.stderr)
    emit(args, [summary], "" if problems else human + (", every credential proven" if args.online else ""))
    return 1 if problems else 0


def cmd_plan(args, cfg: Config) -> int:
    preflight(cfg, args.tenant)
    store = open_store(cfg, scratch=True)
    report = reconcile(cfg, store, tenant=args.tenant, employee=args.employee, dry_run=True, trigger="plan")
    shown = set(report.terminations)
    rows = report.rows + [r for r in status_of(store, args.tenant, everything=False)
                          if r["id"] not in shown and (args.employee is None or args.employee in (r["employee_id"], r["email"]))]
    report.rows = rows
    emit(args, report_objects(report), render_report(report))
    report_errors(report)
    return 1 if report.config_errors else 0


def preflight(cfg: Config, tenant: str | None) -> None:
    """A secret that cannot be read stops the command before the state file is even opened."""
    for t in [cfg.tenant(tenant)] if tenant else cfg.tenants:
        for error in unresolvable_secrets(t):
            raise error


def report_errors(report: Report) -> None:
    for e in report.config_errors + report.source_errors:
        print(f"offboard: error: {mask_secrets(str(e))}", file=sys.stderr)


def cmd_reconcile(args, cfg: Config) -> int:
    if not args.once:
        raise ConfigError("`reconcile` needs --once (the daemon is `offboard serve`)", "reconcile")
    preflight(cfg, args.tenant)
    store = open_store(cfg, scratch=args.dry_run)
    report = reconcile(cfg, store, tenant=args.tenant, dry_run=args.dry_run, full=args.full, trigger="cli")
    emit(args, report_objects(report), render_report(report))
    report_errors(report)
    return report.exit_code


def parse_at(text: str | None, cfg: Config, tenant: str) -> dt.datetime:
    if not text:
        return utcnow()
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"not an ISO 8601 time: {text!r}", "--at") from None
    return when if when.tzinfo else when.replace(tzinfo=cfg.tenant(tenant).zone)


def cmd_run(args, cfg: Config) -> int:
    if args.from_ticket is not None:
        if args.who or args.tenant or args.ticket or args.at:
            raise ConfigError("--from-ticket reads the leaver, tenant and date from the ticket: give nothing else",
                              "run")
        preflight(cfg, None)
        store = open_store(cfg, scratch=args.dry_run)
        report = run_from_ticket(cfg, store, args.from_ticket, dry_run=args.dry_run)
        if report is None:
            print(f"ticket {args.from_ticket}: nothing to run (see the ticket's notes)", file=sys.stderr)
            return 2
    else:
        if not args.who or not args.tenant:
            raise ConfigError("give EMAIL_OR_ID and --tenant (or --from-ticket N)", "run")
        tenant = cfg.tenant(args.tenant)
        preflight(cfg, tenant.id)
        store = open_store(cfg, scratch=args.dry_run)
        termination = on_demand(tenant, store, args.who.strip(), parse_at(args.at, cfg, tenant.id), args.ticket or "")
        report = reconcile(cfg, store, tenant=tenant.id, dry_run=args.dry_run, trigger="run", on_demand=[termination])
        if not report.rows:
            report.rows = status_rows(store, [termination.id])
    emit(args, report_objects(report), render_report(report))
    report_errors(report)
    return report.exit_code


def cmd_serve(args, cfg: Config) -> int:
    from .daemon.service import serve

    return serve(cfg, open_store(cfg))     # a tenant whose secret cannot be read is reported by each pass


def cmd_status(args, cfg: Config) -> int:
    store = open_store(cfg, scratch=True)
    rows = status_of(store, args.tenant, args.all)
    stops = stopped_work(store, args.tenant)
    if args.json:
        for line in stops:
            print(f"offboard: warning: {line}", file=sys.stderr)
    emit(args, rows, "\n".join(stops + [""] if stops else []) + render_terminations(rows))
    return 0


def status_of(store: StateStore, tenant: str | None, everything: bool) -> list[dict]:
    """The open terminations (`everything`: all), and the done or deleted ones with a later job still waiting:
    a seat paid until its renewal is work the connector has not finished."""
    if everything:
        return status_rows(store, tenant=tenant, states=ALL)
    waiting = sorted(store.next_attempts(tenant, LATER))
    return status_rows(store, tenant=tenant, states=OPEN) + status_rows(store, waiting)


def stopped_work(store: StateStore, tenant: str | None) -> list[str]:
    """Why no new work starts: the global pause, a tenant's pause or safety hold (what `status` shows first)."""
    lines = [f"PAUSED every tenant since {p['paused_at']}: {p['reason']} (`offboard resume`)"
             for p in store.pauses() if p["scope"] == EVERY_TENANT]
    lines += [f"HELD {t}: {reason}" for t, reason in sorted(store.held_tenants().items()) if tenant in (None, t)]
    return lines


def resolve_id(store: StateStore, ident: str, tenant: str | None) -> dict:
    row = store.termination(ident)
    if not row and tenant:
        row = store.find_termination(tenant, ident.removeprefix(f"{tenant}/"))
    if not row:
        raise ConfigError("no such termination (ids look like TENANT/EMPLOYEE_ID; see `offboard status --all`)", ident)
    return row


def cmd_history(args, cfg: Config) -> int:
    store = open_store(cfg, scratch=True)
    row = resolve_id(store, args.id, args.tenant)
    trail = store.audit_trail(row["id"])
    objects = [{"seq": a["seq"], "at": a["at"], "run_id": a["run_id"], "termination": a["termination_id"],
                "event": a["event"], **json.loads(a["data"])} for a in trail]
    human_rows = [[o["at"], o["event"], o.get("provider", ""), o.get("action", ""), o.get("reason", "")]
                  for o in objects]
    human = f"{row['id']}  {row['email']}  {row['state']}\n" + table(
        ["at", "event", "provider", "action", "reason"], human_rows)
    changed = [o for o in objects if o["event"] == "action_changed" and o.get("before") not in (None, "", [], {})]
    if changed:          # in full: this is what a person needs to give the access back
        human += "\n\nBefore-state of every change (to restore access):\n" + "\n".join(
            f"  {o['provider']}/{o['action']} ({o['at']}): {json.dumps(o['before'], default=str, sort_keys=True)}"
            for o in changed)
    emit(args, objects, human)
    return 0


def cmd_decide(args, cfg: Config) -> int:
    """approve / hold / cancel / retry: a person's decisions, each audited."""
    store = open_store(cfg)
    decision = args.command
    if decision == "approve" and args.id is None:
        if not args.tenant:
            raise ConfigError("give a termination id, or --tenant T to release a tenant's safety hold", "approve")
        cfg.tenant(args.tenant)
        hold, ids = store.release_hold(args.tenant)
        left = len(store.open_holds(args.tenant))
        store.audit("tenant_approved", None, None, tenant=args.tenant, released=ids,
                    hold=hold and hold["id"], kind=hold and hold["kind"])
        verb = "cancelled" if hold and hold["kind"] == "cancel" else "released"
        human = (f"{args.tenant}: {verb} {len(ids)} termination(s) of the hold made {hold['held_at']}"
                 + (f"; {left} later hold(s) still wait for approval" if left else "")) if hold \
            else f"{args.tenant}: no safety hold"
        emit(args, [{"tenant": args.tenant, verb: ids, "holds_left": left}], human)
        return 0
    if decision == "hold" and args.id is None:
        return hold_tenant(args, cfg, store)
    row = resolve_id(store, args.id, args.tenant)
    tid, state = row["id"], row["state"]
    if decision == "approve":
        approve(store, row, args.action)
    elif decision == "hold":
        if state in ("done", "cancelled"):
            raise ConfigError(f"is {state}; nothing to hold", tid)
        store.set_state(tid, "held", PERSON_HOLD)
    elif decision == "cancel":
        if state == "done":
            raise ConfigError(f"is done; `offboard restore {tid}` gives the access back", tid)
        store.set_state(tid, "cancelled", "cancelled by a person")
    elif decision == "retry":
        store.audit("retry", tid, None, actions=store.reopen(tid))
    if decision != "retry":
        store.audit(f"person_{decision}", tid, None, previous_state=state)
    new = store.termination(tid)
    emit(args, [{"id": tid, "state": new["state"], "previous_state": state}], f"{tid}: {state} -> {new['state']}")
    return 0


def hold_tenant(args, cfg: Config, store: StateStore) -> int:
    """`hold --tenant T`: no new work starts for that tenant until `resume --tenant T`; its feeds are still read."""
    if not args.tenant:
        raise ConfigError("give a termination id, or --tenant T to hold a whole tenant", "hold")
    cfg.tenant(args.tenant)
    return set_pause(args, store, args.tenant, f"{PERSON_HOLD}: {args.reason}" if args.reason else PERSON_HOLD)


def cmd_pause(args, cfg: Config) -> int:
    """`pause`: no new work starts for any tenant until `resume`; actions in flight finish, feeds are still read."""
    return set_pause(args, open_store(cfg), EVERY_TENANT, f"paused by a person: {args.reason}" if args.reason
                     else "paused by a person")


def set_pause(args, store: StateStore, scope: str, reason: str) -> int:
    if store.pause(scope, reason):
        store.audit("person_paused", None, None, scope=scope, reason=reason)
    pause = next(p for p in store.pauses() if p["scope"] == scope)
    what = "every tenant" if scope == EVERY_TENANT else scope
    emit(args, [{"paused": scope, "since": pause["paused_at"], "reason": pause["reason"]}],
         f"{what}: no new work starts until `offboard resume{'' if scope == EVERY_TENANT else ' --tenant ' + scope}` "
         f"(paused since {pause['paused_at']}: {pause['reason']})")
    return 0


def cmd_resume(args, cfg: Config) -> int:
    """`resume` lifts `pause`; `resume --tenant T` lifts `hold --tenant T`. Work goes on at the next pass."""
    store = open_store(cfg)
    scope = args.tenant or EVERY_TENANT
    if args.tenant:
        cfg.tenant(args.tenant)
    lifted = store.resume(scope)
    if lifted:
        store.audit("person_resumed", None, None, scope=scope, paused_at=lifted["paused_at"])
    what = "every tenant" if scope == EVERY_TENANT else scope
    left = stopped_work(store, args.tenant)
    emit(args, [{"resumed": scope, "was_paused": bool(lifted), "still_stopped": left}],
         "\n".join([f"{what}: resumed" if lifted else f"{what}: was not paused"] + left))
    return 0


def cmd_purge(args, cfg: Config) -> int:
    """Blank the personal data of terminations finished more than `retention_days` ago (the daemon does it daily)."""
    if not cfg.connector.retention_days:
        raise ConfigError("retention_days is 0 (keep everything): set it to purge", "connector.retention_days")
    store = open_store(cfg, scratch=args.dry_run)
    result = purge_expired(cfg, store)
    count = sum(len(ids) for ids in result["purged"].values())
    human = (f"{'would purge' if args.dry_run else 'purged'} the personal data of {count} termination(s) finished "
             f"more than {cfg.connector.retention_days} days ago"
             + "".join(f"\n  {t}: {', '.join(ids)}" for t, ids in result["purged"].items()))
    if result["run_summaries_purged"]:
        human += f"\n{result['run_summaries_purged']} run summary(ies) of that age keep their counts, not their text"
    if result["audit_rows_kept"]:
        human += (f"\n{result['audit_rows_kept']} audit row(s) written by an older version keep their data "
                  "(their hash covers it)")
    emit(args, [{**result, "dry_run": args.dry_run, "retention_days": cfg.connector.retention_days}], human)
    return 0


def approve(store: StateStore, row: dict, scope: str | None) -> None:
    """Approve what `status` shows now: a safety hold (only that), or the needs_human reasons recorded.

    The reasons are kept word for word: the engine goes ahead only where the reason it finds
    next pass is one a person approved, so a reason found later needs a new approval.
    """
    tid, state = row["id"], row["state"]
    if state == "held":
        due = row["due_at"] <= iso(utcnow())
        store.set_state(tid, "due" if due else "scheduled", "", expect=("held",), approved_at=iso(utcnow()))
        return
    if state != "needs_human":
        raise ConfigError(f"is {state}; only held or needs_human terminations are approved", tid)
    waiting = [a for a in store.actions(tid) if a["status"] == "needs_human"
               and (scope is None or f"{a['provider']}/{a['action']}" == scope)]
    if scope and not waiting:
        raise ConfigError(f"{scope} does not need a person (see `offboard status`)", tid)
    approvals = json.loads(row.get("approvals") or "[]")
    for a in waiting:
        entry = {"scope": scope or "*", "reason": a["reason"]}
        if entry not in approvals:
            approvals.append(entry)
    store.reopen(tid, [a["id"] for a in waiting], approvals=json.dumps(approvals))


def operator() -> str:
    """Who runs this command, as far as the machine knows: the sudo caller before the account it became."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    caller = os.environ.get("SUDO_USER", "")
    return f"{caller} (sudo as {user})" if caller and caller != user else user


def cmd_confirm(args, cfg: Config) -> int:
    """A person did a manual step: journaled done and audited with who said so; confirming again changes nothing."""
    store = open_store(cfg)
    row = resolve_id(store, args.id, args.tenant)
    tid = row["id"]
    manual = {pc.name for pc in cfg.tenant(row["tenant"]).providers if pc.type == "manual"}
    steps = [a for a in store.actions(tid) if a["provider"] in manual
             and args.step in (a["action"], f"{a['provider']}/{a['action']}")]
    if len(steps) != 1:
        raise ConfigError(f"{args.step!r} names {len(steps)} manual steps reached so far; give PROVIDER/STEP as "
                          "`offboard status` lists it (a step is reached when the ones before it are done)", tid)
    step = steps[0]
    scope, after = f"{step['provider']}/{step['action']}", json.loads(step["after"] or "null")
    if step["status"] == "changed" and isinstance(after, dict) and "confirmed_by" in after:
        emit(args, [{"id": tid, "step": scope, "confirmed_by": after["confirmed_by"], "changed": False}],
             f"{tid}: {scope} was already confirmed by {after['confirmed_by']} at {step['finished_at']}")
        return 0
    if step["status"] != "needs_human" or not isinstance(after, dict) or OPEN_STEP not in after:
        raise ConfigError(f"{scope} is {step['status']} ({step['reason'] or 'no reason'}): only an open step is "
                          "confirmed (a hold or an approval goes through `approve`)", tid)
    who = operator()
    with store.transaction():
        store.record_outcome(step["id"], "changed", before={OPEN_STEP: after[OPEN_STEP]},
                             after={"confirmed_by": who}, reason=f"confirmed by {who}: {after[OPEN_STEP]}")
        store.audit("person_confirm", tid, None, provider=step["provider"], action=step["action"], by=who,
                    step=after[OPEN_STEP])
        waiting = [a for a in store.actions(tid) if a["status"] == "needs_human"]
        if store.state_of(tid) in ("needs_human", "in_progress") and not waiting:
            store.reopen(tid, [])   # the next pass goes on with the later steps (a pass running now leaves it so)
    new = store.termination(tid)
    emit(args, [{"id": tid, "step": scope, "confirmed_by": who, "changed": True, "state": new["state"]}],
         f"{tid}: {scope} confirmed by {who}; {row['state']} -> {new['state']}")
    return 0


UNKEYED = ("no audit_key configured: this proves the log is intact against careless edits, "
           "not against someone who can write the database")


def cmd_audit(args, cfg: Config) -> int:
    store = open_store(cfg, scratch=True)
    if args.verb == "head":
        head = store.audit_head()
        emit(args, [head], " ".join(f"{k}={v}" for k, v in head.items()))
        return 0
    ok, problem, count = store.verify_audit()
    keyed = store.audit_keyed()
    emit(args, [{"ok": ok, "rows": count, "problem": problem, "keyed": keyed}],
         (f"audit log OK: {count} rows, hash chain intact" + (", every row signed with the audit key" if keyed else "")
          if ok else ""))
    if not keyed:
        print(f"offboard: warning: {UNKEYED}", file=sys.stderr)
    if not ok:
        print(f"offboard: error: {masked_url(cfg.connector.state)}: audit log: {problem}", file=sys.stderr)
    return 0 if ok else 1


def cmd_restore(args, cfg: Config) -> int:
    """Undo an offboarding from the journal; a new password or pass is printed once, here, and nowhere else."""
    from .reconcile.restore import restore

    store = open_store(cfg, scratch=args.dry_run)
    row = resolve_id(store, args.id, args.tenant)
    preflight(cfg, row["tenant"])
    result = restore(cfg, store, row["id"], dry_run=args.dry_run)
    steps = [[s["provider"], s["action"], s["undoes"], s["outcome"], s["reason"]] for s in result.steps]
    human = (f"{row['id']}: {row['state']} -> {result.state}" + (f"\n  {result.reason}" if result.reason else "")
             + ("\n" + _indent(table(["provider", "action", "undoes", "outcome", "reason"], steps)) if steps else
                "\n  nothing in the journal to put back"))
    if result.shown:
        human += "\n\nShown once, stored nowhere (give it to the person):\n" + "\n".join(f"  {t}" for t in result.shown)
    objects = [{"id": row["id"], "run_id": result.run_id, "dry_run": result.dry_run, "state": result.state,
                "reason": result.reason, "steps": result.steps, "shown_once": result.shown,
                "exit_code": result.exit_code}]
    emit(args, objects, human)
    for e in result.config_errors:
        print(f"offboard: error: {mask_secrets(str(e))}", file=sys.stderr)
    return result.exit_code


def cmd_report(args, cfg: Config) -> int:
    """The month's evidence for one tenant, from a copy of the store (so it writes nothing)."""
    from . import report

    tenant = cfg.tenant(args.tenant)
    try:
        report.month_bounds(args.month, tenant.zone)
    except ValueError:
        raise ConfigError("not a month (YYYY-MM)", f"--month {args.month}") from None
    facts = report.build(open_store(cfg, scratch=True), tenant, args.month)
    if args.json:          # like every command: one JSON object per line
        emit(args, [facts], "")
    else:
        sys.stdout.write(report.RENDER[args.format](facts))
    return 0


def cmd_backup(args, cfg: Config) -> int:
    """A consistent copy of the state store while the daemon runs (SQLite's online backup; on PostgreSQL,
    pg_dump's custom format, put back with pg_restore)."""
    store = open_store(cfg)
    store.backup(args.path)
    emit(args, [{"backup": args.path, "audit": store.audit_head()}], f"state store copied to {args.path}")
    return 0


def cmd_migrate_state(args, cfg: Config) -> int:
    """A SQLite store into an empty PostgreSQL database, in one transaction that commits only when the moved audit
    chain verifies with every row there. Stop the daemon first: writes to the file after the copy would be lost."""
    from .store.postgres import PostgresStore, is_url

    if is_url(args.source) or not is_url(args.to):
        raise ConfigError("migrate-state moves a SQLite file (--from PATH) into PostgreSQL (--to postgresql://...)",
                          "migrate-state")
    if not os.path.isfile(args.source):
        raise ConfigError("no state store there", args.source)
    key = audit_key(cfg)
    source = Store.open(args.source, audit_key=key)
    ok, problem, rows = source.verify_audit()
    if not ok:
        raise ConfigError(f"the audit log does not verify, so it is not moved: {problem}", args.source)
    target = PostgresStore.open(args.to, state_password(cfg), key)
    where = masked_url(args.to)
    try:
        with target.transaction():
            if target.audit_head()["seq"] or target.terminations() or target.table_rows("runs"):
                raise ConfigError("the database already holds a state store; migrate-state fills an empty one", where)
            copied = copy_store(source, target)
            ok, problem, moved = target.verify_audit()
            if not ok or moved != rows:
                raise ConfigError(f"the moved audit log does not verify ({problem or f'{moved} of {rows} rows'}); "
                                  "nothing was kept", where)
            head = target.audit_head()
    finally:
        target.close()
        source.close()
    emit(args, [{"from": args.source, "to": where, "rows": copied, "audit_rows": moved, "audit": head}],
         f"moved {copied} rows to {where}; audit log OK: {moved} rows, hash chain intact"
         + (", every row signed with the audit key" if key else ""))
    return 0


def cmd_demo(args) -> int:
    from .sandbox.demo import main as demo_main
    return demo_main(args)


def cmd_sandbox(args) -> int:
    from .sandbox.world import main as sandbox_main
    return sandbox_main(args)


class Parser(argparse.ArgumentParser):
    """Usage errors are config errors too: one line on stderr and exit 1 (DESIGN.md), not argparse's 2."""

    def error(self, message: str):
        print(f"offboard: error: {self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(1)


def _common(suppress: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name (suppressed defaults below the top level)."""
    common = Parser(add_help=False)
    default = {"default": argparse.SUPPRESS} if suppress else {}
    common.add_argument("--json", action="store_true", help="one JSON object per line", **default)
    common.add_argument("--debug", action="store_true", help="tracebacks and debug logs", **default)
    common.add_argument("--config", help="config file (default $OFFBOARD_CONFIG, else " + configmod.DEFAULT_PATH + ")",
                        **default)
    return common


def parser() -> argparse.ArgumentParser:
    common = _common(suppress=True)
    p = Parser(prog="offboard", parents=[_common(suppress=False)],
                                description="Offboard leavers from every system an MSP manages: revoke first.")
    p.add_argument("--version", action="version", version=f"offboard-connector {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    c = sub.add_parser("check", parents=[common], help="validate the config")
    c.add_argument("--online", action="store_true", help="also prove each credential with one read-only call")
    c = sub.add_parser("plan", parents=[common], help="what would be done; writes nothing")
    c.add_argument("--tenant"); c.add_argument("--employee")
    c = sub.add_parser("reconcile", parents=[common], help="one pass over every feed and tenant")
    c.add_argument("--once", action="store_true", required=True)
    c.add_argument("--tenant"); c.add_argument("--dry-run", action="store_true"); c.add_argument("--full", action="store_true")
    c = sub.add_parser("run", parents=[common], help="offboard one person now")
    c.add_argument("who", metavar="EMAIL_OR_ID", nargs="?"); c.add_argument("--tenant")
    c.add_argument("--at"); c.add_argument("--ticket"); c.add_argument("--dry-run", action="store_true")
    c.add_argument("--from-ticket", type=int, metavar="N", help="read the leaver, tenant and date from PSA ticket N")
    sub.add_parser("serve", parents=[common], help="the daemon: scheduler, webhook listener, health and metrics")
    c = sub.add_parser("status", parents=[common], help="open terminations and their actions")
    c.add_argument("--tenant"); c.add_argument("--all", action="store_true")
    c = sub.add_parser("history", parents=[common], help="the audit trail of one person")
    c.add_argument("id"); c.add_argument("--tenant")
    for name, text in (("approve", "release a held or needs_human termination, or a tenant's safety hold"),
                       ("hold", "pause a termination, or with --tenant T (no id) a whole tenant"), ("cancel", "never act on a termination"),
                       ("retry", "retry failed actions now")):
        c = sub.add_parser(name, parents=[common], help=text)
        c.add_argument("id", nargs="?" if name in ("approve", "hold") else None); c.add_argument("--tenant")
        if name == "approve":
            c.add_argument("--action", metavar="PROVIDER/ACTION", help="approve only this action's reason")
        if name == "hold":
            c.add_argument("--reason", help="with --tenant: why (shown in status)")
    c = sub.add_parser("pause", parents=[common], help="no new work for any tenant until `resume`")
    c.add_argument("--reason", help="why (shown in status)")
    c = sub.add_parser("resume", parents=[common], help="lift `pause`, or with --tenant T a tenant's `hold --tenant T`")
    c.add_argument("--tenant")
    c = sub.add_parser("purge", parents=[common], help="blank personal data older than connector.retention_days")
    c.add_argument("--dry-run", action="store_true")
    c = sub.add_parser("confirm", parents=[common], help="a person did a manual step (journaled and audited)")
    c.add_argument("id"); c.add_argument("step", metavar="[PROVIDER/]STEP"); c.add_argument("--tenant")
    c = sub.add_parser("restore", parents=[common], help="undo an offboarding (rehire, mistake) from the journal")
    c.add_argument("id"); c.add_argument("--tenant"); c.add_argument("--dry-run", action="store_true")
    c = sub.add_parser("audit", parents=[common], help="audit log tools")
    c.add_argument("verb", choices=["verify", "head"])
    c = sub.add_parser("report", parents=[common], help="a month's evidence: time to revoke, actions, seats freed")
    c.add_argument("--tenant", required=True); c.add_argument("--month", required=True, metavar="YYYY-MM")
    c.add_argument("--format", choices=["html", "csv", "json"], default="html")
    c = sub.add_parser("backup", parents=[common], help="a consistent copy of the state store, while it is in use")
    c.add_argument("path")
    c = sub.add_parser("migrate-state", parents=[common],
                       help="move a SQLite state store into an empty PostgreSQL database (stop the daemon first)")
    c.add_argument("--from", dest="source", required=True, metavar="PATH")
    c.add_argument("--to", required=True, metavar="POSTGRESQL_URL")
    c = sub.add_parser("demo", parents=[common], help="the whole pipeline against a throwaway sandbox")
    c.add_argument("--keep", action="store_true", help="leave the sandbox folder behind")
    c = sub.add_parser("sandbox", parents=[common], help="serve the emulated systems over HTTPS, print a config for them")
    c.add_argument("--port", type=int, default=8443, help="port on 127.0.0.1 (0: any free one; default 8443)")
    c.add_argument("--size", type=int, default=50, help="people in the generated company, 10 to 100000 (default 50)")
    return p


COMMANDS = {"check": cmd_check, "plan": cmd_plan, "reconcile": cmd_reconcile, "run": cmd_run, "serve": cmd_serve,
            "status": cmd_status,
            "history": cmd_history, "approve": cmd_decide, "hold": cmd_decide, "cancel": cmd_decide,
            "retry": cmd_decide, "confirm": cmd_confirm, "audit": cmd_audit, "backup": cmd_backup, "pause": cmd_pause,
            "resume": cmd_resume, "purge": cmd_purge, "restore": cmd_restore, "report": cmd_report, "migrate-state": cmd_migrate_state}


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:           # --help, --version, or a usage error already printed on one line
        return e.code if isinstance(e.code, int) else 1
    try:
        if args.command in ("demo", "sandbox"):
            return cmd_demo(args) if args.command == "demo" else cmd_sandbox(args)
        cfg = configmod.load(args.config)
        serving = args.command == "serve"       # a command's own output is its report: its log says only warnings
        level = "DEBUG" if args.debug else cfg.connector.log_level if serving else \
            max(cfg.connector.log_level, "WARNING", key=logging.getLevelName)
        setup_logging(level, json_lines=serving)
        return COMMANDS[args.command](args, cfg)
    except OffboardError as e:
        if args.debug:
            traceback.print_exc()
        print(f"offboard: error: {mask_secrets(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: still one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"offboard: error: internal: {type(e).__name__}: {mask_secrets(str(e))} (run with --debug)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
