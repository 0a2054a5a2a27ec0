"""Entra and Exchange Online through a leaver's whole life, against the sandbox's Microsoft 365 tenant.

The notice period and the deletion go through the shared contract suite; the engine runs a
full offboarding, a retention blocked by a shared mailbox and then allowed, and restores
that bring the account back as it was (a soft-deleted user first).
"""
from __future__ import annotations

import datetime as dt

import pytest

from connector import config
from connector.reconcile import reconcile
from connector.reconcile.restore import restore
from connector.store import Store
from tests.contract.provider_contract import ProviderContract, run_action
from tests.sandboxes import GROUPS, MODES, SECRET, SECRET_ENV, add_leaver

SANDBOX_MODES = MODES
OFFICE_ONLY = "Office Only"                 # a Conditional Access group: sign-in from the office network only
NOW = dt.datetime(2026, 11, 23, 18, 0, tzinfo=dt.timezone.utc)
POLICY = {"mailbox": "shared", "mailbox_delegate": "manager", "forward_to": "manager", "hide_from_gal": True,
          "auto_reply": "{first_name} has left {company}. Please contact {manager_email}.",
          "restrict_days_before": 14, "restrict_remove_groups": ["project*"], "restrict_add_groups": [OFFICE_ONLY],
          "delete_after_days": 30}
#: what a restore cannot give back as it was: a new password, new sessions, MFA the person registers again,
#: the account-only wipe of the phone (mail comes back when it syncs)
RENEWED = ("password", "sessions", "methods")


@pytest.fixture
def m365_policy(m365):
    m365.add_group(OFFICE_ONLY)
    return POLICY


class TestEntraRestrictAndDeleteContract(ProviderContract):
    action_names = ["restrict_groups", "delete_user"]
    gone_after = ("delete_user",)

    @pytest.fixture
    def provider(self, entra):
        return entra

    @pytest.fixture
    def leaver(self, m365):
        return add_leaver(m365, 1)

    @pytest.fixture
    def snapshot(self, m365):
        return lambda termination: m365.snapshot(termination.email)

    @pytest.fixture
    def secrets(self, m365):
        return [SECRET, *m365.tokens]


def test_restrict_leaves_the_globbed_groups_and_joins_the_added_one(m365, entra):
    leaver = add_leaver(m365, 2)
    assert run_action(entra, leaver, "restrict_groups").outcome == "changed"
    groups = m365.snapshot(leaver.email)["groups"]
    assert "Project X" not in groups and OFFICE_ONLY in groups and "All Staff" in groups
    assert m365.snapshot(leaver.email)["accountEnabled"] is True


def test_hard_delete_purges_the_user_from_deleted_items(m365, m365_tenant, entra):
    leaver = add_leaver(m365, 3)
    m365_tenant.policy = m365_tenant.policy.model_copy(update={"hard_delete": True})
    assert run_action(entra, leaver, "delete_user").after == {"deleted": True, "purged": True}
    assert m365.deleted == {}
    assert m365.count("graph", "DELETE") + m365.count("graph-sub", "DELETE") == 2


def tenant_config(cloud, **policy) -> config.Config:
    block = cloud.provider_block(f"env:{SECRET_ENV}")
    return config.parse({"tenant": [{"id": "contoso", "name": "Contoso Ltd", "policy": {**POLICY, **policy},
                                     "provider": [{"type": "entra", **block}, {"type": "exchange_online", **block}]}]})


def comparable(snapshot: dict) -> dict:
    return {k: v for k, v in snapshot.items() if k not in RENEWED}


def offboard(cfg, store, leaver, now=NOW):
    """Every pass it takes until the offboarding is done (the mailbox conversion needs a second one)."""
    reconcile(cfg, store, on_demand=[leaver], now=now)
    for minutes in (10, 20):
        if store.termination(leaver.id)["state"] == "done":
            break
        reconcile(cfg, store, now=now + dt.timedelta(minutes=minutes))
    assert store.termination(leaver.id)["state"] == "done", store.termination(leaver.id)["reason"]


def test_a_full_restore_after_a_full_offboarding_leaves_the_account_as_it_was(m365):
    m365.add_group(OFFICE_ONLY)
    leaver = add_leaver(m365, 4)
    untouched = m365.snapshot(leaver.email)
    cfg, store = tenant_config(m365, delete_after_days=0), Store.memory()
    offboard(cfg, store, leaver)
    done = m365.snapshot(leaver.email)
    assert done["accountEnabled"] is False and done["licences"] == [] and done["mailbox"]["type"] == "SharedMailbox"

    result = restore(cfg, store, leaver.id, now=NOW + dt.timedelta(days=1))
    assert comparable(m365.snapshot(leaver.email)) == {**comparable(untouched), "mailbox": {
        **untouched["mailbox"], "devices": done["mailbox"]["devices"]}}
    left = [s for s in result.steps if s["outcome"] not in ("changed", "unchanged", "skipped")]
    assert [(s["undoes"], s["outcome"]) for s in left] == [("remove_auth_methods", "needs_human")]
    assert result.state == "needs_human" and "remove_auth_methods cannot be undone" in result.reason
    [shown] = result.shown
    assert "Temporary Access Pass" in shown and shown.split()[-5] not in store.dump()

    restored, writes = m365.snapshot(leaver.email), len(m365.graph.writes.entries())
    again = restore(cfg, store, leaver.id, now=NOW + dt.timedelta(days=1, minutes=5))
    assert [s for s in again.steps if s["outcome"] == "changed"] == [] and again.shown == []
    assert m365.snapshot(leaver.email) == restored
    assert m365.graph.writes.entries()[writes:] == []          # not one write to Graph or Exchange


def test_deletion_is_refused_while_a_shared_mailbox_is_anchored_then_restore_brings_the_user_back(m365):
    leaver = add_leaver(m365, 5)
    m365.add_group(OFFICE_ONLY)
    cfg, store = tenant_config(m365), Store.memory()
    offboard(cfg, store, leaver)

    plan = Store.memory()
    plan.upsert_terminations([store.termination(leaver.id)])
    [shown] = reconcile(cfg, plan, now=NOW + dt.timedelta(hours=1), dry_run=True).rows
    [check] = [a for a in shown["actions"] if a["action"] == "delete_user"]
    assert check["phase"] == "retain" and check["outcome"] == "needs_human"
    assert "shared mailbox" in check["reason"]

    report = reconcile(cfg, store, now=NOW + dt.timedelta(hours=1))
    assert report.exit_code == 2 and store.termination(leaver.id)["state"] == "needs_human"
    assert "exchange_online: the shared mailbox" in store.termination(leaver.id)["reason"]
    assert m365.snapshot(leaver.email)["deleted"] is False

    m365.mailboxes.pop(leaver.email.lower())          # migrated elsewhere: nothing anchored any more
    store.reopen(leaver.id)
    reconcile(cfg, store, now=NOW + dt.timedelta(hours=2))
    assert store.termination(leaver.id)["state"] == "done"
    assert reconcile(cfg, store, now=NOW + dt.timedelta(hours=2, minutes=5)).exit_code == 0
    assert store.termination(leaver.id)["state"] == "deleted"
    assert m365.snapshot(leaver.email)["deleted"] is True

    result = restore(cfg, store, leaver.id, now=NOW + dt.timedelta(days=2))
    assert result.steps[0]["action"] == "undelete_user" and result.steps[0]["outcome"] == "changed"
    back = m365.snapshot(leaver.email)
    assert back["deleted"] is False and back["accountEnabled"] is True
    assert sorted(back["groups"]) == sorted(GROUPS)
