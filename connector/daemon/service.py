"""The daemon: one process that keeps every tenant's leavers moving for months, unattended.

Each tenant's schedule is kept by one daemon, the holder of the tenant's lease: with several
daemons on one database the tenants are shared out evenly among those alive, and a dead one's
are taken over once its leases expire. Any daemon works the webhooks and tickets it accepts.
Its schedule is rebuilt from the store on every start and whenever the store changes (the
audit head moves): a poll per tenant, and one wake-up at the earliest instant work appears
by itself (a termination becoming due, a journaled wait ending), so a leaver due at 17:00 is
revoked at 17:00 whatever the poll interval. A leaver's pass starts `PLAN_AHEAD` before their
due instant: it checks, reads, matches and plans then, and its first write waits for 17:00.
APScheduler keeps only that in-memory plan; every fact it is made from lives in the store. Signals are handled on the main thread: SIGHUP
reloads the config between passes (a bad one keeps the running one), SIGTERM stops taking
work, lets the passes in flight finish their actions within `shutdown_grace`, and exits 0.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import os
import queue
import signal
import threading
import time
from collections import Counter
from typing import Iterable

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from cheroot import wsgi
from prometheus_client.core import GaugeMetricFamily

from .. import config as configmod, net, retention
from ..config import Config, mask_secrets
from ..errors import ConfigError
from ..model import Termination
from ..reconcile.engine import PICKED
from ..reconcile.intake import Intake, record
from ..providers.connectwise.api import ConnectWise
from ..reconcile import tickets
from ..reconcile.announce import TicketNotes
from ..reconcile.leases import Leases, daemon_of, kind_of, owner_id
from ..reconcile.schedule import LATER, next_due, next_wakeup, workable_phases
from ..sources.webhook import MAX_BODY
from ..store import Store, iso, now
from . import metrics, systemd
from .alerts import Alerter
from .runner import Runner
from .web import App

log = logging.getLogger(__name__)

WATCH_SECONDS = 1.0          # how often the store is checked for changes that move the wake-up
ADOPT_SECONDS = 15.0         # how often runs left by a dead daemon are looked for
ALERT_SECONDS = 30.0         # how often the conditions a person is told about are checked
STALE_TICK = 30.0            # a scheduler that has not ticked for this long is unhealthy
PURGE_SECONDS = 86400.0      # the retention purge, daily
PLAN_AHEAD = dt.timedelta(seconds=10)   # a due leaver's pass reads and plans this long before the instant
SHARE_SECONDS = 5.0          # how often the tenants are shared out again among the daemons alive
SIGNAL_POLL_SECONDS = 0.5     # the longest a signal delivered to another thread waits for the main one


class Daemon:
    def __init__(self, config: Config, store: Store):
        self.config = config
        self.store = store
        self.owner = owner_id("serve")
        self.runner = Runner(lambda: self.config, store, self.owner, config.connector.workers,
                             on_finished=self.reschedule_wakeup)
        self.scheduler = BackgroundScheduler(timezone=dt.timezone.utc, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        self.metrics = metrics.registry(store, extra=self._daemon_metrics)
        self.server: wsgi.Server | None = None
        self.address = ""
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()     # its put() is safe in a signal handler
        self.leases = Leases(store, self.owner, config.connector.lease_seconds)
        self.watchdog = systemd.Watchdog(lambda: "; ".join(self.health()[0]))
        self.alerter = Alerter(lambda: self.config, store,
                               ticket_note=self.note_on_ticket if config.psa else None)
        self._horizon = now()           # instants up to here were handed to a wake-up already
        self._audit_seq = -1
        self._last_tick = time.monotonic()
        self._wake_lock = threading.Lock()

    # -- life ----------------------------------------------------------------------------
    def start(self) -> None:
        self.leases.__enter__()
        self.leases.take(f"process:{self.owner}")
        self._start_listener()
        self.scheduler.start()
        self.share_tenants()
        self._schedule_polls()
        self.scheduler.add_job(self.share_tenants, IntervalTrigger(seconds=SHARE_SECONDS), id="share")
        self.scheduler.add_job(self._watch, IntervalTrigger(seconds=WATCH_SECONDS), id="watch")
        self.scheduler.add_job(self.adopt_orphans, IntervalTrigger(seconds=ADOPT_SECONDS), id="adopt",
                               next_run_time=dt.datetime.now(dt.timezone.utc))
        self.scheduler.add_job(self._tell_people, IntervalTrigger(seconds=ALERT_SECONDS), id="alerts")
        self.scheduler.add_job(lambda: retention.purge_expired(self.config, self.store),
                               IntervalTrigger(seconds=PURGE_SECONDS), id="purge",
                               next_run_time=dt.datetime.now(dt.timezone.utc))
        self.reschedule_wakeup()
        self.watchdog.start()
        status = f"serving {len(self.config.tenants)} tenant(s)" + (f", listening on {self.address}" if self.address else "")
        systemd.notify("READY=1", f"STATUS={status}")
        log.info("ready: %s", status)

    def serve_forever(self) -> int:
        """Run until SIGTERM or SIGINT; SIGHUP reloads. Returns the exit code (0 after a clean stop)."""
        previous = {sig: signal.signal(sig, lambda s, _: self.signals.put(s))
                    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            self.start()
            while True:
                try:    # Linux may hand the signal to any thread: a bounded wait lets the main one run its handler
                    sig = self.signals.get(timeout=SIGNAL_POLL_SECONDS)
                except queue.Empty:
                    continue
                if sig == signal.SIGHUP:
                    self.reload()
                else:
                    break
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def stop(self) -> None:
        systemd.notify("STOPPING=1")
        grace = self.config.connector.shutdown_grace
        log.info("stopping: no new work; waiting up to %.0f s for actions in flight", grace)
        self.watchdog.stop()
        if self.server is not None:
            self.server.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        finished = self.runner.shutdown(grace)
        self.leases.__exit__(None, None, None)
        log.info("stopped" if finished else "stopped with a pass still running: its journal resumes it next start")
        if not finished:        # the pass's threads would hold the exit past the bound: the journal is safe to leave
            logging.shutdown()
            os._exit(0)

    def reload(self) -> None:
        """SIGHUP: a config that validates is swapped in between passes; one that does not keeps the running one."""
        try:
            fresh = configmod.load(self.config.path)
        except ConfigError as e:
            log.error("reload refused, the running config stays: %s", e)
            return
        if fresh.connector.state != self.config.connector.state or \
                (fresh.webhook and fresh.webhook.listen) != (self.config.webhook and self.config.webhook.listen):
            log.warning("reload: a new state store or listen address takes effect only after a restart")
        self.config = fresh
        self.share_tenants()
        self._schedule_polls()
        log.info("reloaded %s: %d tenant(s)", fresh.path, len(fresh.tenants))

    # -- the schedule ----------------------------------------------------------------------
    def _schedule_polls(self) -> None:
        """One poll per tenant, the first at once: a full pass when the daemon starts and after a reload."""
        for job in self.scheduler.get_jobs():
            if job.id.startswith("poll:"):
                job.remove()
        for tenant in self.config.tenants:
            self.scheduler.add_job(self._poll, IntervalTrigger(seconds=self.config.connector.poll_interval),
                                   args=[tenant.id], id=f"poll:{tenant.id}",
                                   next_run_time=dt.datetime.now(dt.timezone.utc))

    def _poll(self, tenant: str) -> None:
        if tenant in self.kept():
            self._submit(tenant, "schedule")

    def kept(self) -> set[str]:
        """The tenants whose schedule this daemon keeps: those whose lease it holds."""
        return {t.id for t in self.config.tenants if self.leases.holds(f"tenant:{t.id}")}

    def share_tenants(self) -> None:
        """Keep an even share of the tenants (all of them when alone): give back what is beyond it, for a
        daemon that just started, and take free ones (never held, given back, or a dead daemon's expired)
        up to it. A tenant taken is polled at once; either way the wake-up is computed again."""
        live = self.store.live_leases()
        daemons = {daemon_of(lease["owner"]) for lease in live if kind_of(lease["key"]) == "process"}
        share = math.ceil(len(self.config.tenants) / len(daemons | {daemon_of(self.owner)}))
        wanted = [f"tenant:{t}" for t in sorted(t.id for t in self.config.tenants)]
        held = [key for key in wanted if self.leases.holds(key)][:share]
        given_back = [key for key in self.leases.keys("tenant") if key not in held]      # lost, gone, too many
        for key in given_back:
            self.leases.release(key)
        taken_elsewhere = {lease["key"] for lease in live if daemon_of(lease["owner"]) != daemon_of(self.owner)}
        taken = []
        for key in wanted:
            if len(held) + len(taken) >= share:
                break
            if key not in held and key not in taken_elsewhere and self.leases.take(key):
                taken.append(key)
        for key in taken:
            job = self.scheduler.get_job(f"poll:{key.split(':', 1)[1]}")
            if job is not None:
                job.modify(next_run_time=dt.datetime.now(dt.timezone.utc))
        if taken or given_back:
            log.info("tenants kept here: %d of %d (%d taken, %d given back)", len(self.kept()),
                     len(self.config.tenants), len(taken), len(given_back))
            self.reschedule_wakeup()

    def _submit(self, tenant: str, trigger: str, only: list[str] | None = None,
                not_before: dt.datetime | None = None) -> str | None:
        try:
            return self.runner.submit(tenant, trigger, only, not_before=not_before)
        except Exception as e:     # stopping, or the store refused the run row: logged, the next trigger retries
            log.warning("could not queue a %s pass for %s: %s", trigger, tenant, e, extra={"tenant": tenant})
            return None

    def reschedule_wakeup(self) -> None:
        with self._wake_lock:
            if not self.scheduler.running:
                return
            kept = self.kept()
            ahead = next_due(self.config, self.store, self._horizon + PLAN_AHEAD, kept)
            at = min(filter(None, [next_wakeup(self.config, self.store, self._horizon, kept),
                                   ahead and ahead[0] - PLAN_AHEAD]), default=None)
            if at is None:
                if self.scheduler.get_job("wakeup"):
                    self.scheduler.remove_job("wakeup")
                return
            self.scheduler.add_job(self._wake, DateTrigger(run_date=max(at, now())), id="wakeup",
                                   replace_existing=True)

    def _wake(self) -> None:
        """An instant came: work on each termination whose time has come, in its tenant's pass."""
        with self._wake_lock:
            at = now()
            self._horizon = at
        self._work_on_due(PICKED, at, "due")
        self._plan_ahead(at)
        self.reschedule_wakeup()

    def _plan_ahead(self, at: dt.datetime) -> None:
        """Start the passes of the leavers due within PLAN_AHEAD, each to write at its instant."""
        while (ahead := next_due(self.config, self.store, at, self.kept())) and ahead[0] <= at + PLAN_AHEAD:
            due, rows = ahead
            by_tenant: dict[str, list[str]] = {}
            for row in rows:
                by_tenant.setdefault(row["tenant"], []).append(row["id"])
            for tenant, ids in by_tenant.items():
                if not (self.store.open_hold(tenant) or self.store.paused(tenant)):
                    self._submit(tenant, "due", ids, not_before=due)
            at = due

    def _work_on_due(self, states: tuple[str, ...], at: dt.datetime, trigger: str) -> None:
        by_tenant: dict[str, list[str]] = {}
        kept = self.kept()
        tenants = {t.id: t for t in self.config.tenants if t.id in kept}
        queued = self.store.next_attempts(None, LATER)
        for row in self.store.terminations(None, states):
            if row["tenant"] in tenants and workable_phases(row, tenants[row["tenant"]], at, queued.get(row["id"], ())):
                by_tenant.setdefault(row["tenant"], []).append(row["id"])
        for tenant, ids in by_tenant.items():
            stopped = self.store.open_hold(tenant) or self.store.paused(tenant)     # its polls still record
            if not stopped:
                self._submit(tenant, trigger, ids)

    def _watch(self) -> None:
        """The store changed (its audit head moved): move the wake-up, and start what a person just let go
        (a resume, an approval) instead of leaving it to the next poll."""
        self._last_tick = time.monotonic()
        seq = self.store.audit_head()["seq"]
        if seq != self._audit_seq:
            first = self._audit_seq < 0
            self._audit_seq = seq
            self.reschedule_wakeup()
            if not first:
                self._work_on_due(("scheduled", "due"), now(), "store")

    def _tell_people(self) -> None:
        """Alerts, and ticket notes a PSA that was down refused when the termination settled."""
        self.alerter.check()
        if self.config.psa is not None:
            TicketNotes(self.config, self.store).retry_pending()

    def adopt_orphans(self) -> None:
        """Work a dead daemon left: its queued runs run here under their own ids; the ones it was running are
        failed and their terminations (a full pass: the tenant) are worked here in a new pass, resuming from
        the journal. A daemon is dead once every lease it held expired, its passes' as well as its own, so
        the new pass can take each termination it left."""
        me = daemon_of(self.owner)
        live = {daemon_of(lease["owner"]) for lease in self.store.live_leases()}
        for run in self.store.runs(["queued", "running"]):
            owner = run.get("owner")
            if not owner or daemon_of(owner) in (me, *live):
                continue
            if run["state"] == "running":
                self.store.fail_run(run["id"], "the daemon running it stopped; its work resumed in another pass")
                if run["tenant"]:
                    self._submit(run["tenant"], run["trigger"], run["terminations"] or None)
                continue
            self.store.claim_run(run["id"], self.owner)
            try:
                self.runner.submit(run["tenant"], run["trigger"], run["terminations"] or None, run_id=run["id"])
            except Exception as e:
                log.warning("could not adopt run %s: %s", run["id"], e)

    # -- what the listener calls --------------------------------------------------------------
    def accept(self, termination: Termination) -> str:
        """A verified webhook: record it (durably, before the answer), then queue its pass."""
        tenant = self.config.tenant(termination.tenant)

        def record_it(run_id: str) -> None:
            intake = Intake()
            with self.store.transaction():
                record(tenant, self.store, [termination], now(), run_id, intake)
            if intake.errors:
                raise intake.errors[0]

        run_id = self.runner.submit(tenant.id, "webhook", [termination.id], prepare=record_it)
        log.info("webhook accepted for %s: run %s", termination.id, run_id,
                 extra={"tenant": tenant.id, "employee": termination.employee_id, "run_id": run_id})
        self.reschedule_wakeup()
        return run_id

    def accept_ticket_callback(self, token: str, body: bytes) -> tuple[int, dict]:
        """Only a hint: a right token makes the connector fetch the ticket itself (connector.reconcile.tickets)."""
        status, answer, work = tickets.handle_connectwise_callback(self.config, self.store, token, body,
                                                                   stop=self.runner.stop)
        if work is not None:
            self.runner.submit_work(answer["run_id"], "ticket", work)
        return status, answer

    def note_on_ticket(self, config: Config, ticket: str, text: str) -> None:
        with ConnectWise(config.psa) as psa:
            psa.add_note_once(int(ticket), text, text)

    def client_address(self, environ: dict) -> str:
        """The peer, or behind a configured trusted proxy the address it forwarded for."""
        return net.client_address(environ.get("REMOTE_ADDR", ""), environ.get("HTTP_X_FORWARDED_FOR"),
                                  self.config.webhook.trusted_proxies if self.config.webhook else [])

    def client_allowed(self, environ: dict) -> bool:
        return net.allowed(self.client_address(environ),
                           self.config.webhook.allow_from if self.config.webhook else [])

    def health(self) -> tuple[list[str], dict]:
        """Reasons to answer 503 (none: healthy), and what a person checking wants to see: whether the
        database answered, and the leases this daemon holds (its own, its passes' terminations and intakes)."""
        reasons = []
        if not self.scheduler.running:
            reasons.append("the scheduler is not running")
        elif time.monotonic() - self._last_tick > STALE_TICK:
            reasons.append(f"the scheduler has not ticked for {time.monotonic() - self._last_tick:.0f} s")
        try:
            self.store.set_cursor(f"heartbeat:{self.owner}", iso(now()))
        except Exception as e:     # nothing else can be read from it either
            reasons.append(f"the state store is not writable: {mask_secrets(str(e))}")
            return reasons, {"database": "unreachable", "tenants": len(self.config.tenants)}
        process = f"process:{self.owner}"
        if not self.leases.holds(process) and not self.leases.take(process):      # lost while the database was away
            reasons.append("this daemon lost its own lease: another process took it over")
        me = daemon_of(self.owner)
        held = Counter(kind_of(lease["key"]) for lease in self.store.live_leases() if daemon_of(lease["owner"]) == me)
        pause = self.store.paused()
        return reasons, {"database": "reachable", "tenants": len(self.config.tenants),
                         "held_tenants": self.store.held_tenants(),
                         "paused": f"{pause['reason']} since {pause['paused_at']}" if pause else "",
                         "leases": {"daemon": me, **{kind: held.get(kind, 0)
                                                     for kind in ("process", "tenant", "intake", "termination")}}}

    def _daemon_metrics(self) -> Iterable:
        held_now = self.store.held_tenants()
        held = GaugeMetricFamily("offboard_tenant_held", "1 while a hold or a person's pause stops the tenant",
                                 labels=["tenant"])
        for t in self.config.tenants:
            held.add_metric([t.id], 1 if t.id in held_now else 0)
        yield held
        yield GaugeMetricFamily("offboard_paused", "1 while every tenant is paused (`offboard pause`)",
                                value=1 if self.store.paused() else 0)

    # -- the listener ------------------------------------------------------------------------
    def _start_listener(self) -> None:
        if self.config.webhook is None:
            return
        host, _, port = self.config.webhook.listen.rpartition(":")
        server = wsgi.Server((host.strip("[]"), int(port)), App(self), numthreads=8, request_queue_size=64,
                             timeout=10, shutdown_timeout=5, server_name="offboard-connector")
        server.max_request_body_size = MAX_BODY + 1       # cheroot answers 413 beyond it, before the app reads
        server.max_request_header_size = 64 << 10
        server.prepare()
        self.server = server
        bound = server.bind_addr
        self.address = f"{bound[0]}:{bound[1]}"
        threading.Thread(target=server.serve, name="listener", daemon=True).start()
        log.info("listening on %s", self.address)


def serve(config: Config, store: Store) -> int:
    return Daemon(config, store).serve_forever()
