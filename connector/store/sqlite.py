"""The SQLite state store: one file in WAL mode, through sqlite-utils, safe for several processes.

The journal is what makes a crash safe: an intent row is written before every external
write and its outcome after it, so the next run knows which steps finished and which need
a re-read. The audit log is append-only (triggers refuse UPDATE and DELETE) and
hash-chained (see base.py).

Every write runs in `BEGIN IMMEDIATE`: the write lock is taken before anything is read, so
two processes queue on the busy timeout instead of one failing with "database is locked"
(a read transaction that later wants to write cannot wait) or with a duplicate audit seq.
Threads sharing one Store queue on its lock. The files are the service user's alone (0600,
the directory 0700), and another user, root included, is refused: the -wal and -shm files
it would leave behind could not be opened by the service.

Dry runs work on an in-memory copy (`SqliteStore.scratch_copy`): the same code runs and
nothing reaches the file.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import pwd
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import sqlite_utils

from ..config import mask_secrets
from ..errors import ConfigError
from .base import (COMES_BACK, EVERY_TENANT, GENESIS, PERSONAL_FIELDS, PURGED, StateStore, chain, dumps, iso, now,
                   parse_iso, parsed_run, stamp, without_text)

BUSY_SECONDS = 30


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


def _leases_and_audit_macs(db: sqlite_utils.Database) -> None:
    """Leases, and the audit key's mac on each audit row."""
    db.execute("DROP TABLE IF EXISTS leases")     # stores made before 0c19170 carry an unused one
    db["leases"].create({"key": str, "owner": str, "acquired_at": str, "expires_at": str}, pk="key",
                        not_null={"owner", "acquired_at", "expires_at"})
    db["audit"].add_column("mac", str)


AUDIT_COLUMNS = ("seq", "at", "run_id", "termination_id", "event", "prev_hash", "hash", "mac", "data_sha256")


def _pauses_and_purges(db: sqlite_utils.Database) -> None:
    """A person's pauses (every tenant, or one); the retention purge: `purged_at`, and audit rows whose hash
    covers their data's SHA-256, so blanking the data to PURGED is the one edit the audit log allows."""
    db["pauses"].create({"scope": str, "paused_at": str, "reason": str}, pk="scope", not_null={"paused_at"})
    db["terminations"].add_column("purged_at", str)
    db["audit"].add_column("data_sha256", str)
    db.execute("DROP TRIGGER audit_no_update")
    same = " AND ".join(f"NEW.{c} IS OLD.{c}" for c in AUDIT_COLUMNS)
    db.execute(f"CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
               f"WHEN NOT (NEW.data = '{PURGED}' AND OLD.data_sha256 IS NOT NULL AND {same}) "
               "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only (a retention purge may only blank data)'); END")


def _run_owners(db: sqlite_utils.Database) -> None:
    """Which process queued or runs a run: a daemon that died leaves its runs to be adopted."""
    db["runs"].add_column("owner", str)


MIGRATIONS = [_v1, _approvals_and_hold_kinds, _leases_and_audit_macs, _pauses_and_purges, _run_owners]


def effective_uid() -> int:
    """Whom this process writes files as (a function, so tests can play another user)."""
    return os.geteuid()


def _refuse_another_owner(path: str) -> None:
    try:
        owner = os.stat(path).st_uid
    except FileNotFoundError:
        return
    if owner != effective_uid():
        try:
            name = pwd.getpwuid(owner).pw_name
        except KeyError:
            name = str(owner)
        raise ConfigError(f"the state store belongs to user {name}; run it as that user: sudo -u {name} offboard ...",
                          path)


def _create_private(path: str) -> None:
    """The state directory 0700 and the database 0600 if absent, whatever the umask (SQLite gives
    the -wal and -shm files the database's mode)."""
    folder = Path(path).parent
    try:
        folder.mkdir(mode=0o700, parents=True)
        folder.chmod(0o700)
    except FileExistsError:
        pass
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass


def _set_wal(conn: sqlite3.Connection) -> None:
    """WAL stays set in the file, so only a new store converts. Converting needs the file alone for a
    moment, and SQLite may answer "locked" at once instead of waiting on the busy handler: retry."""
    deadline = time.monotonic() + BUSY_SECONDS
    while (mode := conn.execute("PRAGMA journal_mode").fetchone()[0]) != "wal":
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        if mode != "wal":
            raise sqlite3.OperationalError(f"the journal mode stays {mode!r}, not WAL")


def _connect(target: str, **kw: Any) -> sqlite3.Connection:
    return sqlite3.connect(target, check_same_thread=False, isolation_level=None, timeout=BUSY_SECONDS, **kw)


class SqliteStore(StateStore):
    def __init__(self, conn: sqlite3.Connection, path: str = ":memory:", audit_key: bytes | None = None):
        self.path = path
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self.lock = threading.RLock()
        self.audit_key = audit_key
        self._migrate()
        self._termination_columns = set(self.db["terminations"].columns_dict)

    # -- opening -----------------------------------------------------------------
    @classmethod
    def open(cls, path: str, audit_key: bytes | None = None) -> "SqliteStore":
        _refuse_another_owner(path)
        try:
            _create_private(path)
            conn = _connect(path)
            _set_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            store = cls(conn, path, audit_key)
            for name in (path, f"{path}-wal", f"{path}-shm"):
                if os.path.exists(name):
                    os.chmod(name, 0o600)
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(f"cannot open the state store: {e}", path) from None
        return store

    @classmethod
    def memory(cls, audit_key: bytes | None = None) -> "SqliteStore":
        return cls(_connect(":memory:"), audit_key=audit_key)

    @classmethod
    def scratch_copy(cls, path: str, audit_key: bytes | None = None) -> "SqliteStore":
        """An in-memory copy of the store at `path` (or an empty one): for plans and dry runs."""
        _refuse_another_owner(path)      # reading a WAL file can create its -shm
        conn = _connect(":memory:")
        if os.path.exists(path):
            try:
                src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_SECONDS)
                src.backup(conn)
                src.close()
            except sqlite3.Error as e:
                raise ConfigError(f"cannot read the state store: {e}", path) from None
        return cls(conn, ":memory:", audit_key)

    def _migrate(self) -> None:
        """Two processes opening a new store at once: the second waits for the lock, re-reads, finds it done."""
        if self._user_version() == len(MIGRATIONS):
            return
        with self.transaction():
            version = self._user_version()
            if version > len(MIGRATIONS):
                raise ConfigError(f"the state store has schema {version}; this offboard-connector knows up to "
                                  f"{len(MIGRATIONS)} (upgrade it)", self.path)
            for migration in MIGRATIONS[version:]:
                migration(self.db)
            self.conn.execute(f"PRAGMA user_version={len(MIGRATIONS)}")

    def _user_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        self.conn.close()

    def transaction(self):
        return _Transaction(self)

    def backup(self, path: str) -> None:
        target = Path(path)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            os.close(os.open(partial, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600))
            os.chmod(partial, 0o600)
            dst = sqlite3.connect(partial)
            try:
                with self.lock:
                    self.conn.backup(dst)      # one step: a single consistent snapshot
            finally:
                dst.close()
            os.replace(partial, target)
        except (OSError, sqlite3.Error) as e:
            partial.unlink(missing_ok=True)
            raise ConfigError(f"cannot write the backup: {e}", path) from None

    def dump(self) -> str:
        with self.lock:
            return "\n".join(f"{table}: {json.dumps(row, default=str)}" for table in self.db.table_names()
                             for row in self.db[table].rows)

    def table_rows(self, table: str) -> list[dict]:
        return self._rows(table, order_by="rowid")

    def load_rows(self, table: str, rows: list[dict]) -> None:
        with self.transaction():
            self.db[table].insert_all(rows)

    def _rows(self, table: str, where: str | None = None, args: Iterable = (), **kw: Any) -> list[dict]:
        with self.lock:
            return list(self.db[table].rows_where(where, list(args), **kw))

    def _one(self, table: str, where: str, args: Iterable, **kw: Any) -> dict | None:
        rows = self._rows(table, where, args, limit=1, **kw)
        return rows[0] if rows else None

    # -- leases ----------------------------------------------------------------------
    def acquire_lease(self, key: str, owner: str, seconds: float) -> bool:
        at = now()
        with self.transaction():
            return self.conn.execute(
                "insert into leases (key, owner, acquired_at, expires_at) values (?, ?, ?, ?) "
                "on conflict (key) do update set owner = excluded.owner, expires_at = excluded.expires_at, "
                "acquired_at = case when leases.owner = excluded.owner then leases.acquired_at "
                "else excluded.acquired_at end "
                "where leases.owner = excluded.owner or leases.expires_at <= excluded.acquired_at",
                [key, owner, stamp(at), stamp(at + dt.timedelta(seconds=seconds))]).rowcount == 1

    def renew_lease(self, key: str, owner: str, seconds: float) -> bool:
        with self.transaction():
            return self.conn.execute("update leases set expires_at = ? where key = ? and owner = ?",
                                     [stamp(now() + dt.timedelta(seconds=seconds)), key, owner]).rowcount == 1

    def release_lease(self, key: str, owner: str) -> None:
        with self.transaction():
            self.conn.execute("delete from leases where key = ? and owner = ?", [key, owner])

    def lease(self, key: str) -> dict | None:
        row = self._one("leases", "key = ?", [key])
        return row and {k: row[k] for k in ("owner", "acquired_at", "expires_at")}

    def live_leases(self) -> list[dict]:
        return [{k: r[k] for k in ("key", "owner", "expires_at")}
                for r in self._rows("leases", "expires_at > ?", [stamp(now())], order_by="key")]

    # -- terminations ------------------------------------------------------------------
    def termination(self, termination_id: str) -> dict | None:
        return self._one("terminations", "id = ?", [termination_id])

    def terminations(self, tenant: str | None = None, states: Iterable[str] | None = None) -> list[dict]:
        where, args = [], []
        if tenant:
            where.append("tenant = ?"); args.append(tenant)
        if states is not None:
            states = list(states)
            where.append(f"state in ({','.join('?' * len(states))})"); args.extend(states)
        return self._rows("terminations", " and ".join(where) or None, args, order_by="due_at, id")

    def upsert_terminations(self, rows: list[dict]) -> None:
        with self.transaction():
            self.db["terminations"].upsert_all(rows, pk="id")

    def set_state(self, termination_id: str, state: str, reason: str = "", *,
                  expect: Iterable[str] | None = None, **extra: Any) -> bool:
        values = {"state": state, "reason": reason, "updated_at": iso(now()), **extra}
        if unknown := values.keys() - self._termination_columns:
            raise TypeError(f"set_state: no such termination field {', '.join(sorted(unknown))}")
        sql = f"update terminations set {', '.join(f'[{k}] = ?' for k in values)} where id = ?"
        args = [*values.values(), termination_id]
        if expect is not None:
            expect = list(expect)
            sql += f" and state in ({','.join('?' * len(expect))})"
            args += expect
        with self.transaction():
            changed = self.conn.execute(sql, args).rowcount == 1
        if expect is None and not changed:
            raise KeyError(f"no termination {termination_id}")
        return changed

    def state_of(self, termination_id: str) -> str | None:
        with self.lock:
            row = self.conn.execute("select state from terminations where id = ?", [termination_id]).fetchone()
        return row[0] if row else None

    def count_first_seen_since(self, tenant: str, since: dt.datetime) -> int:
        with self.lock:
            return self.conn.execute(
                "select count(*) from terminations where tenant = ? and first_seen_at >= ? and approved_at is null",
                [tenant, iso(since)]).fetchone()[0]

    def find_termination(self, tenant: str, who: str) -> dict | None:
        return self._one("terminations", "tenant = ? and (lower(employee_id) = lower(?) or lower(email) = lower(?))",
                         [tenant, who, who], order_by="first_seen_at desc")

    def archive_termination(self, termination_id: str) -> str:
        with self.transaction():
            earlier = self.conn.execute("select count(*) from terminations where id like ? escape '\\'",
                                        [termination_id.replace("%", "\\%").replace("_", "\\_") + "#%"]).fetchone()[0]
            archived = f"{termination_id}#{earlier + 1}"
            self.conn.execute("update actions set id = ? || substr(id, ?), termination_id = ? where termination_id = ?",
                              [archived, len(termination_id) + 1, archived, termination_id])
            self.conn.execute("update terminations set id = ? where id = ?", [archived, termination_id])
            return archived

    def reopen(self, termination_id: str, action_ids: Iterable[str] | None = None, **extra: Any) -> int:
        if action_ids is None:
            where, args = "status in ('failed', 'needs_human')", []
        else:
            action_ids = list(action_ids)
            where, args = f"id in ({','.join('?' * len(action_ids)) or 'null'})", action_ids
        with self.transaction():
            cur = self.conn.execute("update actions set status = 'pending', next_attempt_at = null "
                                    f"where termination_id = ? and {where}", [termination_id, *args])
            due = self.termination(termination_id)["due_at"] <= iso(now())
            self.set_state(termination_id, "due" if due else "scheduled", "", **extra)
            return cur.rowcount

    # -- the action journal ----------------------------------------------------------------
    def actions(self, termination_id: str) -> list[dict]:
        return self._rows("actions", "termination_id = ?", [termination_id], order_by="rowid")

    def action(self, action_id: str) -> dict | None:
        return self._one("actions", "id = ?", [action_id])

    def record_intent(self, action_id: str, termination_id: str, provider: str, action: str, phase: str,
                      run_id: str) -> dict:
        with self.transaction():
            row = self.action(action_id) or {"id": action_id, "termination_id": termination_id, "provider": provider,
                                             "action": action, "phase": phase, "attempts": 0}
            at = now().isoformat()     # full precision: `since` is compared with the target's own clock
            row.update(status="in_flight", attempts=(row.get("attempts") or 0) + 1, intent_at=at,
                       first_intent_at=row.get("first_intent_at") or at, run_id=run_id, next_attempt_at=None)
            self.db["actions"].upsert(row, pk="id")
            return row

    def record_outcome(self, action_id: str, status: str, *, before: Any = None, after: Any = None,
                       reason: str = "", error_class: str = "", next_attempt_at: dt.datetime | None = None) -> None:
        with self.transaction():
            self.db["actions"].update(action_id, {
                "status": status, "before": dumps(before), "after": dumps(after), "reason": mask_secrets(reason),
                "error_class": error_class, "finished_at": iso(now()), "next_attempt_at": iso(next_attempt_at)})

    def upsert_action_status(self, action_id: str, termination_id: str, provider: str, action: str, phase: str,
                             status: str, reason: str = "") -> None:
        with self.transaction():
            self.db["actions"].upsert({"id": action_id, "termination_id": termination_id, "provider": provider,
                                       "action": action, "phase": phase, "status": status,
                                       "reason": mask_secrets(reason), "finished_at": iso(now())}, pk="id")

    # -- runs, cursors, safety holds ------------------------------------------------------------
    def start_run(self, run_id: str, trigger: str, tenant: str | None, dry_run: bool) -> None:
        with self.transaction():
            self.db["runs"].upsert({"id": run_id, "trigger": trigger, "tenant": tenant, "dry_run": int(dry_run),
                                    "state": "running", "started_at": iso(now())}, pk="id")

    def finish_run(self, run_id: str, exit_code: int, summary: dict, terminations: list[str]) -> None:
        with self.transaction():
            head = self.audit_head()
            self.db["runs"].update(run_id, {"audit_seq": head["seq"], "audit_hash": head["hash"],
                                            "state": "done" if exit_code in (0, 2, 3) else "failed",
                                            "finished_at": iso(now()), "exit_code": exit_code,
                                            "summary": dumps(summary), "terminations": dumps(terminations)})

    def queue_run(self, run_id: str, trigger: str, tenant: str | None, terminations: list[str], owner: str) -> None:
        with self.transaction():
            self.db["runs"].upsert({"id": run_id, "trigger": trigger, "tenant": tenant, "dry_run": 0,
                                    "state": "queued", "terminations": dumps(terminations), "owner": owner}, pk="id")

    def claim_run(self, run_id: str, owner: str) -> None:
        with self.transaction():
            self.db["runs"].update(run_id, {"owner": owner})

    def fail_run(self, run_id: str, reason: str) -> None:
        with self.transaction():
            self.db["runs"].update(run_id, {"state": "failed", "finished_at": iso(now()),
                                            "summary": dumps({"errors": [reason]})})

    def run(self, run_id: str) -> dict | None:
        row = self._one("runs", "id = ?", [run_id])
        return row and parsed_run(row)

    def runs(self, states: Iterable[str]) -> list[dict]:
        states = list(states)
        return [parsed_run(r) for r in
                self._rows("runs", f"state in ({','.join('?' * len(states))})", states, order_by="rowid")]

    def state_counts(self) -> list[tuple[str, str, int]]:
        with self.lock:
            return [tuple(r) for r in self.conn.execute(
                "select tenant, state, count(*) from terminations group by tenant, state")]

    def oldest_open_due(self, states: Iterable[str]) -> dt.datetime | None:
        states = list(states)
        with self.lock:
            row = self.conn.execute(f"select min(due_at) from terminations where state in "
                                    f"({','.join('?' * len(states))}) and due_at <= ?",
                                    [*states, iso(now())]).fetchone()
        return parse_iso(row[0]) if row[0] else None

    def next_attempts(self, tenant: str | None, states: Iterable[str]) -> dict[str, list[dt.datetime]]:
        states = list(states)
        sql = ("select a.termination_id, a.next_attempt_at from actions a join terminations t on t.id = a.termination_id"
               f" where a.next_attempt_at is not null and a.status in ({','.join('?' * len(COMES_BACK))})"
               f" and t.state in ({','.join('?' * len(states))})")
        args = [*COMES_BACK, *states]
        if tenant is not None:
            sql, args = sql + " and t.tenant = ?", [*args, tenant]
        with self.lock:
            rows = self.conn.execute(sql, args).fetchall() if states else []
        out: dict[str, list[dt.datetime]] = {}
        for termination_id, at in rows:
            out.setdefault(termination_id, []).append(parse_iso(at))
        return out

    def revoke_durations(self) -> list[float]:
        with self.lock:
            rows = self.conn.execute(
                "select t.due_at, max(a.finished_at) from terminations t join actions a on a.termination_id = t.id"
                " where a.phase = 'revoke' group by t.id"
                " having sum(a.status not in ('changed', 'unchanged', 'skipped')) = 0").fetchall()
        return [max(0.0, (parse_iso(done) - parse_iso(due)).total_seconds()) for due, done in rows if due and done]

    def failing(self) -> list[dict]:
        with self.lock:
            rows = self.conn.execute(
                "select t.tenant, a.provider, count(*), max(a.reason), group_concat(distinct t.ticket)"
                " from actions a join terminations t on t.id = a.termination_id"
                " where a.status = 'failed' and t.state in ('due', 'in_progress') group by t.tenant, a.provider"
                " order by t.tenant, a.provider").fetchall()
        return [{"tenant": t, "provider": p, "actions": n, "reason": r or "",
                 "tickets": [x for x in (tickets or "").split(",") if x]} for t, p, n, r, tickets in rows]

    def audit_after(self, seq: int, limit: int = 10000) -> list[dict]:
        with self.lock:
            rows = self.conn.execute("select seq, event, data from audit where seq > ? order by seq limit ?",
                                     [seq, limit]).fetchall()
        return [{"seq": s, "event": e, "data": json.loads(d or "{}")} for s, e, d in rows]

    def cursor(self, key: str) -> str | None:
        row = self._one("cursors", "id = ?", [key])
        return row["cursor"] if row else None

    def cursors(self, prefix: str) -> list[str]:
        with self.lock:
            return [r[0] for r in self.conn.execute(
                "select id from cursors where substr(id, 1, ?) = ? and cursor is not null", [len(prefix), prefix])]

    def set_cursor(self, key: str, cursor: str | None) -> None:
        with self.transaction():
            self.db["cursors"].upsert({"id": key, "cursor": cursor, "updated_at": iso(now())}, pk="id")

    def open_holds(self, tenant: str, kind: str | None = None) -> list[dict]:
        where, args = "tenant = ? and released_at is null", [tenant]
        if kind:
            where += " and kind = ?"; args.append(kind)
        return self._rows("holds", where, args, order_by="id")

    def open_hold(self, tenant: str) -> dict | None:
        return next(iter(self.open_holds(tenant, "new")), None)

    def add_hold(self, tenant: str, reason: str, termination_ids: list[str], kind: str = "new") -> None:
        with self.transaction():
            self.db["holds"].insert({"tenant": tenant, "held_at": iso(now()), "reason": reason, "kind": kind,
                                     "terminations": dumps(termination_ids)})

    def release_hold(self, tenant: str) -> tuple[dict | None, list[str]]:
        with self.transaction():
            hold = next(iter(self.open_holds(tenant)), None)
            if not hold:
                return None, []
            at = iso(now())
            self.conn.execute("update holds set released_at = ? where id = ?", [at, hold["id"]])
            return hold, self._carry_out(hold, at)

    # -- a person's pauses ---------------------------------------------------------------------
    def pause(self, scope: str, reason: str) -> bool:
        with self.transaction():
            return self.conn.execute("insert or ignore into pauses (scope, paused_at, reason) values (?, ?, ?)",
                                     [scope, iso(now()), reason]).rowcount == 1

    def resume(self, scope: str) -> dict | None:
        with self.transaction():
            row = self._one("pauses", "scope = ?", [scope])
            self.conn.execute("delete from pauses where scope = ?", [scope])
            return row

    def pauses(self) -> list[dict]:
        return self._rows("pauses", order_by=f"scope != '{EVERY_TENANT}', scope")

    # -- retention --------------------------------------------------------------------------
    def purge(self, tenant: str, before: dt.datetime, states: Iterable[str]) -> tuple[list[str], int]:
        states = list(states)
        if not states:
            return [], 0
        with self.transaction():
            ids = [r[0] for r in self.conn.execute(
                f"select id from terminations where tenant = ? and purged_at is null and state in "
                f"({','.join('?' * len(states))}) and coalesce(finished_at, updated_at) < ? order by id",
                [tenant, *states, iso(before)])]
            kept, at = 0, iso(now())
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                self.conn.execute(f"update terminations set {', '.join(f'{c} = ?' for c in PERSONAL_FIELDS)}, "
                                  f"approvals = null, purged_at = ? where id in ({marks})",
                                  ["" for _ in PERSONAL_FIELDS] + [at, *chunk])
                self.conn.execute(f"update actions set before = 'null', after = 'null', reason = '' "
                                  f"where termination_id in ({marks})", chunk)
                self.conn.execute(f"update audit set data = ? where termination_id in ({marks}) "
                                  "and data_sha256 is not null and data != ?", [PURGED, *chunk, PURGED])
                kept += self.conn.execute(f"select count(*) from audit where termination_id in ({marks}) "
                                          "and data_sha256 is null", chunk).fetchone()[0]
            self.audit_many([("termination_purged", tid, None, {"finished_before": iso(before)}) for tid in ids])
            return ids, kept

    def purge_runs(self, before: dt.datetime) -> int:
        with self.transaction():
            stale = self.conn.execute("select id, summary from runs where finished_at < ? and summary is not null "
                                      "and json_extract(summary, '$.purged') is null", [iso(before)]).fetchall()
            for run_id, summary in stale:
                self.db["runs"].update(run_id, {"summary": dumps(without_text(json.loads(summary)))})
            return len(stale)

    # -- webhook replay guard ----------------------------------------------------------------
    def seen(self, digest: str) -> bool:
        with self.lock:
            return self.conn.execute("select 1 from seen_webhooks where digest = ? and expires_at > ?",
                                     [digest, iso(now())]).fetchone() is not None

    def remember(self, digest: str, expires_at: float) -> bool:
        with self.transaction():
            self.conn.execute("delete from seen_webhooks where expires_at <= ?", [iso(now())])
            cur = self.conn.execute("insert or ignore into seen_webhooks (digest, expires_at) values (?, ?)",
                                    [digest, iso(dt.datetime.fromtimestamp(expires_at, dt.timezone.utc))])
            return cur.rowcount == 1

    # -- the audit log -------------------------------------------------------------------
    def audit_many(self, entries: list[tuple[str, str | None, str | None, dict]]) -> None:
        at = iso(now())
        rows = [{"at": at, "run_id": run_id, "termination_id": termination_id, "event": event, "data": dumps(data)}
                for event, termination_id, run_id, data in entries]
        with self.transaction():
            head = self.audit_head()
            self.db["audit"].insert_all(chain(rows, head["seq"], head["hash"], self.audit_key))

    def audit_trail(self, termination_id: str) -> list[dict]:
        return self._rows("audit", "termination_id = ?", [termination_id], order_by="seq")

    def audit_head(self) -> dict:
        row = self._one("audit", "1", [], order_by="seq desc") or {"seq": 0, "hash": GENESIS, "at": None, "mac": None}
        return {k: row[k] for k in ("seq", "hash", "at", *(("mac",) if self.audit_key else ()))}

    @contextlib.contextmanager
    def _snapshot(self):
        with self.lock:
            if self.conn.in_transaction:
                yield
                return
            self.conn.execute("BEGIN")
            try:
                yield
            finally:
                self.conn.execute("COMMIT")

    def _audit_rows(self) -> Iterator[dict]:
        return self.db["audit"].rows_where(order_by="seq")

    def _run_heads(self) -> Iterator[tuple[str, int, str]]:
        return self.conn.execute("select id, audit_seq, audit_hash from runs where audit_seq > 0")


class _Transaction:
    """BEGIN IMMEDIATE when no transaction is open on the connection, else part of the open one."""

    def __init__(self, store: SqliteStore):
        self.store = store
        self.outer = False

    def __enter__(self):
        self.store.lock.acquire()
        self.outer = not self.store.conn.in_transaction
        if self.outer:
            try:
                self.store.conn.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.store.lock.release()
                raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if self.outer and self.store.conn.in_transaction:     # an error may have ended it already
                self.store.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.store.lock.release()
