"""The retention purge: finished terminations' personal data is blanked everywhere it was kept, the keyed
audit chain still verifies, the feed cannot bring the data back or revive anyone, and open work is untouched."""
from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlite_utils

import connector.store.sqlite as sqlite_backend
from connector.cli import main
from connector.reconcile import reconcile
from connector.retention import purge_expired
from connector.store import GENESIS, PURGED, Store
from connector.store.base import audit_hash
from tests.fakes.directory import FakeDirectory, FakeOptions
from tests.helpers import load, utc, write_config, write_csv
from tests.unit.conftest import NOW, leaver

KEY = b"audit-key-for-retention-tests"
PERSONAL = ("ann@contoso.com", "FirstE1", "bob@contoso.com", "FirstE2")    # E3, still open, has the same manager


@pytest.fixture
def world(tmp_path, backing):
    class World:
        config_path = write_config(tmp_path, top="retention_days = 30")
        config = load(config_path)
        store = backing.open(audit_key=KEY)
        directory = FakeDirectory("ad", FakeOptions(), config.tenants[0], accounts={
            "u1": FakeDirectory.account("u1", "E1", "ann@contoso.com"),
            "u2": FakeDirectory.account("u2", "E2", "bob@contoso.com"),
            "u3": FakeDirectory.account("u3", "E3", "cat@contoso.com")})

        def feed(self, *rows):
            write_csv(tmp_path / "hr", "feed.csv", list(rows))

        def run(self):
            return reconcile(self.config, self.store, now=NOW, providers=lambda t: [self.directory])

    return World()


def finished(world):
    """E1 done, E2 cancelled (gone from the feed before it was due), E3 still scheduled."""
    world.feed(leaver("E1", "ann@contoso.com", kind="immediate"), leaver("E2", "bob@contoso.com", date="2026-12-24"),
               leaver("E3", "cat@contoso.com", date="2026-12-30"))
    world.run()
    world.feed(leaver("E1", "ann@contoso.com", kind="immediate"), leaver("E3", "cat@contoso.com", date="2026-12-30"))
    world.run()
    assert {r["id"]: r["state"] for r in world.store.terminations()} == \
        {"contoso/E1": "done", "contoso/E2": "cancelled", "contoso/E3": "scheduled"}


def test_nothing_is_purged_before_the_retention_has_passed(world):
    finished(world)
    result = purge_expired(world.config, world.store, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=29))
    assert result == {"purged": {}, "audit_rows_kept": 0, "run_summaries_purged": 0}
    assert "ann@contoso.com" in world.store.dump()


def test_purge_blanks_personal_data_and_the_keyed_chain_still_verifies(world):
    finished(world)
    assert all(p in world.store.dump() for p in PERSONAL)          # the test data is really there first
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=31)
    result = purge_expired(world.config, world.store, now=later)
    assert result == {"purged": {"contoso": ["contoso/E1", "contoso/E2"]}, "audit_rows_kept": 0,
                      "run_summaries_purged": 2}
    dump = world.store.dump()
    assert not [p for p in PERSONAL if p in dump], "personal data survived the purge"
    assert "cat@contoso.com" in dump                                # E3 is still open: untouched
    assert world.store.verify_audit()[0:2] == (True, "")
    e1 = world.store.termination("contoso/E1")
    assert (e1["state"], e1["employee_id"], e1["email"], e1["first_name"], e1["manager_email"]) == ("done", "E1", "", "", "")
    assert world.store.termination("contoso/E2")["manager_email"] == ""
    assert e1["purged_at"] and all(a["before"] == "null" and a["after"] == "null" for a in world.store.actions(e1["id"]))
    trail = world.store.audit_trail("contoso/E1")
    assert [r["data"] for r in trail[:-1]] == [PURGED] * (len(trail) - 1)
    assert trail[-1]["event"] == "termination_purged" and "action_changed" in [r["event"] for r in trail]
    assert purge_expired(world.config, world.store, now=later) == {"purged": {}, "audit_rows_kept": 0, "run_summaries_purged": 0}


def test_run_summaries_past_the_retention_keep_their_counts_not_their_text(world):
    world.feed(leaver("E1", "ann@contoso.com", kind="immediate"), "E9,zed@@contoso,Zed,Zedson,boss@contoso.com,someday,,")
    report = world.run()
    assert len(report.rejected) == 1
    [run] = world.store.runs(["done"])
    assert "zed@@contoso" in json.dumps(run["summary"])               # a rejected row names a person
    assert purge_expired(world.config, world.store)["run_summaries_purged"] == 0      # still within the retention
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=31)
    assert purge_expired(world.config, world.store, now=later)["run_summaries_purged"] == 1
    [run] = world.store.runs(["done"])
    assert run["summary"]["rejected"] == ["(purged after retention_days)"] and run["summary"]["purged"] is True
    assert "zed@@contoso" not in world.store.dump()
    assert purge_expired(world.config, world.store, now=later)["run_summaries_purged"] == 0       # once


def test_a_purged_termination_still_in_the_feed_is_neither_revived_nor_refilled(world):
    finished(world)
    purge_expired(world.config, world.store, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=31))
    world.feed(leaver("E1", "ann@contoso.com", kind="immediate"), leaver("E2", "bob@contoso.com", date="2026-12-24"),
               leaver("E3", "cat@contoso.com", date="2026-12-30"))
    writes = list(world.directory.writes)
    report = world.run()
    assert report.exit_code == 0 and world.directory.writes == writes
    assert {r["id"]: (r["state"], r["email"]) for r in world.store.terminations()} == {
        "contoso/E1": ("done", ""), "contoso/E2": ("cancelled", ""), "contoso/E3": ("scheduled", "cat@contoso.com")}


def test_a_tenant_that_deletes_later_keeps_its_done_leavers_until_they_are_deleted(world, tmp_path):
    finished(world)
    world.config = load(write_config(tmp_path, top="retention_days = 30", tenant_extra="[tenant.policy]\n"
                                                                                       "delete_after_days = 90\n"))
    result = purge_expired(world.config, world.store, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=31))
    assert result["purged"] == {"contoso": ["contoso/E2"]}
    assert world.store.termination("contoso/E1")["email"] == "ann@contoso.com"


def test_the_audit_log_allows_only_the_purge_edit_and_the_chain_catches_any_other(world, backing):
    finished(world)
    with pytest.raises(backing.refusal, match="append-only"):
        backing.raw("update audit set data = '{}' where seq = 2")
    with pytest.raises(backing.refusal, match="append-only"):
        backing.raw(f"update audit set data = '{PURGED}', event = 'x' where seq = 2")
    backing.raw(f"update audit set data = '{PURGED}' where seq = 2")      # the purge's one edit is allowed
    backing.drop_audit_guard()
    backing.raw("""update audit set data = '{"source":"forged"}' where seq = 2""")
    ok, problem, _ = world.store.verify_audit()
    assert not ok and "row 2 was edited" in problem


def test_rows_written_before_purging_existed_keep_their_data_and_still_verify(tmp_path):
    path = str(tmp_path / "old.db")
    db = sqlite_utils.Database(path)
    for migration in sqlite_backend.MIGRATIONS[:3]:
        migration(db)
    row = {"seq": 1, "at": "2026-01-01T00:00:00+00:00", "run_id": "r0", "termination_id": "contoso/E7",
           "event": "termination_seen", "data": '{"email":"old@contoso.com"}', "prev_hash": GENESIS}
    db["audit"].insert({**row, "hash": audit_hash(row)})
    db["terminations"].insert({"id": "contoso/E7", "tenant": "contoso", "employee_id": "E7", "state": "done",
                               "email": "old@contoso.com", "finished_at": "2026-01-02T00:00:00+00:00"})
    db.execute("PRAGMA user_version=3")
    db.close()
    store = Store.open(path)
    store.audit("termination_changed", "contoso/E7", "r1", changes={"email": "old@contoso.com"})
    ids, kept = store.purge("contoso", utc(2026, 6, 1), ["done"])
    assert (ids, kept) == (["contoso/E7"], 1)
    assert [json.loads(r["data"]) for r in store.audit_trail("contoso/E7")][:2] == \
        [{"email": "old@contoso.com"}, {"purged": True}]
    assert store.verify_audit() == (True, "", 3)
    assert store.termination("contoso/E7")["email"] == ""


def test_offboard_purge_needs_a_retention_and_dry_run_writes_nothing(tmp_path, capsys):
    keep = write_config(tmp_path)
    assert main(["--config", str(keep), "purge"]) == 1
    assert "connector.retention_days: retention_days is 0" in capsys.readouterr().err
    purging = write_config(tmp_path, top="retention_days = 1")
    assert main(["--config", str(purging), "purge", "--dry-run"]) == 0
    assert "would purge the personal data of 0 termination(s)" in capsys.readouterr().out
    assert not (tmp_path / "state.db").exists()
    assert main(["--config", str(purging), "--json", "purge"]) == 0
    assert json.loads(capsys.readouterr().out)["purged"] == {}
