"""The spine: never `done` while a system was down, a person's decision wins mid-pass, one decision per
person across every system, and tenants that neither wait for nor break each other."""
from __future__ import annotations

import datetime as dt
import textwrap
import threading
import time

from connector import config as configmod
from connector.cli import main
from connector.errors import RetryableError
from connector.reconcile import reconcile
from tests.fakes.directory import FakeDirectory, FakeOptions
from tests.unit.conftest import NOW, leaver, states

LATER = NOW + dt.timedelta(minutes=5)


def cloud(env, *accounts):
    """A second directory (the cloud) for the same tenant."""
    return FakeDirectory("cloud", FakeOptions(), env.config.tenants[0], accounts={a["id"]: a for a in accounts}, log=env.order)


def run_both(env, other, now=NOW, **kw):
    return reconcile(env.config, env.store, now=now, providers=lambda t: [env.directory, other], **kw)


def actions(env, tid):
    return {(a["provider"], a["action"]): a["status"] for a in env.store.actions(tid)}


# -- never `done` while a system has not done its part ------------------------------------
def test_a_directory_down_for_one_pass_is_finished_by_the_next(env):
    env.csv(leaver("E1", "ann@contoso.com"))
    env.directory.fail["check_online"] = RetryableError("cannot reach the DC: connection refused", delay=60)
    first = env.run()
    assert first.exit_code == 2 and states(env) == {"contoso/E1": "in_progress"}
    assert env.directory.accounts["u1"]["enabled"] is True and env.directory.writes == []
    assert actions(env, "contoso/E1") == {("ad", "match_account"): "failed"}
    [row] = env.store.actions("contoso/E1")
    assert row["next_attempt_at"] == "2026-11-23T23:31:00+00:00"
    second = env.run(now=LATER)
    assert second.exit_code == 0 and states(env) == {"contoso/E1": "done"}
    assert env.directory.accounts["u1"]["enabled"] is False


def test_a_cloud_outage_while_reading_keeps_the_leaver_open_although_the_directory_finished(env):
    env.csv(leaver("E1", "ann@contoso.com"))
    other = cloud(env, FakeDirectory.account("c1", "E1", "ann@contoso.com"))
    other.prepare = lambda terminations: (_ for _ in ()).throw(RetryableError("HTTP 503", delay=30))
    first = run_both(env, other)
    assert first.exit_code == 2 and states(env) == {"contoso/E1": "in_progress"}
    assert other.accounts["c1"]["enabled"] is True
    # revoke ran where it could; nothing later starts until the cloud has revoked too
    assert [(p, a) for p, _, a in env.order] == [("ad", "disable_account"), ("ad", "reset_password")]
    del other.prepare
    assert run_both(env, other, now=LATER).exit_code == 0
    assert states(env) == {"contoso/E1": "done"} and other.accounts["c1"]["enabled"] is False


def test_a_provider_added_to_the_config_reopens_nothing_but_a_silent_one_is_never_done(env):
    """settle: every configured provider must have journaled its part."""
    from connector.reconcile.engine import settle
    env.csv(leaver("E1", "ann@contoso.com"))
    env.run()
    assert settle(env.store, "contoso/E1", "r", ["ad"]) == "done"
    env.store.set_state("contoso/E1", "in_progress")
    assert settle(env.store, "contoso/E1", "r", ["ad", "cloud"]) == "in_progress"
    assert "no word yet from cloud" in env.store.termination("contoso/E1")["reason"]


# -- a person's decision wins, mid-pass ------------------------------------------------
class Slow(FakeDirectory):
    """disable_account blocks until the test lets it go, so a person can act mid-pass."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.inside, self.go = threading.Event(), threading.Event()

    def disable_account(self, action, ctx):
        self.inside.set()
        assert self.go.wait(10)
        return super().disable_account(action, ctx)


def _decide_mid_pass(env, decision):
    slow = Slow("ad", {}, env.config.tenants[0], accounts=env.directory.accounts, log=env.order)
    env.csv(leaver("E1", "ann@contoso.com"))
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        report=reconcile(env.config, env.store, now=NOW, providers=lambda t: [slow])))
    worker.start()
    assert slow.inside.wait(10)
    assert main(["--config", str(env.config_path), decision, "contoso/E1"]) == 0
    slow.go.set()
    worker.join(10)
    return slow, result["report"]


def test_cancel_in_the_middle_of_a_pass_wins(env):
    slow, report = _decide_mid_pass(env, "cancel")
    assert [a for _, _, a in env.order] == ["disable_account"]       # in flight: finished and journaled
    assert actions(env, "contoso/E1")[("ad", "disable_account")] == "changed"
    assert actions(env, "contoso/E1")[("ad", "reset_password")] == "pending"   # never started
    assert states(env) == {"contoso/E1": "cancelled"}
    reconcile(env.config, env.store, now=LATER, providers=lambda t: [slow])
    assert states(env) == {"contoso/E1": "cancelled"} and [a for _, _, a in env.order] == ["disable_account"]


def test_hold_in_the_middle_of_a_pass_wins(env):
    slow, _ = _decide_mid_pass(env, "hold")
    assert states(env) == {"contoso/E1": "held"}
    reconcile(env.config, env.store, now=LATER, providers=lambda t: [slow])
    assert states(env) == {"contoso/E1": "held"} and [a for _, _, a in env.order] == ["disable_account"]


# -- a pass started ahead of its instant ----------------------------------------------------
def test_a_pass_started_ahead_reads_and_plans_at_once_and_writes_from_its_instant(env, monkeypatch):
    from connector.reconcile import engine

    env.csv(leaver("E1", "ann@contoso.com"))
    seen = []
    match, disable = env.directory.match, env.directory.disable_account
    monkeypatch.setattr(env.directory, "match", lambda t: seen.append(("match", time.monotonic())) or match(t))
    monkeypatch.setattr(env.directory, "disable_account",
                        lambda a, ctx: seen.append(("write", time.monotonic())) or disable(a, ctx))
    monkeypatch.setattr(engine, "utcnow", lambda: NOW - dt.timedelta(seconds=1))     # the instant is 1 s away
    report = reconcile(env.config, env.store, not_before=NOW, providers=lambda t: [env.directory])
    assert report.exit_code == 0 and states(env) == {"contoso/E1": "done"}
    (first, matched), (second, wrote) = seen
    assert (first, second) == ("match", "write") and wrote - matched >= 0.9


def test_a_stop_while_a_pass_waits_for_its_instant_starts_no_action(env, monkeypatch):
    from connector.reconcile import engine

    env.csv(leaver("E1", "ann@contoso.com"))
    monkeypatch.setattr(engine, "utcnow", lambda: NOW - dt.timedelta(seconds=60))
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    reconcile(env.config, env.store, not_before=NOW, stop=stop, providers=lambda t: [env.directory])
    assert time.monotonic() - started < 30                        # the stop ended the wait
    assert env.directory.writes == [] and states(env) == {"contoso/E1": "in_progress"}
    assert set(actions(env, "contoso/E1").values()) == {"unchanged", "pending"}     # matched; nothing started


# -- one decision per person, across every system -----------------------------------------
def test_an_admin_in_the_cloud_only_is_not_touched_in_the_directory(env):
    env.csv(leaver("E1", "ann@contoso.com"))
    other = cloud(env, FakeDirectory.account("c1", "E1", "ann@contoso.com", admin=True))
    assert run_both(env, other).exit_code == 2
    assert env.directory.writes == [] and other.writes == []
    assert states(env) == {"contoso/E1": "needs_human"}
    reasons = {a["reason"] for a in env.store.actions("contoso/E1") if a["status"] == "needs_human"}
    assert reasons == {"held for the whole person: holds admin rights in cloud (Global Administrator)"}


def test_a_protected_glob_matching_only_the_cloud_address_protects_the_directory_account(env):
    env.directory.accounts["u1"]["names"] = ["ann@contoso.local"]
    env.csv(leaver("E1", "ann@contoso.local"))
    other = cloud(env, FakeDirectory.account("c1", "E1", "breakglass@contoso.com", names=("ann@contoso.local",)))
    run_both(env, other)
    assert env.directory.writes == [] and other.writes == []
    assert "protected account in cloud (matches 'breakglass@contoso.com')" in \
        env.store.termination("contoso/E1")["reason"]


def test_ambiguity_in_one_system_holds_every_system(env):
    """A row with Ann's id and Bob's address: ambiguous in AD; the cloud has no ids and would match Bob."""
    env.csv(leaver("E1", "bob@contoso.com"))
    other = cloud(env, FakeDirectory.account("c2", "", "bob@contoso.com"))
    run_both(env, other)
    assert other.writes == [] and env.directory.writes == []
    assert actions(env, "contoso/E1")[("ad", "match_account")] == "needs_human"
    assert actions(env, "contoso/E1")[("cloud", "disable_account")] == "needs_human"


def test_matches_that_cannot_be_the_same_person_hold(env):
    """An id match here and an address match of somebody else there: no shared name, so hold."""
    env.csv(leaver("E1", "zed@contoso.com"))
    other = cloud(env, FakeDirectory.account("c9", "", "zed@contoso.com"))
    run_both(env, other)
    assert env.directory.writes == [] and other.writes == []
    assert "share no name or address" in env.store.termination("contoso/E1")["reason"]


def test_different_on_premises_identities_hold(env):
    env.directory.accounts["u1"]["anchor"] = "GUID-A"
    env.csv(leaver("E1", "ann@contoso.com"))
    other = cloud(env, {**FakeDirectory.account("c1", "E1", "ann@contoso.com"), "anchor": "GUID-B"})
    run_both(env, other)
    assert env.directory.writes == [] and other.writes == []
    assert "different on-premises identities" in env.store.termination("contoso/E1")["reason"]


def test_a_system_that_cannot_be_read_contributes_what_it_last_saw(env):
    env.csv(leaver("E1", "ann@contoso.com"))
    other = cloud(env, FakeDirectory.account("c1", "E1", "ann@contoso.com", admin=True))
    env.directory.fail["check_online"] = RetryableError("DC down", delay=1)
    run_both(env, other)                                   # the cloud saw an admin
    other.fail["check_online"] = RetryableError("Graph down", delay=1)
    run_both(env, other, now=LATER)                        # now only AD answers: it must still hold
    assert env.directory.writes == []
    assert "holds admin rights in cloud" in env.store.termination("contoso/E1")["reason"]


def test_approving_a_safety_hold_does_not_lift_the_admin_guard(env):
    env.config.tenants[0].max_terminations_per_run = 1
    env.csv(leaver("E8", "root@contoso.com"), leaver("E1", "ann@contoso.com"))
    assert env.run().exit_code == 3
    assert main(["--config", str(env.config_path), "approve", "--tenant", "contoso"]) == 0
    env.run(now=LATER)
    assert states(env) == {"contoso/E8": "needs_human", "contoso/E1": "done"}
    assert env.directory.accounts["adm"]["enabled"] is True
    assert not any(account == "adm" for account, _ in env.directory.writes)


def test_approve_covers_the_reasons_shown_and_a_new_reason_needs_a_new_approval(env):
    env.csv(leaver("E1", "ann@contoso.com"))
    other = cloud(env, FakeDirectory.account("c1", "E1", "ann@contoso.com", admin=True))
    run_both(env, other)
    assert main(["--config", str(env.config_path), "approve", "contoso/E1"]) == 0
    env.directory.accounts["u1"]["admin"] = True            # found later: AD says admin too
    run_both(env, other, now=LATER)
    assert env.directory.writes == [] and states(env) == {"contoso/E1": "needs_human"}
    assert main(["--config", str(env.config_path), "approve", "contoso/E1"]) == 0
    assert run_both(env, other, now=LATER + dt.timedelta(minutes=1)).exit_code == 0
    assert states(env) == {"contoso/E1": "done"} and other.accounts["c1"]["enabled"] is False


def test_approve_one_action_only(env):
    env.csv(leaver("E8", "root@contoso.com"))
    env.run()
    assert main(["--config", str(env.config_path), "approve", "contoso/E8", "--action", "ad/disable_account"]) == 0
    env.run(now=LATER)
    assert env.directory.writes == [("adm", "disable_account")]
    assert actions(env, "contoso/E8")[("ad", "reset_password")] == "needs_human"


# -- tenants are independent ---------------------------------------------------------------
def two_tenants(tmp_path):
    text = f'[connector]\nstate = "{tmp_path / "state.db"}"\n'
    for tid in ("alpha", "beta"):
        text += textwrap.dedent(f"""
            [[tenant]]
            id = "{tid}"
            [[tenant.source]]
            type = "csv"
            path = "{tmp_path / tid}/*.csv"
            [[tenant.provider]]
            type = "fake"
            name = "ad"
            """)
        (tmp_path / tid).mkdir()
        (tmp_path / tid / "feed.csv").write_text(
            "employee_id,email,first_name,last_name,manager_email,termination_date\n"
            f"E1,ann@{tid}.com,Ann,Lee,,2026-11-20\n")
    path = tmp_path / "two.toml"
    path.write_text(text)
    return configmod.load(path)


def test_tenants_revoke_side_by_side(tmp_path, env):
    cfg = two_tenants(tmp_path)
    barrier = threading.Barrier(2, timeout=5)

    class Waiting(FakeDirectory):
        def disable_account(self, action, ctx):
            barrier.wait()          # passes only if both tenants are revoking at the same time
            return super().disable_account(action, ctx)

    made = {t.id: Waiting("ad", FakeOptions(), t, accounts={"u": FakeDirectory.account("u", "E1", f"ann@{t.id}.com")})
            for t in cfg.tenants}
    report = reconcile(cfg, env.store, now=NOW, providers=lambda t: [made[t.id]])
    assert report.exit_code == 0
    assert all(not p.accounts["u"]["enabled"] for p in made.values())


def test_one_tenant_crashing_does_not_stop_the_other(tmp_path, env):
    cfg = two_tenants(tmp_path)

    def providers(t):
        if t.id == "alpha":
            raise OverflowError("date value out of range")
        return [FakeDirectory("ad", FakeOptions(), t, accounts={"u": FakeDirectory.account("u", "E1", "ann@beta.com")})]

    report = reconcile(cfg, env.store, now=NOW, providers=providers)
    assert report.exit_code == 2 and "alpha: internal error" in str(report.source_errors[0])
    assert env.store.termination("beta/E1")["state"] == "done"


# -- the successor comes from the directories, never the feed ------------------------------
def test_the_successor_is_the_directory_manager_never_the_feeds(env):
    env.directory.accounts["u1"]["manager"] = {"address": "Mia@Contoso.com", "enabled": True}
    env.csv(leaver("E1", "ann@contoso.com"))          # the feed says boss@contoso.com
    env.run()
    assert env.directory.successors["u1"] == "mia@contoso.com"


def test_a_disabled_or_leaving_manager_hands_over_to_the_policy_successor(env):
    env.config.tenants[0].policy = env.config.tenants[0].policy.model_copy(update={"successor": "desk@contoso.com"})
    env.directory.accounts["u1"]["manager"] = {"address": "gone@contoso.com", "enabled": False}
    env.directory.accounts["u2"]["manager"] = {"address": "cat@contoso.com", "enabled": True}
    env.csv(leaver("E1", "ann@contoso.com"), leaver("E2", "bob@contoso.com"), leaver("E3", "cat@contoso.com"))
    env.run()
    assert env.directory.successors["u1"] == "desk@contoso.com"      # manager disabled
    assert env.directory.successors["u2"] == "desk@contoso.com"      # manager leaving too
    assert env.directory.successors["u3"] == "desk@contoso.com"      # no manager at all


def test_without_manager_or_policy_successor_nobody_is_named(env):
    env.csv(leaver("E1", "ann@contoso.com"))
    env.run()
    assert env.directory.successors["u1"] == ""


def test_the_on_premises_manager_outranks_the_cloud_one(env):
    from connector.reconcile.person import choose_successor
    from connector.model import Subject
    ad = Subject("ad", "1", [], manager={"address": "onprem@contoso.com", "enabled": True})
    cloud_ = Subject("cloud", "2", [], manager={"address": "cloud@contoso.com", "enabled": True})
    assert choose_successor([cloud_, ad], {"ad": 2, "cloud": 1}, "", lambda a: False) == "onprem@contoso.com"
    assert choose_successor([cloud_, ad], {"ad": 0, "cloud": 1}, "", lambda a: False) == "cloud@contoso.com"


def test_an_absurd_retry_delay_is_capped_not_a_crash(env):
    env.csv(leaver("E1", "ann@contoso.com"))
    env.directory.fail["disable_account"] = RetryableError("HTTP 429", delay=1e12)
    assert env.run().exit_code == 2
    [row] = [a for a in env.store.actions("contoso/E1") if a["action"] == "disable_account"]
    assert row["next_attempt_at"] == "2026-11-24T23:30:00+00:00"          # one day, not year 33,000
