"""Two daemons against one, on a 2,000-leaver layoff: `python -m benchmarks two_daemons`.

The same layoff twice, each on a fresh sandbox and a fresh database of one real PostgreSQL
server, with no throttle: once with one `offboard serve`, once with two sharing the database,
the webhooks split between them. Throughput is leavers settled `done` per second, from the
first webhook to the last `done`. Both daemons and the sandbox share this machine's cores, so
the ratio says what a second daemon costs or gains here, not on two machines.

The lease overhead per termination is measured two ways: the lease-table writes PostgreSQL
counted during the two-daemon run (pg_stat_user_tables), divided by the leavers, and the time
of one termination's lease life (take, one renewal, give back) on the same server, timed alone.
"""
from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

from connector.sandbox.demo import TENANT
from connector.sandbox.postgres import PostgresServer, missing
from connector.store import open_state
from tests.serving import Daemon, independent_leavers, sandbox_daemon_setup, signed, wait_until, webhook_body

from .sections import Section, table

TITLE = "Two daemons against one"
LEAVERS = 2_000
TENANTS = 20
SIZE = 3_000                    # people in the sandbox company: enough leavers none of whom manages another
POSTERS = 8                     # webhooks sent at once


def count(url: str, query: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query).fetchone()[0]


def lease_writes(url: str) -> int:
    return count(url, "select coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) from pg_stat_user_tables "
                      "where relname = 'leases'")


def layoff(folder: Path, server: PostgresServer, daemons: int) -> dict:
    url = server.create_database(f"layoff_{daemons}")
    with sandbox_daemon_setup(folder, size=SIZE, tenants=TENANTS, state=url,
                              tenant_extra=f"max_terminations_per_day = {LEAVERS}") as (world, config, env):
        people = independent_leavers(world, LEAVERS)
        assert len(people) == LEAVERS, len(people)
        running = [Daemon(folder, config, env, name=f"serve{i}").start() for i in range(daemons)]
        try:
            wait_until(lambda: count(url, "select count(*) from leases where key like 'tenant:%%'") == TENANTS, 60)
            writes_before = lease_writes(url)

            def post(i: int) -> str:       # signed as it is sent: a body older than the replay window is refused
                body = webhook_body(people[i], f"{TENANT}{i % TENANTS or ''}")
                answer = running[i % daemons].post("/webhook/generic", body, signed(body))
                return "" if answer.status_code == 202 else f"{answer.status_code} {answer.text}"

            start = time.monotonic()
            with ThreadPoolExecutor(POSTERS) as pool:
                refused = [a for a in pool.map(post, range(LEAVERS)) if a]
            assert not refused, f"{len(refused)} webhooks refused, the first: {refused[0]}"
            wait_until(lambda: count(url, "select count(*) from terminations where state = 'done'") == LEAVERS,
                       3600, every=0.5, what="every leaver done")
            elapsed = time.monotonic() - start
            time.sleep(1.5)                               # PostgreSQL publishes its table counters within a second
            writes = lease_writes(url) - writes_before
        finally:
            for daemon in running:
                daemon.stop()
        left = [p for p in people if world.cloud.user_by_upn(p.email)["accountEnabled"]]
        assert not left, f"{len(left)} leavers can still sign in"
    return {"elapsed": elapsed, "per_second": LEAVERS / elapsed, "lease_writes": writes}


def lease_life(server: PostgresServer, n: int = 500) -> float:
    """Seconds for one termination's leases: take, renew once, give back (as a pass does), timed alone."""
    store = open_state(server.create_database("lease_life"))
    try:
        start = time.perf_counter()
        for i in range(n):
            key = f"termination:bench/E{i}"
            store.acquire_lease(key, "bench:1:run", 60)
            store.renew_lease(key, "bench:1:run", 60)
            store.release_lease(key, "bench:1:run")
        return (time.perf_counter() - start) / n
    finally:
        store.close()


def section() -> Section:
    if reason := missing():
        return Section(TITLE, f"Not measured: PostgreSQL {reason}.", "not measured")
    folder = Path(tempfile.mkdtemp(prefix="bench-two-daemons-"))
    server = PostgresServer(folder / "postgres").start()
    try:
        one = layoff(folder / "one", server, 1)
        two = layoff(folder / "two", server, 2)
        life = lease_life(server)
    finally:
        server.stop()
    ratio = two["per_second"] / one["per_second"]
    per_leaver = two["elapsed"] / LEAVERS
    rows = [
        [f"one daemon, {LEAVERS:,} leavers of {TENANTS} tenants", f"{one['elapsed']:.0f} s",
         f"{one['per_second']:.1f} leavers/s"],
        ["two daemons on one PostgreSQL database, the same layoff", f"{two['elapsed']:.0f} s",
         f"{two['per_second']:.1f} leavers/s"],
        ["lease-table writes in the two-daemon run", f"{two['lease_writes']:,}",
         f"{two['lease_writes'] / LEAVERS:.1f} per leaver"],
        ["one termination's lease life alone (take, renew, give back)", f"{life * 1000:.1f} ms",
         f"{life / per_leaver * 100:.1f} % of the wall time per leaver with two daemons"],
    ]
    return Section(TITLE, table(["measurement", "figure", "rate"], rows) + "\n\n"
                   "Both daemons, the sandbox and PostgreSQL run on this one machine's cores, so a second daemon here\n"
                   "competes with the first for the same CPU: the ratio is what one box gains from two processes, and\n"
                   "a lower bound for two machines. The lease writes include each tenant's lease renewals and each\n"
                   "pass's intake lease, not only the termination leases.",
                   f"two daemons: {ratio:.2f}x the throughput of one; lease overhead {life * 1000:.1f} ms per termination")
