"""Safety limits that cannot be walked around (issue 8, section 3): each test replays an attack."""
from __future__ import annotations

import datetime as dt

from connector.cli import main
from tests.unit.conftest import NOW, leaver, states


def people(n: int, date: str, start: int = 1):
    return [leaver(f"E{i}", f"p{i}@contoso.com", date=date) for i in range(start, start + n)]


def test_re_dating_a_trickle_of_future_leavers_to_the_past_is_held(env):
    env.config.tenants[0].max_terminations_per_run = 5
    env.config.tenants[0].max_terminations_per_day = 10
    rows = []
    for step in range(6):                        # 30 leavers, 5 every 25 hours: never over either limit
        rows += people(5, "2027-06-01", start=1 + 5 * step)
        env.csv(*rows)
        assert env.run(now=NOW + dt.timedelta(hours=25 * step)).exit_code == 0
    assert set(states(env).values()) == {"scheduled"}
    later = NOW + dt.timedelta(hours=25 * 6)
    env.csv(*people(30, "2001-01-01"))           # one export moves every date into the past
    assert env.run(now=later).exit_code == 3
    assert set(states(env).values()) == {"held"} and env.directory.writes == []


def test_a_feed_re_dating_a_leaver_keeps_the_ticket_the_connector_opened_for_them(env):
    env.csv(*people(1, "2027-06-01"))
    env.run()
    assert env.store.set_state("contoso/E1", "scheduled", "", expect=("scheduled",), ticket="4711")
    env.csv(*people(1, "2027-07-01"))                      # the feed has no ticket column value
    env.run(now=NOW + dt.timedelta(hours=1))
    row = env.store.termination("contoso/E1")
    assert (row["termination_date"], row["ticket"]) == ("2027-07-01", "4711")
    env.csv(*people(1, "2001-01-01"))                      # moved into the past: counted as new, still its ticket
    env.run(now=NOW + dt.timedelta(hours=2))
    assert env.store.termination("contoso/E1")["ticket"] == "4711"


def test_a_changed_email_counts_as_first_seen(env):
    env.config.tenants[0].max_terminations_per_run = 2
    env.csv(*people(3, "2027-06-01")[:2])
    env.run()
    env.csv(*people(3, "2027-06-01")[2:])
    env.run(now=NOW + dt.timedelta(hours=25), full=True)
    moved = [leaver(f"E{i}", f"new{i}@contoso.com", date="2027-06-01") for i in (1, 2, 3)]
    env.csv(*moved)
    assert env.run(now=NOW + dt.timedelta(hours=50)).exit_code == 3


def test_approve_tenant_releases_only_the_hold_that_was_shown(env, capsys):
    env.config.tenants[0].max_terminations_per_run = 5
    env.csv(*people(6, "2027-06-01"))
    assert env.run().exit_code == 3                          # 6 held; a person reviews them
    env.csv(*people(194, "2027-06-01", start=7), name="broken.csv")
    assert env.run(now=NOW + dt.timedelta(minutes=5)).exit_code == 3
    assert main(["--config", str(env.config_path), "approve", "--tenant", "contoso"]) == 0
    s = states(env)
    assert sorted(k for k, v in s.items() if v == "scheduled") == sorted(f"contoso/E{i}" for i in range(1, 7))
    assert sum(v == "held" for v in s.values()) == 194
    assert env.run(now=NOW + dt.timedelta(minutes=10)).exit_code == 3       # the late arrivals: a hold of their own


def test_a_read_that_would_cancel_too_many_is_a_suspect_feed(env):
    env.config.tenants[0].max_terminations_per_run = 20
    env.csv(*people(20, "2027-06-01"))
    env.run()
    env.config.tenants[0].max_terminations_per_run = 5
    env.csv(*people(1, "2027-06-01"))                          # a full read naming 1 of 20
    report = env.run(now=NOW + dt.timedelta(minutes=5))
    assert report.exit_code == 3 and "suspect feed" in report.holds["contoso"]
    assert set(states(env).values()) == {"scheduled"}
    assert env.run(now=NOW + dt.timedelta(minutes=10)).exit_code == 3        # still held, once
    assert len(env.store.open_holds("contoso")) == 1
    assert main(["--config", str(env.config_path), "approve", "--tenant", "contoso"]) == 0
    assert sum(v == "cancelled" for v in states(env).values()) == 19


def test_a_held_cancellation_does_not_stop_other_work(env):
    env.config.tenants[0].max_terminations_per_run = 20
    env.csv(*people(10, "2027-06-01"))
    env.run()
    env.config.tenants[0].max_terminations_per_run = 5
    env.csv(leaver("E1", "ann@contoso.com"))                   # due now, and 9 others gone from the feed
    report = env.run(now=NOW + dt.timedelta(minutes=5))
    assert report.exit_code == 3
    assert env.directory.accounts["u1"]["enabled"] is False


def test_a_rejected_row_still_counts_as_present(env):
    env.csv(leaver("E1", "ann@contoso.com", date="2027-06-01"), leaver("E2", "bob@contoso.com", date="2027-06-01"))
    env.run()
    env.csv(leaver("E1", "ann@contoso.com", date="15.12.2026"), leaver("E2", "bob@contoso.com", date="2027-06-01"))
    report = env.run(now=NOW + dt.timedelta(minutes=5))
    assert report.exit_code == 2 and report.rejected
    assert states(env) == {"contoso/E1": "scheduled", "contoso/E2": "scheduled"}
