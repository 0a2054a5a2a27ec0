"""Microsoft 365 through the reconcile engine: the ordering rules of DESIGN.md, end to end.

The tenant is the sandbox's stateful Graph/Exchange (every Graph request checked against the
v1.0 schema); the hybrid test adds the real Samba DC for the synced user's AD account.
"""
from __future__ import annotations

import datetime as dt
import itertools

from connector import config
from connector.reconcile import reconcile
from connector.sandbox import company
from connector.store import Store
from tests.sandboxes import BLOCK_GROUP, GB, MODES, SECRET, SECRET_ENV, add_leaver, batches_sent

SANDBOX_MODES = MODES
HYBRID = itertools.count(5, 100)          # one AD account per test run: the DC lives for the whole session
from tests.integration.conftest import secret_file

NOW = dt.datetime(2026, 11, 23, 18, 0, tzinfo=dt.timezone.utc)


def tenant_config(cloud, ad_block: dict | None = None, mailbox: str = "shared", block_group: str = "") -> config.Config:
    block = cloud.provider_block(f"env:{SECRET_ENV}")
    providers = ([ad_block] if ad_block else []) + [{"type": "entra", **block}, {"type": "exchange_online", **block}]
    return config.parse({"tenant": [{"id": "contoso", "name": "Contoso Ltd", "provider": providers, "policy": {
        "mailbox": mailbox, "mailbox_delegate": "manager", "forward_to": "none", "hide_from_gal": True,
        "auto_reply": "{first_name} has left {company}. Please contact {manager_email}.",
        "block_group": block_group}}]})


def run(cfg, store, termination, now=NOW):
    return reconcile(cfg, store, on_demand=[termination], now=now)


def actions(store, termination) -> dict[str, str]:
    return {f"{a['provider']}/{a['action']}": a["status"] for a in store.actions(f"contoso/{termination.employee_id}")}


def test_cloud_leaver_is_revoked_preserved_then_unlicensed_once_the_mailbox_is_shared(m365):
    leaver = add_leaver(m365, 1)
    m365.mailboxes[leaver.email.lower()].conversion_reads = 2     # the conversion finishes on a later read
    cfg, store = tenant_config(m365), Store.memory()
    first = run(cfg, store, leaver)
    assert first.exit_code == 2                 # the licence is still waiting: not converged
    state = m365.snapshot(leaver.email)
    assert state["accountEnabled"] is False and state["mailbox"]["hidden"] is True
    assert state["licences"], "the licence went before the mailbox read back as shared"
    journal = actions(store, leaver)
    assert journal["entra/revoke_sessions"] == "changed" and journal["exchange_online/convert_mailbox_to_shared"] == "changed"
    assert journal["entra/remove_licenses"] == "pending"
    assert store.termination("contoso/E1")["state"] == "in_progress"

    later = run(cfg, store, leaver, now=NOW + dt.timedelta(minutes=10))
    assert later.exit_code == 0
    state = m365.snapshot(leaver.email)
    assert state["mailbox"]["type"] == "SharedMailbox" and state["licences"] == []
    assert store.termination("contoso/E1")["state"] == "done"

    changes = [a for a in store.audit_trail("contoso/E1") if a["event"] == "action_changed"]
    run(cfg, store, leaver, now=NOW + dt.timedelta(minutes=20))      # a ticket asks again: nothing to do
    assert store.termination("contoso/E1")["state"] == "done"
    assert [a for a in store.audit_trail("contoso/E1") if a["event"] == "action_changed"] == changes
    assert m365.snapshot(leaver.email) == state
    dump = store.dump()
    assert SECRET not in dump and "Bearer" not in dump


def test_a_large_mailbox_keeps_its_licence_and_needs_a_human(m365):
    leaver = add_leaver(m365, 2, size=52 * GB)
    cfg, store = tenant_config(m365), Store.memory()
    report = run(cfg, store, leaver, now=NOW)
    report = run(cfg, store, leaver, now=NOW + dt.timedelta(minutes=10))
    assert report.exit_code == 2
    assert actions(store, leaver)["entra/remove_licenses"] == "needs_human"
    assert m365.snapshot(leaver.email)["licences"]
    assert "52 GB" in store.termination("contoso/E2")["reason"]        # the size the fixture gave the mailbox


def test_a_kept_mailbox_keeps_its_licence(m365):
    leaver = add_leaver(m365, 6)
    cfg, store = tenant_config(m365, mailbox="keep"), Store.memory()
    assert run(cfg, store, leaver).exit_code == 2
    assert actions(store, leaver)["entra/remove_licenses"] == "needs_human"
    assert "convert_mailbox_to_shared" not in " ".join(actions(store, leaver))
    state = m365.snapshot(leaver.email)
    assert state["licences"] and state["mailbox"]["type"] == "UserMailbox" and state["accountEnabled"] is False


def test_an_admin_is_never_touched(m365):
    leaver = add_leaver(m365, 3, roles=("Global Administrator",))
    before = m365.snapshot(leaver.email)
    cfg, store = tenant_config(m365), Store.memory()
    assert run(cfg, store, leaver).exit_code == 2
    assert m365.snapshot(leaver.email) == before
    assert store.termination("contoso/E3")["state"] == "needs_human"


def test_a_refused_permission_stops_that_provider_only(m365):
    leaver = add_leaver(m365, 4)
    m365.graph.denied.append(("POST", r"/users/[^/]+/revokeSignInSessions", "User.RevokeSessions.All"))
    cfg, store = tenant_config(m365), Store.memory()
    report = run(cfg, store, leaver)
    assert report.exit_code == 1
    assert any("User.RevokeSessions.All" in str(e) for e in report.config_errors)
    assert m365.snapshot(leaver.email)["accountEnabled"] is False      # the other revoke actions ran
    assert m365.snapshot(leaver.email)["licences"]                      # later phases waited


def test_a_pass_with_its_leavers_known_proves_the_credentials_by_reading_them(m365, monkeypatch):
    """A webhook's pass skips the separate credential check (its match reads prove the same), a full pass
    checks, and a refused credential still holds every leaver, loudly."""
    checks = lambda: sum(1 for s, m, path in m365.calls if (s, m, path) == ("graph", "GET", "/users"))  # noqa: E731
    cfg, store = tenant_config(m365), Store.memory()
    leaver = add_leaver(m365, 1)
    assert run(cfg, store, leaver).exit_code == 2 and m365.snapshot(leaver.email)["accountEnabled"] is False
    assert checks() == 0 and m365.count("exchange") > 0          # Graph's match and Exchange's domains read instead
    reconcile(cfg, store, now=NOW)
    assert checks() == 2                                          # a full pass: Entra and Exchange Online each checked
    monkeypatch.setenv(SECRET_ENV, "not-the-secret")
    other = add_leaver(m365, 2)
    report = run(cfg, store, other)
    assert report.exit_code == 1 and report.config_errors
    assert all(e.where.startswith("tenant[0].provider[") for e in report.config_errors)
    assert m365.snapshot(other.email)["accountEnabled"] is True
    assert set(actions(store, other).values()) == {"failed"}       # matching failed in both: retried, never done


def hybrid_leaver(m365, samba_dc, ad_admin, tmp_path, n: int):
    """A person with an AD account on the real Samba DC and its synced Entra user; -> (person, leaver, AD block)."""
    person = company.Person(f"hybrid{n}", "Hy", f"Brid{n}", f"E{n}", f"leaver{n}.person@contoso.com",
                            groups=("Sales",))
    company.add_person(ad_admin, person)
    leaver = add_leaver(m365, n, synced=True)
    return person, leaver, company.provider_block(samba_dc, secret_file(tmp_path, "ad", samba_dc.admin_password))


def test_hybrid_user_is_disabled_in_ad_and_signed_out_in_entra(m365, samba_dc, ad_admin, tmp_path):
    person, leaver, ad_block = hybrid_leaver(m365, samba_dc, ad_admin, tmp_path, next(HYBRID))
    cfg, store = tenant_config(m365, ad_block), Store.memory()
    before = m365.snapshot(leaver.email)
    run(cfg, store, leaver, now=dt.datetime.now(dt.timezone.utc))
    journal = actions(store, leaver)
    assert journal["active_directory/disable_account"] == "changed"
    assert journal["active_directory/reset_password"] == "changed"
    assert journal["entra/revoke_sessions"] == "changed"
    assert "entra/block_sign_in" not in journal and "entra/reset_password" not in journal
    after = m365.snapshot(leaver.email)
    assert after["accountEnabled"] == before["accountEnabled"] is True   # the cloud write belongs to AD
    assert after["sessions"] != before["sessions"]
    ad_admin.search(company.BASE_DN, f"(sAMAccountName={person.sam})", attributes=["userAccountControl"])
    assert int(ad_admin.entries[0].userAccountControl.value) & 2


def test_hybrid_user_is_blocked_in_the_cloud_until_sync_carries_the_ad_disable(m365, samba_dc, ad_admin, tmp_path):
    person, leaver, ad_block = hybrid_leaver(m365, samba_dc, ad_admin, tmp_path, next(HYBRID))
    cfg, store = tenant_config(m365, ad_block, block_group=BLOCK_GROUP), Store.memory()
    start = dt.datetime.now(dt.timezone.utc)
    run(cfg, store, leaver, now=start)
    journal = actions(store, leaver)
    assert journal["active_directory/disable_account"] == journal["entra/add_to_block_group"] == "changed"
    assert journal["entra/remove_groups"] == "changed"
    assert journal["entra/remove_from_block_group"] == "pending"       # Entra still reads the account enabled
    row = next(a for a in store.actions(leaver.id) if a["action"] == "remove_from_block_group")
    assert row["next_attempt_at"] and "directory sync" in row["reason"]
    assert BLOCK_GROUP in m365.snapshot(leaver.email)["groups"]       # remove_groups left the block alone
    assert store.termination(leaver.id)["state"] != "done"

    run(cfg, store, leaver, now=start + dt.timedelta(minutes=10))   # no sync yet: still waiting, still blocked
    assert actions(store, leaver)["entra/remove_from_block_group"] == "pending"
    assert BLOCK_GROUP in m365.snapshot(leaver.email)["groups"]

    m365.sync(leaver.email)
    run(cfg, store, leaver, now=start + dt.timedelta(minutes=20))
    assert actions(store, leaver)["entra/remove_from_block_group"] == "changed"
    assert BLOCK_GROUP not in m365.snapshot(leaver.email)["groups"]
    assert store.termination(leaver.id)["state"] == "done"


def test_a_pass_read_ahead_re_reads_before_its_instant_and_revokes_in_one_round_at_it(m365):
    """The daemon starts a due leaver's pass early: at the instant only the revoke sequence is left to send."""
    leaver = add_leaver(m365, 1)
    user = m365.user_by_upn(leaver.email)["id"]
    sent = batches_sent(m365)
    instant = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5)
    report = reconcile(tenant_config(m365), Store.memory(), on_demand=[leaver], not_before=instant)
    assert report.exit_code == 2 and m365.snapshot(leaver.email)["accountEnabled"] is False    # the licence waits
    writes = [(at, subs) for at, subs in sent if any(s["method"] != "GET" for s in subs)]
    (first_write, revoke), *_ = writes
    assert [s["url"].rsplit("/", 1)[-1] for s in revoke] == [user, user, "revokeSignInSessions"]
    assert instant.timestamp() <= first_write          # nothing written before the instant
    re_read = max(at for at, subs in sent if at < first_write and f"/users/{user}?$select=" in subs[0]["url"])
    assert instant.timestamp() - 1.5 < re_read < instant.timestamp()      # read ahead by REREAD_AHEAD (1 s), not more
