"""The daemon's one queue of passes: every trigger (poll, a due instant, a webhook, a reload) asks it for a
pass of `reconcile(...)`.

Per tenant at most one pass runs and one of each kind waits (a full pass, with the feeds; a
targeted pass, on named terminations), so a storm of triggers costs one pass and duplicate
deliveries for the same person collapse into the waiting run, whose id they share. Each run
is a row in the store from the moment it is accepted (`queued`), so `GET /runs/<id>` and a
restarted daemon both see it; the work itself resumes from the journal whoever does it.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from ..config import Config
from ..reconcile import reconcile
from ..store import Store

log = logging.getLogger(__name__)


class ShuttingDown(Exception):
    """The daemon takes no new work once it was told to stop."""


@dataclass
class Job:
    run_id: str
    tenant: str
    trigger: str
    only: set[str] | None = None          # None: a full pass (feeds, then whatever is due)
    named: set[str] = field(default_factory=set)
    not_before: dt.datetime | None = None  # read and plan now, write from this instant (reconcile's not_before)

    @property
    def kind(self) -> tuple[str, dt.datetime | None]:
        return ("full" if self.only is None else "only"), self.not_before


class Runner:
    def __init__(self, config: Callable[[], Config], store: Store, owner: str, workers: int,
                 on_finished: Callable[[], None] = lambda: None):
        self.config, self.store, self.owner = config, store, owner
        self.on_finished = on_finished
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._waiting: dict[str, list[Job]] = {}      # per tenant, oldest first
        self._running: dict[str, Job] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pass")
        self._idle = threading.Condition(self._lock)

    def submit(self, tenant: str, trigger: str, only: list[str] | None = None, run_id: str | None = None,
               prepare: Callable[[str], None] = lambda run_id: None, not_before: dt.datetime | None = None) -> str:
        """Queue a pass for `tenant` (on `only` those terminations) and return its run id.

        It joins the tenant's waiting pass of the same kind (and the same `not_before`), if any;
        `run_id` (a run adopted from a daemon that died) keeps its own id and waits on its own.
        `prepare(run_id)` runs before the pass can start (a webhook records its termination there)."""
        with self._lock:
            if self.stop.is_set():
                raise ShuttingDown("the daemon is stopping")
            kind = ("full" if only is None else "only"), not_before
            waiting = self._waiting.setdefault(tenant, [])
            job = next((j for j in waiting if j.kind == kind), None) if run_id is None else None
            prepare(job.run_id if job else (run_id := run_id or uuid.uuid4().hex[:12]))
            if job is None:
                job = Job(run_id, tenant, trigger, None if only is None else set(), not_before=not_before)
                waiting.append(job)
            if only is not None:
                job.only |= set(only)
                job.named |= set(only)
            self.store.queue_run(job.run_id, job.trigger, tenant, sorted(job.named), self.owner)
            self._start_next(tenant)
            return job.run_id

    def submit_work(self, run_id: str, trigger: str, work: Callable[[], object]) -> str:
        """Queue work that finds its own tenant (a ticket callback): it runs beside the passes, its
        terminations leased like any other; `work()` returns None when it ran nothing."""
        with self._lock:
            if self.stop.is_set():
                raise ShuttingDown("the daemon is stopping")
            self.store.queue_run(run_id, trigger, None, [], self.owner)
            self._pool.submit(self._work_alone, run_id, work)
        return run_id

    def _work_alone(self, run_id: str, work: Callable[[], object]) -> None:
        try:
            if work() is None:
                self.store.finish_run(run_id, 0, {"note": "nothing to run"}, [])
        except Exception as e:
            log.exception("run %s failed", run_id, extra={"run_id": run_id})
            self.store.fail_run(run_id, f"{type(e).__name__}: {e}")
        finally:
            self.on_finished()

    def busy(self) -> bool:
        with self._lock:
            return bool(self._running or any(self._waiting.values()))

    def _start_next(self, tenant: str) -> None:
        if tenant in self._running or self.stop.is_set():
            return
        waiting = self._waiting.get(tenant)
        if waiting:
            job = waiting.pop(0)
            self._running[tenant] = job
            self._pool.submit(self._work, job)

    def _work(self, job: Job) -> None:
        try:
            report = reconcile(self.config(), self.store, tenant=job.tenant, trigger=job.trigger, run_id=job.run_id,
                               only=job.only, stop=self.stop, not_before=job.not_before)
            log.info("run %s (%s, %s): exit %s", job.run_id, job.trigger, job.tenant, report.exit_code,
                     extra={"tenant": job.tenant, "run_id": job.run_id})
        except Exception as e:   # a config that lost the tenant, a store that failed: this run failed, the daemon goes on
            log.exception("run %s (%s) failed", job.run_id, job.tenant, extra={"tenant": job.tenant, "run_id": job.run_id})
            self.store.fail_run(job.run_id, f"{type(e).__name__}: {e}")
        finally:
            with self._lock:
                self._running.pop(job.tenant, None)
                self._start_next(job.tenant)
                self._idle.notify_all()
            self.on_finished()

    def shutdown(self, grace: float) -> bool:
        """Start nothing more; wait up to `grace` seconds for the passes in flight (whose actions in flight
        finish and are journaled). Waiting runs stay `queued` in the store for the next start to adopt."""
        self.stop.set()
        with self._lock:
            finished = self._idle.wait_for(lambda: not self._running, timeout=grace)
        self._pool.shutdown(wait=False, cancel_futures=True)
        return finished
