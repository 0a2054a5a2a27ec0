"""The state store: leases, compare-and-set states, migrations, the keyed audit chain, file modes, the owner.

The attacker in these tests has the file and sqlite3: they use a raw connection, never the store.
"""
import datetime as dt
import json
import os
import sqlite3
import stat
import time

import pytest
import sqlite_utils

import connector.store.postgres as postgres_backend
import connector.store.sqlite as sqlite_backend
from connector.config import Secret
from connector.errors import ConfigError
from connector.store import GENESIS, Store, open_state
from connector.store.base import audit_hash

KEY = b"audit-key-for-tests"


def tamper(path, *statements):
    raw = sqlite3.connect(path)
    try:
        for sql in statements:
            raw.execute(sql)
        raw.commit()
    finally:
        raw.close()


def test_audit_log_refuses_edits_and_the_chain_catches_them_anyway(backing):
    store = backing.open()
    for i in range(5):
        store.audit("action_changed", "t/1", "run", n=i)
    assert store.verify_audit() == (True, "", 5)
    with pytest.raises(backing.refusal, match="append-only"):
        backing.raw("update audit set data = '{}' where seq = 2")
    with pytest.raises(backing.refusal, match="append-only"):
        backing.raw("delete from audit where seq = 5")
    backing.drop_audit_guard()
    backing.raw("""update audit set data = '{"n":99}' where seq = 2""")
    ok, problem, _ = backing.open().verify_audit()
    assert not ok and "row 2 was edited" in problem
    backing.raw("delete from audit where seq = 4")
    ok, problem, _ = backing.open().verify_audit()
    assert not ok and ("row 2" in problem or "row 4" in problem)


def test_a_deleted_row_is_detected(backing):
    store = backing.open()
    for i in range(3):
        store.audit("x", None, None, n=i)
    backing.drop_audit_guard()
    backing.raw("delete from audit where seq = 2")
    ok, problem, _ = store.verify_audit()
    assert not ok and "row 2 is missing" in problem


def test_a_truncated_tail_is_detected_through_the_heads_runs_recorded(backing):
    store = backing.open()
    store.start_run("r1", "cli", None, False)
    for i in range(3):
        store.audit("x", None, "r1", n=i)
    store.finish_run("r1", 0, {}, [])
    backing.drop_audit_guard()
    backing.raw("delete from audit where seq = 3")
    ok, problem, _ = store.verify_audit()
    assert not ok and "run r1" in problem


def test_resolved_secrets_are_masked_in_journal_and_audit(monkeypatch, backing):
    monkeypatch.setenv("PW_FOR_TEST", "Very-Secret-42")
    Secret("env:PW_FOR_TEST").reveal()
    store = backing.open()
    store.record_intent("t/1/ad/x", "t/1", "ad", "x", "revoke", "r")
    store.record_outcome("t/1/ad/x", "failed", before={"pw": "Very-Secret-42"}, reason="bind Very-Secret-42 refused")
    store.audit("oops", "t/1", "r", leaked="Very-Secret-42")
    dump = store.dump()
    assert "Very-Secret-42" not in dump and "***" in dump


def test_dump_holds_the_text_of_every_table(backing):
    store = backing.open()
    store.upsert_terminations([termination_row("t/1")])
    store.set_cursor("t/csv", "cursor-77")
    store.acquire_lease("termination:t/1", "worker-a", 60)
    store.audit("hello", "t/1", "run-5", note="audit-text")
    dump = store.dump()
    for text in ("ann@contoso.com", "cursor-77", "worker-a", "audit-text", "run-5"):
        assert text in dump


def test_scratch_copy_never_touches_the_file(tmp_path):
    path = tmp_path / "s.db"
    scratch = Store.scratch_copy(str(path))
    scratch.audit("x", None, None)
    assert not path.exists()
    real = Store.open(str(path))
    real.audit("kept", None, None)
    real.close()
    mtime = path.stat().st_mtime_ns
    copy = Store.scratch_copy(str(path))
    copy.audit("dropped", None, None)
    assert copy.verify_audit()[2] == 2
    assert Store.open(str(path)).verify_audit()[2] == 1
    assert path.stat().st_mtime_ns == mtime


def test_migrations_are_recorded(tmp_path):
    path = str(tmp_path / "s.db")
    Store.open(path).close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == len(sqlite_backend.MIGRATIONS) >= 4
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_version_1_store_upgrades_and_its_old_chain_still_verifies(tmp_path):
    path = str(tmp_path / "s.db")
    db = sqlite_utils.Database(path)
    sqlite_backend._v1(db)
    db["leases"].create({"termination_id": str, "holder": str, "expires_at": str}, pk="termination_id")  # pre-0c19170
    row = {"seq": 1, "at": "2026-11-01T00:00:00+00:00", "run_id": "r0", "termination_id": "t/1", "event": "old",
           "data": "{}", "prev_hash": GENESIS}
    db["audit"].insert({**row, "hash": audit_hash(row)})
    db.execute("PRAGMA user_version=1")
    db.close()
    store = Store.open(path, audit_key=KEY)
    assert store.acquire_lease("termination:t/1", "a", 60) and store.lease("termination:t/1")["owner"] == "a"
    store.audit("new", "t/1", "r1")
    assert store.verify_audit() == (True, "", 2)
    assert [r["mac"] is None for r in store.audit_trail("t/1")] == [True, False]
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == len(sqlite_backend.MIGRATIONS)


def test_a_store_from_a_newer_version_is_refused(tmp_path):
    path = str(tmp_path / "s.db")
    Store.open(path).close()
    tamper(path, "PRAGMA user_version=9")
    with pytest.raises(ConfigError, match="schema 9"):
        Store.open(path)


def test_opening_waits_while_another_connection_has_the_file_alone(tmp_path):
    import threading

    path = str(tmp_path / "s.db")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("create table other (x)")
    holder.execute("begin exclusive")
    threading.Timer(0.5, lambda: holder.execute("commit")).start()
    started = time.monotonic()
    store = Store.open(path)
    assert time.monotonic() - started >= 0.4
    assert store.acquire_lease("k", "a", 60)
    holder.close()


def test_the_store_is_a_persistent_replay_guard_for_signed_webhooks(backing):
    from connector.sources.webhook import ReplayedBody, sign, verify_and_parse

    body = json.dumps({"tenant": "contoso", "employee_id": "E1", "email": "ann@contoso.com", "first_name": "Ann",
                       "last_name": "Lee", "manager_email": "", "termination_date": "2026-11-23",
                       "timestamp": int(time.time())}).encode()
    headers = {"X-Offboard-Signature": sign(body, b"k3y-for-tests")}
    store = backing.open()
    assert verify_and_parse(body, headers, {"contoso": b"k3y-for-tests"}, time.time(), store).employee_id == "E1"
    reopened = backing.open()      # a restart, or another daemon: it forgets nothing
    with pytest.raises(ReplayedBody):
        verify_and_parse(body, headers, {"contoso": b"k3y-for-tests"}, time.time(), reopened)


# -- leases -------------------------------------------------------------------------------
def test_a_lease_is_refused_to_a_second_owner_until_it_expires_then_taken_over(backing):
    a, b = backing.open(), backing.open()
    assert a.acquire_lease("termination:t/1", "a", 0.5)
    assert not b.acquire_lease("termination:t/1", "b", 0.5)
    assert a.lease("termination:t/1")["owner"] == "a"
    time.sleep(0.6)
    assert b.acquire_lease("termination:t/1", "b", 30)
    assert b.lease("termination:t/1")["owner"] == "b"
    assert not a.renew_lease("termination:t/1", "a", 30), "a lost it; renewing must say so"
    assert not a.acquire_lease("termination:t/1", "a", 30)
    assert a.acquire_lease("intake:contoso", "a", 30), "keys are independent"


def test_live_leases_list_who_holds_what_and_leave_out_the_expired_and_released(backing):
    a, b = backing.open(), backing.open()
    assert a.acquire_lease("termination:t/1", "host:1:run", 30) and a.acquire_lease("intake:t", "host:1:run", 30)
    assert b.acquire_lease("termination:t/2", "host:2:run", 0.3) and b.acquire_lease("process:x", "host:2:serve", 30)
    a.release_lease("intake:t", "host:1:run")
    time.sleep(0.4)
    assert [(l["key"], l["owner"]) for l in b.live_leases()] == [("process:x", "host:2:serve"),
                                                                   ("termination:t/1", "host:1:run")]


def test_renewing_keeps_a_lease_past_its_first_expiry(monkeypatch, backing):
    clock = [dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.timezone.utc)]
    for backend in (sqlite_backend, postgres_backend):
        monkeypatch.setattr(backend, "now", lambda: clock[0])
    tick = lambda seconds: clock.__setitem__(0, clock[0] + dt.timedelta(seconds=seconds))
    store = backing.open()
    assert store.acquire_lease("k", "a", 10)
    first = store.lease("k")
    tick(6)
    assert store.renew_lease("k", "a", 10)
    tick(6)                           # past the first expiry, within the renewed one
    assert not store.acquire_lease("k", "b", 10)
    assert store.acquire_lease("k", "a", 10), "the owner re-acquiring renews"
    again = store.lease("k")
    assert again["acquired_at"] == first["acquired_at"] and again["expires_at"] > first["expires_at"]
    tick(10)
    assert store.acquire_lease("k", "b", 10), "expired exactly now: free"
    assert store.lease("k")["acquired_at"] == sqlite_backend.stamp(clock[0])


def test_only_the_owner_releases_a_lease(backing):
    store = backing.open()
    assert store.lease("k") is None
    store.acquire_lease("k", "a", 60)
    store.release_lease("k", "b")
    assert store.lease("k")["owner"] == "a"
    store.release_lease("k", "a")
    assert store.lease("k") is None
    assert not store.renew_lease("k", "a", 60), "a released lease cannot be renewed"
    assert store.acquire_lease("k", "b", 60)


# -- compare-and-set states ------------------------------------------------------------------
def termination_row(tid, state="due"):
    tenant, employee = tid.split("/")
    return {"id": tid, "tenant": tenant, "employee_id": employee, "email": "ann@contoso.com", "state": state,
            "due_at": "2026-11-01T17:00:00+00:00", "reason": ""}


def test_set_state_with_expect_changes_only_from_an_expected_state(backing):
    store = backing.open()
    store.upsert_terminations([termination_row("t/1", "in_progress")])
    assert store.set_state("t/1", "cancelled", "cancelled by a person")        # a person, meanwhile
    assert not store.set_state("t/1", "done", expect=["in_progress", "due"], finished_at="2026-11-02")
    assert store.state_of("t/1") == "cancelled"
    assert store.termination("t/1")["finished_at"] is None
    assert store.set_state("t/1", "due", expect=["cancelled"])
    assert store.state_of("t/1") == "due" and store.termination("t/1")["reason"] == ""
    assert not store.set_state("t/1", "done", expect=[])
    assert store.state_of("t/404") is None
    assert not store.set_state("t/404", "done", expect=["due"])
    with pytest.raises(KeyError):
        store.set_state("t/404", "done")
    with pytest.raises(TypeError, match="no_such_field"):
        store.set_state("t/1", "done", no_such_field=1)


def test_archiving_moves_a_termination_and_its_journal_to_the_next_free_number(backing):
    store = backing.open()
    for round_ in (1, 2):
        store.upsert_terminations([termination_row("t/1", "done")])
        store.record_intent("t/1/ad/disable", "t/1", "ad", "disable", "revoke", f"r{round_}")
        store.record_outcome("t/1/ad/disable", "changed", before={"round": round_})
        assert store.archive_termination("t/1") == f"t/1#{round_}"
    assert store.termination("t/1") is None and store.actions("t/1") == []
    for round_ in (1, 2):
        moved = store.actions(f"t/1#{round_}")
        assert [(a["id"], json.loads(a["before"])) for a in moved] == [(f"t/1#{round_}/ad/disable", {"round": round_})]
        assert store.state_of(f"t/1#{round_}") == "done"


# -- the keyed audit chain ------------------------------------------------------------------------
def people_trails(store):
    for person in ("t/ann", "t/bob", "t/cat"):
        for event in ("termination_seen", "action_changed", "termination_done"):
            store.audit(event, person, "r1")


AUDIT = ("seq", "at", "run_id", "termination_id", "event", "data", "prev_hash", "hash", "mac", "data_sha256")


def rechain_without(backing, termination_id, strip_macs=False):
    """What someone who can write the database does: drop the triggers, delete a trail, renumber, re-hash."""
    kept = [dict(zip(AUDIT, r)) for r in backing.raw(f"select {', '.join(AUDIT)} from audit where termination_id != ? "
                                                     "order by seq", args=[termination_id])]
    backing.drop_audit_guard()
    backing.raw("delete from audit")
    prev = GENESIS
    for seq, row in enumerate(kept, start=1):
        row.update(seq=seq, prev_hash=prev)
        row["hash"] = prev = audit_hash(row)
        if strip_macs:
            row["mac"] = None
        backing.raw(f"insert into audit ({', '.join(row)}) values ({', '.join('?' * len(row))})",
                    args=list(row.values()))
    return len(kept)


def test_without_a_key_a_rechained_log_passes_verify_which_is_the_documented_limit(backing):
    store = backing.open()
    people_trails(store)
    assert not store.audit_keyed()
    assert rechain_without(backing, "t/bob") == 6
    assert store.verify_audit() == (True, "", 6)
    assert store.audit_trail("t/bob") == []


def test_with_a_key_a_deleted_and_rechained_trail_is_caught(backing):
    store = backing.open(audit_key=KEY)
    people_trails(store)
    assert store.audit_keyed() and store.verify_audit() == (True, "", 9)
    rechain_without(backing, "t/ann")
    ok, problem, _ = backing.open(audit_key=KEY).verify_audit()
    assert not ok and problem == "row 1 is not signed with the audit key"


def test_with_a_key_stripping_every_mac_does_not_pass_for_an_unkeyed_log(backing):
    people_trails(backing.open(audit_key=KEY))
    rechain_without(backing, "t/cat", strip_macs=True)
    assert backing.open().verify_audit() == (True, "", 6)
    ok, problem, _ = backing.open(audit_key=KEY).verify_audit()
    assert not ok and "the newest, is not signed" in problem


def test_an_unsigned_row_after_a_signed_one_fails(backing):
    backing.open(audit_key=KEY).audit("signed", None, None)
    backing.open().audit("unsigned", None, None)     # a process without the key wrote after
    backing.open(audit_key=KEY).audit("signed again", None, None)
    ok, problem, _ = backing.open(audit_key=KEY).verify_audit()
    assert not ok and problem == "row 2 is not signed with the audit key"
    assert backing.open().verify_audit() == (True, "", 3)


def test_a_wrong_key_fails_verify(backing):
    people_trails(backing.open(audit_key=KEY))
    assert backing.open(audit_key=KEY).verify_audit()[0]
    ok, problem, _ = backing.open(audit_key=b"another key").verify_audit()
    assert not ok and problem == "row 1 is not signed with the audit key"


def test_audit_head_names_the_newest_row_and_its_mac_when_keyed(backing):
    keyed, plain = backing.open(audit_key=KEY), backing.open()
    assert plain.audit_head() == {"seq": 0, "hash": GENESIS, "at": None}
    assert keyed.audit_head() == {"seq": 0, "hash": GENESIS, "at": None, "mac": None}
    keyed.audit_many([("a", "t/1", "r", {}), ("b", "t/1", "r", {})])
    head, newest = keyed.audit_head(), keyed.audit_trail("t/1")[-1]
    assert head == {"seq": 2, "hash": newest["hash"], "at": newest["at"], "mac": newest["mac"]}
    assert len(head["mac"]) == 64 and head["mac"] != head["hash"]
    assert set(plain.audit_head()) == {"seq", "hash", "at"} and plain.audit_head()["seq"] == 2


# -- files: modes and owner ---------------------------------------------------------------------------
def test_files_are_private_whatever_the_umask(tmp_path):
    folder = tmp_path / "var" / "offboard"
    path = str(folder / "state.db")
    old = os.umask(0o022)
    try:
        store = Store.open(path)
        store.audit("x", None, None)
        store.backup(str(tmp_path / "backup.db"))
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)
    assert mode(folder) == 0o700
    for name in (path, f"{path}-wal", f"{path}-shm", tmp_path / "backup.db"):
        assert os.path.exists(name) and mode(name) == 0o600, name


def test_files_are_born_private_not_only_tightened_after(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "chmod", lambda *a, **k: None)
    path = str(tmp_path / "s.db")
    old = os.umask(0o022)
    try:
        Store.open(path).audit("x", None, None)
    finally:
        os.umask(old)
    for name in (path, f"{path}-wal", f"{path}-shm"):
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o600, name


def test_an_existing_world_readable_store_is_tightened(tmp_path):
    path = str(tmp_path / "s.db")
    Store.open(path).close()
    os.chmod(path, 0o644)
    Store.open(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_another_user_is_refused_with_one_clear_line(tmp_path, monkeypatch):
    import pwd

    path = str(tmp_path / "s.db")
    Store.open(path).close()
    owner = os.stat(path).st_uid
    name = pwd.getpwuid(owner).pw_name
    monkeypatch.setattr(sqlite_backend, "effective_uid", lambda: owner + 4242)
    for opening in (Store.open, Store.scratch_copy):
        with pytest.raises(ConfigError) as caught:
            opening(path)
        assert caught.value.message == (f"the state store belongs to user {name}; "
                                        f"run it as that user: sudo -u {name} offboard ...")
        assert caught.value.where == path
    monkeypatch.setattr(sqlite_backend, "effective_uid", lambda: owner)
    Store.open(path)


def test_an_owner_without_a_name_is_named_by_uid(tmp_path, monkeypatch):
    import pwd

    path = str(tmp_path / "s.db")
    Store.open(path).close()
    uid = 54321
    while True:
        try:
            pwd.getpwuid(uid)
            uid += 1
        except KeyError:
            break
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    os.chown(path, uid, -1)
    with pytest.raises(ConfigError, match=f"belongs to user {uid}; run it as that user: sudo -u {uid} offboard"):
        Store.open(path)


# -- backup -------------------------------------------------------------------------------------------
def test_a_backup_is_a_whole_store_that_opens_and_verifies(tmp_path, backing):
    store = backing.open(audit_key=KEY)
    store.upsert_terminations([termination_row("t/1")])
    people_trails(store)
    target = tmp_path / "copies" / "b.db"
    target.parent.mkdir()
    target.write_text("an older backup")
    store.backup(str(target))
    copy = open_state(backing.restore(str(target)), audit_key=KEY)
    backing.opened.append(copy)
    assert copy.verify_audit() == (True, "", 9) and copy.state_of("t/1") == "due"
    assert sorted(p.name for p in target.parent.iterdir() if not p.name.startswith("b.db")) == []
    with pytest.raises(ConfigError, match="cannot write the backup"):
        store.backup(str(tmp_path / "missing" / "b.db"))


def test_next_attempts_are_the_waits_of_actions_that_come_back(backing):
    store = backing.open()
    due = "2026-11-01T00:00:00+00:00"
    later, retry = (dt.datetime(2026, 12, 5, 9, tzinfo=dt.timezone.utc), dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc))
    store.upsert_terminations([{"id": f"{tenant}/{e}", "tenant": tenant, "employee_id": e, "email": f"{e}@x.test", "state": state,
                                "due_at": due} for e, tenant, state in (("E1", "t", "done"), ("E2", "t", "in_progress"),
                                                                         ("E3", "u", "done"), ("E4", "t", "done"))])
    for tid, action, status, at in (("t/E1", "reduce_seats", "unchanged", later), ("t/E1", "sync_billing", "changed", None),
                                    ("t/E2", "block_sign_in", "failed", retry), ("u/E3", "reduce_seats", "unchanged", later),
                                    ("t/E4", "reduce_seats", "needs_human", later)):
        store.upsert_action_status(f"{tid}/p/{action}", tid, "p", action, "bill", status, "")
        store.record_outcome(f"{tid}/p/{action}", status, next_attempt_at=at)
    assert store.next_attempts("t", ("done", "deleted")) == {"t/E1": [later]}
    assert store.next_attempts(None, ("done", "in_progress")) == {"t/E1": [later], "t/E2": [retry], "u/E3": [later]}
    assert store.next_attempts("t", ()) == {}
