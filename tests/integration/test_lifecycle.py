"""The life of a termination from a real-shaped HR API: future dates, changes, cancellations, rehires.

BambooHR is the sandbox's spec-checked stateful one; the directory is the in-memory one; one
controllable clock drives both, so "becomes due at 17:00 Chicago" is tested exactly.
"""
from __future__ import annotations

import datetime as dt
import json

import pytest

from connector import config
from connector.reconcile import reconcile
from connector.store import Store
from connector.sandbox.bamboohr import BambooHR
from connector.sandbox.web import Sandbox
from tests.fakes.directory import FakeDirectory, FakeOptions
from tests.sandboxes import MODES

SANDBOX_MODES = MODES


class World:
    def __init__(self, hr: BambooHR, tmp_path):
        self.hr = hr
        self.config = config.parse({"tenant": [{
            "id": "contoso", "timezone": "America/Chicago",
            "source": [{"type": "bamboohr", "base_url": hr.url, "api_key": "env:CONTOSO_BAMBOOHR_KEY"}],
            "provider": [{"type": "fake", "name": "ad"}]}]})
        self.store = Store.open(str(tmp_path / "state.db"))
        self.directory = FakeDirectory("ad", FakeOptions(), self.config.tenants[0], accounts={
            "k": FakeDirectory.account("k", "1042", "kenji.watanabe@contoso.com"),
            "p": FakeDirectory.account("p", "1001", "priya.natarajan@contoso.com")})
        self.kenji = hr.hire("1042", "kenji.watanabe@contoso.com", "Kenji", "Watanabe",
                             supervisor_email="priya.natarajan@contoso.com")
        hr.hire("1001", "priya.natarajan@contoso.com", "Priya", "Natarajan")

    def at(self, when: dt.datetime, **kw):
        self.hr.now = when                      # HR's "today" and the engine's clock move together
        return reconcile(self.config, self.store, now=when, providers=lambda t: [self.directory], **kw)

    def state(self) -> str:
        return self.store.termination("contoso/1042")["state"]


@pytest.fixture
def world(tmp_path, monkeypatch, reach):
    monkeypatch.setattr("time.sleep", lambda seconds: None)     # retry waits are not the subject here
    hr = BambooHR()
    monkeypatch.setenv("CONTOSO_BAMBOOHR_KEY", hr.api_key)
    hr.url = reach(Sandbox(hr), {"bamboohr": hr.vendor_url})["bamboohr"]
    return World(hr, tmp_path)


def chicago(y, m, d, hh, mm=0) -> dt.datetime:
    from zoneinfo import ZoneInfo
    return dt.datetime(y, m, d, hh, mm, tzinfo=ZoneInfo("America/Chicago")).astimezone(dt.timezone.utc)


def test_a_future_dated_termination_becomes_due_at_revoke_at_local_time(world):
    world.hr.now = chicago(2026, 3, 2, 9)
    world.hr.terminate(world.kenji, on=dt.date(2026, 3, 5))
    assert world.at(chicago(2026, 3, 2, 10)).exit_code == 0
    assert world.state() == "scheduled"
    world.at(chicago(2026, 3, 5, 16, 59))
    assert world.state() == "scheduled" and world.directory.writes == []
    world.at(chicago(2026, 3, 5, 17, 0))
    assert world.state() == "done"
    assert world.directory.accounts["k"]["enabled"] is False


def test_a_changed_date_reschedules(world):
    world.hr.now = chicago(2026, 3, 2, 9)
    world.hr.terminate(world.kenji, on=dt.date(2026, 3, 5))
    world.at(chicago(2026, 3, 2, 10))
    world.hr.change_termination_date(world.kenji, on=dt.date(2026, 3, 9))
    world.at(chicago(2026, 3, 3, 10))
    assert world.store.termination("contoso/1042")["due_at"] == "2026-03-09T22:00:00+00:00"   # CDT since 03-08
    world.at(chicago(2026, 3, 5, 18))
    assert world.state() == "scheduled" and world.directory.writes == []
    changes = [a for a in world.store.audit_trail("contoso/1042") if a["event"] == "termination_changed"]
    assert len(changes) == 1


def test_a_termination_withdrawn_before_it_is_due_is_cancelled(world):
    world.hr.now = chicago(2026, 3, 2, 9)
    world.hr.terminate(world.kenji, on=dt.date(2026, 3, 5))
    world.at(chicago(2026, 3, 2, 10))
    world.hr.cancel_termination(world.kenji)
    world.at(chicago(2026, 3, 3, 10))
    assert world.state() == "cancelled"
    world.at(chicago(2026, 3, 6, 10))
    assert world.state() == "cancelled" and world.directory.writes == []


def test_a_rehire_after_offboarding_needs_a_human_with_what_to_restore(world, capsys):
    world.hr.now = chicago(2026, 3, 2, 9)
    world.hr.terminate(world.kenji, on=dt.date(2026, 3, 2))
    world.at(chicago(2026, 3, 2, 18))
    assert world.state() == "done"
    world.hr.rehire(world.kenji, on=dt.date(2026, 3, 20))
    report = world.at(chicago(2026, 3, 20, 9))
    assert world.state() == "needs_human" and report.exit_code == 2
    rehired = [a for a in world.store.audit_trail("contoso/1042") if a["event"] == "termination_rehired"][0]
    restore = json.loads(rehired["data"])["restore"]
    assert restore["ad/disable_account"] is True            # it was enabled before
    assert restore["ad/remove_groups"] == ["staff"]          # and in these groups
    assert world.directory.accounts["k"]["enabled"] is False  # nothing is undone automatically


def test_full_and_cursor_reads_agree_and_a_failing_feed_changes_nothing(world, tmp_path):
    world.hr.now = chicago(2026, 3, 2, 9)
    world.hr.terminate(world.kenji, on=dt.date(2026, 3, 5))
    world.at(chicago(2026, 3, 2, 10))
    assert world.store.cursor("contoso/bamboohr")           # later passes read from the cursor
    priya = next(e.id for e in world.hr.employees.values() if e.number == "1001")
    world.hr.now = chicago(2026, 3, 2, 10, 30)
    world.hr.terminate(priya, on=dt.date(2026, 3, 6))
    world.hr.terminate(world.kenji, on=dt.date(2026, 3, 9))     # a changed date
    cursor_pass = world.at(chicago(2026, 3, 2, 11))            # from the cursor
    assert cursor_pass.exit_code == 0
    by_cursor = {r["id"]: (r["state"], r["due_at"]) for r in world.store.terminations()}
    fresh = World.__new__(World)
    fresh.hr, fresh.config, fresh.directory = world.hr, world.config, world.directory
    fresh.store = Store.open(str(tmp_path / "full.db"))
    fresh.at(chicago(2026, 3, 2, 11), full=True)                # the same day read whole into an empty store
    assert {r["id"]: (r["state"], r["due_at"]) for r in fresh.store.terminations()} == by_cursor
    assert by_cursor == {"contoso/1042": ("scheduled", "2026-03-09T22:00:00+00:00"),   # after the DST change
                         "contoso/1001": ("scheduled", "2026-03-06T23:00:00+00:00")}
    for _ in range(4):
        world.hr.queue(503, "upstream down")
    report = world.at(chicago(2026, 3, 2, 12), full=True)
    assert report.exit_code == 2 and report.source_errors
    assert {r["id"]: (r["state"], r["due_at"]) for r in world.store.terminations()} == by_cursor
    full = world.at(chicago(2026, 3, 2, 13), full=True)
    assert full.exit_code == 0 and world.state() == "scheduled"


def test_old_leavers_on_the_first_full_read_are_not_a_mass_termination(world):
    for n in range(30):
        eid = world.hr.hire(f"9{n:03d}", f"old{n}@contoso.com", "Old", f"Leaver{n}", on=dt.date(2020, 1, 1))
        world.hr.terminate(eid, on=dt.date(2024, 1, 1))
    world.hr.now = chicago(2026, 3, 2, 9)
    report = world.at(chicago(2026, 3, 2, 10))
    assert report.exit_code == 0 and not report.holds
    assert {r["state"] for r in world.store.terminations()} == {"cancelled"}
    assert all("lookback_days" in r["reason"] for r in world.store.terminations())
