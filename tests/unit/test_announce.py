"""State announcements: every change a pass makes is heard once, in order, and a failing listener fails nothing."""
from __future__ import annotations

from connector.reconcile.announce import StateChange
from tests.unit.conftest import leaver


def test_every_state_change_of_a_pass_is_announced_in_order(env):
    env.csv(leaver("E1", "ann@contoso.com"), leaver("E2", "bob@contoso.com", date="2026-12-20"),
            leaver("E8", "root@contoso.com"))
    heard: list[StateChange] = []
    report = env.run(listeners=(heard.append,))
    by_id: dict[str, list[tuple]] = {}
    for change in heard:
        assert change.run_id == report.run_id and change.tenant == "contoso"
        by_id.setdefault(change.termination_id, []).append((change.before, change.after))
    assert by_id["contoso/E1"] == [(None, "scheduled"), ("scheduled", "in_progress"), ("in_progress", "done")]
    assert by_id["contoso/E2"] == [(None, "scheduled")]            # not due yet
    assert by_id["contoso/E8"][-1] == ("in_progress", "needs_human")
    assert "admin" in [c for c in heard if c.after == "needs_human"][0].reason
    heard.clear()
    env.run(listeners=(heard.append,))
    assert heard == [], "a pass that changes nothing announces nothing"


def test_a_listener_that_raises_is_logged_and_the_others_still_hear(env, caplog):
    env.csv(leaver("E1", "ann@contoso.com"))
    heard = []

    def broken(change):
        raise RuntimeError("alert endpoint down")

    report = env.run(listeners=(broken, heard.append))
    assert report.exit_code == 0 and env.store.termination("contoso/E1")["state"] == "done"
    assert [c.after for c in heard] == ["scheduled", "in_progress", "done"]
    assert "alert endpoint down" in caplog.text


def test_a_dry_run_announces_nothing(env):
    env.csv(leaver("E1", "ann@contoso.com"))
    heard = []
    env.run(listeners=(heard.append,), dry_run=True)
    assert heard == [], "a dry run changed nothing, so it announces nothing"


def test_a_safety_hold_is_announced(env):
    env.csv(*[leaver(f"E{i}", f"p{i}@contoso.com") for i in range(20, 32)])
    heard = []
    env.run(listeners=(heard.append,))
    assert {(c.before, c.after) for c in heard} == {(None, "held")}
    assert len(heard) == 12 and "max_terminations_per_run" in heard[0].reason
