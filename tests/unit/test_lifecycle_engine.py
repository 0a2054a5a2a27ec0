"""The life of a leaver around offboarding, through the engine: notice period, retention, restore.

The directory is the in-memory one with the three lifecycle additions a real provider has:
a restrict action, a retain action with what the account still anchors, and an undo for
each action; one frozen clock drives the engine, so instants are asserted exactly.
"""
from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

import pytest

from connector.reconcile import reconcile
from connector.reconcile.restore import restore
from connector.reconcile.schedule import next_wakeup
from connector.store import Store
from tests.fakes.directory import FakeDirectory, FakeOptions
from tests.helpers import load, utc, write_config, write_csv
from tests.unit.conftest import leaver

CHICAGO = ZoneInfo("America/Chicago")


class LifecycleDirectory(FakeDirectory):
    actions = {"restrict_groups": "restrict", **FakeDirectory.actions, "delete_account": "retain",
               "undelete_account": "restore", "restore_groups": "restore", "convert_mailbox_back": "restore",
               "issue_password": "restore", "enable_account": "restore"}
    undo = {"restrict_groups": "restore_groups", "disable_account": "enable_account",
            "reset_password": "issue_password", "convert_mailbox": "convert_mailbox_back",
            "remove_groups": "restore_groups", "delete_account": "undelete_account"}

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.anchored: dict[str, list[str]] = {}      # account -> what it still anchors

    def restricted(self, groups):
        policy = self.tenant.policy
        kept = [g for g in groups if not policy.restricts_group(g)]
        return kept + [g for g in policy.restrict_add_groups if g not in kept]

    def plan(self, subject, t):
        s, policy = subject.state, self.tenant.policy
        wanted = []
        if policy.restrict_days_before and self.restricted(s["groups"]) != s["groups"]:
            wanted.append(self.planned("restrict_groups"))
        wanted += super().plan(subject, t)
        if policy.delete_after_days and not s.get("deleted"):
            wanted.append(self.planned("delete_account"))
        return wanted

    def anchors(self, subject, termination):
        return self.anchored.get(subject.native_id, [])

    def match(self, t):
        found = super().match(t)
        if found.subject and found.subject.state.get("deleted"):
            return type(found)("not_found")
        return found

    def restrict_groups(self, action, ctx):
        account = self.accounts[ctx.subject.native_id]
        return self._write(action.action, account, "groups", self.restricted(account["groups"]), ctx)

    def delete_account(self, action, ctx):
        return self._write(action.action, self.accounts[ctx.subject.native_id], "deleted", True, ctx)

    def undelete_account(self, action, ctx):
        return self._write(action.action, self.accounts[ctx.subject.native_id], "deleted", False, ctx)

    def restore_groups(self, action, ctx):
        original, before = self.undone(action)
        account = self.accounts[ctx.subject.native_id]
        added = self.tenant.policy.restrict_add_groups
        if original != "restrict_groups":           # what the notice period added is its own undo's to handle
            before = [g for g in before if g not in added]
        wanted = [g for g in account["groups"] if g in before or g not in added] + \
                 [g for g in before if g not in account["groups"]]
        return self._write(action.action, account, "groups", wanted, ctx)

    def convert_mailbox_back(self, action, ctx):
        _, before = self.undone(action)
        return self._write(action.action, self.accounts[ctx.subject.native_id], "mailbox", before, ctx)

    def enable_account(self, action, ctx):
        _, before = self.undone(action)
        return self._write(action.action, self.accounts[ctx.subject.native_id], "enabled", before, ctx)

    def issue_password(self, action, ctx):
        account = self.accounts[ctx.subject.native_id]
        if ctx.since and account["pwd_set"] >= ctx.since:
            return self.outcome("issued", "issued", ctx.dry_run)
        result = self._write(action.action, account, "pwd_set", dt.datetime.now(dt.timezone.utc), ctx)
        if result.outcome == "changed":
            ctx.show_once("ann@contoso.com: new password Xy-12345-secret")
        return result


POLICY = """
[tenant.policy]
restrict_days_before = 3
restrict_remove_groups = ["fin*"]
restrict_add_groups = ["ca-office-only"]
delete_after_days = 30
"""


@pytest.fixture
def life(tmp_path):
    class Life:
        config = load(write_config(tmp_path, tenant_extra=POLICY))
        store = Store.open(str(tmp_path / "state.db"))
        directory = LifecycleDirectory("ad", FakeOptions(), config.tenants[0], accounts={
            "u1": {**FakeDirectory.account("u1", "E1", "ann@contoso.com", groups=("staff", "finance")),
                   "deleted": False}})

        def csv(self, *rows):
            write_csv(tmp_path / "hr", "feed.csv", list(rows))

        def at(self, when):
            return reconcile(self.config, self.store, now=when, providers=lambda t: [self.directory])

        def restore(self, **kw):
            return restore(self.config, self.store, "contoso/E1", providers=lambda t: [self.directory], **kw)

        def state(self):
            return self.store.termination("contoso/E1")["state"]

        def wrote(self):
            return [a for _, a in self.directory.writes]

        @property
        def account(self):
            return self.directory.accounts["u1"]

    return Life()


def local(y, m, d, hh, mm=0):
    return dt.datetime(y, m, d, hh, mm, tzinfo=CHICAGO).astimezone(dt.timezone.utc)


@pytest.mark.parametrize("due_day, restrict_day, utc_hours", [
    (dt.date(2026, 3, 10), dt.date(2026, 3, 7), (23, 22)),     # restricted in CST, due in CDT (DST starts 03-08)
    (dt.date(2026, 11, 3), dt.date(2026, 10, 31), (22, 23)),   # restricted in CDT, due in CST (DST ends 11-01)
])
def test_a_notice_period_restricts_at_due_minus_n_days_and_revokes_at_the_due_instant_across_dst(
        life, due_day, restrict_day, utc_hours):
    life.csv(leaver("E1", "ann@contoso.com", date=due_day.isoformat()))
    y, m, d = restrict_day.year, restrict_day.month, restrict_day.day
    life.at(local(y, m, d - 2, 9))
    assert life.state() == "scheduled" and life.wrote() == []
    start = local(y, m, d, 17)                  # 17:00 local on both sides of the change: the UTC hour moves
    assert start.hour == utc_hours[0]
    assert next_wakeup(life.config, life.store, local(y, m, d - 2, 9)) == start
    life.at(start - dt.timedelta(minutes=1))
    assert life.state() == "scheduled" and life.wrote() == []

    assert life.at(start).exit_code == 0
    assert life.state() == "restricted"
    assert life.wrote() == ["restrict_groups"]
    assert life.account["groups"] == ["staff", "ca-office-only"] and life.account["enabled"] is True
    due = local(due_day.year, due_day.month, due_day.day, 17)
    assert due.hour == utc_hours[1]
    assert next_wakeup(life.config, life.store, start) == due

    life.at(due - dt.timedelta(minutes=1))
    assert life.state() == "restricted" and life.wrote() == ["restrict_groups"]
    assert life.at(due).exit_code == 0
    assert life.state() == "done"
    assert life.wrote() == ["restrict_groups", "disable_account", "reset_password", "convert_mailbox",
                            "remove_groups"]
    assert next_wakeup(life.config, life.store, due) == local(due_day.year, due_day.month, due_day.day, 17) \
        + (local(2026, 12, 3, 17) - local(2026, 11, 3, 17) if due_day.month == 11 else
           local(2026, 4, 9, 17) - local(2026, 3, 10, 17))          # 30 days later, 17:00 local


def test_a_changed_or_withdrawn_date_during_the_notice_period_undoes_nothing_and_is_reported(life):
    life.csv(leaver("E1", "ann@contoso.com", date="2026-03-10"))
    life.at(local(2026, 3, 7, 18))
    assert life.state() == "restricted"
    life.csv(leaver("E1", "ann@contoso.com", date="2026-03-20"))
    life.at(local(2026, 3, 8, 9))
    row = life.store.termination("contoso/E1")
    assert row["state"] == "restricted" and "the restriction stays" in row["reason"]
    assert row["due_at"] == local(2026, 3, 20, 17).isoformat()
    changed = [json.loads(a["data"]) for a in life.store.audit_trail("contoso/E1") if a["event"] == "termination_changed"]
    assert "offboard restore contoso/E1" in changed[-1]["reason"]
    life.at(local(2026, 3, 10, 17))                       # the old due instant: nothing happens
    assert life.wrote() == ["restrict_groups"]

    life.csv(leaver("E2", "bob@contoso.com", date="2026-04-01"))       # E1 withdrawn from a whole read
    life.at(local(2026, 3, 11, 9))
    row = life.store.termination("contoso/E1")
    assert row["state"] == "needs_human" and "offboard restore contoso/E1" in row["reason"]
    assert life.account["groups"] == ["staff", "ca-office-only"]        # nothing undone by itself


def test_retention_waits_without_reopening_done_then_deletes_and_ends_deleted(life):
    life.csv(leaver("E1", "ann@contoso.com", date="2026-03-02"))
    life.at(local(2026, 3, 2, 17))
    assert life.state() == "done"
    writes = life.wrote()
    life.at(local(2026, 4, 1, 16, 59))
    assert life.state() == "done" and life.wrote() == writes
    assert [e["event"] for e in life.store.audit_trail("contoso/E1")].count("termination_done") == 1
    assert life.at(local(2026, 4, 1, 17)).exit_code == 0
    assert life.state() == "deleted" and life.wrote()[-1] == "delete_account"
    assert next_wakeup(life.config, life.store, local(2026, 4, 1, 17)) is None


def test_deletion_is_refused_while_the_account_anchors_something_then_allowed(life):
    life.csv(leaver("E1", "ann@contoso.com", date="2026-03-02"))
    life.at(local(2026, 3, 2, 17))
    life.directory.anchored["u1"] = ["the shared mailbox ann@contoso.com (deleting the user deletes it)"]
    report = life.at(local(2026, 4, 1, 17))
    assert report.exit_code == 2 and life.state() == "needs_human"
    row = life.store.termination("contoso/E1")
    assert "still anchors ad: the shared mailbox ann@contoso.com" in row["reason"]
    assert "delete_account" not in life.wrote()

    plan_store = Store.memory()
    plan_store.upsert_terminations([dict(life.store.termination("contoso/E1"), state="done")])
    [shown] = reconcile(life.config, plan_store, now=local(2026, 4, 1, 18), dry_run=True,
                        providers=lambda t: [life.directory]).rows
    assert [(a["phase"], a["outcome"]) for a in shown["actions"] if a["action"] == "delete_account"] == \
        [("retain", "needs_human")]                     # plan shows the check

    life.directory.anchored.clear()
    life.store.reopen("contoso/E1")                     # `offboard retry` once the mailbox was migrated
    life.at(local(2026, 4, 2, 9))                       # the offboarding is read back whole first: done
    assert life.state() == "done" and "delete_account" not in life.wrote()
    assert life.at(local(2026, 4, 2, 9, 5)).exit_code == 0
    assert life.state() == "deleted" and life.account["deleted"] is True


def test_a_full_restore_after_a_full_life_leaves_the_account_as_it_was_and_a_second_changes_nothing(life):
    untouched = dict(life.account)
    life.csv(leaver("E1", "ann@contoso.com", date="2026-03-10"))
    for when in (local(2026, 3, 7, 17), local(2026, 3, 10, 17), local(2026, 4, 9, 17)):
        life.at(when)
    assert life.state() == "deleted" and life.account["deleted"] is True

    dry = life.restore(dry_run=True)
    assert {s["outcome"] for s in dry.steps} == {"planned"} and life.account["deleted"] is True
    result = life.restore()
    assert result.state == "restored" and result.exit_code == 0
    assert [s["action"] for s in result.steps] == ["undelete_account", "restore_groups", "convert_mailbox_back",
                                                   "issue_password", "enable_account", "restore_groups"]
    assert {k: v for k, v in life.account.items() if k != "pwd_set"} == \
        {k: v for k, v in untouched.items() if k != "pwd_set"}
    assert result.shown == ["ann@contoso.com: new password Xy-12345-secret"]
    assert "Xy-12345-secret" not in life.store.dump()

    writes = life.wrote()
    again = life.restore()
    assert [s for s in again.steps if s["outcome"] != "unchanged"] == [] and life.wrote() == writes
    assert again.shown == [] and life.state() == "restored"

    life.csv(leaver("E1", "ann@contoso.com", date="2026-03-10"))
    life.at(local(2026, 5, 1, 9))                       # the old record still in the feed: nothing reopens
    assert life.state() == "restored" and life.wrote() == writes


def test_an_action_without_undo_is_named_and_the_restore_needs_a_human(life):
    life.directory.undo = {k: v for k, v in LifecycleDirectory.undo.items() if k != "convert_mailbox"}
    life.csv(leaver("E1", "ann@contoso.com", date="2026-03-02"))
    life.at(local(2026, 3, 2, 17))
    result = life.restore()
    assert result.state == "needs_human" and result.exit_code == 2
    [step] = [s for s in result.steps if s["undoes"] == "convert_mailbox"]
    assert step["outcome"] == "needs_human" and "ad/convert_mailbox cannot be undone" in step["reason"]
    assert "ad/undo_convert_mailbox" in life.store.termination("contoso/E1")["reason"]
    assert life.account["enabled"] is True               # the rest was put back


def test_a_rehire_says_restore_will_give_the_access_back(life):
    life.csv(leaver("E1", "ann@contoso.com", date="2026-03-02"))
    life.at(local(2026, 3, 2, 17))
    life.csv("E1,ann@contoso.com,FirstE1,Last,boss@contoso.com,2026-03-02,,")
    from connector.model import Termination
    from connector.reconcile.intake import Intake, record
    feed = life.store.termination("contoso/E1")["source"]
    record(life.config.tenants[0], life.store, [Termination("contoso", "E1", "ann@contoso.com", active=True,
                                                            termination_date=dt.date(2026, 3, 2), source=feed)],
           local(2026, 3, 20, 9), "r1", Intake())
    row = life.store.termination("contoso/E1")
    assert row["state"] == "needs_human" and "`offboard restore contoso/E1` gives the access back" in row["reason"]


def test_a_feed_that_says_active_withdraws_only_what_it_reported(life):
    """BambooHR reports everyone not terminated as active: that says nothing of a leaver a ticket reported."""
    from connector.model import Termination
    from connector.reconcile.intake import Intake, record
    tenant, now = life.config.tenants[0], local(2026, 3, 1, 9)
    ticket = Termination("contoso", "E2", "bo@contoso.com", termination_date=dt.date(2026, 3, 2), source="webhook")
    record(tenant, life.store, [ticket], now, "r1", Intake())
    record(tenant, life.store, [Termination("contoso", "E2", "bo@contoso.com", active=True, source="bamboohr")],
           now, "r2", Intake())
    assert life.store.termination("contoso/E2")["state"] == "scheduled"           # kept
    [kept] = [e for e in life.store.audit_trail("contoso/E2") if e["event"] == "termination_kept"]
    assert "bamboohr reports this person active" in json.dumps(kept)
    record(tenant, life.store, [Termination("contoso", "E2", "bo@contoso.com", active=True, source="webhook")],
           now, "r3", Intake())
    assert life.store.termination("contoso/E2")["state"] == "cancelled"           # the source that reported it


def test_next_wakeup_names_a_retry_instant(life):
    from connector.errors import RetryableError
    life.csv(leaver("E1", "ann@contoso.com", date="2026-03-02"))
    life.directory.fail["disable_account"] = RetryableError("DC busy", delay=120)
    life.at(local(2026, 3, 2, 17))
    assert next_wakeup(life.config, life.store, local(2026, 3, 2, 17)) == local(2026, 3, 2, 17, 2)
    assert utc(2026, 3, 2, 23, 2) == local(2026, 3, 2, 17, 2)


def test_leaving_again_after_a_restore_starts_a_new_termination_and_the_old_one_stays_addressable(life):
    life.csv(leaver("E1", "ann@contoso.com", date="2026-03-02"))
    life.at(local(2026, 3, 2, 17))
    life.restore()
    assert life.account["enabled"] is True
    writes = len(life.wrote())
    life.csv(leaver("E1", "ann@contoso.com", date="2026-09-30"))
    life.at(local(2026, 9, 1, 9))
    old = life.store.termination("contoso/E1#1")
    assert old["state"] == "restored" and old["termination_date"] == "2026-03-02"
    assert {a["termination_id"] for a in life.store.actions("contoso/E1#1")} == {"contoso/E1#1"}
    assert any(a["id"] == "contoso/E1#1/ad/undo_disable_account" for a in life.store.actions("contoso/E1#1"))
    assert life.state() == "scheduled" and life.store.actions("contoso/E1") == []
    life.at(local(2026, 9, 30, 17))
    assert life.state() == "done" and life.account["enabled"] is False
    assert len(life.wrote()) > writes                   # offboarded again, not read back from the old journal
