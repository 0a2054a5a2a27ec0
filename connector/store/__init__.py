"""The state store (see base.py for the interface and the audit chain, sqlite.py for the backend)."""
from .base import EVERY_TENANT, GENESIS, PERSON_HOLD, PERSONAL_FIELDS, PURGED, StateStore, dumps, iso, now, parse_iso
from .sqlite import MIGRATIONS, SqliteStore

Store = SqliteStore     # the one backend today; PostgreSQL will sit beside it behind StateStore

__all__ = ["EVERY_TENANT", "GENESIS", "MIGRATIONS", "PERSON_HOLD", "PERSONAL_FIELDS", "PURGED", "StateStore",
           "SqliteStore", "Store", "dumps", "iso", "now", "parse_iso"]
