"""The store contract's fixtures: `backing` runs a test once on a SQLite file and once on a real PostgreSQL.

One PostgreSQL server per test session (connector.sandbox.postgres), a fresh database per test.
`backing.target` is what `[connector] state` would say (a path or a URL), so `open_state(target)`
opens the same store in a thread or a spawned process; `backing.raw(...)` is the attacker who can
write the database behind the store's back.
"""
from __future__ import annotations

import itertools
import os
import sqlite3

import pytest

from connector.sandbox.postgres import PostgresServer, missing
from connector.store import open_state

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    if reason := missing():
        if os.geteuid() != 0:
            pytest.skip(f"PostgreSQL: {reason}; CI runs these tests (tools/install-system-deps installs it)")
        pytest.fail(f"PostgreSQL: {reason}: run tools/install-system-deps")
    server = PostgresServer(tmp_path_factory.mktemp("postgres")).start()
    yield server
    server.stop()


class Backing:
    """One empty store's place, on one backend: opens stores on it and tampers with it."""

    def __init__(self, kind: str, target: str, server: PostgresServer | None = None):
        self.kind, self.target, self.server, self.opened = kind, target, server, []

    def open(self, audit_key: bytes | None = None):
        store = open_state(self.target, audit_key=audit_key)
        self.opened.append(store)
        return store

    def raw(self, *statements: str, args: list | None = None) -> list[tuple]:
        """Run SQL on a connection of its own, committed; the last statement's rows (`?` marks the args)."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.target)
            try:
                rows = [conn.execute(sql, args or []).fetchall() for sql in statements][-1]
                conn.commit()
                return rows
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.target, autocommit=True) as conn:
            rows = []
            for sql in statements:
                cur = conn.execute(sql.replace("?", "%s") if args else sql, args)
                rows = cur.fetchall() if cur.description else []
            return rows

    @property
    def refusal(self) -> type[Exception]:
        """What the database raises when its append-only trigger refuses a statement."""
        if self.kind == "sqlite":
            return sqlite3.DatabaseError
        import psycopg
        return psycopg.Error

    def drop_audit_guard(self) -> None:
        if self.kind == "sqlite":
            self.raw("drop trigger if exists audit_no_update", "drop trigger if exists audit_no_delete")
        else:
            self.raw("drop trigger audit_append_only on audit")

    def restore(self, backup: str) -> str:
        """Where a backup made by `store.backup(backup)` is put back: the target to open it at."""
        if self.kind == "sqlite":
            return backup
        import subprocess

        from connector.store.postgres import binary
        url = self.server.create_database(f"restored_{os.getpid()}_{next(_databases)}")
        subprocess.run([binary("pg_restore"), "--no-owner", f"--dbname={url}", backup], check=True)
        return url

    def close(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backing(request, tmp_path):
    if request.param == "sqlite":
        place = Backing("sqlite", str(tmp_path / "s.db"))
    else:
        server = request.getfixturevalue("postgres_server")
        place = Backing("postgres", server.create_database(f"t{os.getpid()}_{next(_databases)}"), server)
    yield place
    place.close()
