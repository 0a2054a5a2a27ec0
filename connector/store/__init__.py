"""The state store (see base.py for the interface and the audit chain; sqlite.py and postgres.py, the backends)."""
from .base import (EVERY_TENANT, GENESIS, PERSON_HOLD, PERSONAL_FIELDS, PURGED, TABLES, StateStore, copy_store, dumps,
                   iso, now, parse_iso)
from .sqlite import MIGRATIONS, SqliteStore

Store = SqliteStore     # the default backend; `open_state` picks PostgreSQL for a postgresql:// URL


def open_state(state: str, password: str | None = None, audit_key: bytes | None = None,
               scratch: bool = False) -> StateStore:
    """The store `[connector] state` names: a postgresql:// URL, or a SQLite file's path. A scratch store is an
    in-memory SQLite copy (plans, dry runs): the same code runs and nothing reaches the real store."""
    from .postgres import PostgresStore, is_url

    if not is_url(state):
        return SqliteStore.scratch_copy(state, audit_key) if scratch else SqliteStore.open(state, audit_key)
    return PostgresStore.scratch_copy(state, password, audit_key) if scratch else \
        PostgresStore.open(state, password, audit_key)


__all__ = ["EVERY_TENANT", "GENESIS", "MIGRATIONS", "PERSON_HOLD", "PERSONAL_FIELDS", "PURGED", "TABLES", "StateStore",
           "SqliteStore", "Store", "copy_store", "dumps", "iso", "now", "open_state", "parse_iso"]
