"""Two `offboard serve` processes on one real PostgreSQL database, against the sandbox over HTTPS.

Each daemon is what one machine of an MSP runs: the webhooks of twenty tenants arrive at
either, both work from the one database, and every write the emulated Microsoft 365 receives
is counted in its write log. Each leaver is offboarded exactly once whichever daemon took
the webhook; a daemon killed mid-pass leaves leases that expire, and the other takes its work
over; the same webhook delivered to both at once makes one run; and the audit chain both
appended to verifies with `offboard audit verify`.
"""
from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import signal
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connector.daemon.service import PLAN_AHEAD
from connector.reconcile.leases import daemon_of
from connector.sandbox.configs import TENANT
from connector.store.base import stamp
from tests.serving import (Daemon, independent_leavers, sandbox_daemon_setup, signed, wait_until, webhook_body,
                           whole_minute_after)

pytestmark = pytest.mark.postgres

TENANTS = 20
LEASE_SECONDS = 3                  # sandbox_daemon_setup's
_databases = itertools.count(1)


def tenant_id(i: int) -> str:
    return TENANT if i == 0 else f"{TENANT}{i}"


@pytest.fixture
def setup(tmp_path, postgres_server):
    url = postgres_server.create_database(f"two_daemons_{os.getpid()}_{next(_databases)}")
    with sandbox_daemon_setup(tmp_path, size=300, tenants=TENANTS, state=url) as (world, config, env):
        yield world, config, env, url


def started(tmp_path, config, env) -> tuple[Daemon, Daemon]:
    first = Daemon(tmp_path, config, env, name="first").start()
    try:
        return first, Daemon(tmp_path, config, env, name="second").start()
    except BaseException:
        first.stop(signal.SIGKILL)
        raise


def sql(url: str, query: str, args: list | None = None) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, args).fetchall()


def states(url: str) -> Counter:
    return Counter(state for state, in sql(url, "select state from terminations"))


def doubled(world) -> dict:
    """Writes that reached the emulated systems more than once: (system, op, target) -> count."""
    counts = Counter((w.system, w.op, w.target) for w in world.sandbox.writes.entries(ok=True))
    return {write: n for write, n in counts.items() if n > 1}


def offboarded(world, person) -> bool:
    return world.cloud.user_by_upn(person.email)["accountEnabled"] is False


def workers_of_changes(url: str) -> Counter:
    """Which daemon (host:pid) ran the passes that journaled each change."""
    return Counter(daemon_of(owner) for owner, in sql(
        url, "select r.owner from actions a join runs r on r.id = a.run_id where a.status = 'changed'"))


def post(daemon: Daemon, person, tenant: str) -> int:
    body = webhook_body(person, tenant)
    return daemon.post("/webhook/generic", body, signed(body)).status_code


def keepers(url: str) -> dict[str, str]:
    """tenant -> the daemon (host:pid) holding its lease, which keeps its polls and wake-ups."""
    return {key.split(":", 1)[1]: daemon_of(owner) for key, owner in sql(
        url, "select key, owner from leases where key like 'tenant:%%' and expires_at > %s",
        [stamp(dt.datetime.now(dt.timezone.utc))])}


def audit_verifies(daemon: Daemon) -> None:
    out = daemon.cli("audit", "verify")
    assert out.returncode == 0, out.stdout + out.stderr


def test_two_daemons_offboard_two_hundred_leavers_of_twenty_tenants_exactly_once_and_share_the_work(setup, tmp_path):
    world, config, env, url = setup
    people = independent_leavers(world, 200)
    assert len(people) == 200
    world.cloud.graph.knobs.latency = (0.01, 0.01)        # the two daemons' passes overlap
    first, second = started(tmp_path, config, env)
    try:
        with ThreadPoolExecutor(8) as pool:               # half the webhooks reach each daemon, interleaved
            answers = list(pool.map(lambda i: post((first, second)[i % 2], people[i], tenant_id(i % TENANTS)),
                                    range(len(people))))
        assert answers == [202] * len(people)
        wait_until(lambda: states(url) == {"done": 200}, 300, every=1, what=f"200 terminations done: {states(url)}")
        health = [d.get("/healthz") for d in (first, second)]
        assert [h.status_code for h in health] == [200, 200]
        assert all(h.json()["database"] == "reachable" and h.json()["leases"]["process"] == 1 for h in health)
        assert {h.json()["leases"]["daemon"] for h in health} == {f"{socket.gethostname()}:{d.proc.pid}"
                                                                   for d in (first, second)}
        families = {f.name: f for f in text_string_to_metric_families(first.get("/metrics").text)}
        held = {s.labels["daemon"] for s in families["offboard_leases_held"].samples if s.labels["kind"] == "process"}
        assert held == {h.json()["leases"]["daemon"] for h in health}      # each daemon sees both
        audit_verifies(second)
    finally:
        assert first.stop() == 0 and second.stop() == 0
    assert all(offboarded(world, p) for p in people)
    assert not doubled(world)
    # per leaver, at the least: block sign-in, reset the password, revoke sessions, convert the mailbox
    assert len(world.sandbox.writes.entries(ok=True)) >= 4 * len(people)
    by_daemon = workers_of_changes(url)
    assert len(by_daemon) == 2 and min(by_daemon.values()) > 0, by_daemon
    assert sum(by_daemon.values()) == sql(url, "select count(*) from actions where status = 'changed'")[0][0]


def test_a_daemon_killed_mid_pass_has_its_work_finished_by_the_other_within_a_minute_of_its_leases_expiring(
        setup, tmp_path):
    world, config, env, url = setup
    people = independent_leavers(world, 24)
    world.cloud.graph.knobs.latency = (0.0, 0.4)          # each Graph write lands, then its answer is slow
    first, second = started(tmp_path, config, env)
    try:
        with ThreadPoolExecutor(8) as pool:               # every webhook to the daemon that is about to die
            assert list(pool.map(lambda i: post(first, people[i], tenant_id(i % TENANTS)), range(len(people)))) \
                == [202] * len(people)
        doomed = str(first.proc.pid)
        wait_until(lambda: sql(url, "select count(*) from leases where key like 'termination:%%' and owner like %s",
                               [f"%:{doomed}:%"])[0][0] >= 3, 60, every=0.05, what="the first daemon to hold leavers")
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        killed = time.monotonic()
        orphaned = [key for key, in sql(url, "select key from leases where key like 'termination:%%' and owner like %s",
                                        [f"%:{doomed}:%"])]
        assert orphaned, "the killed daemon held no termination: nothing was taken over"
        assert states(url) != {"done": len(people)}, "everything was done before the kill: nothing was tested"
        world.cloud.graph.knobs.latency = (0.0, 0.0)
        wait_until(lambda: states(url) == {"done": len(people)}, LEASE_SECONDS + 60, every=0.5,
                   what=f"the survivor to finish within 60 s of the leases expiring: {states(url)}")
        taken_over = time.monotonic() - killed
        survivor = f"{socket.gethostname()}:{second.proc.pid}"
        for key in orphaned:                              # each left leaver finished by the survivor's passes
            tid = key.split(":", 1)[1]
            finishers = {daemon_of(o) for o, in sql(url, "select r.owner from actions a join runs r on r.id = a.run_id"
                                                         " where a.termination_id = %s and a.finished_at is not null"
                                                         " order by a.finished_at desc limit 1", [tid])}
            assert finishers == {survivor}, (tid, finishers)
        assert taken_over <= LEASE_SECONDS + 60
        wait_until(lambda: keepers(url) == {tenant_id(i): survivor for i in range(TENANTS)}, 30,
                   what=f"the survivor to keep every tenant: {keepers(url)}")
        assert second.get("/healthz").status_code == 200
        audit_verifies(second)
    finally:
        assert second.stop() == 0
    assert all(offboarded(world, p) for p in people)
    assert not doubled(world)


def test_scheduled_leavers_are_revoked_at_their_instant_once_each_by_the_daemon_keeping_their_tenant(setup, tmp_path):
    world, config, env, url = setup
    people = independent_leavers(world, TENANTS)
    first, second = started(tmp_path, config, env)
    try:
        daemons = {f"{socket.gethostname()}:{d.proc.pid}" for d in (first, second)}
        wait_until(lambda: len(keepers(url)) == TENANTS and Counter(keepers(url).values()) ==
                   {d: TENANTS // 2 for d in daemons}, 30, what=f"the tenants shared out evenly: {keepers(url)}")
        kept = keepers(url)
        soon = whole_minute_after(PLAN_AHEAD.total_seconds() + 30)    # all still scheduled when the wait below ends
        for i, person in enumerate(people):              # each told to the daemon NOT keeping its tenant half the time
            body = webhook_body(person, tenant_id(i), on=soon.date(), at=soon.strftime("%H:%M"))
            assert (first, second)[i % 2].post("/webhook/generic", body, signed(body)).status_code == 202
        wait_until(lambda: states(url) == {"scheduled": TENANTS}, 30, what=f"all scheduled: {states(url)}")
        assert not any(offboarded(world, p) for p in people)
        wait_until(lambda: states(url) == {"done": TENANTS}, 150, every=0.5, what=f"revoked at the instant: {states(url)}")
        blocks = [w for w in world.sandbox.writes.entries(ok=True) if w.op == "PATCH users/{id} accountEnabled"]
        assert len(blocks) == TENANTS
        assert all(soon.timestamp() <= b.at <= soon.timestamp() + 20 for b in blocks), \
            [round(b.at - soon.timestamp(), 1) for b in blocks]
        due_runs = sql(url, "select tenant, owner from runs where trigger = 'due'")
        assert {tenant for tenant, _ in due_runs} == set(kept)
        assert all(daemon_of(owner) == kept[tenant] for tenant, owner in due_runs), (due_runs, kept)
        audit_verifies(first)
    finally:
        assert first.stop() == 0 and second.stop() == 0
    assert all(offboarded(world, p) for p in people)
    assert not doubled(world)


def test_the_same_webhook_posted_to_both_daemons_at_once_makes_one_run(setup, tmp_path):
    world, config, env, url = setup
    first, second = started(tmp_path, config, env)
    people = independent_leavers(world, 5)
    try:
        for person in people:
            body = webhook_body(person)
            with ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(lambda d: d.post("/webhook/generic", body, signed(body)), (first, second)))
            assert sorted(a.status_code for a in answers) == [202, 400], [a.text for a in answers]
            assert "accepted before" in next(a.json()["error"] for a in answers if a.status_code == 400)
            run_id = next(a.json()["run_id"] for a in answers if a.status_code == 202)
            tid = f"{TENANT}/{person.number}"
            # one run: a webhook run, or the targeted pass already waiting that the webhook joined (a retry's)
            runs = [r for r, t in sql(url, "select id, terminations from runs where trigger = 'webhook' or id = %s",
                                      [run_id]) if tid in json.loads(t or "[]")]
            assert runs == [run_id]
        wait_until(lambda: states(url) == {"done": len(people)}, 120, every=0.5, what="the webhooks' offboardings")
        audit_verifies(first)
    finally:
        assert first.stop() == 0 and second.stop() == 0
    assert all(offboarded(world, p) for p in people)
    assert not doubled(world)
