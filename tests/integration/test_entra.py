"""The Entra provider against the sandbox's Microsoft 365 tenant: contract, the rules of DESIGN.md, scale, failures."""
from __future__ import annotations

import datetime as dt
import math

import pytest

from connector.config import PluginConfig, PluginOptions
from connector.errors import ConfigError, NotYet, RetryableError
from connector.model import ActionContext, Termination
from connector.sandbox.graph import DEFAULT_REFUSED, MOBILE_REFUSED, graph_error
from connector.sandbox.microsoft365 import Microsoft365
from connector.sandbox.web import Sandbox, TokenBucket
from tests.contract.provider_contract import ProviderContract, run_action
from tests.sandboxes import BLOCK_GROUP, GB, MODES, SECRET, SECRET_ENV, add_leaver, batches_sent, build

SANDBOX_MODES = MODES

NOW = dt.datetime.now(dt.timezone.utc)


class Secrets:
    """The client secret and every token the sandbox issued, read when the check runs (tokens come late)."""

    def __init__(self, tenant):
        self.tenant = tenant

    def __iter__(self):
        return iter([SECRET, *self.tenant.tokens])


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


def test_user_deleted_after_matching_is_not_found(m365, entra, matched_a_while_ago):
    leaver = add_leaver(m365, 1)
    subject = matched(entra, leaver)
    planned = entra.plan(subject, leaver)[0]
    del m365.users[subject.native_id]
    result = entra.apply(planned, ActionContext(leaver, subject, since=NOW))
    assert result.outcome == "skipped" and result.reason.startswith("not_found")


def test_user_deleted_within_a_fresh_read_fails_the_revoke_and_the_next_pass_finds_it_gone(m365, entra, matched_just_now):
    leaver = add_leaver(m365, 1)
    subject = matched(entra, leaver)
    planned = entra.plan(subject, leaver)[0]
    assert planned.phase == "revoke"
    del m365.users[subject.native_id]
    with pytest.raises(RetryableError, match="404.*read again next pass"):     # retried: never a quiet done
        entra.apply(planned, ActionContext(leaver, subject, since=NOW))
    result = entra.apply(planned, ActionContext(leaver, subject, since=NOW))     # prepare's read is used once
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


# -- revoke and reclaim: the Conditional Access block while the AD disable syncs ---------------

def with_ad(tenant, block_group: str = BLOCK_GROUP):
    """The tenant with an AD provider beside Entra (so synced users are AD's) and `policy.block_group` set."""
    tenant.providers.append(PluginConfig(type="active_directory", name="ad", options=PluginOptions(),
                                         where="tenant[0].provider[2]"))
    tenant.policy = tenant.policy.model_copy(update={"block_group": block_group})
    return build(tenant, "entra")


def planned_actions(provider, termination) -> list[str]:
    return [a.action for a in provider.plan(matched(provider, termination), termination)]


def three_passes(provider, m365, leaver, action):
    """Dry run changes nothing, the first run changes, the second finds nothing to do."""
    since = NOW - dt.timedelta(seconds=5)
    untouched = m365.snapshot(leaver.email)
    dry = run_action(provider, leaver, action, dry_run=True, since=since)
    assert dry.outcome == "planned" and m365.snapshot(leaver.email) == untouched
    first = run_action(provider, leaver, action, since=since)
    assert first.outcome == "changed" and first.before != first.after
    assert m365.snapshot(leaver.email) != untouched
    again = run_action(provider, leaver, action, since=since)
    assert again is None or again.outcome == "unchanged"
    return first


def test_a_synced_leaver_is_blocked_until_sync_carries_the_ad_disable(m365, m365_tenant):
    entra = with_ad(m365_tenant)
    leaver = add_leaver(m365, 1, synced=True)
    assert planned_actions(entra, leaver) == ["add_to_block_group", "revoke_sessions", "remove_auth_methods",
                                              "remove_groups", "remove_licenses", "remove_from_block_group"]
    added = three_passes(entra, m365, leaver, "add_to_block_group")
    assert (added.before, added.after) == ({"block_group": False}, {"block_group": True})
    assert BLOCK_GROUP in m365.snapshot(leaver.email)["groups"]
    adds = [c for c in m365.calls if c[1] == "POST" and c[2].endswith("/members/$ref")]
    assert len(adds) == 1                         # the second pass read the membership and sent nothing

    for _ in range(2):                            # Entra still reads the account enabled: the block stays
        with pytest.raises(NotYet) as waiting:
            apply(entra, leaver, "remove_from_block_group")
        assert waiting.value.delay == 300 and "directory sync" in waiting.value.message
        assert BLOCK_GROUP in m365.snapshot(leaver.email)["groups"]

    kept = apply(entra, leaver, "remove_groups")
    assert f"kept {BLOCK_GROUP}: the Conditional Access block group: removed by remove_from_block_group" in kept.reason
    assert BLOCK_GROUP not in kept.before["groups"] and BLOCK_GROUP in m365.snapshot(leaver.email)["groups"]

    m365.sync(leaver.email)                       # the next sync cycle carries the AD disable
    removed = three_passes(entra, m365, leaver, "remove_from_block_group")
    assert (removed.before, removed.after) == ({"block_group": True}, {"block_group": False})
    assert BLOCK_GROUP not in m365.snapshot(leaver.email)["groups"]
    assert not {"add_to_block_group", "remove_from_block_group"} & set(planned_actions(entra, leaver))


def test_a_dry_run_says_the_block_will_wait_for_the_sync(m365, m365_tenant):
    entra = with_ad(m365_tenant)
    leaver = add_leaver(m365, 1, synced=True)
    before = m365.snapshot(leaver.email)
    result = run_action(entra, leaver, "remove_from_block_group", dry_run=True)
    assert result.outcome == "planned" and "directory sync" in result.reason
    assert m365.snapshot(leaver.email) == before


def test_a_leaver_not_in_the_block_group_is_unchanged_by_its_removal(m365, m365_tenant):
    entra = with_ad(m365_tenant)
    leaver = add_leaver(m365, 1, synced=True)
    m365.sync(leaver.email)
    subject = matched(entra, leaver)           # a person took them out by hand; the sync has run since
    result = entra.apply(entra.planned("remove_from_block_group"), ActionContext(leaver, subject, since=NOW))
    assert result.outcome == "unchanged"
    assert not any(c[1] == "DELETE" and "/members/" in c[2] for c in m365.calls)


def test_the_block_group_is_found_by_object_id_and_by_a_quoted_name(m365, m365_tenant):
    quoted = m365.add_group("O'Brien's blocked")
    for wanted in (m365.group_named(BLOCK_GROUP)["id"], "O'Brien's blocked"):
        entra = with_ad(m365_tenant, wanted)
        leaver = add_leaver(m365, len(m365.users), synced=True)
        assert apply(entra, leaver, "add_to_block_group").outcome == "changed"
    assert m365.groups[quoted]["members"] and m365.group_named(BLOCK_GROUP)["members"]


@pytest.mark.parametrize("build_group,words", [
    (lambda fake: "Nobody Has This Group", "no group 'Nobody Has This Group'"),
    (lambda fake: "9d0c6b4e-0000-4000-8000-000000000404", "no group '9d0c6b4e"),
    (lambda fake: [fake.add_group("Twice"), fake.add_group("twice")] and "Twice", "2 groups are named 'Twice'"),
    (lambda fake: fake.add_group("Dyn", dynamic=True) and "Dyn", "dynamic membership"),
    (lambda fake: fake.add_group("Synced", synced=True) and "Synced", "synced from on-premises AD"),
    (lambda fake: fake.add_group("Team", unified=True) and "Team", "Microsoft 365 (Unified)"),
    (lambda fake: fake.add_group("DL", mail_enabled=True) and "DL", "mail-enabled"),
])
def test_a_block_group_that_cannot_carry_a_ca_block_is_a_config_error(m365, m365_tenant, build_group, words):
    entra = with_ad(m365_tenant, build_group(m365))
    leaver = add_leaver(m365, 1, synced=True)
    before = m365.snapshot(leaver.email)
    for read in (entra.check_online, lambda: entra.prepare([leaver])):
        entra.block_group_read = False
        with pytest.raises(ConfigError) as refused:
            read()
        assert refused.value.where == "tenant[0].policy.block_group"
        assert words in refused.value.message and "cloud-only security group" in refused.value.message
    assert m365.snapshot(leaver.email) == before


def test_a_plain_security_group_passes_and_the_check_is_one_read(m365, m365_tenant):
    entra = with_ad(m365_tenant)
    entra.check_online()
    entra.prepare([add_leaver(m365, 1, synced=True)])
    assert entra.block_group["id"] == m365.group_named(BLOCK_GROUP)["id"]
    assert sum(1 for c in m365.calls if c[0] == "graph" and c[2] == "/groups") == 1


def test_cloud_only_users_and_an_empty_block_group_get_no_block(m365, m365_tenant):
    cloud = add_leaver(m365, 1)
    synced = add_leaver(m365, 2, synced=True)
    entra_with_block = with_ad(m365_tenant)
    assert not {"add_to_block_group", "remove_from_block_group"} & set(planned_actions(entra_with_block, cloud))
    kept = apply(entra_with_block, cloud, "remove_groups")       # the block group is no one else's business
    assert BLOCK_GROUP not in kept.reason

    entra_off = with_ad(m365_tenant, "")
    assert not {"add_to_block_group", "remove_from_block_group"} & set(planned_actions(entra_off, synced))
    assert entra_off.block_group is None


def test_a_synced_user_without_ad_gets_no_block(m365, m365_tenant):
    m365_tenant.policy = m365_tenant.policy.model_copy(update={"block_group": BLOCK_GROUP})
    entra = build(m365_tenant, "entra")
    leaver = add_leaver(m365, 1, synced=True)
    assert not {"add_to_block_group", "remove_from_block_group"} & set(planned_actions(entra, leaver))


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


@pytest.mark.parametrize("mailbox,words", [
    (dict(size=56_158_883_840), "52.3 GB (50 GB or more)"),
    (dict(size=50 * GB), "mailbox 50 GB (50 GB or more)"),
    (dict(litigation_hold=True), "on litigation hold"),
    (dict(in_place_holds=["UniH7d895d48-7e23-4a8d-8346-533c3beac15d"]), "In-Place / eDiscovery"),
    (dict(compliance_tag_hold=True), "retention label (ComplianceTagHoldApplied)"),
    (dict(archive=True), "active archive"),
], ids=["52.3GB", "exactly-50GB", "litigation-hold", "in-place-hold", "retention-label", "archive"])
def test_big_held_or_archived_mailboxes_keep_their_licence(m365, entra, mailbox, words):
    leaver = add_leaver(m365, 1, mailbox_kind="SharedMailbox")
    for name, value in mailbox.items():
        setattr(m365.mailboxes[leaver.email], name, value)
    result = apply(entra, leaver, "remove_licenses")
    assert result.outcome == "needs_human"
    assert words in result.reason and "a person decides" in result.reason
    assert len(m365.snapshot(leaver.email)["licences"]) == 2


@pytest.mark.parametrize("archive,held", [
    ({"ArchiveStatus": "Active", "ArchiveGuid": "8f0c1d6e-3a52-4b0e-9d39-5c7d1f2e4a10"}, True),
    ({"ArchiveStatus": "Active"}, True),
    ({"ArchiveStatus": "None", "ArchiveGuid": "8f0c1d6e-3a52-4b0e-9d39-5c7d1f2e4a10"}, True),
    ({"ArchiveStatus": "None", "ArchiveGuid": "00000000-0000-0000-0000-000000000000"}, False),
    ({}, False),
])
def test_an_archive_counts_by_status_or_by_guid(archive, held):
    from connector.providers.microsoft365.entra import licence_holds
    assert bool(licence_holds(archive, {"TotalItemSize": "1 GB (1,073,741,824 bytes)"})) is held


def test_just_under_50_gb_and_no_hold_lets_the_licence_go(m365, entra):
    leaver = add_leaver(m365, 1, mailbox_kind="SharedMailbox", size=50 * GB - 1)
    assert apply(entra, leaver, "remove_licenses").outcome == "changed"
    assert m365.snapshot(leaver.email)["licences"] == []


@pytest.mark.parametrize("text,expected", [
    ("52.3 GB (56,158,883,840 bytes)", 56_158_883_840),
    ("1.2 GB (56,158,883,840 bytes)", 56_158_883_840),          # the bytes count, not the rounded figure
    ("0 B (0 bytes)", 0),
    ("812.4 MB (851,861,094 bytes)", 851_861_094),
    (56_158_883_840, 56_158_883_840),
    ("52.3 GB", None), ("Unlimited", None), (None, None), ("9 GB (12 bytes) and more", None),
])
def test_total_item_size_reads_the_exact_bytes(text, expected):
    from connector.providers.microsoft365.entra import size_in_bytes
    assert size_in_bytes(text) == expected


def test_a_mailbox_size_that_cannot_be_read_keeps_the_licence(m365, entra):
    leaver = add_leaver(m365, 1, mailbox_kind="SharedMailbox")
    m365.exchange.cmd_get_mailboxstatistics = lambda Identity: [{"DisplayName": Identity, "TotalItemSize": "Unlimited"}]
    result = apply(entra, leaver, "remove_licenses")
    assert result.outcome == "needs_human" and "unreadable size ('Unlimited')" in result.reason


def test_a_converting_mailbox_is_looked_at_again_sooner_and_sooner_less_often(m365, entra, exchange_online):
    """15 s, 30 s, then every 60 s, from how long the licence has waited (the action's first intent)."""
    from connector.errors import NotYet
    from connector.providers.microsoft365.entra import conversion_wait

    t0 = dt.datetime(2026, 11, 23, 18, 0, tzinfo=dt.timezone.utc)
    assert [conversion_wait(t0, t0 + dt.timedelta(seconds=s)) for s in (0, 15, 45, 105, 3600)] == [15, 30, 60, 60, 60]
    assert conversion_wait(None, t0) == 15

    leaver = add_leaver(m365, 1)
    apply(exchange_online, leaver, "convert_mailbox_to_shared")
    m365.mailboxes[leaver.email].reads_until_converted = 10 ** 6          # still converting, every pass
    waited, delays = 0.0, []
    for _ in range(4):                   # each pass comes when the previous one asked to be called back
        with pytest.raises(NotYet) as waiting:
            apply(entra, leaver, "remove_licenses", since=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=waited))
        delays.append(round(waiting.value.delay))
        waited += waiting.value.delay
    assert delays == [15, 30, 60, 60]


def test_no_mailbox_no_wait(m365, entra):
    leaver = add_leaver(m365, 1, mailbox=False)
    assert apply(entra, leaver, "remove_licenses").outcome == "changed"


# -- failures ----------------------------------------------------------------------------------

def test_missing_permission_is_a_config_error_naming_it(m365, entra):
    m365.graph.denied.append(("DELETE", r"/users/[^/]+/authentication/.*", "UserAuthenticationMethod.ReadWrite.All"))
    leaver = add_leaver(m365, 1)
    with pytest.raises(ConfigError) as refused:
        apply(entra, leaver, "remove_auth_methods")
    assert "UserAuthenticationMethod.ReadWrite.All" in str(refused.value)


def test_a_refused_read_stops_the_provider_in_prepare(m365, entra):
    m365.graph.denied.append(("GET", r"/users", "User.Read.All"))
    with pytest.raises(ConfigError, match="User.Read.All"):
        entra.prepare([add_leaver(m365, 1)])


def test_a_refused_secret_is_a_config_error(m365, m365_tenant, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "wrong")
    with pytest.raises(ConfigError, match="invalid_client"):
        build(m365_tenant, "entra").check_online()


def test_throttling_storm_on_whole_responses(m365, entra):
    leavers = [add_leaver(m365, n) for n in range(3)]
    m365.graph.knobs.throttle_next = 3
    entra.prepare(leavers)
    assert all(entra.match(t).status == "matched" for t in leavers)
    assert m365.graph.knobs.throttle_next == 0


def test_throttling_storm_inside_batches(m365, entra):
    leavers = [add_leaver(m365, n) for n in range(30)]
    entra.prepare(leavers)
    items = []
    for t in leavers:
        subject = entra.match(t).subject
        items += [(a, ActionContext(t, subject, since=NOW)) for a in entra.plan(subject, t) if a.phase == "revoke"]
    m365.graph.knobs.throttle_next_item = 45
    results = entra.apply_many(items)
    assert [r.outcome for r in results] == ["changed"] * 90
    assert m365.graph.knobs.throttle_next_item == 0
    assert not any(m365.snapshot(t.email)["accountEnabled"] for t in leavers)


# -- auth ------------------------------------------------------------------------------------------

def test_certificate_credential_and_an_authority_msal_does_not_know(tmp_path, reach):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from connector import config
    from connector.providers.microsoft365 import auth

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "app.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    auth.applications.clear()
    cloud = Microsoft365(thumbprint="A" * 40)      # any other host: ConnectionError (responses) or no answer (https)
    cloud.urls = reach(cloud.mount(Sandbox()), {"login": "https://login.sandbox.test",
                                                "graph": "https://graph.sandbox.test",
                                                "exchange": "https://exchange.sandbox.test"})
    block = {"type": "entra", **cloud.provider_block(""), "certificate_path": str(pem), "thumbprint": "A" * 40}
    del block["client_secret"]
    tenant = config.parse({"tenant": [{"id": "sandbox", "provider": [block]}]}).tenants[0]
    build(tenant, "entra").check_online()
    # the tenant's document, then a token for each service and its call (the two services side by side)
    assert cloud.calls[0][0] == "login" and sorted(c[0] for c in cloud.calls) == ["exchange", "graph"] + ["login"] * 3


# -- scale -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sandbox_mode", ["responses"])     # counts requests, not transport: 10 s more over HTTPS
def test_500_leavers_go_in_batches(m365, entra):
    n = 500
    leavers = [add_leaver(m365, i, mailbox_kind="SharedMailbox") for i in range(n)]
    batches = lambda subrequests: math.ceil(subrequests / 20)          # noqa: E731

    m365.calls.clear()
    entra.prepare(leavers)
    subjects = {t.id: entra.match(t).subject for t in leavers}
    plans = {t.id: entra.plan(subjects[t.id], t) for t in leavers}
    # subscribedSkus, one filter per leaver, then memberOf, methods, manager, Teams numbers, role assignments and
    # eligibilities, owned groups and delegated consents
    assert m365.count("graph") == 1 + batches(n) + batches(8 * n)

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


# -- the sandbox bites where Graph does ---------------------------------------------------------------

def test_the_sandbox_behaves_like_graph_where_it_matters(m365):
    import requests

    GRAPH = m365.urls["graph"]
    auth = {"Authorization": f"Bearer {m365.token(GRAPH)}"}
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


def test_the_sandbox_runs_depends_on_in_order_and_refuses_what_graph_refuses(m365):
    import requests

    GRAPH = m365.urls["graph"]
    auth = {"Authorization": f"Bearer {m365.token(GRAPH)}"}
    user = m365.user_by_upn(add_leaver(m365, 1).email)["id"]
    post = lambda *subs: requests.post(f"{GRAPH}/v1.0/$batch", headers=auth, json={"requests": list(subs)})  # noqa: E731
    patch = lambda n, target, **after: {"id": str(n), "method": "PATCH", "url": f"/users/{target}",  # noqa: E731
                                        "body": {"accountEnabled": False},
                                        "headers": {"Content-Type": "application/json"}, **after}
    read = {"id": "2", "method": "GET", "url": f"/users/{user}?$select=accountEnabled", "dependsOn": ["1"]}
    answers = post(patch(0, user), patch(1, user, dependsOn=["0"]), read).json()["responses"]
    assert [a["status"] for a in answers] == [204, 204, 200]
    assert answers[2]["body"]["accountEnabled"] is False          # run after the write it depends on, and saw it
    m365.users[user]["accountEnabled"] = True
    gone = "00000000-0000-0000-0000-000000000000"
    answers = post(patch(0, gone), patch(1, user, dependsOn=["0"]), read).json()["responses"]
    assert [a["status"] for a in answers] == [404, 424, 424]
    assert m365.users[user]["accountEnabled"] is True             # what depended on a failure never ran
    assert post(patch(0, user), patch(1, user, dependsOn=["2"]), read).status_code == 400     # a later request
    assert post(patch(0, user), patch(1, user), read).status_code == 400        # some in sequence, some not
    assert post(patch(0, user), patch(0, user, dependsOn=["0"])).status_code == 400             # ids repeat


def test_a_leavers_revoke_writes_go_in_one_ordered_batch_right_after_the_read_that_matched_them(m365, entra, matched_just_now):
    leaver = add_leaver(m365, 1)
    subject = matched(entra, leaver)
    items = [(a, ActionContext(leaver, subject, since=NOW)) for a in entra.plan(subject, leaver) if a.phase == "revoke"]
    sent = batches_sent(m365)
    results = entra.apply_many(items)
    assert [r.outcome for r in results] == ["changed"] * 3
    [(_, writes)] = sent         # prepare's read is compared: the three writes in one batch, each after the one before
    assert_revoke_sequence(writes, subject)


def test_a_revoke_on_a_read_older_than_fresh_reads_again_first(m365, entra, matched_a_while_ago):
    leaver = add_leaver(m365, 1)
    subject = matched(entra, leaver)
    items = [(a, ActionContext(leaver, subject, since=NOW)) for a in entra.plan(subject, leaver) if a.phase == "revoke"]
    sent = batches_sent(m365)
    assert [r.outcome for r in entra.apply_many(items)] == ["changed"] * 3
    (_, reread), (_, writes) = sent           # one read round, then the writes
    assert [(s["method"], s["url"].split("?")[0]) for s in reread] == [("GET", f"/users/{subject.native_id}")]
    assert_revoke_sequence(writes, subject)


def assert_revoke_sequence(writes: list[dict], subject) -> None:
    assert [(s["method"], s["url"].rsplit("/", 1)[-1], s.get("dependsOn")) for s in writes] == [
        ("PATCH", subject.native_id, None), ("PATCH", subject.native_id, ["0"]), ("POST", "revokeSignInSessions", ["1"])]
    assert [next(iter(s["body"])) for s in writes[:2]] == ["accountEnabled", "passwordProfile"]   # block first


def test_a_step_that_fails_in_the_sequence_holds_back_none_of_the_rest(m365, entra, matched_just_now):
    """Graph answers 424 for what depended on a failure; those go again without it, in their order."""
    leaver = add_leaver(m365, 1)
    subject = matched(entra, leaver)
    items = [(a, ActionContext(leaver, subject, since=NOW)) for a in entra.plan(subject, leaver) if a.phase == "revoke"]
    before, patch_user = m365.snapshot(leaver.email), m365.graph.patch_user

    def refusing_the_block(call, user_id):
        if "accountEnabled" in call.body:
            return graph_error(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
        return patch_user(call, user_id)

    m365.graph.patch_user = refusing_the_block
    m365.calls.clear()
    block, reset, revoke = entra.apply_many(items)
    assert block.message.startswith("HTTP 403") and (reset.outcome, revoke.outcome) == ("changed", "changed")
    after = m365.snapshot(leaver.email)
    assert after["accountEnabled"] is True
    assert after["password"] != before["password"]
    assert after["sessions"] != before["sessions"]
    # prepare's read is compared; the sequence (the two after the refusal answered 424, unrun); those two again
    assert m365.count("graph") == 2 and m365.count("graph-sub") == 3 + 2


def test_many_leavers_sequences_go_position_by_position_in_full_batches(m365, entra):
    """Hundreds of sequences would cost an envelope each: every leaver's next write goes out together instead."""
    leavers = [add_leaver(m365, n) for n in range(40)]
    entra.prepare(leavers)
    items = [(a, ActionContext(t, entra.match(t).subject, since=NOW)) for t in leavers
             for a in entra.plan(entra.match(t).subject, t) if a.phase == "revoke"]
    sent = batches_sent(m365)
    assert {r.outcome for r in entra.apply_many(items)} == {"changed"}
    writes = [subs for _, subs in sent if subs[0]["method"] != "GET"]
    assert [len(subs) for subs in writes] == [20, 20] * 3 and not any("dependsOn" in s for b in writes for s in b)
    kinds = [{next(iter(s.get("body") or {"revoke": 1})) for s in subs} for subs in writes]
    assert kinds == [{"accountEnabled"}] * 2 + [{"passwordProfile"}] * 2 + [{"revoke"}] * 2    # in order, together


# -- MFA methods: the order Graph accepts -----------------------------------------------------------

def test_mfa_methods_go_in_the_order_graph_accepts_and_what_v1_cannot_delete_is_reported(m365, entra):
    user = m365.add_user("mfa.leaver@contoso.com", employee_id="E77", default="phone",
                         methods=("password", "phone", "phone:alternateMobile", "microsoftAuthenticator", "fido2",
                                  "qrCodePin"))
    leaver = Termination("contoso", "E77", "mfa.leaver@contoso.com")
    result = apply(entra, leaver, "remove_auth_methods")
    assert result.outcome == "changed"
    assert result.before == {"methods": ["fido2", "microsoftAuthenticator", "phone (alternateMobile)", "phone (mobile)",
                                         "qrCodePin"]}
    assert result.after == {"methods": ["qrCodePin"]}
    assert "kept qrCodePin: Graph v1.0 has no way to delete it" in result.reason
    assert [m["@odata.type"] for m in m365.methods[user]] == ["#microsoft.graph.passwordAuthenticationMethod",
                                                              "#microsoft.graph.qrCodePinAuthenticationMethod"]
    deletes = [path for service, method, path in m365.calls if service == "graph-sub" and method == "DELETE"]
    assert len(deletes) == 4 and not any("qrCode" in p or "password" in p for p in deletes)
    assert deletes[-1].endswith(m365.default_method[user])     # the mobile, alone, in the last round
    assert "remove_auth_methods" not in [a.action for a in entra.plan(matched(entra, leaver), leaver)]


def test_the_sandbox_refuses_the_orders_graph_refuses(m365):
    import requests

    GRAPH = m365.urls["graph"]

    user = m365.add_user("mfa.leaver@contoso.com", default="phone",
                         methods=("password", "phone", "phone:alternateMobile", "microsoftAuthenticator"))
    mobile, alternate, app = (m["id"] for m in m365.methods[user][1:])
    token = m365.token(GRAPH)
    delete = lambda kind, method_id: requests.delete(              # noqa: E731
        f"{GRAPH}/v1.0/users/{user}/authentication/{kind}/{method_id}", headers={"Authorization": f"Bearer {token}"})
    default_first = delete("phoneMethods", mobile)
    assert default_first.status_code == 400 and default_first.json()["error"]["message"] == DEFAULT_REFUSED
    m365.default_method[user] = app
    mobile_first = delete("phoneMethods", mobile)
    assert mobile_first.status_code == 400 and mobile_first.json()["error"]["message"] == MOBILE_REFUSED
    assert len(m365.methods[user]) == 4                          # both refusals changed nothing
    assert delete("phoneMethods", alternate).status_code == 204
    assert delete("phoneMethods", mobile).status_code == 204
    assert delete("microsoftAuthenticatorMethods", app).status_code == 204     # the default, last
    assert len(m365.methods[user]) == 1


def test_a_default_refused_in_one_round_goes_in_the_next(m365, entra):
    user = m365.add_user("mfa.leaver@contoso.com", employee_id="E77", default="softwareOath",
                         methods=("password", "microsoftAuthenticator", "phone", "softwareOath"))
    leaver = Termination("contoso", "E77", "mfa.leaver@contoso.com")
    assert apply(entra, leaver, "remove_auth_methods").outcome == "changed"
    assert len(m365.methods[user]) == 1
    oath_deletes = [p for s, m, p in m365.calls if s == "graph-sub" and "softwareOathMethods" in p]
    assert len(oath_deletes) >= 2                # refused while others remained, sent again until accepted


def test_a_default_that_an_undeletable_method_holds_in_place_needs_a_human(m365, entra):
    """hardwareOath is listed but has no v1.0 collection: the default phone cannot go while it is there."""
    user = m365.add_user("mfa.leaver@contoso.com", employee_id="E77", default="phone",
                         methods=("password", "phone", "hardwareOath"))
    leaver = Termination("contoso", "E77", "mfa.leaver@contoso.com")
    result = apply(entra, leaver, "remove_auth_methods")
    assert result.outcome == "needs_human"
    assert result.after == {"methods": ["hardwareOath", "phone (mobile)"]}
    assert "refused to delete phone (mobile)" in result.reason and "kept hardwareOath" in result.reason
    assert len(m365.methods[user]) == 3


def test_a_refusal_with_nothing_else_to_blame_is_retried_next_pass(m365, entra):
    """Entra replicates: a default still refused when it is the last method waits for the next pass."""
    user = m365.add_user("mfa.leaver@contoso.com", employee_id="E77", default="phone",
                         methods=("password", "phone", "email"))
    lagging, delete = {"refusals": 3}, m365.graph.delete_method

    def replicating(call, user_id, collection, method_id):
        if method_id == m365.default_method.get(user_id) and lagging["refusals"]:
            lagging["refusals"] -= 1
            return graph_error(400, "badRequest", DEFAULT_REFUSED)
        return delete(call, user_id, collection, method_id)

    m365.graph.delete_method = replicating
    leaver = Termination("contoso", "E77", "mfa.leaver@contoso.com")
    with pytest.raises(RetryableError, match="refused to delete phone \\(mobile\\).*the next pass tries again"):
        apply(entra, leaver, "remove_auth_methods")
    assert [m["@odata.type"] for m in m365.methods[user]][1:] == ["#microsoft.graph.phoneAuthenticationMethod"]
    lagging["refusals"] = 0
    assert apply(entra, leaver, "remove_auth_methods").outcome == "changed"
    assert len(m365.methods[user]) == 1


def test_an_alternate_mobile_default_deadlock_needs_a_human(m365, entra):
    m365.add_user("mfa.leaver@contoso.com", employee_id="E77", default="phone:alternateMobile",
                  methods=("password", "phone", "phone:alternateMobile"))
    result = apply(entra, Termination("contoso", "E77", "mfa.leaver@contoso.com"), "remove_auth_methods")
    assert result.outcome == "needs_human" and "change the default in the Entra admin center" in result.reason
    assert result.after == {"methods": ["phone (alternateMobile)", "phone (mobile)"]}


# -- $batch: failed dependencies, throttling and outages are retried -------------------------------

@pytest.mark.parametrize("status", [424, 429, 503])
@pytest.mark.parametrize("scope", ["batch_item", "batch"])
def test_batch_answers_424_429_503_are_retried(m365, entra, scope, status):
    leavers = [add_leaver(m365, n) for n in range(3)]
    entra.prepare(leavers)
    items = [(a, ActionContext(t, entra.match(t).subject, since=NOW)) for t in leavers
             for a in entra.plan(entra.match(t).subject, t) if a.phase == "revoke"]
    m365.graph.faults[scope] = [status] * 4
    results = entra.apply_many(items)
    assert [r.outcome for r in results] == ["changed"] * 9
    assert m365.graph.faults[scope] == []
    assert not any(m365.snapshot(t.email)["accountEnabled"] for t in leavers)


@pytest.mark.parametrize("scope", ["batch_item", "batch"])
def test_a_long_retry_after_is_handed_to_the_engine_not_slept(m365, entra, scope):
    import time

    leaver = add_leaver(m365, 1)
    subject = matched(entra, leaver)
    block = next(a for a in entra.plan(subject, leaver) if a.action == "block_sign_in")
    m365.graph.faults[scope], m365.graph.knobs.retry_after = [503], 120
    started = time.monotonic()
    [result] = entra.apply_many([(block, ActionContext(leaver, subject, since=NOW))])
    assert time.monotonic() - started < 5
    assert isinstance(result, RetryableError) and result.delay == 120
    assert m365.snapshot(leaver.email)["accountEnabled"] is True


def test_retries_inside_a_batch_are_bounded(m365, entra):
    from connector.providers.microsoft365.graph import BATCH_ATTEMPTS

    leaver = add_leaver(m365, 1)
    subject = matched(entra, leaver)
    block = next(a for a in entra.plan(subject, leaver) if a.action == "block_sign_in")
    m365.graph.faults["batch_item"] = [503] * 100
    [result] = entra.apply_many([(block, ActionContext(leaver, subject, since=NOW))])
    assert isinstance(result, RetryableError) and "HTTP 503" in result.message
    assert 100 - len(m365.graph.faults["batch_item"]) == BATCH_ATTEMPTS        # the re-read, tried that often; no write
    assert m365.snapshot(leaver.email)["accountEnabled"] is True


def test_a_batch_far_above_the_throttle_is_paced_by_it_and_loses_no_call(m365, entra):
    from connector.providers.microsoft365.graph import BATCH_ATTEMPTS, GraphCall

    m365.graph.knobs.bucket = TokenBucket(rate=50, burst=50)
    calls = [GraphCall("GET", "/subscribedSkus")] * 350     # sent all at once, 5 attempts each would win only 250
    results = entra.graph.batch(calls)
    assert all(isinstance(r, dict) and r["value"] for r in results), [r for r in results if not isinstance(r, dict)]
    sent = m365.count("graph-sub")
    assert 350 < sent < 350 * BATCH_ATTEMPTS / 2          # the throttled round held the rest back, unspent


# -- admin detection: every way of holding a role -------------------------------------------------

def _in_group(m365, user_upn, group):
    m365.groups[group]["members"].add(m365.user_by_upn(user_upn)["id"])


ADMIN_WAYS = {
    "direct": lambda m365, uid: m365.assign_role(uid, "Global Administrator"),
    "role-assignable group": lambda m365, uid: (
        m365.assign_role(g := m365.add_group("Tier0 Admins", role_assignable=True), "Exchange Administrator"),
        m365.groups[g]["members"].add(uid)),
    "PIM eligible": lambda m365, uid: m365.assign_role(uid, "Privileged Role Administrator", eligible=True),
    "PIM eligible through a group": lambda m365, uid: (
        m365.assign_role(g := m365.add_group("PIM Admins", role_assignable=True), "Security Administrator",
                         eligible=True),
        m365.groups[g]["members"].add(uid)),
    "custom role": lambda m365, uid: m365.assign_role(uid, "Helpdesk Plus"),
    "admin unit scope": lambda m365, uid: m365.assign_role(uid, "User Administrator",
                                                           scope="/administrativeUnits/4c9c5f0a-au"),
}
ADMIN_REASONS = {
    "direct": "holds directory role Global Administrator",
    "role-assignable group": "holds directory role Exchange Administrator through group Tier0 Admins",
    "PIM eligible": "eligible (PIM) for directory role Privileged Role Administrator",
    "PIM eligible through a group": "eligible (PIM) for directory role Security Administrator through group PIM Admins",
    "custom role": "holds custom directory role Helpdesk Plus",
    "admin unit scope": "holds directory role User Administrator scoped to /administrativeUnits/4c9c5f0a-au",
}


@pytest.mark.parametrize("provider_kind", ["entra", "exchange_online"])
@pytest.mark.parametrize("way", list(ADMIN_WAYS))
def test_every_way_of_holding_a_role_makes_an_admin(m365, m365_tenant, way, provider_kind):
    for role in ("Exchange Administrator", "Privileged Role Administrator", "Security Administrator",
                 "User Administrator"):
        m365.add_role(role)
    m365.add_role("Helpdesk Plus", custom=True)
    leaver = add_leaver(m365, 1)
    ADMIN_WAYS[way](m365, m365.user_by_upn(leaver.email)["id"])
    bystander = add_leaver(m365, 2)
    provider = build(m365_tenant, provider_kind)
    provider.prepare([leaver, bystander])
    subject = provider.match(leaver).subject
    assert subject.is_admin and subject.admin_reason == ADMIN_REASONS[way]
    assert not provider.match(bystander).subject.is_admin


def test_role_reads_are_schema_checked_and_group_reads_only_for_role_assignable_groups(m365, entra):
    leaver = add_leaver(m365, 1)
    entra.prepare([leaver])
    role_paths = [p for s, _, p in m365.calls if s == "graph-sub" and p.startswith("/roleManagement")]
    assert sorted(role_paths) == ["/roleManagement/directory/roleAssignments",
                                  "/roleManagement/directory/roleEligibilityScheduleInstances"]   # the user only


def test_without_p2_nobody_is_eligible_and_direct_roles_still_count(m365, entra):
    m365.pim_licensed = False
    admin, plain = add_leaver(m365, 1, roles=("Global Administrator",)), add_leaver(m365, 2)
    entra.prepare([admin, plain])
    assert entra.match(admin).subject.is_admin
    assert not entra.match(plain).subject.is_admin


def test_a_role_read_that_fails_fails_the_match_not_the_guard(m365, entra):
    leaver, other = add_leaver(m365, 1), add_leaver(m365, 2)
    m365.add_role("Exchange Administrator")
    group = m365.add_group("Tier0 Admins", role_assignable=True)
    m365.groups[group]["members"].add(m365.user_by_upn(leaver.email)["id"])
    m365.graph.failing[r"/roleManagement/directory/roleEligibilityScheduleInstances"] = 500
    entra.prepare([leaver, other])                   # not a credential problem: the pass goes on
    for termination in (leaver, other):
        with pytest.raises(RetryableError, match="HTTP 500"):
            entra.match(termination)
    m365.graph.failing.clear()
    entra.prepare([leaver])
    assert entra.match(leaver).status == "matched"


def test_a_refused_role_read_names_the_permission(m365, entra):
    m365.graph.denied.append(("GET", r"/roleManagement/directory/roleAssignments", "RoleManagement.Read.Directory"))
    with pytest.raises(ConfigError, match="RoleManagement.Read.Directory"):
        entra.prepare([add_leaver(m365, 1)])


# -- answers are hostile: paging and bodies ---------------------------------------------------------

def _reached(reach, host: str) -> list:
    return [c.request for rsps in reach.mocks for c in rsps.calls if host in c.request.url]


@pytest.mark.parametrize("sandbox_mode", ["responses"])           # sees every request the client sent
@pytest.mark.parametrize("provider_kind", ["entra", "exchange_online"])
def test_a_next_link_to_another_host_is_not_followed(m365, m365_tenant, reach, provider_kind):
    from connector.errors import PermanentError

    m365.graph.next_link = m365.exchange.next_link = "https://evil.example/v1.0/users?$skiptoken=2"
    provider = build(m365_tenant, provider_kind)
    with pytest.raises(PermanentError, match="points away from the configured host \\('evil.example'\\)"):
        provider.prepare([add_leaver(m365, 1)])
    assert _reached(reach, "evil.example") == []


@pytest.mark.parametrize("sandbox_mode", ["responses"])
def test_a_next_link_inside_a_batch_is_held_to_the_same_rule(m365, exchange_online, reach):
    from connector.errors import PermanentError

    leaver, other = add_leaver(m365, 1), add_leaver(m365, 2)
    exchange_online.prepare([leaver])                    # accepted domains read (once a pass) before the forgery
    m365.graph.next_link = m365.exchange.next_link = "https://graph.microsoft.com.evil.example/v1.0/users?$skiptoken=2"
    exchange_online.prepare([leaver, other])             # the matching reads go in a $batch: each fails alone
    for termination in (leaver, other):
        with pytest.raises(PermanentError, match="points away"):
            exchange_online.match(termination)
    assert _reached(reach, "evil.example") == []


@pytest.mark.parametrize("provider_kind", ["entra", "exchange_online"])
def test_a_self_pointing_next_link_stops(m365, m365_tenant, provider_kind):
    from connector.errors import PermanentError

    m365.graph.next_link = m365.exchange.next_link = "SELF"
    with pytest.raises(PermanentError, match="repeats a page already read"):
        build(m365_tenant, provider_kind).prepare([add_leaver(m365, 1)])


def test_paging_stops_at_the_page_cap(m365, entra, monkeypatch):
    from connector.errors import PermanentError
    from connector.providers.microsoft365 import graph
    from connector.providers.microsoft365.graph import GraphCall

    monkeypatch.setattr(graph, "MAX_PAGES", 3)
    for n in range(5):
        add_leaver(m365, n)
    assert len(list(entra.graph.pages(GraphCall("GET", "/users?$top=2&$select=id")))) == 6       # 3 pages of 2
    with pytest.raises(PermanentError, match="more than 3 pages"):
        list(entra.graph.pages(GraphCall("GET", "/users?$top=1&$select=id")))


@pytest.mark.parametrize("body,error,words", [
    ("<html><body><h1>Service Unavailable</h1></body></html>", RetryableError, "not JSON"),
    ("[" * 100_000 + "]" * 100_000, "PermanentError", "nested too deep"),
    ('["not", "an", "object"]', "PermanentError", "a JSON list, not an object"),
], ids=["html", "deep", "list"])
def test_a_body_that_is_not_a_json_object_is_a_typed_error(m365, entra, body, error, words):
    from connector import errors

    error = getattr(errors, error) if isinstance(error, str) else error
    m365.graph.raw[r"/subscribedSkus"] = body
    with pytest.raises(error) as raised:
        entra.prepare([add_leaver(m365, 1)])
    assert words in raised.value.message
    assert raised.value.where == "tenant[0].provider[0] GET /subscribedSkus"
