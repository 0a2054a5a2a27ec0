"""The AD provider against a real Samba DC: what it plans, what AD shows afterwards, how it fails."""
from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import subprocess

import ldap3
import pytest
from ldap3.core.exceptions import LDAPInvalidCredentialsResult
from ldap3.protocol.formatters.formatters import format_sid

from connector import config
from connector.errors import ConfigError, RetryableError
from connector.model import ActionContext
from connector.providers import active_directory
from connector.sandbox import company
from tests.contract.provider_contract import ProviderContract, run_action

from .conftest import secret_file, termination

pytestmark = pytest.mark.samba
ACTIONS = ["disable_account", "reset_password", "remove_groups", "stamp_description", "move_to_disabled_ou"]
# schemaIDGUIDs, for ACEs that hide an attribute from the bind account
TOKEN_GROUPS = "b7c69e6d-2cc7-11d2-854e-00a0c983f608"
MEMBER_OF = "bf967991-0de6-11d0-a285-00aa003049e2"


def read_user(conn: ldap3.Connection, employee_id: str) -> dict:
    conn.search(company.BASE_DN, f"(employeeID={employee_id})", attributes=[
        "userAccountControl", "description", "memberOf", "pwdLastSet", "primaryGroupID"])
    (entry,) = conn.entries
    return {"dn": entry.entry_dn, **{k: v for k, v in entry.entry_attributes_as_dict.items()}}


def group_members(conn: ldap3.Connection) -> dict[str, list[str]]:
    """Removing a member changes the group, not the user: compare the groups themselves."""
    conn.search(company.GROUPS_OU, "(objectClass=group)", attributes=["member"])
    return {e.entry_dn: sorted(e.member.values) for e in conn.entries}


@pytest.fixture
def provider(make_ad_provider):
    return make_ad_provider()


@pytest.fixture
def leaver(ad_leaver):
    return termination(ad_leaver, ticket="4711")


@pytest.fixture
def snapshot(ad_admin):
    def snap(t):
        return {"user": read_user(ad_admin, t.employee_id), "groups": group_members(ad_admin)}
    return snap


@pytest.fixture
def secrets(samba_dc):
    return [samba_dc.admin_password, company.PASSWORD]


class TestContract(ProviderContract):
    action_names = ACTIONS
    journal_only_actions = ("reset_password",)


def offboard(provider, t, *, dry_run=False, since=None):
    """Match, plan and apply every action in order, as the engine does: {action: Result}."""
    provider.prepare([t])
    match = provider.match(t)
    assert match.status == "matched", match.reason
    since = since or dt.datetime.now(dt.timezone.utc)
    ctx = ActionContext(t, match.subject, dry_run=dry_run, since=since, ticket=t.ticket, local_date=t.termination_date)
    return {a.action: provider.apply(a, ctx) for a in provider.plan(match.subject, t)}


def can_bind(samba_dc, person: company.Person) -> bool:
    try:
        samba_dc.connect(person.upn, company.PASSWORD).unbind()
        return True
    except LDAPInvalidCredentialsResult:
        return False


def test_offboarding_really_shows_in_ad(provider, leaver, ad_leaver, samba_dc, snapshot):
    assert can_bind(samba_dc, ad_leaver)                # warm-up bind: it changes the user's uSNChanged
    untouched = snapshot(leaver)

    dry = offboard(provider, leaver, dry_run=True)
    assert list(dry) == ACTIONS
    assert {r.outcome for r in dry.values()} == {"planned"}
    assert snapshot(leaver) == untouched
    assert can_bind(samba_dc, ad_leaver)

    since = dt.datetime.now(dt.timezone.utc)
    first = offboard(provider, leaver, since=since)
    assert {name: r.outcome for name, r in first.items()} == dict.fromkeys(ACTIONS, "changed")
    assert not can_bind(samba_dc, ad_leaver)
    user = read_user(samba_dc.connect(), leaver.employee_id)
    assert user["dn"] == f"{ad_leaver.dn.split(',')[0]},{company.LEAVERS_OU}"
    assert int(user["userAccountControl"][0]) & 2
    assert user["memberOf"] == []
    assert user["primaryGroupID"] == ["513"]                 # Domain Users stays: it is not in memberOf
    assert user["description"] == ["Offboarded 2026-11-20 ticket #4711 (was: Account Executive)"]
    groups = snapshot(leaver)["groups"]
    assert not any(user["dn"] in members or ad_leaver.dn in members for members in groups.values())
    assert sorted(first["remove_groups"].before["groups"]) == sorted(company.group_dn(g) for g in ad_leaver.groups)

    done = snapshot(leaver)
    again = offboard(provider, leaver, since=since)
    assert list(again) == ["reset_password"]               # journal-only: the plan cannot see it is done
    assert again["reset_password"].outcome == "unchanged"
    assert snapshot(leaver) == done


def test_policy_keeping_groups(make_ad_provider, leaver, ad_leaver, ad_admin):
    provider = make_ad_provider(policy={"remove_groups": False})
    results = offboard(provider, leaver)
    assert "remove_groups" not in results
    assert sorted(read_user(ad_admin, leaver.employee_id)["memberOf"]) == sorted(
        company.group_dn(g) for g in ad_leaver.groups)


def test_namesake_already_in_leavers_ou(provider, leaver_pool, ad_admin):
    first = leaver_pool.create(given="Sam", surname="Same")
    offboard(provider, termination(first))
    second = leaver_pool.create(given="Sam", surname="Same", ou=company.SERVICE_OU)
    results = offboard(provider, termination(second))
    assert results["move_to_disabled_ou"].after == {"dn": f"CN=Sam Same ({second.sam}),{company.LEAVERS_OU}"}
    assert read_user(ad_admin, second.employee_id)["dn"] == results["move_to_disabled_ou"].after["dn"]


def test_generated_password_never_surfaces(provider, leaver, ad_leaver, samba_dc, monkeypatch, caplog):
    issued = []

    def capture(avoid):
        issued.append(real(avoid))
        return issued[-1]

    real = active_directory.new_password
    monkeypatch.setattr(active_directory, "new_password", capture)
    caplog.set_level(logging.DEBUG)
    reset = run_action(provider, leaver, "reset_password", since=dt.datetime.now(dt.timezone.utc))
    (password,) = issued
    assert len(password) >= 32
    samba_dc.connect(ad_leaver.upn, password).unbind()  # it really is the account's password now
    assert not can_bind(samba_dc, ad_leaver)           # and the old one died at once, not in 60 minutes
    results = {"reset_password": reset, **offboard(provider, leaver)}
    surfaced = caplog.text + json.dumps({k: vars(r) for k, r in results.items()}, default=str)
    surfaced += repr(provider.match(leaver)) + repr(provider.options)
    assert password not in surfaced
    assert samba_dc.admin_password not in surfaced


def test_new_password_meets_complexity_and_avoids_names():
    for _ in range(200):
        password = active_directory.new_password(["lee", "Vermont1"])
        assert len(password) >= 32 and "lee" not in password.lower()
        assert any(c.islower() for c in password) and any(c.isupper() for c in password)
        assert any(c.isdigit() for c in password) and any(c in active_directory.PASSWORD_SYMBOLS for c in password)


# -- matching ----------------------------------------------------------------

@pytest.fixture
def matched(provider):
    provider.prepare([])
    return provider.match


def test_employee_id_wins_over_an_unknown_address(matched):
    m = matched(termination(company.BOB, email="robert.baker@home.example"))
    assert m.status == "matched" and m.subject.state["sam"] == company.BOB.sam
    assert "employeeID" in m.reason


@pytest.mark.parametrize("email", [company.HENRY.mail, company.HENRY.upn.upper(), company.HENRY.aliases[0]])
def test_address_fallback_when_no_account_carries_the_id(matched, email):
    m = matched(termination(company.HENRY, employee_id=company.HENRY_EMPLOYEE_ID, email=email))
    assert m.status == "matched" and m.subject.state["sam"] == company.HENRY.sam


def test_proxy_address_match_is_case_insensitive(matched):
    m = matched(termination(company.BOB, employee_id="E9001", email="Sales-EMEA@Example.Test"))
    assert m.status == "matched" and m.subject.state["sam"] == company.BOB.sam


def test_two_accounts_with_one_address_are_ambiguous(matched):
    m = matched(termination(company.AMBIGUOUS[0], employee_id=company.AMBIGUOUS_EMPLOYEE_ID))
    assert m.status == "ambiguous"
    assert sorted(m.candidates) == sorted(p.dn for p in company.AMBIGUOUS)


def test_id_and_address_on_different_accounts_are_ambiguous(matched):
    m = matched(termination(company.BOB, email=company.CAROL.mail))
    assert m.status == "ambiguous"
    assert sorted(dn.split(",")[0] for dn in m.candidates) == ["CN=Bob Baker", "CN=Carol Chen"]


def test_nobody_is_not_found(matched):
    assert matched(termination(company.BOB, employee_id="E9999", email="nobody@example.test")).status == "not_found"


def test_admin_through_nested_group_is_detected(matched):
    admin = matched(termination(company.ADMIN)).subject
    assert admin.is_admin and "Domain Admins" in admin.admin_reason
    assert not matched(termination(company.BOB)).subject.is_admin


def test_subject_names_cover_every_name_protected_globs_check(matched):
    subject = matched(termination(company.BOB)).subject
    assert subject.names == ["bbaker", company.BOB.upn, company.BOB.mail, *company.BOB.aliases]
    assert "svc-backup" in matched(termination(company.PROTECTED, employee_id="")).subject.names


def test_protected_glob_matching_only_a_proxy_address_protects(provider, leaver_pool, ad_admin):
    person = leaver_pool.create(aliases=("Help.Desk@example.test",))
    ad_admin.modify(person.dn, {"proxyAddresses": [(ldap3.MODIFY_ADD, ["SIP:Lee.Phone@example.test"])]})
    provider.prepare([])
    subject = provider.match(termination(person)).subject
    assert subject.names == [person.sam, person.upn, person.mail, "Help.Desk@example.test", "Lee.Phone@example.test"]
    tenant = config.parse({"tenant": [{"id": "example", "protected": ["help.desk@*", "lee.phone@*"],
                                      "provider": [{"type": "fake"}]}]}).tenants[0]
    assert tenant.is_protected([person.sam, person.upn, person.mail]) == ""
    assert tenant.is_protected(subject.names) == "help.desk@*"
    assert tenant.is_protected([n for n in subject.names if n != "Help.Desk@example.test"]) == "lee.phone@*"


def test_immutable_id_is_base64_of_the_object_guid_bytes(matched, ad_admin):
    ad_admin.search(company.BOB.dn, "(objectClass=*)", ldap3.BASE, attributes=["objectGUID"])
    guid = ad_admin.response[0]["raw_attributes"]["objectGUID"][0]
    assert len(guid) == 16
    assert matched(termination(company.BOB)).subject.anchor == base64.b64encode(guid).decode()


# -- admins ------------------------------------------------------------------

def sid_of(conn: ldap3.Connection, dn: str) -> str:
    conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["objectSid"])
    return format_sid(conn.response[0]["raw_attributes"]["objectSid"][0])


def deny_read(samba_dc, dn: str, attribute: str, trustee: str) -> None:
    """An ACE on `dn` that hides one attribute from the account with SID `trustee` (written locally:
    Samba takes no SDDL over LDAP)."""
    subprocess.run(["samba-tool", "dsacl", "set", "-H", str(samba_dc.dir / "private" / "sam.ldb"),
                    f"--objectdn={dn}", f"--sddl=(OD;;RP;{attribute};;{trustee})"],
                   check=True, capture_output=True, timeout=60)


@pytest.fixture
def as_alice(make_ad_provider, tmp_path):
    """The provider bound as an ordinary user: it may read the directory, and only what ACEs let it."""
    return make_ad_provider(bind_user=company.ALICE.upn, bind_password=secret_file(tmp_path, "alice", company.PASSWORD))


def nested_member_of(conn, leaver_pool, privileged_dn: str) -> company.Person:
    """A fresh account in a new global group nested in `privileged_dn`."""
    n = next(leaver_pool.serial)
    nested = f"Nested-{n}"
    conn.add(company.group_dn(nested), "group", {"sAMAccountName": nested})
    company.add_member(conn, privileged_dn, company.group_dn(nested))
    return leaver_pool.create(groups=(nested,))


def privileged_dn(conn, group: str) -> str:
    """The DN of a privileged group named by builtin SID, domain RID (`-520`) or name."""
    search = (f"(objectSid={sid_of(conn, company.BASE_DN)}{group})" if group.startswith("-")
              else f"(objectSid={group})" if group.startswith("S-") else f"(sAMAccountName={group})")
    conn.search(company.BASE_DN, f"(&(objectClass=group){search})", attributes=["cn"])
    (entry,) = conn.entries
    return entry.entry_dn


def test_admin_only_through_a_primary_group_nested_in_domain_admins(matched, ad_admin):
    person = company.PRIMARY_GROUP_ADMIN
    user = read_user(ad_admin, person.employee_id)
    assert user["primaryGroupID"] == [sid_of(ad_admin, company.group_dn("IT-Admins")).rsplit("-", 1)[1]]
    assert company.group_dn("IT-Admins") not in user["memberOf"]        # AD lists no primary group there
    admin = matched(termination(person)).subject
    assert admin.is_admin
    assert admin.admin_reason == "member of Domain Admins through its primary group IT-Admins"


@pytest.mark.parametrize("group, name", [
    ("S-1-5-32-548", "Account Operators"), ("S-1-5-32-549", "Server Operators"),
    ("S-1-5-32-550", "Print Operators"), ("S-1-5-32-551", "Backup Operators"),
    ("S-1-5-32-544", "Administrators"), ("-520", "Group Policy Creator Owners"), ("-526", "Key Admins"),
    ("-527", "Enterprise Key Admins"), ("-518", "Schema Admins"), ("-519", "Enterprise Admins"),
    ("DnsAdmins", "DnsAdmins"),
])
def test_nested_members_of_each_privileged_group_are_admins(provider, ad_admin, leaver_pool, group, name):
    person = nested_member_of(ad_admin, leaver_pool, privileged_dn(ad_admin, group))
    provider.prepare([])
    subject = provider.match(termination(person)).subject
    assert subject.is_admin
    assert subject.admin_reason.startswith(f"member of {name} through Nested-")
    assert not provider.match(termination(company.BOB)).subject.is_admin


def test_admin_whose_memberships_are_hidden_is_found_by_token_groups(as_alice, ad_admin, leaver_pool, samba_dc):
    person = nested_member_of(ad_admin, leaver_pool, privileged_dn(ad_admin, "S-1-5-32-551"))
    deny_read(samba_dc, person.dn, MEMBER_OF, sid_of(ad_admin, company.ALICE.dn))
    as_alice.prepare([])
    subject = as_alice.match(termination(person)).subject
    assert subject.state["groups"] == []                      # the bind account sees no membership at all
    assert subject.is_admin and subject.admin_reason == "member of Backup Operators (tokenGroups)"
    bob = as_alice.match(termination(company.BOB)).subject
    assert not bob.is_admin and bob.admin_reason == ""


def test_unreadable_token_groups_fail_the_match_instead_of_meaning_ordinary(as_alice, ad_admin, leaver_pool,
                                                                            samba_dc):
    person = leaver_pool.create()
    deny_read(samba_dc, person.dn, TOKEN_GROUPS, sid_of(ad_admin, company.ALICE.dn))
    as_alice.prepare([])
    with pytest.raises(ConfigError, match=f"missing right to read tokenGroups of {person.dn}"):
        as_alice.match(termination(person))
    assert not as_alice.match(termination(company.BOB)).subject.is_admin   # the others still match


def test_token_groups_are_read_only_for_matched_ordinary_accounts_once_a_pass(provider, monkeypatch):
    reads = []
    real = provider._entry

    def counting(guid, attributes, doing):
        reads.append(attributes)
        return real(guid, attributes, doing)

    monkeypatch.setattr(provider, "_entry", counting)
    provider.prepare([termination(company.BOB), termination(company.ADMIN)])
    assert reads == []
    for t in (company.BOB, company.BOB, company.ADMIN, company.CAROL):
        provider.match(termination(t))
    provider.match(termination(company.BOB, employee_id="E9999", email="nobody@example.test"))
    assert reads == [["tokenGroups"], ["tokenGroups"]]        # Bob and Carol; Ivan's groups already said admin
    provider.prepare([])
    provider.match(termination(company.BOB))
    assert len(reads) == 3                                    # a new pass reads afresh


def test_without_dns_admins_the_other_groups_still_count(provider, ad_admin):
    dns_admins = privileged_dn(ad_admin, "DnsAdmins")          # a DC provisioned without DNS has none
    ad_admin.modify(dns_admins, {"sAMAccountName": [(ldap3.MODIFY_REPLACE, ["Renamed-DnsAdmins"])]})
    try:
        provider.prepare([])
        assert provider.match(termination(company.ADMIN)).subject.is_admin
        assert not provider.match(termination(company.BOB)).subject.is_admin
    finally:
        ad_admin.modify(dns_admins, {"sAMAccountName": [(ldap3.MODIFY_REPLACE, ["DnsAdmins"])]})


# -- the manager (the engine's successor) --------------------------------------

def successor(person: company.Person, enabled: bool = True) -> dict:
    return {"address": person.mail, "enabled": enabled, "dn": person.dn, "mail": person.mail,
            "userPrincipalName": person.upn, "sAMAccountName": person.sam}


def test_manager_set_and_enabled(matched):
    assert matched(termination(company.BOB)).subject.manager == successor(company.ALICE)


def test_manager_unset(matched):
    assert matched(termination(company.ALICE)).subject.manager is None


def test_manager_disabled(provider, leaver_pool, ad_admin):
    boss = leaver_pool.create(given="Boss")
    report = leaver_pool.create()
    ad_admin.modify(report.dn, {"manager": [(ldap3.MODIFY_REPLACE, [boss.dn])]})
    ad_admin.modify(boss.dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [512 | 2])]})
    provider.prepare([])
    assert provider.match(termination(report)).subject.manager == successor(boss, enabled=False)


def test_manager_outside_base_dn_is_read_once(make_ad_provider, leaver_pool, ad_admin, monkeypatch):
    boss = leaver_pool.create(given="Remote", ou=company.SERVICE_OU)
    reports = [leaver_pool.create(), leaver_pool.create()]
    for report in reports:
        ad_admin.modify(report.dn, {"manager": [(ldap3.MODIFY_REPLACE, [boss.dn])]})
    provider = make_ad_provider(base_dn=company.STAFF_OU)
    provider.prepare([])
    reads = []
    real = provider._read_dn
    monkeypatch.setattr(provider, "_read_dn", lambda dn: reads.append(dn) or real(dn))
    assert [provider.match(termination(r)).subject.manager for r in reports] == [successor(boss)] * 2
    assert reads == [boss.dn]


# -- check_online --------------------------------------------------------------

def test_check_online_passes_over_ldaps_and_start_tls(make_ad_provider):
    make_ad_provider().check_online()
    make_ad_provider(url="ldap://127.0.0.1", start_tls=True).check_online()


def test_plain_ldap_without_start_tls_is_refused(make_ad_provider):
    with pytest.raises(ConfigError, match="in clear"):
        make_ad_provider(url="ldap://127.0.0.1")


@pytest.mark.parametrize("options, expected, error", [
    ({"bind_password": "Wrong-Password-1"}, "invalid credentials", ConfigError),
    ({"url": "ldaps://127.0.0.1:1"}, "cannot reach the DC", RetryableError),   # an outage is retried
    ({"ca_file": None}, "TLS failed", ConfigError),                   # the system CAs do not know the sandbox CA
    ({"disabled_ou": f"OU=Gone,{company.BASE_DN}"}, "does not exist", ConfigError),
], ids=["wrong-password", "unreachable", "untrusted-certificate", "missing-disabled-ou"])
def test_check_online_errors_are_one_line_typed_errors(make_ad_provider, tmp_path, samba_dc, options, expected, error):
    if "bind_password" in options:
        options = {"bind_password": secret_file(tmp_path, "pw", options["bind_password"])}
    provider = make_ad_provider(**options)
    with pytest.raises(error) as caught:
        provider.check_online()
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert message.startswith(f"{provider.where} ({provider.options.url}): ")
    assert samba_dc.admin_password not in message and "Wrong-Password-1" not in message


def test_missing_right_is_a_config_error_naming_it(make_ad_provider, leaver, tmp_path):
    as_alice = make_ad_provider(bind_user=company.ALICE.upn, bind_password=secret_file(tmp_path, "alice", company.PASSWORD))
    with pytest.raises(ConfigError, match="missing right to write userAccountControl"):
        offboard(as_alice, leaver)
