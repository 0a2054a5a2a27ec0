"""The reconcile engine against an in-memory directory: ordering, gating, idempotency, crash recovery, limits."""
from __future__ import annotations

import datetime as dt
import threading

import pytest

from connector.errors import ConfigError, NotYet, RetryableError
from connector.reconcile import reconcile
from tests.fakes.directory import Crash, FakeDirectory, FakeOptions
from tests.helpers import utc
from tests.unit.conftest import NOW, leaver, states

def test_due_leaver_goes_through_the_phases_in_order_and_a_second_pass_changes_nothing(env):
    env.csv(leaver("E1", "ann@contoso.com"))
    report = env.run()
    assert report.exit_code == 0
    assert [a for _, _, a in env.order] == ["disable_account", "reset_password", "convert_mailbox", "remove_groups"]
    acc = env.directory.accounts["u1"]
    assert (acc["enabled"], acc["mailbox"], acc["groups"]) == (False, "SharedMailbox", [])
    assert states(env) == {"contoso/E1": "done"}
    writes = len(env.directory.writes)
    again = env.run(now=NOW + dt.timedelta(hours=1))
    assert again.exit_code == 0 and len(env.directory.writes) == writes
    assert states(env) == {"contoso/E1": "done"}


def test_future_leaver_waits_for_revoke_at_in_the_tenant_zone(env):
    env.csv(leaver("E1", "ann@contoso.com", date="2026-11-24"))
    env.run()
    assert states(env) == {"contoso/E1": "scheduled"} and env.directory.writes == []
    env.run(now=utc(2026, 11, 24, 22, 59))     # 16:59 Chicago
    assert env.directory.writes == []
    env.run(now=utc(2026, 11, 24, 23, 0))      # 17:00 Chicago
    assert states(env) == {"contoso/E1": "done"}


def test_immediate_without_time_is_due_at_once_and_an_explicit_time_wins(env):
    env.csv(leaver("E1", "ann@contoso.com", kind="immediate"), leaver("E2", "bob@contoso.com", time="23:45"))
    env.run(now=utc(2026, 11, 23, 15, 0))      # 09:00 Chicago
    assert states(env) == {"contoso/E1": "done", "contoso/E2": "scheduled"}


def test_failed_revoke_blocks_later_phases_and_is_retried_after_its_delay(env):
    env.csv(leaver("E1", "ann@contoso.com"))
    env.directory.fail["disable_account"] = RetryableError("DC busy", delay=120)
    report = env.run()
    assert report.exit_code == 2
    assert [a for _, _, a in env.order] == ["reset_password"]       # the other revoke action still ran
    assert states(env)["contoso/E1"] == "in_progress"
    env.run(now=NOW + dt.timedelta(seconds=60))                   # before the delay: nothing
    assert [a for _, _, a in env.order] == ["reset_password"]
    assert env.run(now=NOW + dt.timedelta(seconds=180)).exit_code == 0
    assert [a for _, _, a in env.order] == ["reset_password", "disable_account", "convert_mailbox", "remove_groups"]


def test_not_yet_is_a_wait_not_a_failure_and_the_pass_has_not_converged(env):
    env.csv(leaver("E1", "ann@contoso.com"))
    env.directory.fail["remove_groups"] = NotYet("mailbox conversion still running", delay=300)
    report = env.run()
    assert report.exit_code == 2                 # not converged yet: exit 0 means everything is done
    [row] = report.rows
    assert row["state"] == "in_progress"
    [waiting] = [a for a in row["actions"] if a["action"] == "remove_groups"]
    assert (waiting["outcome"], waiting["reason"]) == ("planned", "waiting: contoso/ad: mailbox conversion still running")
    assert env.run(now=NOW + dt.timedelta(minutes=6)).exit_code == 0
    assert states(env)["contoso/E1"] == "done"


def test_crash_between_intent_and_outcome_resumes_without_a_second_write(env):
    env.csv(leaver("E1", "ann@contoso.com"))
    env.directory.crash_after_write.add("reset_password")
    with pytest.raises(Crash):
        env.run()
    journal = {a["action"]: a["status"] for a in env.store.actions("contoso/E1")}
    assert journal["reset_password"] == "in_flight"
    env.directory.crash_after_write.clear()
    assert env.run(now=NOW + dt.timedelta(minutes=1)).exit_code == 0
    assert [a for _, _, a in env.order].count("reset_password") == 1
    assert states(env)["contoso/E1"] == "done"


def test_protected_admin_and_ambiguous_need_a_human_and_are_not_touched(env):
    env.csv(leaver("E9", "svc-backup@contoso.com"), leaver("E8", "root@contoso.com"), leaver("E7", "dup@contoso.com"))
    report = env.run()
    assert report.exit_code == 2
    assert states(env) == {"contoso/E9": "needs_human", "contoso/E8": "needs_human", "contoso/E7": "needs_human"}
    assert env.directory.writes == []
    reasons = {r["id"]: r["reason"] for r in report.rows}
    assert "protected" in reasons["contoso/E9"] and "admin" in reasons["contoso/E8"]
    assert "ambiguous" in reasons["contoso/E7"]
    env.run(now=NOW + dt.timedelta(hours=1))                   # not retried by itself
    assert env.directory.writes == []


def test_approve_lets_a_person_offboard_a_protected_account(env, capsys):
    from connector.cli import main
    env.csv(leaver("E9", "svc-backup@contoso.com"))
    env.run()
    assert main(["--config", str(env.config_path), "approve", "contoso/E9"]) == 0
    env.run(now=NOW + dt.timedelta(minutes=1))
    assert states(env)["contoso/E9"] == "done"
    assert env.directory.accounts["svc"]["enabled"] is False


def test_revoke_actions_of_all_providers_run_concurrently(env):
    env.csv(leaver("E1", "ann@contoso.com"))
    barrier = threading.Barrier(2, timeout=5)

    class Waiting(FakeDirectory):
        def disable_account(self, action, ctx):
            barrier.wait()        # both providers must be inside revoke at the same time
            return super().disable_account(action, ctx)

    tenant = env.config.tenants[0]
    one = Waiting("ad", FakeOptions(), tenant, accounts=env.directory.accounts)
    two = Waiting("cloud", FakeOptions(), tenant, accounts={"c1": FakeDirectory.account("c1", "E1", "ann@contoso.com")})
    report = reconcile(env.config, env.store, now=NOW, providers=lambda t: [one, two])
    assert report.exit_code == 0
    assert states(env)["contoso/E1"] == "done"


def test_config_error_stops_that_provider_only(env):
    env.csv(leaver("E1", "ann@contoso.com"))
    tenant = env.config.tenants[0]
    broken = FakeDirectory("cloud", FakeOptions(), tenant, accounts={"c1": FakeDirectory.account("c1", "E1", "ann@contoso.com")})
    broken.fail["disable_account"] = ConfigError("HTTP 403: needs User.EnableDisableAccount.All")
    report = reconcile(env.config, env.store, now=NOW, providers=lambda t: [env.directory, broken])
    assert report.exit_code == 1
    assert env.directory.accounts["u1"]["enabled"] is False          # the other provider revoked
    assert env.directory.accounts["u1"]["mailbox"] == "UserMailbox"  # but later phases wait for all revokes
    assert "403" in str(report.config_errors[0])


def test_mass_termination_holds_the_tenant_until_approved(env, capsys):
    from connector.cli import main
    env.config.tenants[0].max_terminations_per_run = 2
    env.csv(leaver("E1", "ann@contoso.com"), leaver("E2", "bob@contoso.com"), leaver("E3", "cat@contoso.com"))
    assert env.run().exit_code == 3
    assert env.run(now=NOW + dt.timedelta(minutes=5)).exit_code == 3
    assert env.directory.writes == []
    assert set(states(env).values()) == {"held"}
    assert main(["--config", str(env.config_path), "approve", "--tenant", "contoso"]) == 0
    assert env.run(now=NOW + dt.timedelta(minutes=10)).exit_code == 0
    assert set(states(env).values()) == {"done"}


def test_a_trickle_under_the_run_limit_is_held_by_the_daily_limit(env):
    env.config.tenants[0].max_terminations_per_day = 2
    env.csv(leaver("E1", "ann@contoso.com", date="2026-12-01"))
    assert env.run().exit_code == 0
    env.csv(leaver("E2", "bob@contoso.com", date="2026-12-01"), name="two.csv")
    assert env.run(now=NOW + dt.timedelta(hours=2)).exit_code == 0
    env.csv(leaver("E3", "cat@contoso.com", date="2026-12-01"), name="three.csv")
    assert env.run(now=NOW + dt.timedelta(hours=4)).exit_code == 3


def test_disappearing_or_reactivated_before_due_is_cancelled(env):
    env.csv(leaver("E1", "ann@contoso.com", date="2026-12-01"), leaver("E2", "bob@contoso.com", date="2026-12-01"))
    env.run()
    env.csv(leaver("E2", "bob@contoso.com", date="2026-12-01"))
    env.run(now=NOW + dt.timedelta(hours=1))
    assert states(env) == {"contoso/E1": "cancelled", "contoso/E2": "scheduled"}
    env.run(now=utc(2026, 12, 2))
    assert states(env) == {"contoso/E1": "cancelled", "contoso/E2": "done"}
    assert env.directory.accounts["u1"]["enabled"] is True


def test_a_feed_that_suddenly_names_nobody_cancels_nothing(env):
    env.csv(leaver("E1", "ann@contoso.com", date="2026-12-01"))
    env.run()
    (env.hr / "feed.csv").write_text("employee_id,email,first_name,last_name,manager_email,termination_date\n")
    report = env.run(now=NOW + dt.timedelta(hours=1))
    assert report.exit_code == 2 and "nobody" in str(report.source_errors[0])
    assert states(env) == {"contoso/E1": "scheduled"}


def test_changed_date_reschedules(env):
    env.csv(leaver("E1", "ann@contoso.com", date="2026-12-01"))
    env.run()
    env.csv(leaver("E1", "ann@contoso.com", date="2026-12-03"))
    env.run(now=NOW + dt.timedelta(hours=1))
    assert env.store.termination("contoso/E1")["due_at"] == "2026-12-03T23:00:00+00:00"
    env.run(now=utc(2026, 12, 2))
    assert states(env)["contoso/E1"] == "scheduled"


def test_audit_chain_records_every_action_and_verifies(env):
    env.csv(leaver("E1", "ann@contoso.com"))
    env.run()
    ok, problem, count = env.store.verify_audit()
    assert ok and count >= 5
    events = [a["event"] for a in env.store.audit_trail("contoso/E1")]
    assert events[0] == "termination_seen" and events[-1] == "termination_done"
    assert events.count("action_changed") == 4


def test_a_provider_that_crashes_while_matching_fails_that_leaver_only(env):
    env.csv(leaver("E1", "ann@contoso.com"), leaver("E2", "bob@contoso.com"))
    real = env.directory.match

    def flaky(t):
        if t.employee_id == "E1":
            raise KeyError("objectGUID")
        return real(t)

    env.directory.match = flaky
    report = env.run()
    assert report.exit_code == 2
    assert states(env) == {"contoso/E1": "in_progress", "contoso/E2": "done"}
    assert "internal error: KeyError" in env.store.termination("contoso/E1")["reason"]
