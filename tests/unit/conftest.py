"""The engine's test bed: a CSV feed, a state file and an in-memory directory on one frozen clock."""
from __future__ import annotations

import pytest

from connector.reconcile import reconcile
from connector.store import Store
from tests.fakes.directory import FakeDirectory, FakeOptions
from tests.helpers import load, utc, write_config, write_csv

NOW = utc(2026, 11, 23, 23, 30)          # 17:30 in Chicago: past the default revoke_at of 17:00
TODAY = "2026-11-23"


@pytest.fixture
def env(tmp_path):
    accounts = {
        "u1": FakeDirectory.account("u1", "E1", "ann@contoso.com"),
        "u2": FakeDirectory.account("u2", "E2", "bob@contoso.com"),
        "u3": FakeDirectory.account("u3", "E3", "cat@contoso.com"),
        "svc": FakeDirectory.account("svc", "E9", "svc-backup@contoso.com", names=("svc-backup",)),
        "adm": FakeDirectory.account("adm", "E8", "root@contoso.com", admin=True),
        "d1": FakeDirectory.account("d1", "", "dup@contoso.com"),
        "d2": FakeDirectory.account("d2", "", "dup@contoso.com"),
    }

    class Env:
        hr = tmp_path / "hr"
        config_path = write_config(tmp_path)
        config = load(config_path)
        store = Store.open(str(tmp_path / "state.db"))
        order: list = []
        directory = FakeDirectory("ad", FakeOptions(), config.tenants[0], accounts=accounts, log=order)

        def csv(self, *rows, name="feed.csv"):
            write_csv(self.hr, name, list(rows))

        def run(self, now=NOW, **kw):
            return reconcile(self.config, self.store, now=now, providers=lambda t: [self.directory], **kw)

    return Env()


def leaver(eid, email, date=TODAY, time="", kind=""):
    return f"{eid},{email},First{eid},Last,boss@contoso.com,{date},{time},{kind}"


def states(env):
    return {r["id"]: r["state"] for r in env.store.terminations()}


