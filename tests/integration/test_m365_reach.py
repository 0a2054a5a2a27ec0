"""Hand-over and "cut what else" in Microsoft 365: owned groups, OneDrive, consents, Intune, inbox rules,
rights on shared mailboxes and meetings, each three times through the contract, each undo three times, and
the sole-owner ordering read from the sandbox's write log."""
from __future__ import annotations

import datetime as dt

import pytest

from connector.model import ActionContext, PlannedAction
from connector.sandbox.graph import LAST_OWNER_REFUSED
from connector.sandbox.tenant import Mailbox
from tests.contract.provider_contract import ProviderContract
from tests.integration.test_entra import NOW, Secrets, apply, matched
from tests.sandboxes import MANAGER, MODES, add_leaver

SANDBOX_MODES = MODES
APP = "9a1b2c3d-4444-4e5f-8a9b-0c1d2e3f4a5b"          # a third-party app's service principal
COLLEAGUE = "casey.colleague@contoso.com"
SHARED = "helpdesk@contoso.com"
REACH_POLICY = {"mailbox": "shared", "mailbox_delegate": "manager", "forward_to": "none", "hide_from_gal": True,
                "onedrive_access": "manager", "onedrive_links": "remove", "devices": "wipe", "cancel_meetings_days": 30}


def reaching_leaver(m365, n: int, *, sole: bool = False):
    """A leaver who co-owns a Team (or owns it alone), has a OneDrive, consents, two devices, forwarding rules,
    rights on a shared mailbox and meetings ahead."""
    termination = add_leaver(m365, n)
    upn = termination.email
    if COLLEAGUE.lower() not in m365.mailboxes:
        m365.add_user(COLLEAGUE, mailbox=Mailbox(COLLEAGUE))
        m365.add_user(SHARED, mailbox=Mailbox(SHARED, kind="SharedMailbox"))
    m365.add_group(f"Team {n}", unified=True, owners=(upn,) if sole else (upn, COLLEAGUE))
    m365.add_group(f"Synced {n}", synced=True, owners=(upn,))
    user_id = m365.user_by_upn(upn)["id"]
    m365.drives[user_id] = {"id": f"drive-{n}", "webUrl": f"https://contoso-my.sharepoint.com/personal/l{n}",
                            "permissions": [{"id": "owner", "roles": ["owner"],
                                             "grantedToV2": {"user": {"id": user_id, "email": upn}}}]}
    m365.add_file(upn, "Projects/")
    m365.add_file(upn, "plan.xlsx", folder="Projects", link="anonymous")
    m365.add_file(upn, "notes.docx", link="organization")
    m365.add_file(upn, "direct.docx", shared_with=COLLEAGUE)              # a grant to a person, no link: stays
    m365.add_grant(upn, APP)
    m365.add_device(upn, f"iPhone {n}", "personal")
    m365.add_device(upn, f"Laptop {n}", "company", os="Windows")
    m365.add_rule(upn, "to home", forward_to=f"me{n}@gmail.com")
    m365.add_rule(upn, "to boss", redirect_to=MANAGER)
    m365.add_rule(upn, "tidy", delete=True)
    box = m365.mailboxes[SHARED]
    box.permissions.append({"Identity": SHARED, "User": upn, "AccessRights": ["FullAccess"], "IsInherited": False,
                            "Deny": False})
    box.send_as.append(upn)
    box.send_on_behalf.append(upn.split("@")[0])
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3)
    m365.add_meeting(upn, "Weekly sync", soon, attendees=(COLLEAGUE,))
    m365.add_meeting(upn, "Dentist", soon)                                  # no attendees: an appointment stays
    return termination


class ReachContract(ProviderContract):
    """The contract's fixtures for a leaver who reaches everything, under REACH_POLICY."""

    @pytest.fixture
    def m365_policy(self):
        return REACH_POLICY

    @pytest.fixture
    def leaver(self, m365):
        return reaching_leaver(m365, 1)

    @pytest.fixture
    def snapshot(self, m365):
        return lambda termination: m365.snapshot(termination.email)

    @pytest.fixture
    def secrets(self, m365):
        return Secrets(m365)


class TestEntraReach(ReachContract):
    action_names = ["remove_consents", "hand_over_groups", "share_onedrive", "remove_sharing_links",
                    "remove_group_ownerships", "retire_devices"]

    @pytest.fixture
    def provider(self, entra):
        return entra

    @pytest.fixture
    def snapshot(self, m365):
        def read(termination):
            found = m365.snapshot(termination.email)
            manager = m365.user_by_upn(MANAGER)["id"]
            found["manager_owns"] = sorted(g["displayName"] for g in m365.groups.values() if manager in g["owners"])
            return found
        return read


class TestExchangeReach(ReachContract):
    action_names = ["disable_forwarding_rules", "remove_mailbox_access", "cancel_meetings"]

    @pytest.fixture
    def provider(self, exchange_online):
        return exchange_online


# -- hand-over of owned groups ---------------------------------------------------------------------------

def phases(provider, termination, *names):
    """Plan once, then run each phase's actions as the engine does: one apply_many per phase, in phase order."""
    subject = matched(provider, termination)
    plan = provider.plan(subject, termination)
    out = {}
    for phase in names:
        items = [(a, ActionContext(termination, subject, since=NOW)) for a in plan if a.phase == phase]
        out.update({a.action: r for (a, _), r in zip(items, provider.apply_many(items))})
    return out


@pytest.mark.parametrize("m365_policy", [REACH_POLICY])
def test_a_sole_owner_hands_over_before_being_removed(m365, entra):
    leaver = reaching_leaver(m365, 1, sole=True)
    team = m365.group_named("Team 1")
    leaver_id, manager_id = m365.user_by_upn(leaver.email)["id"], m365.user_by_upn(MANAGER)["id"]
    outcomes = phases(entra, leaver, "preserve", "reclaim")
    assert outcomes["hand_over_groups"].outcome == "changed"
    assert outcomes["remove_group_ownerships"].outcome == "changed"
    assert team["owners"] == {manager_id}
    writes = [(w.op, w.target) for w in m365.graph.writes.entries("graph", ok=True)]
    added = writes.index(("POST groups/{id}/owners/$ref", team["id"]))
    removed = writes.index(("DELETE groups/{id}/owners/{id}/$ref", f"{team['id']}/{leaver_id}"))
    assert added < removed
    assert m365.group_named("Synced 1")["owners"] == {leaver_id}          # the cloud cannot change it: reported
    assert "Synced 1" in outcomes["hand_over_groups"].reason


@pytest.mark.parametrize("m365_policy", [{**REACH_POLICY, "hand_over_groups": "none"}])
def test_without_a_hand_over_a_sole_owner_stays_and_a_person_decides(m365, entra):
    leaver = reaching_leaver(m365, 1, sole=True)
    outcomes = phases(entra, leaver, "preserve", "reclaim")
    assert "hand_over_groups" not in outcomes
    result = outcomes["remove_group_ownerships"]
    assert result.outcome == "needs_human" and "only owner of Team 1" in result.reason
    assert m365.group_named("Team 1")["owners"] == {m365.user_by_upn(leaver.email)["id"]}   # never ownerless


@pytest.mark.parametrize("m365_policy", [{**REACH_POLICY, "hand_over_groups": "sole"}])
def test_sole_hands_over_only_what_nobody_else_owns(m365, entra):
    shared_team = reaching_leaver(m365, 1)
    alone = reaching_leaver(m365, 2, sole=True)
    assert "hand_over_groups" not in [a.action for a in entra.plan(matched(entra, shared_team), shared_team)]
    assert apply(entra, alone, "hand_over_groups").after["names"] == {m365.group_named("Team 2")["id"]: "Team 2"}


def test_graph_refuses_to_remove_the_last_owner(m365):
    import requests

    leaver = reaching_leaver(m365, 1, sole=True)
    team, leaver_id = m365.group_named("Team 1"), m365.user_by_upn(leaver.email)["id"]
    answer = requests.delete(f"{m365.urls['graph']}/v1.0/groups/{team['id']}/owners/{leaver_id}/$ref",
                             headers={"Authorization": f"Bearer {m365.token(m365.urls['graph'])}"})
    assert answer.status_code == 400 and LAST_OWNER_REFUSED in answer.text
    assert team["owners"] == {leaver_id}


@pytest.mark.parametrize("m365_policy", [REACH_POLICY])
def test_sharing_links_are_turned_off_and_direct_grants_stay(m365, entra):
    leaver = reaching_leaver(m365, 1)
    result = apply(entra, leaver, "remove_sharing_links")
    assert result.before == {"links": ["notes.docx: organization view link", "plan.xlsx: anonymous view link"]}
    assert m365.snapshot(leaver.email)["drive_links"] == []
    items = m365.drives[m365.user_by_upn(leaver.email)["id"]]["items"].values()
    assert [p["grantedToV2"]["user"]["email"] for i in items for p in i["permissions"]] == [COLLEAGUE]


# -- OneDrive, devices -----------------------------------------------------------------------------------

@pytest.mark.parametrize("m365_policy", [REACH_POLICY])
def test_onedrive_link_goes_into_the_after_state(m365, entra):
    leaver = reaching_leaver(m365, 1)
    result = apply(entra, leaver, "share_onedrive")
    assert result.after == {"recipient": MANAGER, "roles": ["write"],
                            "link": "https://contoso-my.sharepoint.com/personal/l1"}
    invite = [w for w in m365.graph.writes.entries("graph") if w.op == "POST users/{id}/drive/root/invite"]
    assert [w.status for w in invite] == [200]


@pytest.mark.parametrize("m365_policy", [REACH_POLICY])
def test_devices_personal_retired_corporate_wiped(m365, entra):
    leaver = reaching_leaver(m365, 1)
    apply(entra, leaver, "retire_devices")
    assert m365.snapshot(leaver.email)["devices"] == [("Laptop 1", "wipePending"), ("iPhone 1", "retirePending")]


@pytest.mark.parametrize("m365_policy", [{**REACH_POLICY, "devices": "retire"}])
def test_devices_retire_wipes_nothing(m365, entra):
    leaver = reaching_leaver(m365, 1)
    apply(entra, leaver, "retire_devices")
    assert m365.snapshot(leaver.email)["devices"] == [("Laptop 1", "retirePending"), ("iPhone 1", "retirePending")]


def test_everything_new_is_off_or_planned_by_policy(m365, entra, exchange_online):
    """The default policy: consents, ownerships, rules to outside and shared-mailbox rights; no OneDrive,
    devices or meetings."""
    leaver = reaching_leaver(m365, 1)
    entra_plan = {a.action for a in entra.plan(matched(entra, leaver), leaver)}
    exchange_plan = {a.action for a in exchange_online.plan(matched(exchange_online, leaver), leaver)}
    assert {"remove_consents", "hand_over_groups", "remove_group_ownerships"} <= entra_plan
    assert not {"share_onedrive", "remove_sharing_links", "retire_devices"} & entra_plan
    assert {"disable_forwarding_rules", "remove_mailbox_access"} <= exchange_plan
    assert "cancel_meetings" not in exchange_plan


# -- inbox rules, meetings -------------------------------------------------------------------------------

def test_a_rule_forwarding_outside_is_disabled_and_the_rest_reported(m365, exchange_online):
    leaver = reaching_leaver(m365, 1)
    result = apply(exchange_online, leaver, "disable_forwarding_rules")
    assert result.outcome == "changed"
    assert list(result.before["forwarding_rules"].values()) == ["to home -> me1@gmail.com"]
    assert m365.snapshot(leaver.email)["rules"] == [("tidy", True), ("to boss", True), ("to home", False)]
    assert "to boss -> morgan.manager@contoso.com" in result.reason and "tidy" in result.reason


@pytest.mark.parametrize("m365_policy", [{"forwarding_rules": "all"}])
def test_all_disables_internal_forwarding_too(m365, exchange_online):
    leaver = reaching_leaver(m365, 1)
    apply(exchange_online, leaver, "disable_forwarding_rules")
    assert m365.snapshot(leaver.email)["rules"] == [("tidy", True), ("to boss", False), ("to home", False)]


@pytest.mark.parametrize("m365_policy", [{"forward_domains": ["gmail.com"]}])
def test_an_allowed_domain_is_inside_for_rules(m365, exchange_online):
    leaver = reaching_leaver(m365, 1)
    assert "disable_forwarding_rules" not in [a.action for a in exchange_online.plan(matched(exchange_online, leaver),
                                                                                        leaver)]


@pytest.mark.parametrize("m365_policy", [REACH_POLICY])
def test_only_meetings_with_attendees_are_cancelled(m365, exchange_online):
    leaver = reaching_leaver(m365, 1)
    result = apply(exchange_online, leaver, "cancel_meetings")
    assert (result.before, result.after) == ({"meetings_organised": 1}, {"meetings_organised": 0})
    assert m365.snapshot(leaver.email)["meetings"] == ["Dentist"]


def test_rights_on_shared_mailboxes_are_removed(m365, exchange_online):
    leaver = reaching_leaver(m365, 1)
    result = apply(exchange_online, leaver, "remove_mailbox_access")
    assert result.before == {"FullAccess": [SHARED], "SendAs": [SHARED], "SendOnBehalf": [SHARED]}
    assert m365.snapshot(leaver.email)["access_elsewhere"] == []
    assert m365.snapshot(COLLEAGUE)["access_elsewhere"] == []


# -- every undo, three times -------------------------------------------------------------------------------

UNDOS = [("entra", "remove_consents"), ("entra", "remove_group_ownerships"), ("entra", "share_onedrive"),
         ("entra", "hand_over_groups"),
         ("exchange_online", "disable_forwarding_rules"), ("exchange_online", "remove_mailbox_access")]


@pytest.mark.parametrize("m365_policy", [REACH_POLICY])
@pytest.mark.parametrize("kind,name", UNDOS)
def test_undo_puts_the_before_state_back(m365, m365_policy, request, kind, name):
    provider = request.getfixturevalue(kind)
    leaver = reaching_leaver(m365, 1)
    if name == "remove_group_ownerships":
        apply(provider, leaver, "hand_over_groups")         # so another owner stays
    untouched, untouched_owners = m365.snapshot(leaver.email), owners(m365)
    done = apply(provider, leaver, name)
    changed = m365.snapshot(leaver.email), owners(m365)
    assert done.outcome == "changed" and changed != (untouched, untouched_owners)
    undo = provider.undo[name]
    assert provider.actions[undo] == "restore"
    planned = PlannedAction(provider.name, undo, "restore", f"undo {name}",
                            tuple(sorted({"action": name, "before": done.before}.items())))
    subject = matched(provider, leaver)
    outcomes = []
    for dry_run in (True, False, False):
        outcomes.append(provider.apply(planned, ActionContext(leaver, subject, dry_run=dry_run)).outcome)
        if dry_run:
            assert (m365.snapshot(leaver.email), owners(m365)) == changed, "a dry run changed the system"
    assert outcomes == ["planned", "changed", "unchanged"]
    assert m365.snapshot(leaver.email) == untouched
    assert owners(m365) == untouched_owners


def owners(m365):
    return sorted((g["displayName"], sorted(g["owners"])) for g in m365.groups.values())


@pytest.mark.parametrize("kind,name", [("entra", "retire_devices"), ("exchange_online", "cancel_meetings"),
                                       ("entra", "remove_sharing_links")])
def test_what_cannot_be_put_back_has_no_undo(request, kind, name):
    assert name not in request.getfixturevalue(kind).undo


# -- through the engine ------------------------------------------------------------------------------------

def test_the_engine_hands_over_and_cuts_everything_then_plans_nothing(m365):
    from connector import config
    from connector.reconcile import reconcile
    from connector.store import Store
    from tests.integration.test_m365_engine import NOW as ENGINE_NOW, actions
    from tests.sandboxes import SECRET_ENV

    leaver = reaching_leaver(m365, 1, sole=True)
    block = m365.provider_block(f"env:{SECRET_ENV}")
    cfg = config.parse({"tenant": [{"id": "contoso", "name": "Contoso Ltd", "policy": REACH_POLICY, "provider": [
        {"type": "entra", **block}, {"type": "exchange_online", **block}]}]})
    store = Store.memory()
    for minutes in (0, 10):
        report = reconcile(cfg, store, on_demand=[leaver], now=ENGINE_NOW + dt.timedelta(minutes=minutes))
    assert report.exit_code == 0, actions(store, leaver)
    assert store.termination("contoso/E1")["state"] == "done"
    journal = actions(store, leaver)
    for name in ("entra/remove_consents", "entra/hand_over_groups", "entra/share_onedrive", "entra/remove_sharing_links",
                 "entra/remove_group_ownerships", "entra/retire_devices", "exchange_online/disable_forwarding_rules",
                 "exchange_online/remove_mailbox_access", "exchange_online/cancel_meetings"):
        assert journal[name] == "changed", name
    team = m365.group_named("Team 1")
    writes = [(w.op, w.target) for w in m365.graph.writes.entries("graph", ok=True)]
    assert writes.index(("POST groups/{id}/owners/$ref", team["id"])) < writes.index(
        ("DELETE groups/{id}/owners/{id}/$ref", f"{team['id']}/{m365.user_by_upn(leaver.email)['id']}"))
    state = m365.snapshot(leaver.email)
    assert (state["owner_of"], state["grants"], state["access_elsewhere"]) == (["Synced 1"], [], [])
    assert team["owners"] == {m365.user_by_upn(MANAGER)["id"]}
    step = next(a for a in store.actions("contoso/E1") if a["action"] == "share_onedrive")
    assert "https://contoso-my.sharepoint.com/personal/l1" in step["after"]      # the link the ticket note reads
    reconcile(cfg, store, on_demand=[leaver], now=ENGINE_NOW + dt.timedelta(minutes=20))
    assert m365.snapshot(leaver.email) == state


def test_shared_mailboxes_are_read_once_per_pass_and_again_before_a_write(m365, exchange_online, matched_just_now):
    leavers = [reaching_leaver(m365, n) for n in range(1, 6)]
    m365.calls.clear()
    exchange_online.prepare(leavers)
    cmdlets = [c for s, _, c in m365.calls if s == "exchange"]
    # the shared mailbox's permissions once, each leaver's own mailbox once; SendAs by trustee per leaver
    assert cmdlets.count("Get-MailboxPermission") == 1 + 5 and cmdlets.count("Get-RecipientPermission") == 5
    subjects = {t.id: exchange_online.match(t).subject for t in leavers}
    assert all(s.state["access"]["FullAccess"] == [SHARED] for s in subjects.values())
    m365.calls.clear()
    items = [(a, ActionContext(t, subjects[t.id])) for t in leavers for a in exchange_online.plan(subjects[t.id], t)
             if a.action == "remove_mailbox_access"]
    assert [r.outcome for r in exchange_online.apply_many(items)] == ["changed"] * 5
    reads = [c for s, _, c in m365.calls if s == "exchange" and c.startswith("Get-")]
    assert sorted(set(reads)) == ["Get-Mailbox", "Get-MailboxPermission", "Get-RecipientPermission"]
    assert reads.count("Get-Mailbox") == 5 and len(reads) == 5 * 3    # its rights on the shared one, again; its own
    # mailbox (its names) is prepare's read, just made (FRESH_READ)
    assert m365.mailboxes[SHARED].permissions == [] and m365.mailboxes[SHARED].send_as == []


@pytest.mark.parametrize("m365_policy", [{**REACH_POLICY, "hand_over_groups": "none", "remove_groups": False,
                                          "delete_after_days": 30}])
def test_the_only_owner_of_a_group_anchors_the_account_until_someone_else_owns_it(m365, entra):
    leaver = reaching_leaver(m365, 1, sole=True)
    anchors = entra.anchors(matched(entra, leaver), leaver)
    assert anchors == ["the only owner of group(s) Team 1, Synced 1"]
    colleague = m365.user_by_upn(COLLEAGUE)["id"]
    for name in ("Team 1", "Synced 1"):
        m365.group_named(name)["owners"].add(colleague)
    assert entra.anchors(matched(entra, leaver), leaver) == []


def test_the_shared_mailboxes_are_read_once_a_pass_while_the_leavers_are_matched(m365, exchange_online):
    leavers = [reaching_leaver(m365, n) for n in range(3)]
    m365.exchange.anchors.clear()
    exchange_online.prepare(leavers)
    assert {exchange_online.match(t).status for t in leavers} == {"matched"}
    everyone_shared = [a for a in m365.exchange.anchors if a[0] == "Get-Mailbox" and a[1].startswith("APP:")]
    assert len(everyone_shared) == 1          # read beside the match, and the three plans waited for that one read
    assert all(exchange_online.match(t).subject.state["access"]["FullAccess"] == [SHARED] for t in leavers)
