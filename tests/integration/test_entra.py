"""The Entra provider against the fake Microsoft 365 tenant: contract, the rules of DESIGN.md, scale, failures."""
from __future__ import annotations

import datetime as dt
import math

import pytest

from connector.config import PluginConfig, PluginOptions
from connector.errors import ConfigError, RetryableError
from connector.model import ActionContext, Termination
from tests.contract.provider_contract import ProviderContract
from tests.fakes.m365 import (GB, SECRET, CLIENT_ID, FakeM365, add_leaver, build, entra,  # noqa: F401  (fixtures)
                              exchange_online, m365, m365_policy, m365_tenant)

NOW = dt.datetime.now(dt.timezone.utc)


class Secrets:
    """The client secret and every token the fake issued, read when the check runs (tokens come late)."""

    def __init__(self, fake):
        self.fake = fake

    def __iter__(self):
        return iter([SECRET, *self.fake.tokens])


class TestEntraContract(ProviderContract):
    action_names = ["block_sign_in", "reset_password", "revoke_sessions", "remove_auth_methods", "remove_groups",
                    "remove_licenses"]
    journal_only_actions = ("reset_password", "revoke_sessions")

    @pytest.fixture
    def provider(self, entra):
        return entra

    @pytest.fixture
    def leaver(self, m365):
        return add_leaver(m365, 1, mailbox_kind="SharedMailbox")     # preserve already ran

    @pytest.fixture
    def snapshot(self, m365):
        return lambda termination: m365.snapshot(termination.email)

    @pytest.fixture
    def secrets(self, m365):
        return Secrets(m365)


def matched(provider, termination):
    provider.prepare([termination])
    match = provider.match(termination)
    assert match.status == "matched", match
    return match.subject


def apply(provider, termination, action, *, since=NOW - dt.timedelta(seconds=5), dry_run=False):
    subject = matched(provider, termination)
    planned = next(a for a in provider.plan(subject, termination) if a.action == action)
    return provider.apply(planned, ActionContext(termination, subject, dry_run=dry_run, since=since))


# -- matching -------------------------------------------------------------------------------

def test_matches_by_employee_id_then_address(m365, entra):
    leaver = add_leaver(m365, 1)
    renamed = Termination("contoso", "E1", "someone.else@contoso.com")
    by_proxy = Termination("contoso", "", "l1@contoso.com")
    entra.prepare([leaver, renamed, by_proxy])
    ids = {entra.match(t).subject.native_id for t in (leaver, renamed, by_proxy)}
    assert len(ids) == 1
    assert entra.match(leaver).subject.names == ["leaver1.person@contoso.com", "l1@contoso.com"]
    assert m365.count("graph") == 1 + 1 + 1      # subscribedSkus, one $batch of filters, one $batch of state


def test_ambiguous_and_not_found(m365, entra):
    add_leaver(m365, 1)
    add_leaver(m365, 2)
    m365.add_user("twin@contoso.com", employee_id="E1")
    two_ids = Termination("contoso", "E1", "leaver1.person@contoso.com")
    id_and_address_apart = Termination("contoso", "E2", "leaver1.person@contoso.com")
    nobody = Termination("contoso", "E404", "nobody@contoso.com")
    entra.prepare([two_ids, id_and_address_apart, nobody])
    assert entra.match(two_ids).status == "ambiguous"
    assert entra.match(id_and_address_apart).status == "ambiguous"
    assert set(entra.match(id_and_address_apart).candidates) == {"leaver1.person@contoso.com",
                                                                  "leaver2.person@contoso.com"}
    assert entra.match(nobody).status == "not_found"


def test_admin_is_reported(m365, entra):
    admin = add_leaver(m365, 1, roles=("Global Administrator",))
    subject = matched(entra, admin)
    assert subject.is_admin and "Global Administrator" in subject.admin_reason


def test_user_deleted_after_matching_is_not_found(m365, entra):
    leaver = add_leaver(m365, 1)
    subject = matched(entra, leaver)
    planned = entra.plan(subject, leaver)[0]
    del m365.users[subject.native_id]
    result = entra.apply(planned, ActionContext(leaver, subject, since=NOW))
    assert result.outcome == "skipped" and result.reason.startswith("not_found")


# -- revoke: synced users belong to AD -------------------------------------------------------

def test_synced_user_with_ad_provider_only_gets_sessions_revoked(m365, m365_tenant):
    m365_tenant.providers.append(PluginConfig(type="active_directory", name="ad", options=PluginOptions(),
                                              where="tenant[0].provider[2]"))
    entra = build(m365_tenant, "entra")
    leaver = add_leaver(m365, 1, synced=True)
    revoke = [a.action for a in entra.plan(matched(entra, leaver), leaver) if a.phase == "revoke"]
    assert revoke == ["revoke_sessions"]
    assert apply(entra, leaver, "revoke_sessions").outcome == "changed"
    assert m365.snapshot(leaver.email)["accountEnabled"] is True


def test_synced_user_without_ad_provider_needs_a_human(m365, entra):
    leaver = add_leaver(m365, 1, synced=True)
    before = m365.snapshot(leaver.email)
    for action in ("block_sign_in", "reset_password"):
        result = apply(entra, leaver, action)
        assert result.outcome == "needs_human" and "on-premises AD" in result.reason
    assert m365.snapshot(leaver.email) == before


# -- reclaim: groups and licences ------------------------------------------------------------

def test_groups_the_cloud_cannot_edit_are_reported_and_kept(m365, entra):
    leaver = add_leaver(m365, 1)
    result = apply(entra, leaver, "remove_groups")
    assert result.before == {"groups": ["All Staff", "Finance DL", "Project X"]}
    assert "Dynamic Sales: dynamic" in result.reason and "AD Staff: synced" in result.reason
    assert m365.snapshot(leaver.email)["groups"] == ["AD Staff", "Dynamic Sales", "E3 Licence"]
    cmdlets = [path for service, _, path in m365.calls if service == "exchange"]
    assert "Remove-DistributionGroupMember" in cmdlets        # the mail-enabled security group went through Exchange


def test_licences_wait_for_the_mailbox_to_read_back_shared(m365, entra, exchange_online):
    leaver = add_leaver(m365, 1)
    untouched = m365.snapshot(leaver.email)
    with pytest.raises(RetryableError) as waiting:
        apply(entra, leaver, "remove_licenses")
    assert waiting.value.delay > 0 and "SharedMailbox" in waiting.value.message
    assert apply(entra, leaver, "remove_licenses", dry_run=True).outcome == "planned"
    assert m365.snapshot(leaver.email) == untouched

    assert apply(exchange_online, leaver, "convert_mailbox_to_shared").outcome == "changed"
    with pytest.raises(RetryableError):        # the conversion shows only on a later read
        apply(entra, leaver, "remove_licenses")
    units = entra.consumed_units()
    result = apply(entra, leaver, "remove_licenses")
    assert result.outcome == "changed"
    assert result.before == {"skus": ["EMS"], "groups": ["E3 Licence"]}
    assert result.after == {"skus": [], "groups": []}
    assert m365.snapshot(leaver.email)["licences"] == []
    assert entra.consumed_units() == {**units, "EMS": units["EMS"] - 1, "SPE_E3": units["SPE_E3"] - 1}


@pytest.mark.parametrize("mailbox", [dict(size=52 * GB), dict(hold=True)], ids=["52GB", "litigation-hold"])
def test_big_or_held_mailboxes_keep_their_licence(m365, entra, mailbox):
    leaver = add_leaver(m365, 1, mailbox_kind="SharedMailbox", **mailbox)
    result = apply(entra, leaver, "remove_licenses")
    assert result.outcome == "needs_human"
    assert "52 GB" in result.reason or "litigation hold" in result.reason
    assert len(m365.snapshot(leaver.email)["licences"]) == 2


def test_no_mailbox_no_wait(m365, entra):
    leaver = add_leaver(m365, 1, mailbox=False)
    assert apply(entra, leaver, "remove_licenses").outcome == "changed"


# -- failures ----------------------------------------------------------------------------------

def test_missing_permission_is_a_config_error_naming_it(m365, entra):
    m365.denied.append(("DELETE", r"/users/[^/]+/authentication/.*", "UserAuthenticationMethod.ReadWrite.All"))
    leaver = add_leaver(m365, 1)
    with pytest.raises(ConfigError) as refused:
        apply(entra, leaver, "remove_auth_methods")
    assert "UserAuthenticationMethod.ReadWrite.All" in str(refused.value)


def test_a_refused_read_stops_the_provider_in_prepare(m365, entra):
    m365.denied.append(("GET", r"/users", "User.Read.All"))
    with pytest.raises(ConfigError, match="User.Read.All"):
        entra.prepare([add_leaver(m365, 1)])


def test_a_refused_secret_is_a_config_error(m365, m365_tenant, monkeypatch):
    monkeypatch.setenv("M365_FAKE_CLIENT_SECRET", "wrong")
    with pytest.raises(ConfigError, match="invalid_client"):
        build(m365_tenant, "entra").check_online()


def test_throttling_storm_on_whole_responses(m365, entra):
    leavers = [add_leaver(m365, n) for n in range(3)]
    m365.throttles["graph"] = 3
    entra.prepare(leavers)
    assert all(entra.match(t).status == "matched" for t in leavers)
    assert m365.throttles["graph"] == 0


def test_throttling_storm_inside_batches(m365, entra):
    leavers = [add_leaver(m365, n) for n in range(30)]
    entra.prepare(leavers)
    items = []
    for t in leavers:
        subject = entra.match(t).subject
        items += [(a, ActionContext(t, subject, since=NOW)) for a in entra.plan(subject, t) if a.phase == "revoke"]
    m365.throttles["batch_item"] = 45
    results = entra.apply_many(items)
    assert [r.outcome for r in results] == ["changed"] * 90
    assert m365.throttles["batch_item"] == 0
    assert not any(m365.snapshot(t.email)["accountEnabled"] for t in leavers)


# -- auth ------------------------------------------------------------------------------------------

def test_certificate_credential_and_an_authority_msal_does_not_know(tmp_path):
    import responses
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from connector import config
    from connector.providers.microsoft365 import auth

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "app.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    auth.applications.clear()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:   # any other host: ConnectionError
        fake = FakeM365(rsps, SECRET, authority="https://login.sandbox.test", graph="https://graph.sandbox.test",
                        exchange="https://exchange.sandbox.test")
        block = {"type": "entra", "tenant_id": fake.tenant_id, "client_id": CLIENT_ID, "certificate_path": str(pem),
                 "thumbprint": "A" * 40, "authority": fake.authority, "graph_url": fake.graph_url,
                 "exchange_url": fake.exchange_url}
        tenant = config.parse({"tenant": [{"id": "sandbox", "provider": [block]}]}).tenants[0]
        build(tenant, "entra").check_online()
    assert [c[0] for c in fake.calls] == ["login", "graph"]


# -- scale -------------------------------------------------------------------------------------------

def test_500_leavers_go_in_batches(m365, entra):
    n = 500
    leavers = [add_leaver(m365, i, mailbox_kind="SharedMailbox") for i in range(n)]
    batches = lambda subrequests: math.ceil(subrequests / 20)          # noqa: E731

    m365.calls.clear()
    entra.prepare(leavers)
    subjects = {t.id: entra.match(t).subject for t in leavers}
    plans = {t.id: entra.plan(subjects[t.id], t) for t in leavers}
    # subscribedSkus, one filter per leaver, then memberOf + methods per leaver
    assert m365.count("graph") == 1 + batches(n) + batches(2 * n)

    for phase, reads, writes in (("revoke", 1, 3), ("reclaim", 3, 6)):
        m365.calls.clear()
        items = [(a, ActionContext(t, subjects[t.id], since=NOW)) for t in leavers for a in plans[t.id]
                 if a.phase == phase]
        results = entra.apply_many(items)
        assert {r.outcome for r in results} == {"changed"}, [r for r in results if r.outcome != "changed"][:3]
        # one read round, then each action's writes of all leavers together
        # (reclaim writes: 2 MFA methods, 2 groups via Graph, 1 licence group, 1 assignLicense)
        assert m365.count("graph") == batches(reads * n) + batches(writes * n)
    # mailbox + statistics per leaver for the licence gate, the mail-enabled group through Exchange
    assert m365.count("exchange") == 3 * n
    assert entra.consumed_units()["EMS"] == 0


# -- the fake bites where Graph does ---------------------------------------------------------------

def test_the_fake_behaves_like_graph_where_it_matters(m365):
    import requests

    from tests.fakes.m365 import GRAPH

    m365.tokens["t"] = f"{GRAPH}/.default"
    auth = {"Authorization": "Bearer t"}
    leaver = add_leaver(m365, 1)
    get = lambda path, **headers: requests.get(f"{GRAPH}/v1.0{path}", headers={**auth, **headers})   # noqa: E731
    user = get("/users?$filter=employeeId eq 'E1'").json()["value"][0]
    assert "accountEnabled" not in user and "employeeId" not in user          # outside the default set
    assert get("/users?$filter=employeeId eq 'E1'&$select=id,accountEnabled").json()["value"][0]["accountEnabled"]
    assert get("/users?$skip=10").status_code == 400
    assert get("/users?$search=\"displayName:leaver\"").status_code == 400
    too_many = [{"id": str(i), "method": "GET", "url": "/subscribedSkus"} for i in range(21)]
    assert requests.post(f"{GRAPH}/v1.0/$batch", headers=auth, json={"requests": too_many}).status_code == 400
    no_type = {"id": "1", "method": "PATCH", "url": f"/users/{user['id']}", "body": {"accountEnabled": False}}
    answer = requests.post(f"{GRAPH}/v1.0/$batch", headers=auth, json={"requests": [no_type]}).json()
    assert answer["responses"][0]["status"] == 400
    assert m365.snapshot(leaver.email)["accountEnabled"] is True
