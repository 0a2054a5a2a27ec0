"""`pause` / `resume` (every tenant) and `hold --tenant T`: no new work starts, at once and across restarts;
the feeds are still read and recorded; an action in flight finishes; `status` and the store say so."""
from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

from connector.store import EVERY_TENANT
from tests.unit.conftest import NOW, leaver, states
from tests.unit.test_cli import ACCOUNTS, cli, lines  # noqa: F401  (the fixture)
from tests.helpers import write_csv

# today where the tenant is (America/Chicago): an immediate leaver dated today is due now, whatever the UTC date
TODAY_ROW = f"E1,ann@contoso.com,Ann,Lee,,{dt.datetime.now(ZoneInfo('America/Chicago')).date().isoformat()},,immediate"


def test_pause_stops_new_work_for_every_tenant_until_resume(cli):
    write_csv(cli.hr, "a.csv", [TODAY_ROW])
    assert cli("pause", "--reason", "tenant migration")[0] == 0
    code, out, _ = cli("--json", "reconcile", "--once")          # a new process: the pause is in the store
    held = [o for o in lines(out) if o.get("type") == "hold"]
    assert code == 3 and held and "paused by a person: tenant migration" in held[0]["reason"]
    assert ACCOUNTS["u1"]["enabled"] is True                      # nothing was done
    code, out, err = cli("status")
    assert code == 0 and out.startswith("PAUSED every tenant since ") and "tenant migration" in out
    assert "contoso/E1" in out                                    # intake still recorded the leaver
    code, out, err = cli("--json", "status")
    assert "offboard: warning: PAUSED every tenant" in err and all("id" in o for o in lines(out))
    code, out, _ = cli("resume")
    assert code == 0 and "every tenant: resumed" in out
    assert cli("reconcile", "--once")[0] == 0 and ACCOUNTS["u1"]["enabled"] is False
    assert "was not paused" in cli("resume")[1]


def test_pausing_twice_keeps_the_first_pause_and_both_are_audited(cli):
    cli("pause", "--reason", "first")
    cli("pause", "--reason", "second")
    code, out, _ = cli("--json", "pause")
    assert json.loads(out)["reason"] == "paused by a person: first"
    cli("resume")
    import sqlite3
    events = [r[0] for r in sqlite3.connect(cli.state).execute("select event from audit order by seq")]
    assert events.count("person_paused") == 1 and events.count("person_resumed") == 1


def test_hold_tenant_stops_that_tenant_and_only_resume_tenant_lifts_it(cli):
    write_csv(cli.hr, "a.csv", [TODAY_ROW])
    code, out, _ = cli("hold", "--tenant", "contoso", "--reason", "client offboarding dispute")
    assert code == 0 and "resume --tenant contoso" in out
    assert cli("reconcile", "--once")[0] == 3 and ACCOUNTS["u1"]["enabled"] is True
    assert "HELD contoso: held by a person: client offboarding dispute since" in cli("status")[1]
    cli("approve", "--tenant", "contoso")           # releases safety holds, not a person's hold
    assert cli("reconcile", "--once")[0] == 3 and ACCOUNTS["u1"]["enabled"] is True
    assert cli("resume", "--tenant", "contoso")[0] == 0
    assert cli("reconcile", "--once")[0] == 0 and ACCOUNTS["u1"]["enabled"] is False


def test_hold_without_an_id_needs_a_tenant_and_a_known_one(cli):
    code, _, err = cli("hold")
    assert code == 1 and "--tenant T to hold a whole tenant" in err
    code, _, err = cli("hold", "--tenant", "fabrikam")
    assert code == 1 and "no tenant 'fabrikam'" in err


def test_the_store_tells_the_daemon_what_is_stopped(env):
    store = env.store
    assert store.paused() is None and store.held_tenants() == {}
    assert store.pause("contoso", "held by a person") and not store.pause("contoso", "again")
    assert store.paused() is None and store.paused("contoso")["scope"] == "contoso"
    assert store.paused("fabrikam") is None
    store.add_hold("fabrikam", "12 new terminations in one pull", ["fabrikam/1"])
    held = store.held_tenants()
    assert held["contoso"].startswith("held by a person since ") and held["fabrikam"] == "12 new terminations in one pull"
    store.pause(EVERY_TENANT, "paused by a person")
    assert store.paused()["scope"] == EVERY_TENANT and store.paused("fabrikam")["scope"] == EVERY_TENANT
    assert [p["scope"] for p in store.pauses()] == [EVERY_TENANT, "contoso"]
    assert store.resume(EVERY_TENANT)["reason"] == "paused by a person" and store.resume(EVERY_TENANT) is None
    assert store.paused("fabrikam") is None


def test_a_pause_mid_pass_lets_the_action_in_flight_finish_and_starts_no_other(env):
    env.csv(leaver("E1", "ann@contoso.com", kind="immediate"))
    real = env.directory.disable_account

    def disable_then_pause(action, ctx):
        result = real(action, ctx)
        env.store.pause(EVERY_TENANT, "paused by a person")        # the operator, while this write is in flight
        return result

    env.directory.disable_account = disable_then_pause
    env.run()
    journal = {a["action"]: a["status"] for a in env.store.actions("contoso/E1")}
    assert journal.get("disable_account") == "changed"             # finished and journaled
    started = [action for _, action in env.directory.writes]
    assert "convert_mailbox" not in started and "remove_groups" not in started
    assert states(env)["contoso/E1"] == "in_progress"
    report = env.run()                                             # still paused: nothing more
    assert "contoso" in report.holds and len(env.directory.writes) == len(started)
    env.store.resume(EVERY_TENANT)
    env.directory.disable_account = real
    env.run()
    assert states(env)["contoso/E1"] == "done"
    assert [a for _, a in env.directory.writes].count("disable_account") == 1     # not written twice


def test_a_paused_pass_still_records_what_the_feed_says(env):
    env.store.pause(EVERY_TENANT, "paused by a person")
    env.csv(leaver("E1", "ann@contoso.com", kind="immediate"), leaver("E2", "bob@contoso.com", date="2026-12-24"))
    report = env.run()
    assert report.exit_code == 3 and "paused by a person since" in report.holds["contoso"]
    assert states(env) == {"contoso/E1": "scheduled", "contoso/E2": "scheduled"} and env.directory.writes == []
    env.store.resume(EVERY_TENANT)
    env.run(now=NOW)
    assert states(env)["contoso/E1"] == "done" and states(env)["contoso/E2"] == "scheduled"
