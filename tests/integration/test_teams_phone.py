"""Teams Phone numbers in the entra provider, against the sandbox's Graph (every call checked against v1.0).

Number orders are asynchronous: 202 and a Location the provider polls. The sandbox's operation
answers `running` for `operation_polls` reads, then lands the change and says `succeeded`
(or `failed`, with the reason a test put in `number_refusals`).
"""
from __future__ import annotations

import pytest

from connector import config
from connector.errors import NotYet, PermanentError
from connector.model import ActionContext, PlannedAction
from connector.providers.microsoft365 import teams_phone
from tests.contract.provider_contract import run_action
from tests.sandboxes import MANAGER, MODES, SECRET_ENV, add_leaver, build

SANDBOX_MODES = MODES


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr(teams_phone, "POLL_WAITS", (0.0, 0.05, 0.1))


def entra_with(m365, **policy):
    raw = {"tenant": [{"id": "contoso", "policy": policy,
                       "provider": [{"type": "entra", **m365.provider_block(f"env:{SECRET_ENV}")}]}]}
    return build(config.parse(raw).tenants[0], "entra")


def three_passes(entra, leaver, name, snapshot):
    untouched = snapshot()
    assert run_action(entra, leaver, name, dry_run=True).outcome == "planned"
    assert snapshot() == untouched
    first = run_action(entra, leaver, name)
    assert first.outcome == "changed" and snapshot() != untouched
    again = run_action(entra, leaver, name)
    assert again is None or again.outcome == "unchanged"
    return first


def test_reclaim_unassigns_the_number_and_polls_the_operation(m365):
    entra = entra_with(m365)
    leaver = add_leaver(m365, 1)
    m365.add_phone_number(leaver.email, "+14255550101")
    m365.operation_polls = 2
    result = three_passes(entra, leaver, "unassign_teams_numbers", lambda: m365.snapshot(leaver.email)["teams_numbers"])
    user_id = m365.user_by_upn(leaver.email)["id"]
    assert result.before == {"numbers": [{"telephoneNumber": "+14255550101", "numberType": "callingPlan",
                                          "assignmentTargetId": user_id}]}
    assert m365.snapshot(leaver.email)["teams_numbers"] == []
    assert m365.phone_numbers["+14255550101"]["assignmentStatus"] == "unassigned"
    [op] = m365.operations.values()
    assert op["reads"] == 3 and op["status"] == "succeeded"        # two `running`, then the result
    assert "hand_over_teams_numbers" not in [a.action for a in entra.plan(entra.match(leaver).subject, leaver)]


def test_successor_policy_hands_the_number_over_in_preserve(m365):
    entra = entra_with(m365, teams_numbers="successor")
    leaver = add_leaver(m365, 2)
    m365.add_phone_number(leaver.email, "+14255550102", number_type="directRouting")
    three_passes(entra, leaver, "hand_over_teams_numbers", lambda: m365.snapshot(MANAGER)["teams_numbers"])
    assert m365.snapshot(MANAGER)["teams_numbers"] == ["+14255550102"]
    assert m365.snapshot(leaver.email)["teams_numbers"] == []
    assert [o["action"] for o in m365.operations.values()] == ["unassignNumber", "assignNumber"]
    assert run_action(entra, leaver, "unassign_teams_numbers") is None       # nothing left to release


@pytest.mark.parametrize("policy, action", [("unassign", "unassign_teams_numbers"),
                                            ("successor", "hand_over_teams_numbers")])
def test_restore_gives_the_numbers_back_to_the_leaver(m365, policy, action):
    entra = entra_with(m365, teams_numbers=policy)
    leaver = add_leaver(m365, 7)
    m365.add_phone_number(leaver.email, "+14255550107")
    journaled = run_action(entra, leaver, action).before
    assert m365.snapshot(leaver.email)["teams_numbers"] == []
    entra.prepare([leaver])
    subject = entra.match(leaver).subject
    undo = PlannedAction(entra.name, entra.undo[action], "restore", "",
                         (("action", action), ("before", journaled)))
    snapshot = lambda: (m365.snapshot(leaver.email)["teams_numbers"], m365.snapshot(MANAGER)["teams_numbers"])  # noqa: E731
    untouched = snapshot()
    assert entra.apply(undo, ActionContext(leaver, subject, dry_run=True)).outcome == "planned"
    assert snapshot() == untouched
    assert entra.apply(undo, ActionContext(leaver, subject)).outcome == "changed"
    assert snapshot() == (["+14255550107"], [])
    assert entra.apply(undo, ActionContext(leaver, subject)).outcome == "unchanged"


def test_a_failed_operation_is_final_and_says_why(m365):
    entra = entra_with(m365)
    leaver = add_leaver(m365, 3)
    m365.add_phone_number(leaver.email, "+14255550103")
    m365.number_refusals["+14255550103"] = "The number is assigned to an emergency location that is in use"
    with pytest.raises(PermanentError) as caught:
        run_action(entra, leaver, "unassign_teams_numbers")
    assert "failed" in caught.value.message and "emergency location" in caught.value.message
    assert m365.snapshot(leaver.email)["teams_numbers"] == ["+14255550103"]


def test_a_long_running_operation_waits_in_the_journal_not_in_a_worker(m365):
    entra = entra_with(m365)
    leaver = add_leaver(m365, 4)
    m365.add_phone_number(leaver.email, "+14255550104")
    m365.operation_polls = 50
    with pytest.raises(NotYet) as caught:
        run_action(entra, leaver, "unassign_teams_numbers")
    assert caught.value.delay == teams_phone.LATER and "running" in caught.value.message
    m365.operation_polls = 0
    assert run_action(entra, leaver, "unassign_teams_numbers").outcome == "changed"     # ordered again, lands


def test_without_the_permission_only_the_teams_actions_fail(m365):
    entra = entra_with(m365)
    leaver = add_leaver(m365, 5)
    m365.graph.denied.append(("GET", r"/admin/teams/telephoneNumberManagement/numberAssignments",
                              teams_phone.PERMISSION))
    entra.prepare([leaver])
    subject = entra.match(leaver).subject
    planned = {a.action: a for a in entra.plan(subject, leaver)}
    assert "unassign_teams_numbers" in planned and "revoke_sessions" in planned
    with pytest.raises(PermanentError) as caught:
        entra.apply(planned["unassign_teams_numbers"], ActionContext(leaver, subject))
    assert teams_phone.PERMISSION in caught.value.message
    assert entra.apply(planned["revoke_sessions"], ActionContext(leaver, subject)).outcome == "changed"


def test_a_leaver_without_numbers_plans_no_teams_action(m365):
    entra = entra_with(m365, teams_numbers="successor")
    leaver = add_leaver(m365, 6)
    entra.prepare([leaver])
    actions = [a.action for a in entra.plan(entra.match(leaver).subject, leaver)]
    assert not {"hand_over_teams_numbers", "unassign_teams_numbers"} & set(actions)
