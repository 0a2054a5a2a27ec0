"""What only the PostgreSQL backend has: its schema versions, how it refuses to open, how the config selects it,
and the in-memory copy dry runs work on. Everything else is the store contract (test_store*.py, `backing`)."""
import itertools
import json

import psycopg
import pytest

import connector.store.postgres as postgres_backend
from connector.cli import main
from connector.errors import ConfigError
from connector.store import SqliteStore, open_state
from connector.store.postgres import PostgresStore
from tests.helpers import write_config, write_csv
from tests.unit.conftest import leaver

pytestmark = pytest.mark.postgres
KEY = b"audit-key-for-tests"
_names = itertools.count(1)


@pytest.fixture
def url(postgres_server):
    return postgres_server.create_database(f"pg_only_{next(_names)}")


def versions(url):
    with psycopg.connect(url) as conn:
        return [v for (v,) in conn.execute("select version from schema_version order by version")]


def test_migrations_are_recorded_once_whoever_opens(url):
    for _ in range(3):
        PostgresStore.open(url).close()
    assert versions(url) == list(range(1, len(postgres_backend.MIGRATIONS) + 1))


def test_a_store_from_a_newer_version_is_refused(url):
    PostgresStore.open(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("insert into schema_version (version) values (9)")
    with pytest.raises(ConfigError, match="schema 9"):
        PostgresStore.open(url)


def test_a_server_that_is_not_there_is_one_clear_error_without_the_password(postgres_server):
    dead = f"postgresql://offboard:hunter2-in-url@127.0.0.1:{postgres_server.port + 1}/offboard"
    with pytest.raises(ConfigError, match="cannot open the state store") as refused:
        PostgresStore.open(dead, password="hunter2-given")
    assert "hunter2" not in str(refused.value) and "hunter2" not in refused.value.where


def test_connections_the_server_dropped_are_replaced_before_a_statement_uses_them(url):
    store = PostgresStore.open(url)
    store.set_cursor("k", "1")
    with psycopg.connect(url, autocommit=True) as admin:
        dropped = admin.execute("select count(pg_terminate_backend(pid)) from pg_stat_activity "
                                "where datname = current_database() and pid != pg_backend_pid()").fetchone()[0]
    assert dropped >= 1
    store.set_cursor("k", "2")
    assert store.cursor("k") == "2"
    store.close()


def test_a_scratch_copy_is_the_whole_store_in_memory_and_writes_stay_there(url):
    real = PostgresStore.open(url, audit_key=KEY)
    real.upsert_terminations([{"id": "t/1", "tenant": "t", "employee_id": "1", "state": "due", "reason": ""}])
    real.start_run("r1", "cli", None, False)
    real.audit("kept", "t/1", "r1")
    real.finish_run("r1", 0, {}, ["t/1"])
    real.add_hold("t", "too many", ["t/1"])
    copy = open_state(url, audit_key=KEY, scratch=True)
    assert isinstance(copy, SqliteStore)
    assert copy.verify_audit() == (True, "", 1) and copy.state_of("t/1") == "due"
    assert copy.run("r1")["terminations"] == ["t/1"] and copy.open_hold("t")["reason"] == "too many"
    copy.audit("dropped", "t/1", None)
    copy.set_state("t/1", "done")
    copy.add_hold("t", "another", [])
    assert real.verify_audit() == (True, "", 1) and real.state_of("t/1") == "due"
    assert len(real.open_holds("t")) == 1
    real.close()


def test_a_scratch_copy_writes_not_even_the_schema_and_refuses_an_older_one(url, monkeypatch):
    empty = open_state(url, scratch=True)
    assert empty.terminations() == [] and empty.verify_audit() == (True, "", 0)
    with psycopg.connect(url) as conn:
        assert conn.execute("select to_regclass('schema_version')").fetchone() == (None,)
    PostgresStore.open(url).close()
    monkeypatch.setattr(postgres_backend, "MIGRATIONS", [*postgres_backend.MIGRATIONS, ["create table later (x int)"]])
    with pytest.raises(ConfigError, match="a command that writes"):
        open_state(url, scratch=True)
    PostgresStore.open(url).close()
    assert versions(url)[-1] == len(postgres_backend.MIGRATIONS)
    assert open_state(url, scratch=True).verify_audit() == (True, "", 0)


def test_a_postgresql_url_in_the_config_selects_the_backend_with_its_password(url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OFFBOARD_DB_PASSWORD", "db-Secret-77")
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace(f'state = "{tmp_path / "state.db"}"',
                                                 f'state = "{url}"\nstate_password = "env:OFFBOARD_DB_PASSWORD"'))
    write_csv(tmp_path / "hr", "feed.csv", [leaver("E1", "ann@contoso.com", date="2026-12-24")])
    assert main(["--config", str(config), "reconcile", "--once"]) == 0
    assert main(["--config", str(config), "--json", "audit", "verify"]) == 0
    verified = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert verified["ok"] and verified["rows"] > 0
    assert not (tmp_path / "state.db").exists()
    store = PostgresStore.open(url)
    assert [r["id"] for r in store.terminations()] == ["contoso/E1"]
    assert "db-Secret-77" not in store.dump()
    store.close()


def keyed_config(tmp_path, state):
    (tmp_path / "audit.key").write_text("k" * 32)
    config = write_config(tmp_path, top=f'audit_key = "file:{tmp_path / "audit.key"}"')
    config.write_text(config.read_text().replace(f'state = "{tmp_path / "state.db"}"', f'state = "{state}"'))
    return config


def test_migrate_state_moves_a_real_sqlite_store_and_its_keyed_chain_verifies_on_postgresql(url, tmp_path, capsys):
    sqlite_config = keyed_config(tmp_path, tmp_path / "state.db")
    write_csv(tmp_path / "hr", "feed.csv", [leaver("E1", "ann@contoso.com", kind="immediate"),
                                            leaver("E2", "bob@contoso.com", date="2026-12-24")])
    assert main(["--config", str(sqlite_config), "reconcile", "--once"]) in (0, 2)
    before = SqliteStore.open(str(tmp_path / "state.db"))
    rows, states = before.verify_audit()[2], {r["id"]: r["state"] for r in before.terminations()}
    assert rows > 3 and before.runs(["done", "failed"])
    capsys.readouterr()
    argv = ["--config", str(sqlite_config), "--json", "migrate-state", "--from", str(tmp_path / "state.db"), "--to", url]
    assert main(argv) == 0
    moved = json.loads(capsys.readouterr().out)
    assert moved["audit_rows"] == rows and moved["audit"]["mac"]
    pg_config = keyed_config(tmp_path, url)
    assert main(["--config", str(pg_config), "--json", "audit", "verify"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "rows": rows, "problem": "", "keyed": True}
    after = PostgresStore.open(url)
    assert {r["id"]: r["state"] for r in after.terminations()} == states
    assert after.actions("contoso/E1") == before.actions("contoso/E1")
    after.close()
    assert main(argv) == 1, "a second move into a database that holds a store is refused"
    assert "already holds a state store" in capsys.readouterr().err
    assert main(["--config", str(pg_config), "--json", "audit", "verify"]) == 0


def test_migrate_state_refuses_a_store_whose_chain_is_broken_and_a_wrong_direction(url, tmp_path, capsys):
    config = keyed_config(tmp_path, tmp_path / "state.db")
    store = SqliteStore.open(str(tmp_path / "state.db"))
    store.audit("signed nowhere", None, None)        # written without the key the config names
    store.audit("another", None, None)
    store.close()
    assert main(["--config", str(config), "migrate-state", "--from", str(tmp_path / "state.db"), "--to", url]) == 1
    assert "does not verify, so it is not moved" in capsys.readouterr().err
    untouched = PostgresStore.open(url)
    assert untouched.audit_head()["seq"] == 0 and untouched.terminations() == []
    untouched.close()
    assert main(["--config", str(config), "migrate-state", "--from", url, "--to", str(tmp_path / "x.db")]) == 1
    assert "moves a SQLite file" in capsys.readouterr().err


def test_a_killed_test_run_leaves_no_server_behind(postgres_server, tmp_path):
    import socket
    import subprocess
    import sys
    import time

    starts_and_dies = ("import os, sys; from connector.sandbox.postgres import PostgresServer; "
                       "s = PostgresServer(sys.argv[1]).start(); print(s.port, flush=True); os.kill(os.getpid(), 9)")
    done = subprocess.run([sys.executable, "-c", starts_and_dies, str(tmp_path / "orphan")], capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.strip().isdigit(), done.stderr[-3000:]
    port = int(done.stdout)
    def listening():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    deadline = time.monotonic() + 30
    while listening():
        assert time.monotonic() < deadline, f"the server on port {port} outlived the process that started it"
        time.sleep(0.2)
