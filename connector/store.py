"""The state store: terminations, the action journal, runs, holds and the audit log.

SQLite in WAL mode through sqlite-utils. The journal is what makes a crash safe: an
intent row is written before every external write and its outcome after it, so
the next run knows which steps finished and which need a re-read. The audit log is
append-only (triggers refuse UPDATE and DELETE) and hash-chained, so an edit made
behind the triggers' back is still caught by `offboard audit verify`.

Dry runs work on an in-memory copy (`Store.scratch_copy`): the same code runs and
nothing reaches the file.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable

import sqlite_utils

from .config import mask_secrets
from .errors import ConfigError

GENESIS = "0" * 64
PERSON_HOLD = "held by a person"


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.timezone.utc).isoformat(timespec="seconds") if value else None


def parse_iso(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def dumps(value: Any) -> str:
    """Canonical JSON with every resolved secret masked: nothing secret reaches the file."""
    return mask_secrets(json.dumps(value, sort_keys=True, default=str, separators=(",", ":")))


def _v1(db: sqlite_utils.Database) -> None:
    db["terminations"].create({
        "id": str, "tenant": str, "employee_id": str, "email": str, "first_name": str, "last_name": str,
        "manager_email": str, "termination_date": str, "termination_time": str, "kind": str, "source": str,
        "ticket": str, "due_at": str, "state": str, "reason": str, "first_seen_at": str, "updated_at": str,
        "approved_at": str, "override_at": str, "finished_at": str,
    }, pk="id", not_null={"tenant", "employee_id", "state"})
    db["terminations"].create_index(["tenant", "state"])
    db["terminations"].create_index(["tenant", "first_seen_at"])
    db["actions"].create({
        "id": str, "termination_id": str, "provider": str, "action": str, "phase": str, "status": str,
        "attempts": int, "next_attempt_at": str, "first_intent_at": str, "intent_at": str, "finished_at": str,
        "before": str, "after": str, "reason": str, "error_class": str, "run_id": str,
    }, pk="id", not_null={"termination_id", "provider", "action", "status"})
    db["actions"].create_index(["termination_id"])
    db["runs"].create({"id": str, "trigger": str, "tenant": str, "dry_run": int, "state": str,
                       "started_at": str, "finished_at": str, "exit_code": int, "summary": str,
                       "terminations": str, "audit_seq": int, "audit_hash": str}, pk="id")
    db["audit"].create({"seq": int, "at": str, "run_id": str, "termination_id": str, "event": str,
                        "data": str, "prev_hash": str, "hash": str}, pk="seq")
    db["audit"].create_index(["termination_id"])
    for verb in ("UPDATE", "DELETE"):
        db.execute(f"CREATE TRIGGER audit_no_{verb.lower()} BEFORE {verb} ON audit "
                   "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END")
    db["cursors"].create({"id": str, "cursor": str, "updated_at": str}, pk="id")
    db["holds"].create({"id": int, "tenant": str, "held_at": str, "reason": str, "terminations": str,
                        "released_at": str}, pk="id")
    db["seen_webhooks"].create({"digest": str, "expires_at": str}, pk="digest")


def _approvals_and_hold_kinds(db: sqlite_utils.Database) -> None:
    """What a person approved: [{scope: "*" | "PROVIDER/ACTION", reason}] per termination (DESIGN.md, `approve`);
    and holds of new arrivals (which stop the tenant's work) apart from held cancellations (which do not)."""
    db["terminations"].add_column("approvals", str)
    db["holds"].add_column("kind", str, not_null_default="new")


MIGRATIONS = [_v1, _approvals_and_hold_kinds]


class Store:
    def __init__(self, conn: sqlite3.Connection, path: str = ":memory:"):
        self.path = path
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self.lock = threading.RLock()
        self._migrate()

    # -- opening -----------------------------------------------------------
    @classmethod
    def open(cls, path: str) -> "Store":
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(f"cannot open the state store: {e}", path) from None
        return cls(conn, path)

    @classmethod
    def memory(cls) -> "Store":
        return cls(sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None))

    @classmethod
    def scratch_copy(cls, path: str) -> "Store":
        """An in-memory copy of the store at `path` (or an empty one): for plans and dry runs."""
        conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        if os.path.exists(path):
            try:
                src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                src.backup(conn)
                src.close()
            except sqlite3.Error as e:
                raise ConfigError(f"cannot read the state store: {e}", path) from None
        return cls(conn, ":memory:")

    def _migrate(self) -> None:
        with self.lock:
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
                with self.conn:
                    self.conn.execute("BEGIN")
                    migration(self.db)
                    self.conn.execute(f"PRAGMA user_version={number}")

    def close(self) -> None:
        self.conn.close()

    def transaction(self):
        """`with store.transaction():` one atomic group of writes."""
        return _Transaction(self)

    # -- terminations ----------------------------------------------------------
    def termination(self, termination_id: str) -> dict | None:
        rows = list(self.db["terminations"].rows_where("id = ?", [termination_id]))
        return rows[0] if rows else None

    def state_of(self, termination_id: str) -> str | None:
        row = self.conn.execute("select state from terminations where id = ?", [termination_id]).fetchone()
        return row[0] if row else None

    def terminations(self, tenant: str | None = None, states: Iterable[str] | None = None) -> list[dict]:
        where, args = [], []
        if tenant:
            where.append("tenant = ?"); args.append(tenant)
        if states is not None:
            states = list(states)
            where.append(f"state in ({','.join('?' * len(states))})"); args.extend(states)
        return list(self.db["terminations"].rows_where(" and ".join(where) or None, args, order_by="due_at, id"))

    def upsert_terminations(self, rows: list[dict]) -> None:
        with self.lock:
            self.db["terminations"].upsert_all(rows, pk="id")

    def set_state(self, termination_id: str, state: str, reason: str = "", *, expect: Iterable[str] | None = None,
                  **extra: Any) -> bool:
        values = {"state": state, "reason": reason, "updated_at": iso(now()), **extra}
        sets = ", ".join(f"[{k}] = ?" for k in values)
        where, args = "id = ?", [termination_id]
        if expect is not None:
            expect = list(expect)
            where += f" and state in ({','.join('?' * len(expect))})"
            args += expect
        with self.lock:
            cur = self.conn.execute(f"update terminations set {sets} where {where}", [*values.values(), *args])
            return cur.rowcount == 1

    def count_first_seen_since(self, tenant: str, since: dt.datetime) -> int:
        return self.conn.execute(
            "select count(*) from terminations where tenant = ? and first_seen_at >= ? and approved_at is null",
            [tenant, iso(since)]).fetchone()[0]

    # -- the action journal ----------------------------------------------------
    def actions(self, termination_id: str) -> list[dict]:
        return list(self.db["actions"].rows_where("termination_id = ?", [termination_id], order_by="rowid"))

    def action(self, action_id: str) -> dict | None:
        rows = list(self.db["actions"].rows_where("id = ?", [action_id]))
        return rows[0] if rows else None

    def record_intent(self, action_id: str, termination_id: str, provider: str, action: str, phase: str,
                      run_id: str) -> dict:
        """Written before the external call: from here on a crash means 'maybe done, re-read'."""
        with self.lock:
            row = self.action(action_id) or {"id": action_id, "termination_id": termination_id, "provider": provider,
                                             "action": action, "phase": phase, "attempts": 0}
            stamp = now().isoformat()     # full precision: `since` is compared with the target's own clock
            row.update(status="in_flight", attempts=(row.get("attempts") or 0) + 1, intent_at=stamp,
                       first_intent_at=row.get("first_intent_at") or stamp, run_id=run_id, next_attempt_at=None)
            self.db["actions"].upsert(row, pk="id")
            return row

    def record_outcome(self, action_id: str, status: str, *, before: Any = None, after: Any = None,
                       reason: str = "", error_class: str = "", next_attempt_at: dt.datetime | None = None) -> None:
        """Written after the external call."""
        with self.lock:
            self.db["actions"].update(action_id, {
                "status": status, "before": dumps(before), "after": dumps(after), "reason": mask_secrets(reason),
                "error_class": error_class, "finished_at": iso(now()), "next_attempt_at": iso(next_attempt_at)})

    def upsert_action_status(self, action_id: str, termination_id: str, provider: str, action: str, phase: str,
                             status: str, reason: str = "") -> None:
        """Record a decision that involved no external call (needs_human, skipped)."""
        with self.lock:
            self.db["actions"].upsert({"id": action_id, "termination_id": termination_id, "provider": provider,
                                       "action": action, "phase": phase, "status": status,
                                       "reason": mask_secrets(reason), "finished_at": iso(now())}, pk="id")

    def find_termination(self, tenant: str, who: str) -> dict | None:
        """By employee id or email (case-insensitive), as a technician names a person."""
        rows = self.db["terminations"].rows_where(
            "tenant = ? and (lower(employee_id) = lower(?) or lower(email) = lower(?))", [tenant, who, who],
            order_by="first_seen_at desc", limit=1)
        return next(iter(rows), None)

    def reopen_action(self, action_id: str) -> None:
        with self.lock:
            self.conn.execute("update actions set status = 'pending', next_attempt_at = null where id = ?", [action_id])

    def reopen(self, termination_id: str, statuses: Iterable[str] = ("failed", "needs_human"), **extra: Any) -> int:
        """A person's go-ahead: failed and needs_human actions run again, at the next pass if already due."""
        statuses = list(statuses) or [""]
        with self.lock, self.transaction():
            cur = self.conn.execute(
                "update actions set status = 'pending', next_attempt_at = null where termination_id = ? "
                f"and status in ({','.join('?' * len(statuses))})", [termination_id, *statuses])
            due = self.termination(termination_id)["due_at"] <= iso(now())
            self.set_state(termination_id, "due" if due else "scheduled", "", **extra)
            return cur.rowcount

    # -- runs ------------------------------------------------------------------
    def start_run(self, run_id: str, trigger: str, tenant: str | None, dry_run: bool) -> None:
        with self.lock:
            self.db["runs"].upsert({"id": run_id, "trigger": trigger, "tenant": tenant, "dry_run": int(dry_run),
                                    "state": "running", "started_at": iso(now())}, pk="id")

    def finish_run(self, run_id: str, exit_code: int, summary: dict, terminations: list[str]) -> None:
        """Also records the audit head, so a truncated tail of the chain is caught by `verify_audit`."""
        with self.lock:
            head = self.conn.execute("select seq, hash from audit order by seq desc limit 1").fetchone() or (0, None)
            self.db["runs"].update(run_id, {"audit_seq": head[0], "audit_hash": head[1],"state": "done" if exit_code in (0, 2, 3) else "failed",
                                            "finished_at": iso(now()), "exit_code": exit_code,
                                            "summary": dumps(summary), "terminations": dumps(terminations)})

    # -- cursors ---------------------------------------------------------------
    def cursor(self, key: str) -> str | None:
        rows = list(self.db["cursors"].rows_where("id = ?", [key]))
        return rows[0]["cursor"] if rows else None

    def set_cursor(self, key: str, cursor: str | None) -> None:
        with self.lock:
            self.db["cursors"].upsert({"id": key, "cursor": cursor, "updated_at": iso(now())}, pk="id")

    # -- safety holds ------------------------------------------------------------
    def open_holds(self, tenant: str, kind: str | None = None) -> list[dict]:
        where, args = "tenant = ? and released_at is null", [tenant]
        if kind:
            where += " and kind = ?"; args.append(kind)
        return list(self.db["holds"].rows_where(where, args, order_by="id"))

    def open_hold(self, tenant: str) -> dict | None:
        """The oldest hold of new arrivals: while there is one, the tenant's work waits."""
        return next(iter(self.open_holds(tenant, "new")), None)

    def add_hold(self, tenant: str, reason: str, termination_ids: list[str], kind: str = "new") -> None:
        with self.lock:
            self.db["holds"].insert({"tenant": tenant, "held_at": iso(now()), "reason": reason, "kind": kind,
                                     "terminations": dumps(termination_ids)})

    def release_hold(self, tenant: str) -> tuple[dict | None, list[str]]:
        """Release the tenant's oldest open hold, exactly the terminations it listed (arrivals after it
        form holds of their own): held ones are approved, held cancellations are carried out."""
        with self.lock, self.transaction():
            hold = next(iter(self.open_holds(tenant)), None)
            if not hold:
                return None, []
            stamp = iso(now())
            self.conn.execute("update holds set released_at = ? where id = ?", [stamp, hold["id"]])
            listed = json.loads(hold["terminations"])
            if hold["kind"] == "cancel":
                done = [tid for tid in listed if self.set_state(
                    tid, "cancelled", "no longer in the HR feed before it was due (approved by a person)",
                    expect=("scheduled", "held"))]
            else:
                done = [tid for tid in listed if self.set_state(tid, "scheduled", "", expect=("held",),
                                                                approved_at=stamp)]
            return hold, done

    # -- the audit log -----------------------------------------------------------
    def audit(self, event: str, termination_id: str | None = None, run_id: str | None = None, **data: Any) -> None:
        self.audit_many([(event, termination_id, run_id, data)])

    def audit_many(self, entries: list[tuple[str, str | None, str | None, dict]]) -> None:
        """Append rows to the hash chain: each row's hash covers its content and the previous hash."""
        with self.lock:
            last = self.conn.execute("select seq, hash from audit order by seq desc limit 1").fetchone()
            seq, prev = last if last else (0, GENESIS)
            stamp, rows = iso(now()), []
            for event, termination_id, run_id, data in entries:
                seq += 1
                row = {"seq": seq, "at": stamp, "run_id": run_id, "termination_id": termination_id,
                       "event": event, "data": dumps(data), "prev_hash": prev}
                row["hash"] = prev = _audit_hash(row)
                rows.append(row)
            self.db["audit"].insert_all(rows)

    def audit_trail(self, termination_id: str) -> list[dict]:
        return list(self.db["audit"].rows_where("termination_id = ?", [termination_id], order_by="seq"))

    def verify_audit(self) -> tuple[bool, str, int]:
        """Walk the chain: (ok, first problem, rows checked)."""
        prev, expected, count = GENESIS, 1, 0
        for row in self.db["audit"].rows_where(order_by="seq"):
            if row["seq"] != expected:
                return False, f"row {expected} is missing (next is {row['seq']})", count
            if row["prev_hash"] != prev:
                return False, f"row {row['seq']} does not follow row {row['seq'] - 1} (a row was changed or removed)", count
            if _audit_hash(row) != row["hash"]:
                return False, f"row {row['seq']} was edited after it was written", count
            prev, expected, count = row["hash"], expected + 1, count + 1
        hashes = dict(self.conn.execute("select seq, hash from audit"))
        for run in self.conn.execute("select id, audit_seq, audit_hash from runs where audit_seq > 0"):
            if hashes.get(run[1]) != run[2]:
                return False, f"run {run[0]} ended at row {run[1]}, which is gone or changed (the log was cut)", count
        return True, "", count

    # -- webhook replay guard (connector.sources.webhook.ReplayGuard) --------------
    def seen(self, digest: str) -> bool:
        return self.conn.execute("select 1 from seen_webhooks where digest = ? and expires_at > ?",
                                 [digest, iso(now())]).fetchone() is not None

    def remember(self, digest: str, expires_at: float) -> bool:
        """Atomic insert-if-absent: of two processes given the same body, one accepts it."""
        with self.lock:
            self.conn.execute("delete from seen_webhooks where expires_at <= ?", [iso(now())])
            cur = self.conn.execute("insert or ignore into seen_webhooks (digest, expires_at) values (?, ?)",
                                    [digest, iso(dt.datetime.fromtimestamp(expires_at, dt.timezone.utc))])
            return cur.rowcount == 1


def _audit_hash(row: dict) -> str:
    body = json.dumps([row["seq"], row["at"], row["run_id"], row["termination_id"], row["event"], row["data"],
                       row["prev_hash"]], separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


class _Transaction:
    def __init__(self, store: Store):
        self.store = store
        self.outer = False

    def __enter__(self):
        self.store.lock.acquire()
        self.outer = not self.store.conn.in_transaction
        if self.outer:
            self.store.conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if self.outer:
                self.store.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.store.lock.release()
