"""Two real processes on one state file (the timer and a technician), against one system over HTTP.

Each leaver is worked by one process at a time (a lease in the store); every write reaches
the directory once; neither process crashes; and a process that dies mid-pass has its
leases taken over by the next one once `lease_seconds` have passed.
"""
from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import signal
import time

import pytest

from connector import config as configmod
from connector.config import PluginOptions
from connector.reconcile import reconcile
from connector.store import Store
from tests.fakes.http_directory import CountingDirectory, HttpDirectory
from tests.helpers import write_config, write_csv

NOW = dt.datetime(2026, 11, 23, 23, 30, tzinfo=dt.timezone.utc)
LEAVERS = 8


def worker(config_path: str, url: str, barrier, results) -> None:
    cfg = configmod.load(config_path)
    store = Store.open(cfg.connector.state)
    barrier.wait()
    report = reconcile(cfg, store, now=NOW, providers=lambda t: [HttpDirectory("ad", PluginOptions(), t, url=url)])
    results.put((os.getpid(), report.exit_code, sorted(report.terminations)))


@pytest.fixture
def world(tmp_path):
    accounts = {f"u{i}": {"employee_id": f"E{i}", "email": f"p{i}@contoso.com", "enabled": True,
                          "groups": ["staff"]} for i in range(LEAVERS)}
    directory = CountingDirectory(accounts, delay=0.05)
    write_csv(tmp_path / "hr", "feed.csv", [f"E{i},p{i}@contoso.com,P,{i},,2026-11-20,,"
                                            for i in range(LEAVERS)])
    (tmp_path / "pw").write_text("unused: the test hands reconcile its own provider")
    config = write_config(tmp_path, top="lease_seconds = 2\n",
                          providers='[[tenant.provider]]\ntype = "active_directory"\nurl = "ldaps://127.0.0.1"\n'
                                    f'bind_user = "x"\nbind_password = "file:{tmp_path / "pw"}"\n'
                                    'disabled_ou = "OU=x"\n')
    yield directory, str(config)
    directory.close()


def test_two_passes_at_once_write_everything_exactly_once(world):
    directory, config = world
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(config, directory.url, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0], "a process crashed"
    outcomes = [results.get(timeout=5) for _ in procs]
    assert all(code in (0, 2) for _, code, _ in outcomes), outcomes
    assert set(directory.writes.values()) == {1}
    assert len(directory.writes) == 2 * LEAVERS
    store = Store.open(configmod.load(config).connector.state)
    assert {t["state"] for t in store.terminations()} == {"done"}
    assert store.verify_audit()[0]


def test_a_process_that_dies_mid_pass_is_taken_over_after_its_lease(world):
    directory, config = world
    directory.delay = 0.5
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(1), ctx.Queue()
    doomed = ctx.Process(target=worker, args=(config, directory.url, barrier, results))
    doomed.start()
    deadline = time.monotonic() + 30
    while not directory.writes and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(doomed.pid, signal.SIGKILL)              # dies holding its leases
    doomed.join()
    directory.delay = 0.0
    cfg = configmod.load(config)
    store = Store.open(cfg.connector.state)
    early = reconcile(cfg, store, now=NOW, providers=lambda t: [HttpDirectory("ad", PluginOptions(), t, url=directory.url)])
    assert {t["state"] for t in store.terminations()} != {"done"}   # the dead holder's leases still count
    assert early.exit_code in (0, 2)
    time.sleep(2.5)                                                  # lease_seconds = 2
    later = reconcile(cfg, store, now=NOW, providers=lambda t: [HttpDirectory("ad", PluginOptions(), t, url=directory.url)])
    assert later.exit_code == 0
    assert {t["state"] for t in store.terminations()} == {"done"}
    assert set(directory.writes.values()) == {1}, directory.writes
