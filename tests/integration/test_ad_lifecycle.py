"""The AD provider's notice period, retention and restore against the real Samba DC, alone and through the engine."""
from __future__ import annotations

import datetime as dt

import pytest
from ldap3.core.exceptions import LDAPEntryAlreadyExistsResult

from connector import config
from connector.errors import NeedsHuman
from connector.reconcile import reconcile
from connector.reconcile.restore import restore
from connector.sandbox import company
from connector.store import Store
from tests.contract.provider_contract import ProviderContract, run_action, run_undo

from .conftest import TENANT, termination
from .test_active_directory import can_bind, group_members, read_user

pytestmark = pytest.mark.samba
DELETED_OU = f"OU=Deleted,{company.BASE_DN}"
RESTRICTED = "Restricted-Access"          # the group a leaver joins for the notice period
POLICY = {"restrict_days_before": 5, "restrict_remove_groups": ["sal*"], "restrict_add_groups": [RESTRICTED],
          "delete_after_days": 30}


@pytest.fixture(scope="session")
def lifecycle_dc(ad_admin):
    for dn, kind, attributes in ((DELETED_OU, "organizationalUnit", None),
                                 (company.group_dn(RESTRICTED), "group", {"sAMAccountName": RESTRICTED})):
        try:
            ad_admin.add(dn, kind, attributes)
        except LDAPEntryAlreadyExistsResult:
            pass
    return ad_admin


def account(conn, t) -> dict:
    """The account as AD holds it (memberOf in any order), without the password's stamp a restore renews."""
    user = read_user(conn, t.employee_id)
    return {**{k: v for k, v in user.items() if k != "pwdLastSet"}, "memberOf": sorted(user["memberOf"])}


@pytest.fixture
def snapshot(ad_admin):
    def snap(t):
        return {"user": read_user(ad_admin, t.employee_id), "groups": group_members(ad_admin)}
    return snap


class TestRestrictAndRetainContract(ProviderContract):
    action_names = ["restrict_groups", "delete_account"]

    @pytest.fixture
    def provider(self, make_ad_provider, lifecycle_dc):
        return make_ad_provider(policy=POLICY, deleted_ou=DELETED_OU)

    @pytest.fixture
    def leaver(self, ad_leaver):
        return termination(ad_leaver)

    @pytest.fixture
    def secrets(self, samba_dc):
        return [samba_dc.admin_password, company.PASSWORD]


def test_restrict_leaves_the_globbed_groups_and_joins_the_added_one(make_ad_provider, lifecycle_dc, ad_leaver, ad_admin):
    provider = make_ad_provider(policy=POLICY)
    result = run_action(provider, termination(ad_leaver), "restrict_groups")
    assert result.outcome == "changed"
    groups = sorted(read_user(ad_admin, ad_leaver.employee_id)["memberOf"])
    assert groups == sorted([company.group_dn("Engineering"), company.group_dn(RESTRICTED)])
    assert int(read_user(ad_admin, ad_leaver.employee_id)["userAccountControl"][0]) & 2 == 0   # still works


def test_a_deleted_account_says_whether_the_recycle_bin_can_bring_it_back(make_ad_provider, lifecycle_dc,
                                                                          ad_leaver, ad_admin):
    provider = make_ad_provider(policy={"delete_after_days": 30})
    t = termination(ad_leaver)
    provider.prepare([t])
    subject = provider.match(t).subject
    result = run_action(provider, t, "delete_account")
    assert result.outcome == "changed" and "AD Recycle Bin is" in result.reason
    ad_admin.search(company.BASE_DN, f"(employeeID={ad_leaver.employee_id})")
    assert ad_admin.entries == []
    with pytest.raises(NeedsHuman, match="Recycle Bin"):
        run_undo(provider, t, subject, "delete_account", result.before)


def test_a_full_life_in_ad_then_a_restore_leaves_the_account_as_it_was(make_ad_provider, lifecycle_dc, samba_dc,
                                                                      ad_leaver, ad_admin, bind_password_ref):
    block = {**company.provider_block(samba_dc, bind_password_ref), "deleted_ou": DELETED_OU}
    cfg = config.parse({"tenant": [{"id": TENANT, "policy": POLICY, "provider": [block]}]})
    store, t = Store.memory(), termination(ad_leaver)
    assert can_bind(samba_dc, ad_leaver)                 # warm-up bind: it changes the user's uSNChanged
    untouched = {"user": account(ad_admin, t), "groups": group_members(ad_admin)}
    due = dt.datetime(2026, 11, 20, 17, tzinfo=dt.timezone.utc)

    reconcile(cfg, store, on_demand=[t], now=due - dt.timedelta(days=4))
    assert store.termination(t.id)["state"] == "restricted"
    reconcile(cfg, store, now=due)
    assert store.termination(t.id)["state"] == "done" and not can_bind(samba_dc, ad_leaver)
    reconcile(cfg, store, now=due + dt.timedelta(days=30))
    assert store.termination(t.id)["state"] == "deleted"
    assert read_user(ad_admin, t.employee_id)["dn"].endswith(DELETED_OU)

    before_dry = {"user": read_user(ad_admin, t.employee_id), "groups": group_members(ad_admin)}
    planned = restore(cfg, store, t.id, dry_run=True)
    outcomes = {s["outcome"] for s in planned.steps}         # each step reads what is there now
    assert "planned" in outcomes and outcomes <= {"planned", "unchanged"}
    assert {"user": read_user(ad_admin, t.employee_id), "groups": group_members(ad_admin)} == before_dry

    result = restore(cfg, store, t.id)
    assert result.state == "restored", result.reason
    assert [s["action"] for s in result.steps] == ["undelete_account", "move_back", "restore_description",
                                                   "restore_groups", "issue_password", "enable_account",
                                                   "restore_groups"]
    [shown] = result.shown
    password = shown.rsplit(" ", 1)[-1]
    assert password not in store.dump()
    restored = {"user": account(ad_admin, t), "groups": group_members(ad_admin)}
    assert restored == untouched
    samba_dc.connect(ad_leaver.upn, password).unbind()   # the person signs in with what the operator was shown

    again = restore(cfg, store, t.id)
    assert {s["outcome"] for s in again.steps} == {"unchanged"} and again.shown == []
    assert {"user": account(ad_admin, t), "groups": group_members(ad_admin)} == untouched
