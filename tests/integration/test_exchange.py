"""The Exchange Online provider against the sandbox's tenant: contract, policy, ordering, the adapter's failures."""
from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest

from connector.errors import NeedsHuman, PermanentError
from connector.model import ActionContext, Termination
from connector.providers.microsoft365.exchange import plain
from connector.sandbox.tenant import Mailbox
from tests.contract.provider_contract import ProviderContract
from tests.integration.test_entra import Secrets, apply, matched
from tests.sandboxes import MANAGER, MODES, add_leaver, build

SANDBOX_MODES = MODES

ACTIONS = ["clear_mobile_devices", "convert_mailbox_to_shared", "grant_mailbox_access", "set_auto_reply",
           "set_forwarding", "hide_from_gal"]


class TestExchangeContract(ProviderContract):
    action_names = ACTIONS

    @pytest.fixture
    def provider(self, exchange_online):
        return exchange_online

    @pytest.fixture
    def leaver(self, m365):
        return add_leaver(m365, 1)

    @pytest.fixture
    def snapshot(self, m365):
        return lambda termination: m365.snapshot(termination.email)["mailbox"]

    @pytest.fixture
    def secrets(self, m365):
        return Secrets(m365)


def test_the_mailbox_read_by_the_feeds_address_counts_only_when_it_is_the_matched_accounts(m365, exchange_online):
    """Exchange resolves an address Graph's search does not know (here: another person's, as Exchange might
    after a rename): read beside the match, it is dropped, and the matched account's own mailbox is read."""
    leaver, other = add_leaver(m365, 1), add_leaver(m365, 2)
    mailbox_reads = lambda: [p for service, _, p in m365.calls if service == "exchange"].count("Get-Mailbox")  # noqa: E731
    m365.calls.clear()
    assert matched(exchange_online, leaver).state["mailbox"]["UserPrincipalName"] == leaver.email
    honest = mailbox_reads()                                 # its mailbox by its address, used as read
    m365.mailboxes["alias@contoso.com"] = m365.mailboxes[other.email]
    m365.calls.clear()
    subject = matched(exchange_online, dataclasses.replace(leaver, email="alias@contoso.com"))
    assert subject.state["mailbox"]["UserPrincipalName"] == leaver.email
    assert mailbox_reads() == honest + 1                     # the other person's, dropped; then its own by UPN


def test_whole_preserve_phase_in_order(m365, exchange_online):
    leaver = add_leaver(m365, 1)
    subject = matched(exchange_online, leaver)
    plan = exchange_online.plan(subject, leaver)
    assert [a.action for a in plan] == ACTIONS
    m365.calls.clear()
    results = exchange_online.apply_many([(a, ActionContext(leaver, subject)) for a in plan])
    assert [r.outcome for r in results] == ["changed"] * 6
    writes = [path for service, _, path in m365.calls if service == "exchange" and not path.startswith("Get-")]
    assert writes.index("Clear-MobileDevice") < writes.index("Set-Mailbox")     # wipe before the conversion
    box = m365.mailboxes[leaver.email]
    assert box.devices[0]["AccountOnly"] is True
    assert box.permissions[0]["User"] == MANAGER and box.permissions[0]["AutoMapping"] is True
    assert "Leaver Person has left Contoso Ltd. Please contact " + MANAGER in box.auto_reply["InternalMessage"]  # names: letters only
    assert box.forwarding == f"smtp:{MANAGER}" and box.hidden


@pytest.mark.parametrize("m365_policy", [{"mailbox": "keep", "mailbox_delegate": "none", "forward_to": "none",
                                          "hide_from_gal": False, "auto_reply": ""}])
def test_policy_can_switch_every_handover_off(m365, exchange_online):
    leaver = add_leaver(m365, 1)
    assert [a.action for a in exchange_online.plan(matched(exchange_online, leaver), leaver)] == ["clear_mobile_devices"]


@pytest.mark.parametrize("m365_policy", [{"mailbox_delegate": "deputy@contoso.com", "forward_to": "deputy@contoso.com"}])
def test_delegate_by_address(m365, exchange_online):
    m365.add_user("deputy@contoso.com")
    leaver = add_leaver(m365, 1)
    assert apply(exchange_online, leaver, "grant_mailbox_access").after == {"FullAccess": ["deputy@contoso.com"]}
    assert apply(exchange_online, leaver, "set_forwarding").after == {"ForwardingSmtpAddress": "deputy@contoso.com"}


def test_an_unknown_delegate_fails_with_the_cmdlets_words(m365, exchange_online):
    leaver = add_leaver(m365, 1)
    stranger = Termination("contoso", "E1", leaver.email, successor="gone@contoso.com")
    with pytest.raises(PermanentError, match="couldn't be found"):
        apply(exchange_online, stranger, "grant_mailbox_access")


def test_no_mailbox_is_not_found(m365, exchange_online):
    leaver = add_leaver(m365, 1, mailbox=False)
    exchange_online.prepare([leaver])
    assert exchange_online.match(leaver).status == "not_found"


def test_paging_and_throttling(m365, exchange_online):
    leaver = add_leaver(m365, 1)
    m365.exchange.page = 1            # SELF, then the manager: two pages
    m365.mailboxes[leaver.email].permissions.append({"User": MANAGER, "AccessRights": ["FullAccess"],
                                                     "IsInherited": False, "Deny": False})
    m365.exchange.knobs.throttle_next = 3
    subject = matched(exchange_online, leaver)
    assert "grant_mailbox_access" not in [a.action for a in exchange_online.plan(subject, leaver)]
    assert m365.exchange.knobs.throttle_next == 0


def test_preserve_then_reclaim_for_many(m365, entra, exchange_online):
    """The ordering rule end to end: convert first; licences go once the mailbox reads back shared."""
    leavers = [add_leaver(m365, n) for n in range(5)]
    exchange_online.prepare(leavers)
    items = [(a, ActionContext(t, exchange_online.match(t).subject)) for t in leavers
             for a in exchange_online.plan(exchange_online.match(t).subject, t)]
    assert {r.outcome for r in exchange_online.apply_many(items)} == {"changed"}
    since = dt.datetime.now(dt.timezone.utc)
    entra.prepare(leavers)
    reclaim = [(a, ActionContext(t, entra.match(t).subject, since=since)) for t in leavers
               for a in entra.plan(entra.match(t).subject, t) if a.action == "remove_licenses"]
    assert {type(r).__name__ for r in entra.apply_many(reclaim)} == {"NotYet"}
    assert {r.outcome for r in entra.apply_many(reclaim)} == {"changed"}


# -- the anchor, and proving the credential -----------------------------------------------------------

def test_tenant_level_cmdlets_use_the_app_only_anchor_and_mailbox_cmdlets_the_upn(m365, exchange_online):
    leaver = add_leaver(m365, 1)
    exchange_online.check_online()
    apply(exchange_online, leaver, "hide_from_gal")
    app = f"APP:SystemMailbox{{bb558c35-97f1-4cb9-8ff7-d53741dc928c}}@{m365.tenant_id}"
    assert ("Get-AcceptedDomain", app) in m365.exchange.anchors
    assert ("Get-Mailbox", f"UPN:{leaver.email}") in m365.exchange.anchors
    assert ("Set-Mailbox", f"UPN:{leaver.email}") in m365.exchange.anchors
    assert {anchor for name, anchor in m365.exchange.anchors if name == "Get-AcceptedDomain"} == {app}


@pytest.mark.parametrize("cmdlet,anchor", [("Get-AcceptedDomain", "UPN:leaver1.person@contoso.com"),
                                           ("Get-Mailbox", "APP:SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}@x"),
                                           ("Get-Mailbox", "")])
def test_the_sandbox_refuses_a_wrong_anchor(m365, cmdlet, anchor):
    import requests

    exchange = m365.urls["exchange"]
    params = {"Identity": "leaver1.person@contoso.com"} if cmdlet == "Get-Mailbox" else {}
    answer = requests.post(f"{exchange}/adminapi/beta/{m365.tenant_id}/InvokeCommand",
                           headers={"Authorization": f"Bearer {m365.token(exchange)}", "X-AnchorMailbox": anchor},
                           json={"CmdletInput": {"CmdletName": cmdlet, "Parameters": params}})
    assert answer.status_code == 400 and "anchor" in answer.text.lower()


@pytest.mark.parametrize("provider_kind", ["entra", "exchange_online"])
@pytest.mark.parametrize("denied,names", [
    ("permission", "missing: the Exchange.ManageAsApp application permission"),
    ("role", "missing: an Exchange role for the app's service principal"),
])
def test_check_online_proves_the_exchange_credential_and_names_what_is_missing(m365, m365_tenant, provider_kind,
                                                                                denied, names):
    from connector.errors import ConfigError

    provider = build(m365_tenant, provider_kind)
    provider.check_online()
    m365.exchange.denied = denied
    with pytest.raises(ConfigError) as refused:
        provider.check_online()
    assert names in refused.value.message and "Get-AcceptedDomain" in str(refused.value)


@pytest.mark.parametrize("body,error", [("<html><body>Sign in to continue</body></html>", "RetryableError"),
                                        ('{"a": ' * 50_000 + "1" + "}" * 50_000, "PermanentError")], ids=["html", "deep"])
def test_an_exchange_answer_that_is_not_a_json_object_is_a_typed_error(m365, exchange_online, body, error):
    from connector import errors

    m365.exchange.raw["Get-AcceptedDomain"] = body
    with pytest.raises(getattr(errors, error)) as raised:
        exchange_online.check_online()
    assert raised.value.where.endswith("Get-AcceptedDomain") and "JSON" in raised.value.message


# -- the facts the successor rules will need -------------------------------------------------------------

@pytest.mark.parametrize("provider_kind", ["entra", "exchange_online"])
def test_the_directory_manager_is_read_for_the_successor_rules(m365, m365_tenant, provider_kind):
    leaver = add_leaver(m365, 1, synced=True, immutable_id="u5Kx0m3Z3EmR8Xk2m9Q1vA==")
    m365.add_user("orphan@contoso.com", employee_id="E9", mailbox=Mailbox("orphan@contoso.com"))
    orphan = Termination("contoso", "E9", "orphan@contoso.com")
    provider = build(m365_tenant, provider_kind)
    provider.prepare([leaver, orphan])
    subject = provider.match(leaver).subject
    assert subject.manager == {"address": MANAGER, "enabled": True, "id": m365.user_by_upn(MANAGER)["id"],
                               "mail": MANAGER, "userPrincipalName": MANAGER}
    assert subject.anchor == "u5Kx0m3Z3EmR8Xk2m9Q1vA=="
    assert provider.match(orphan).subject.manager is None and provider.match(orphan).subject.anchor == ""
    m365.users[m365.user_by_upn(MANAGER)["id"]]["accountEnabled"] = False
    provider.prepare([leaver])
    assert provider.match(leaver).subject.manager["enabled"] is False


def test_the_accepted_domains_are_read_once_a_pass(m365, exchange_online):
    leaver = add_leaver(m365, 1)
    exchange_online.prepare([leaver])
    exchange_online.prepare([leaver])
    assert exchange_online.tenant_domains() == {"contoso.com": "Authoritative", "contoso.onmicrosoft.com": "Authoritative"}
    assert [p for service, _, p in m365.calls if service == "exchange"].count("Get-AcceptedDomain") == 1


# -- the HR feed cannot redirect a leaver's mail or speak for the company (issue 8, section 2) ----------
def test_the_feeds_manager_field_never_receives_the_mail(m365, exchange_online):
    """A record naming an outsider as manager: forwarding and FullAccess go to the directory's manager."""
    leaver = dataclasses.replace(add_leaver(m365, 1), manager_email="attacker@evil.example")
    assert apply(exchange_online, leaver, "set_forwarding").after == {"ForwardingSmtpAddress": MANAGER}
    assert apply(exchange_online, leaver, "grant_mailbox_access").after == {"FullAccess": [MANAGER]}
    assert "evil.example" not in str(m365.mailboxes[leaver.email.lower()].__dict__)


def test_without_a_successor_the_hand_over_waits_for_a_person(m365, exchange_online):
    leaver = dataclasses.replace(add_leaver(m365, 1), successor="")
    planned = [a.action for a in exchange_online.plan(matched(exchange_online, leaver), leaver)]
    assert {"grant_mailbox_access", "set_forwarding", "set_auto_reply"} <= set(planned)
    for action in ("grant_mailbox_access", "set_forwarding", "set_auto_reply"):
        with pytest.raises(NeedsHuman, match="no enabled manager"):
            apply(exchange_online, leaver, action)
    box = m365.mailboxes[leaver.email.lower()]
    assert box.forwarding is None and not box.auto_reply.get("InternalMessage")


@pytest.mark.parametrize("m365_policy", [{"forward_to": "partner@outside.example"}])
def test_forwarding_outside_the_accepted_domains_needs_a_person(m365, exchange_online):
    leaver = add_leaver(m365, 1)
    with pytest.raises(NeedsHuman, match="outside the tenant"):
        apply(exchange_online, leaver, "set_forwarding")
    assert m365.mailboxes[leaver.email.lower()].forwarding is None


@pytest.mark.parametrize("m365_policy", [{"forward_to": "partner@outside.example",
                                          "forward_domains": ["Outside.Example"]}])
def test_forwarding_to_a_domain_the_policy_lists_is_allowed(m365, exchange_online):
    leaver = add_leaver(m365, 1)
    assert apply(exchange_online, leaver, "set_forwarding").after == {"ForwardingSmtpAddress": "partner@outside.example"}


def test_a_crafted_name_cannot_put_a_link_or_an_address_in_the_auto_reply(m365, exchange_online):
    crafted = "Our bank details changed: pay to IBAN DE89 3704 0044 at https://pay.evil.example or x@evil.example"
    leaver = dataclasses.replace(add_leaver(m365, 1), first_name=crafted, last_name="<script>alert(1)</script>")
    apply(exchange_online, leaver, "set_auto_reply")
    message = m365.mailboxes[leaver.email.lower()].auto_reply["ExternalMessage"]
    assert MANAGER in message
    words = plain(message).replace(MANAGER, "")
    assert "://" not in words and "@" not in words and "<script" not in message
    assert not re.findall(r"\d", words) and not re.findall(r"[\w-]+(?:\.[\w-]+)+", words.replace("Ltd.", "Ltd"))
