"""Several writers on one store, on both backends: threads with their own store or one shared, and real processes.

Processes are spawned (a fresh interpreter, no inherited handle) and start together on a barrier.
"""
import multiprocessing
import threading

from connector.store import open_state

SPAWN = multiprocessing.get_context("spawn")
KEY = b"audit-key-for-tests"


def assert_whole_chain(target, rows):
    store = open_state(target, audit_key=KEY)
    try:
        assert store.verify_audit() == (True, "", rows)
        assert [r["seq"] for r in store.audit_trail("t/1")] == list(range(1, rows + 1))
    finally:
        store.close()


def append(store, worker, batches):
    for n in range(batches):
        if n % 2:
            store.audit("action_changed", "t/1", worker, n=n)
        else:
            store.audit_many([("action_changed", "t/1", worker, {"n": n, "i": i}) for i in range(3)])


def run_threads(target, count):
    start, errors = threading.Barrier(count), []

    def body(i):
        start.wait()
        try:
            target(i)
        except Exception as e:       # noqa: BLE001 - the test reports every thread's failure
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_eight_threads_each_with_its_own_store_append_one_unbroken_chain(backing):
    run_threads(lambda i: append(backing.open(audit_key=KEY), f"w{i}", 20), 8)
    assert_whole_chain(backing.target, 8 * 20 * 2)


def test_eight_threads_sharing_one_store_append_one_unbroken_chain(backing):
    shared = backing.open(audit_key=KEY)
    run_threads(lambda i: append(shared, f"w{i}", 20), 8)
    assert_whole_chain(backing.target, 8 * 20 * 2)


def test_threads_inside_transactions_of_a_shared_store_do_not_join_each_other(backing):
    shared = backing.open()

    def work(i):
        for n in range(10):
            with shared.transaction():
                shared.set_cursor(f"c{i}", str(n))
                shared.audit("x", "t/1", f"w{i}")
    run_threads(work, 8)
    assert shared.verify_audit() == (True, "", 80)
    assert {shared.cursor(f"c{i}") for i in range(8)} == {"9"}


# -- real processes -------------------------------------------------------------------------
def _append_process(target, start, worker, batches=40):
    store = open_state(target, audit_key=KEY)
    start.wait()
    append(store, worker, batches)


def _open_process(targets, start, results):
    for target in targets:
        start.wait()
        try:
            open_state(target, audit_key=KEY).audit("opened", "t/1", None)
            results.put("ok")
        except Exception as e:       # noqa: BLE001 - the parent asserts on it
            results.put(f"{type(e).__name__}: {e}")


def _lease_process(keys, start, results, owner):
    for target, key in keys:
        start.wait()
        results.put((key, owner, open_state(target).acquire_lease(key, owner, 60)))


def start_processes(target, args_for, count):
    procs = [SPAWN.Process(target=target, args=args_for(i)) for i in range(count)]
    for p in procs:
        p.start()
    return procs


def join(procs):
    for p in procs:
        p.join(120)
        assert p.exitcode == 0


def test_two_processes_append_at_once_and_the_chain_is_whole(backing):
    backing.open()
    start = SPAWN.Barrier(2)
    join(start_processes(_append_process, lambda i: (backing.target, start, f"p{i}"), 2))
    assert_whole_chain(backing.target, 2 * 40 * 2)


def new_targets(backing, tmp_path, rounds):
    """Places where no store exists yet: files in new folders, or new empty databases."""
    if backing.kind == "sqlite":
        return [str(tmp_path / f"new{n}" / "state.db") for n in range(rounds)]
    return [backing.server.create_database(f"new_{backing.target.rsplit('/', 1)[1]}_{n}") for n in range(rounds)]


def test_processes_opening_a_new_store_at_the_same_moment_all_succeed(backing, tmp_path):
    rounds, count = 6, 3
    targets = new_targets(backing, tmp_path, rounds)
    start, results = SPAWN.Barrier(count), SPAWN.Queue()
    procs = start_processes(_open_process, lambda i: (targets, start, results), count)
    outcomes = [results.get(timeout=120) for _ in range(rounds * count)]
    join(procs)
    assert outcomes == ["ok"] * rounds * count
    for target in targets:
        assert_whole_chain(target, count)


def test_of_processes_racing_for_one_lease_exactly_one_wins(backing):
    rounds, count = 5, 4
    backing.open()
    keys = [(backing.target, f"termination:t/{n}") for n in range(rounds)]
    start, results = SPAWN.Barrier(count), SPAWN.Queue()
    procs = start_processes(_lease_process, lambda i: (keys, start, results, f"p{i}"), count)
    outcomes = [results.get(timeout=120) for _ in range(rounds * count)]
    join(procs)
    store = backing.open()
    for _, key in keys:
        winners = [owner for k, owner, won in outcomes if k == key and won]
        assert len(winners) == 1 and store.lease(key)["owner"] == winners[0]


def test_a_backup_taken_while_another_process_writes_is_consistent(backing, tmp_path):
    store = backing.open(audit_key=KEY)
    start = SPAWN.Barrier(2)
    procs = start_processes(_append_process, lambda i: (backing.target, start, "writer", 400), 1)
    start.wait()
    counts = []
    while procs[0].is_alive() or not counts:
        target = str(tmp_path / f"b{len(counts)}.db")
        store.backup(target)
        copy = open_state(backing.restore(target), audit_key=KEY)
        ok, problem, count = copy.verify_audit()
        copy.close()
        assert ok, problem
        counts.append(count)
    join(procs)
    assert counts == sorted(counts) and any(0 < c < 800 for c in counts), counts
