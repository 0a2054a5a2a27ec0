"""The one interface every state store backend implements, and what they share: the audit chain's rules.

SQL stays behind this interface, so the engine, the CLI and the daemon work the same on
SQLite today and on PostgreSQL later. Three things make several workers on one store safe:
leases (one owner per key at a time, taken over only after expiry), compare-and-set state
changes (a person's `cancel` or `hold` is never overwritten), and audit rows numbered inside
the write transaction.

The audit chain: each row's hash covers its content and the previous row's hash, so an edit
behind the append-only triggers' back is caught. That proves nothing against someone who can
write the database: they can delete a trail and re-chain. With an audit key each row also
carries HMAC(key, hash); without the key nobody can forge it, so the re-chained rows fail.
Rows written before the key was configured carry no mac. The newest row must be signed, so
stripping every mac does not pass for a log that predates the key; a cut tail is caught by
the heads runs record, and against someone who can also edit those, by the `audit head`
kept off the machine.

Retention: a row's hash covers the SHA-256 of its data, not the data itself (`data_sha256`),
so the retention purge can blank a finished termination's personal data (names, addresses,
before- and after-states) in the journal and the audit log, and the chain, its macs and the
heads kept off the machine still verify. A blanked row reads PURGED; the only edit the store
allows on an audit row is that one. Rows written before data_sha256 existed hash their data
directly and keep it.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from abc import ABC, abstractmethod
from typing import Any, Iterable, Iterator

from ..config import mask_secrets

GENESIS = "0" * 64
PERSON_HOLD = "held by a person"
PURGED = '{"purged":true}'        # an audit row's data after the retention purge
RUN_TEXT_PURGED = "(purged after retention_days)"
EVERY_TENANT = "*"                # the scope of `offboard pause`
#: the action statuses whose `next_attempt_at` brings them back: a retry, or a finished action's later job
COMES_BACK = ("failed", "pending", "changed", "unchanged", "skipped")
#: a termination's personal data: blanked by the retention purge (the employee id stays: it is the key)
PERSONAL_FIELDS = ("email", "first_name", "last_name", "manager_email", "reason")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.timezone.utc).isoformat(timespec="seconds") if value else None


def stamp(value: dt.datetime) -> str:
    """Microseconds, UTC, fixed width: compares as text in the order of time (short leases need it)."""
    return value.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")


def parsed_run(row: dict) -> dict:
    """A runs row with its JSON columns read."""
    row["terminations"] = json.loads(row["terminations"] or "[]")
    row["summary"] = json.loads(row["summary"] or "{}")
    return row


def without_text(summary: dict) -> dict:
    """A run summary past the retention: how many errors, rejections and holds it had, not what they said
    (a rejected row or an error can name a person)."""
    return {**summary, "errors": [RUN_TEXT_PURGED for _ in summary.get("errors") or ()],
            "rejected": [RUN_TEXT_PURGED for _ in summary.get("rejected") or ()],
            "holds": {tenant: RUN_TEXT_PURGED for tenant in summary.get("holds") or {}}, "purged": True}


def parse_iso(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def dumps(value: Any) -> str:
    """Canonical JSON with every resolved secret masked: nothing secret reaches the store."""
    return mask_secrets(json.dumps(value, sort_keys=True, default=str, separators=(",", ":")))


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def audit_hash(row: dict) -> str:
    data = f"sha256:{row['data_sha256']}" if row.get("data_sha256") else row["data"]
    body = json.dumps([row["seq"], row["at"], row["run_id"], row["termination_id"], row["event"], data,
                       row["prev_hash"]], separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def chain(rows: list[dict], last_seq: int, last_hash: str, key: bytes | None) -> list[dict]:
    """Number, link and (with a key) sign new audit rows after the head (last_seq, last_hash)."""
    for seq, row in enumerate(rows, start=last_seq + 1):
        row.update(seq=seq, prev_hash=last_hash, data_sha256=sha256(row["data"]))
        row["hash"] = last_hash = audit_hash(row)
        if key:
            row["mac"] = sign(key, row["hash"])
    return rows


def sign(key: bytes, row_hash: str) -> str:
    return hmac.new(key, row_hash.encode(), hashlib.sha256).hexdigest()


#: every table, in the order `copy_store` loads them
TABLES = ("terminations", "actions", "runs", "audit", "cursors", "holds", "seen_webhooks", "leases", "pauses")


def copy_store(source: "StateStore", target: "StateStore") -> int:
    """Every row of `source` into an empty `target`, from one snapshot and in one transaction: a dry run's
    scratch copy, `offboard migrate-state`. Returns the rows copied."""
    count = 0
    with source._snapshot(), target.transaction():
        for table in TABLES:
            rows = source.table_rows(table)
            target.load_rows(table, rows)
            count += len(rows)
    return count


class StateStore(ABC):
    """Terminations, the action journal, runs, cursors, holds, leases, the audit log, the webhook replay guard."""

    audit_key: bytes | None

    # -- administration ------------------------------------------------------------
    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def transaction(self):
        """`with store.transaction():` one atomic group of writes; nested ones join the outer one."""

    @abstractmethod
    def backup(self, path: str) -> None:
        """A consistent copy of the whole store at `path`, while other processes go on writing."""

    @abstractmethod
    def dump(self) -> str:
        """The text of every row of every table (tests prove no secret is in it)."""

    @abstractmethod
    def table_rows(self, table: str) -> list[dict]:
        """Every row of one of TABLES, as stored (`copy_store`)."""

    @abstractmethod
    def load_rows(self, table: str, rows: list[dict]) -> None:
        """Insert rows as they were stored elsewhere, numbers and hashes included (`copy_store`)."""

    # -- leases: one worker per key (`termination:<id>`, `intake:<tenant>`) ---------------
    @abstractmethod
    def acquire_lease(self, key: str, owner: str, seconds: float) -> bool:
        """Atomically take the lease if it is free, expired or already `owner`'s (then renewed)."""

    @abstractmethod
    def renew_lease(self, key: str, owner: str, seconds: float) -> bool:
        """Extend `owner`'s lease; False when it was lost (released, or taken over after expiry)."""

    @abstractmethod
    def release_lease(self, key: str, owner: str) -> None:
        """Give the lease up, if `owner` still holds it."""

    @abstractmethod
    def lease(self, key: str) -> dict | None:
        """{owner, acquired_at, expires_at}, or None."""

    @abstractmethod
    def live_leases(self) -> list[dict]:
        """Every lease not yet expired, {key, owner, expires_at}, by key: who holds what right now."""

    # -- terminations ----------------------------------------------------------------
    @abstractmethod
    def termination(self, termination_id: str) -> dict | None: ...

    @abstractmethod
    def terminations(self, tenant: str | None = None, states: Iterable[str] | None = None) -> list[dict]: ...

    @abstractmethod
    def upsert_terminations(self, rows: list[dict]) -> None: ...

    @abstractmethod
    def set_state(self, termination_id: str, state: str, reason: str = "", *,
                  expect: Iterable[str] | None = None, **extra: Any) -> bool:
        """Set the state; with `expect`, only when the current state is one of them (compare-and-set).
        Returns whether it was set. An unknown id without `expect` raises KeyError."""

    @abstractmethod
    def state_of(self, termination_id: str) -> str | None: ...

    @abstractmethod
    def count_first_seen_since(self, tenant: str, since: dt.datetime) -> int: ...

    @abstractmethod
    def find_termination(self, tenant: str, who: str) -> dict | None:
        """By employee id or email (case-insensitive), as a technician names a person."""

    @abstractmethod
    def archive_termination(self, termination_id: str) -> str:
        """Move a finished termination and its journal to `ID#n` (the next free n), so the person's next
        leaving starts a termination of its own under `ID`. Returns the new id."""

    @abstractmethod
    def reopen(self, termination_id: str, action_ids: Iterable[str] | None = None, **extra: Any) -> int:
        """A person's go-ahead: these actions (default: every failed or needs_human one) run again,
        at the next pass if already due."""

    # -- the action journal --------------------------------------------------------------
    @abstractmethod
    def actions(self, termination_id: str) -> list[dict]: ...

    @abstractmethod
    def action(self, action_id: str) -> dict | None: ...

    @abstractmethod
    def record_intent(self, action_id: str, termination_id: str, provider: str, action: str, phase: str,
                      run_id: str) -> dict:
        """Written before the external call: from here on a crash means 'maybe done, re-read'."""

    @abstractmethod
    def record_outcome(self, action_id: str, status: str, *, before: Any = None, after: Any = None,
                       reason: str = "", error_class: str = "", next_attempt_at: dt.datetime | None = None) -> None:
        """Written after the external call."""

    @abstractmethod
    def upsert_action_status(self, action_id: str, termination_id: str, provider: str, action: str, phase: str,
                             status: str, reason: str = "") -> None:
        """Record a decision that involved no external call (needs_human, skipped)."""

    # -- runs, cursors, safety holds -------------------------------------------------------
    @abstractmethod
    def start_run(self, run_id: str, trigger: str, tenant: str | None, dry_run: bool) -> None: ...

    @abstractmethod
    def finish_run(self, run_id: str, exit_code: int, summary: dict, terminations: list[str]) -> None:
        """Also records the audit head, so a truncated tail of the chain is caught by `verify_audit`."""

    @abstractmethod
    def queue_run(self, run_id: str, trigger: str, tenant: str | None, terminations: list[str], owner: str) -> None:
        """A run accepted (a webhook) before it starts: `GET /runs/<id>` answers `queued`."""

    @abstractmethod
    def claim_run(self, run_id: str, owner: str) -> None:
        """This process now owns the run (it adopted one a dead process queued)."""

    @abstractmethod
    def fail_run(self, run_id: str, reason: str) -> None: ...

    @abstractmethod
    def run(self, run_id: str) -> dict | None: ...

    @abstractmethod
    def runs(self, states: Iterable[str]) -> list[dict]: ...

    # -- what the daemon schedules and measures ----------------------------------------------
    @abstractmethod
    def state_counts(self) -> list[tuple[str, str, int]]:
        """(tenant, state, how many terminations)."""

    @abstractmethod
    def oldest_open_due(self, states: Iterable[str]) -> dt.datetime | None:
        """The earliest due instant, already past, of a termination in one of `states`."""

    @abstractmethod
    def next_attempts(self, tenant: str | None, states: Iterable[str]) -> dict[str, list[dt.datetime]]:
        """Termination id -> the `next_attempt_at` of each of its actions that comes back (a retry of one failed or
        pending, a later job of one finished), for the terminations in `states` of `tenant` (None: every tenant)."""

    @abstractmethod
    def revoke_durations(self) -> list[float]:
        """Seconds from due to the revoke phase complete, per termination whose revoke phase is complete."""

    @abstractmethod
    def failing(self) -> list[dict]:
        """Per tenant and provider with failed actions on open terminations: {tenant, provider, actions,
        reason (one of them), tickets}."""

    @abstractmethod
    def audit_after(self, seq: int, limit: int = 10000) -> list[dict]:
        """Audit entries after `seq` ({seq, event, data}), oldest first: counters that survive restarts."""

    @abstractmethod
    def cursor(self, key: str) -> str | None: ...

    @abstractmethod
    def set_cursor(self, key: str, cursor: str | None) -> None: ...

    @abstractmethod
    def cursors(self, prefix: str) -> list[str]:
        """The keys starting with `prefix` whose value is set."""

    @abstractmethod
    def open_holds(self, tenant: str, kind: str | None = None) -> list[dict]:
        """The tenant's unreleased holds, oldest first: kind `new` (arrivals, the tenant's work waits) or
        `cancel` (a read that would cancel too many; other work goes on)."""

    @abstractmethod
    def open_hold(self, tenant: str) -> dict | None:
        """The oldest hold of new arrivals: while there is one, the tenant's work waits."""

    @abstractmethod
    def add_hold(self, tenant: str, reason: str, termination_ids: list[str], kind: str = "new") -> None: ...

    @abstractmethod
    def release_hold(self, tenant: str) -> tuple[dict | None, list[str]]:
        """Release the tenant's oldest open hold, exactly the terminations it listed (arrivals after it
        form holds of their own): held ones are approved, held cancellations are carried out."""

    def _carry_out(self, hold: dict, at: str) -> list[str]:
        """A released hold's terminations, still as it found them: held ones approved, held cancellations done."""
        listed = json.loads(hold["terminations"])
        if hold["kind"] == "cancel":
            return [tid for tid in listed if self.set_state(
                tid, "cancelled", "no longer in the HR feed before it was due (approved by a person)",
                expect=("scheduled", "held"))]
        return [tid for tid in listed if self.set_state(tid, "scheduled", "", expect=("held",), approved_at=at)]

    # -- a person's pauses: `pause` (every tenant) and `hold --tenant T` ------------------------
    @abstractmethod
    def pause(self, scope: str, reason: str) -> bool:
        """Stop new work for `scope` (a tenant id, or EVERY_TENANT) until `resume`; False when it already was
        (the first pause's time and reason stay)."""

    @abstractmethod
    def resume(self, scope: str) -> dict | None:
        """Lift the pause of `scope`; the pause that was lifted ({scope, paused_at, reason}), or None."""

    @abstractmethod
    def pauses(self) -> list[dict]:
        """Every pause in force, {scope, paused_at, reason}, EVERY_TENANT first."""

    def held_tenants(self) -> dict[str, str]:
        """tenant -> what holds it until a person acts: their `hold --tenant`, or an open safety hold (of new
        arrivals, which stops the tenant's work, or of cancellations, which does not). Not the global pause."""
        held = {p["scope"]: f"{p['reason']} since {p['paused_at']}" for p in self.pauses() if p["scope"] != EVERY_TENANT}
        for hold in sorted(self.table_rows("holds"), key=lambda h: h["id"]):
            if hold["released_at"] is None:
                held[hold["tenant"]] = "; ".join(filter(None, [held.get(hold["tenant"]), hold["reason"]]))
        return held

    def paused(self, tenant: str | None = None) -> dict | None:
        """The pause that stops `tenant` (the global one first), or with no tenant the global pause, or None."""
        pauses = {p["scope"]: p for p in self.pauses()}
        return pauses.get(EVERY_TENANT) or (pauses.get(tenant) if tenant else None)

    # -- retention --------------------------------------------------------------------------
    @abstractmethod
    def purge(self, tenant: str, before: dt.datetime, states: Iterable[str]) -> tuple[list[str], int]:
        """Blank the personal data of the tenant's terminations in `states` that finished before `before`:
        PERSONAL_FIELDS and approvals, the journal's before/after/reason, their audit rows' data (PURGED).
        Each purged termination gets a `termination_purged` audit row. Returns (ids purged, audit rows kept
        in clear because they predate data_sha256)."""

    # -- webhook replay guard (connector.sources.webhook.ReplayGuard) ------------------------
    @abstractmethod
    def purge_runs(self, before: dt.datetime) -> int:
        """Keep only the counts of the summaries of runs finished before `before` (`without_text`); -> how many."""

    @abstractmethod
    def seen(self, digest: str) -> bool: ...

    @abstractmethod
    def remember(self, digest: str, expires_at: float) -> bool:
        """Atomic insert-if-absent: of two processes given the same body, one accepts it."""

    # -- the audit log -------------------------------------------------------------------
    @abstractmethod
    def audit_many(self, entries: list[tuple[str, str | None, str | None, dict]]) -> None:
        """Append rows to the chain (see `chain`), numbered inside the write transaction."""

    @abstractmethod
    def audit_trail(self, termination_id: str) -> list[dict]: ...

    @abstractmethod
    def audit_head(self) -> dict:
        """{seq, hash, at} of the newest row ({0, GENESIS, None} when empty), plus its `mac` when keyed."""

    @abstractmethod
    def _snapshot(self):
        """`with store._snapshot():` the reads inside see one consistent state."""

    @abstractmethod
    def _audit_rows(self) -> Iterator[dict]:
        """Every audit row, in seq order."""

    @abstractmethod
    def _run_heads(self) -> Iterator[tuple[str, int, str]]:
        """(run id, audit seq, audit hash) each finished run recorded."""

    def audit(self, event: str, termination_id: str | None = None, run_id: str | None = None, **data: Any) -> None:
        self.audit_many([(event, termination_id, run_id, data)])

    def audit_keyed(self) -> bool:
        """False: `verify_audit` proves the log intact against careless edits, not against whoever can write it."""
        return self.audit_key is not None

    def verify_audit(self) -> tuple[bool, str, int]:
        """Walk the chain: (ok, first problem, rows checked). With the audit key, every mac is checked too."""
        with self._snapshot():
            return self._verify_chain()

    def _verify_chain(self) -> tuple[bool, str, int]:
        prev, count, signed, hashes = GENESIS, 0, False, {}
        for row in self._audit_rows():
            seq = row["seq"]
            if seq != count + 1:
                return False, f"row {count + 1} is missing (next is {seq})", count
            if row["prev_hash"] != prev:
                return False, f"row {seq} does not follow row {seq - 1} (a row was changed or removed)", count
            if audit_hash(row) != row["hash"] or (
                    row.get("data_sha256") and row["data"] != PURGED and sha256(row["data"]) != row["data_sha256"]):
                return False, f"row {seq} was edited after it was written", count
            if self.audit_key and (row.get("mac") or signed):
                if not hmac.compare_digest(row.get("mac") or "", sign(self.audit_key, row["hash"])):
                    return False, f"row {seq} is not signed with the audit key", count
                signed = True
            prev, count, hashes[seq] = row["hash"], count + 1, row["hash"]
        if self.audit_key and count and not signed:
            return False, (f"row {count}, the newest, is not signed with the audit key (no row is: the key was "
                           "configured after the last write, or the signatures were removed)"), count
        for run_id, seq, run_hash in self._run_heads():
            if hashes.get(seq) != run_hash:
                return False, f"run {run_id} ended at row {seq}, which is gone or changed (the log was cut)", count
        return True, "", count
