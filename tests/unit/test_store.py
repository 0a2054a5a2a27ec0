"""The state store: migrations, the append-only hash-chained audit log, masked secrets."""
import sqlite3

import pytest

from connector.config import Secret
from connector.store import MIGRATIONS, Store


def test_audit_log_refuses_edits_and_the_chain_catches_them_anyway(tmp_path):
    path = str(tmp_path / "s.db")
    store = Store.open(path)
    for i in range(5):
        store.audit("action_changed", "t/1", "run", n=i)
    assert store.verify_audit() == (True, "", 5)
    with pytest.raises(sqlite3.DatabaseError):
        store.conn.execute("update audit set data = '{}' where seq = 2")
    store.close()
    raw = sqlite3.connect(path)          # someone with the file and sqlite3 drops the trigger
    raw.execute("drop trigger audit_no_update")
    raw.execute("drop trigger audit_no_delete")
    raw.execute("""update audit set data = '{"n":99}' where seq = 2""")
    raw.commit()
    ok, problem, _ = Store.open(path).verify_audit()
    assert not ok and "row 2 was edited" in problem
    raw.execute("delete from audit where seq = 4")
    raw.commit()
    ok, problem, _ = Store.open(path).verify_audit()
    assert not ok and ("row 2" in problem or "row 4" in problem)


def test_a_deleted_row_is_detected(tmp_path):
    path = str(tmp_path / "s.db")
    store = Store.open(path)
    for i in range(3):
        store.audit("x", None, None, n=i)
    store.conn.execute("drop trigger audit_no_delete")
    store.conn.execute("delete from audit where seq = 2")
    ok, problem, _ = store.verify_audit()
    assert not ok and "row 2 is missing" in problem


def test_a_truncated_tail_is_detected_through_the_heads_runs_recorded(tmp_path):
    store = Store.open(str(tmp_path / "s.db"))
    store.start_run("r1", "cli", None, False)
    for i in range(3):
        store.audit("x", None, "r1", n=i)
    store.finish_run("r1", 0, {}, [])
    store.conn.execute("drop trigger audit_no_delete")
    store.conn.execute("delete from audit where seq = 3")
    ok, problem, _ = store.verify_audit()
    assert not ok and "run r1" in problem


def test_resolved_secrets_are_masked_in_journal_and_audit(monkeypatch):
    monkeypatch.setenv("PW_FOR_TEST", "Very-Secret-42")
    Secret("env:PW_FOR_TEST").reveal()
    store = Store.memory()
    store.record_intent("t/1/ad/x", "t/1", "ad", "x", "revoke", "r")
    store.record_outcome("t/1/ad/x", "failed", before={"pw": "Very-Secret-42"}, reason="bind Very-Secret-42 refused")
    store.audit("oops", "t/1", "r", leaked="Very-Secret-42")
    dump = "\n".join(store.conn.iterdump())
    assert "Very-Secret-42" not in dump and "***" in dump


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
    store = Store.open(str(tmp_path / "s.db"))
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_store_is_a_persistent_replay_guard_for_signed_webhooks(tmp_path):
    import json
    import time

    from connector.sources.webhook import ReplayedBody, sign, verify_and_parse

    body = json.dumps({"tenant": "contoso", "employee_id": "E1", "email": "ann@contoso.com", "first_name": "Ann",
                       "last_name": "Lee", "manager_email": "", "termination_date": "2026-11-23",
                       "timestamp": int(time.time())}).encode()
    headers = {"X-Offboard-Signature": sign(body, b"k3y-for-tests")}
    store = Store.open(str(tmp_path / "s.db"))
    assert verify_and_parse(body, headers, b"k3y-for-tests", time.time(), store).employee_id == "E1"
    store.close()
    reopened = Store.open(str(tmp_path / "s.db"))      # a restart forgets nothing
    with pytest.raises(ReplayedBody):
        verify_and_parse(body, headers, b"k3y-for-tests", time.time(), reopened)
