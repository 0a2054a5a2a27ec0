"""How long the personal data of a finished offboarding is kept: `[connector] retention_days`.

A termination is finished when nothing more will be done for it: cancelled, restored, or
deleted by its `retain` job; a `done` one only where the tenant deletes nothing later
(`delete_after_days = 0`), since a later deletion still needs the person's addresses to match.
Its clock starts when it finished. A run's summary of that age keeps its counts, not its text.
`offboard purge` runs it, and the daemon once a day.
"""
from __future__ import annotations

import datetime as dt
import logging

from .config import Config
from .store import StateStore, now as utcnow

log = logging.getLogger(__name__)

FINISHED = ("cancelled", "deleted", "restored")


def purge_expired(config: Config, store: StateStore, now: dt.datetime | None = None) -> dict:
    """Purge every tenant's finished terminations older than the retention; {tenant: ids}, audit rows kept
    in clear because they were written before the store could purge them, and the run summaries of that age
    reduced to their counts (a rejected row or an error can name a person)."""
    days = config.connector.retention_days
    if not days:
        return {"purged": {}, "audit_rows_kept": 0, "run_summaries_purged": 0}
    before = (now or utcnow()) - dt.timedelta(days=days)
    purged, kept = {}, 0
    runs = store.purge_runs(before)
    for tenant in config.tenants:
        states = FINISHED + (("done",) if not tenant.policy.delete_after_days else ())
        ids, old_rows = store.purge(tenant.id, before, states)
        kept += old_rows
        if ids:
            purged[tenant.id] = ids
            log.info("tenant %s: personal data of %d termination(s) finished before %s purged", tenant.id,
                     len(ids), before.date().isoformat(), extra={"tenant": tenant.id})
    return {"purged": purged, "audit_rows_kept": kept, "run_summaries_purged": runs}
