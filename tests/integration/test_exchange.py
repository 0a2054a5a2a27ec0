"""The Exchange Online provider against the fake tenant: contract, policy, ordering, the adapter's failures."""
from __future__ import annotations

import datetime as dt

import pytest

from connector.errors import PermanentError
from connector.model import ActionContext, Termination
from tests.contract.provider_contract import ProviderContract
from tests.fakes.m365 import (MANAGER, add_leaver, entra, exchange_online, m365, m365_policy,  # noqa: F401
                              m365_tenant)
from tests.integration.test_entra import Secrets, apply, matched

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
    assert "Leaver Person1 has left Contoso Ltd. Please contact " + MANAGER in box.auto_reply["InternalMessage"]
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
    stranger = Termination("contoso", "E1", leaver.email, manager_email="gone@contoso.com")
    with pytest.raises(PermanentError, match="couldn't be found"):
        apply(exchange_online, stranger, "grant_mailbox_access")


def test_no_mailbox_is_not_found(m365, exchange_online):
    leaver = add_leaver(m365, 1, mailbox=False)
    exchange_online.prepare([leaver])
    assert exchange_online.match(leaver).status == "not_found"


def test_paging_and_throttling(m365, exchange_online):
    leaver = add_leaver(m365, 1)
    m365.exchange_page = 1            # SELF, then the manager: two pages
    m365.mailboxes[leaver.email].permissions.append({"User": MANAGER, "AccessRights": ["FullAccess"],
                                                     "IsInherited": False, "Deny": False})
    m365.throttles["exchange"] = 3
    subject = matched(exchange_online, leaver)
    assert "grant_mailbox_access" not in [a.action for a in exchange_online.plan(subject, leaver)]
    assert m365.throttles["exchange"] == 0


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
