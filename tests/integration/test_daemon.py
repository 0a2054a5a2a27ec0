"""`offboard serve` as systemd runs it: a real subprocess, over real HTTP, against the sandbox over HTTPS.

What is counted is what the emulated systems really received (their write log), and what
the daemon says (its notify socket, its listener, its JSON log, `offboard status`).
"""
from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connector.daemon.service import PLAN_AHEAD
from connector.sandbox.configs import TENANT
from connector.sandbox.serving import requests_seen
from tests.serving import (CALLBACK_TOKEN, HOOK_SECRET, Daemon, cloud_only_stayers, sandbox_daemon_setup, signed, wait_until,
                           webhook_body, whole_minute_after)


@pytest.fixture
def setup(tmp_path):
    with sandbox_daemon_setup(tmp_path) as (world, config, env):
        yield world, config, env


def status(daemon: Daemon) -> dict[str, dict]:
    out = daemon.cli("status", "--all", "--json")
    assert out.returncode == 0, out.stderr
    return {row["id"]: row for row in map(json.loads, out.stdout.splitlines())}


def writes_for(world, person) -> Counter:
    """Successful writes that concern one person, by (system, op, target)."""
    ids = {person.email.lower()} | {uid for uid, u in world.cloud.users.items()
                                    if u["userPrincipalName"].lower() == person.email.lower()}
    return Counter((w.system, w.op, w.target) for w in world.sandbox.writes.entries(ok=True)
                   if any(part.lower() in ids for part in w.target.replace("UPN:", "").split("/")))


def offboarded(world, person) -> bool:
    user = next(u for u in world.cloud.users.values() if u["userPrincipalName"].lower() == person.email.lower())
    return user["accountEnabled"] is False


def test_serve_is_ready_healthy_measured_and_offboards_a_signed_webhook(setup, tmp_path):
    world, config, env = setup
    daemon = Daemon(tmp_path, config, env).start()
    try:
        assert "READY=1" in daemon.notify.messages[-1] or any("READY=1" in m for m in daemon.notify.messages)
        health = daemon.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        leaver = cloud_only_stayers(world)[0]
        body = webhook_body(leaver)
        answer = daemon.post("/webhook/generic", body, signed(body))
        assert answer.status_code == 202
        run_id = answer.json()["run_id"]
        run = wait_until(lambda: (r := daemon.get(f"/runs/{run_id}").json())["state"] in ("done", "failed") and r,
                         60, what="the webhook's run to finish")
        assert run["state"] == "done" and run["terminations"] == [f"{TENANT}/{leaver.number}"]
        assert offboarded(world, leaver)
        # the mailbox conversion is asynchronous: its journaled wait wakes the daemon up, not the one-hour poll
        done = wait_until(lambda: status(daemon)[f"{TENANT}/{leaver.number}"]["state"] == "done", 90,
                          what="the termination to be done")
        assert done
        families = {f.name: f for f in text_string_to_metric_families(daemon.get("/metrics").text)}
        states = {(s.labels["tenant"], s.labels["state"]): s.value for s in families["offboard_terminations"].samples}
        assert states[(TENANT, "done")] == 1
        changed = {(s.labels["provider"], s.labels["action"]) for s in families["offboard_actions"].samples
                   if s.labels["outcome"] == "changed" and s.name == "offboard_actions_total"}
        assert ("entra", "block_sign_in") in changed and ("exchange_online", "convert_mailbox_to_shared") in changed
        count = next(s.value for s in families["offboard_revoke_seconds"].samples if s.name.endswith("_count"))
        assert count == 1
        assert "offboard_oldest_open_termination_seconds" in families
        assert daemon.get("/runs/ffffffffffff").status_code == 404
        assert daemon.get("/nowhere").status_code == 404
        assert daemon.get("/webhook/generic").status_code == 405
    finally:
        assert daemon.stop() == 0
    records = daemon.records()
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    action = next(r for r in records if r.get("action") == "block_sign_in")
    assert action["tenant"] == TENANT and action["employee"] == leaver.number and action["provider"] == "entra" \
        and action["outcome"] == "changed"


def test_a_thousand_hostile_and_duplicate_posts_offboard_each_valid_person_once(setup, tmp_path):
    world, config, env = setup
    daemon = Daemon(tmp_path, config, env).start()
    people = cloud_only_stayers(world)[:12]
    assert len(people) >= 8
    now = int(time.time())
    valid, bad = [], []
    for i, person in enumerate(people):
        for k in range(3):                                  # the same person delivered three times
            valid.append(webhook_body(person, timestamp=now - k))
    for i in range(1000 - len(valid)):
        person = people[i % len(people)]
        kind = i % 5
        if kind == 0:                                       # a replay of an accepted body
            body = valid[i % len(valid)]
            bad.append(("replay", body, signed(body)))
        elif kind == 1:                                     # forged: signed with another secret
            body = webhook_body(person, timestamp=now - 7)
            bad.append(("forged", body, signed(body, "not-the-secret")))
        elif kind == 2:                                     # stale
            body = webhook_body(person, timestamp=now - 3600)
            bad.append(("stale", body, signed(body)))
        elif kind == 3:                                     # malformed, correctly signed
            body = b'{"tenant": "' + TENANT.encode() + b'", "timestamp": ' + str(now).encode() + b', "x": [' + b"1," * 50 + b"1]}"
            bad.append(("malformed", body, signed(body)))
        else:                                               # oversize (a few: each is over a MiB)
            body = b"{" + b" " * ((1 << 20) + 10) + b"}" if i % 50 == 4 else webhook_body(person, tenant="other")
            bad.append(("oversize" if len(body) > 1 << 20 else "unknown tenant", body, signed(body)))
    posts = [("valid", b, signed(b)) for b in valid] + bad
    random.Random(7).shuffle(posts)
    # the replays must come after the bodies they replay were accepted
    posts = [p for p in posts if p[0] != "replay"] + [p for p in posts if p[0] == "replay"]
    try:
        def post(item):
            kind, body, headers = item
            return kind, daemon.post("/webhook/generic", body, headers).status_code

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, posts))
        assert len(answers) == 1000
        by_kind = Counter((kind, code) for kind, code in answers)
        assert by_kind[("valid", 202)] == len(valid), by_kind
        assert {code for kind, code in answers if kind == "forged"} == {401}
        assert {code for kind, code in answers if kind == "unknown tenant"} == {401}
        assert {code for kind, code in answers if kind in ("stale", "malformed", "replay")} == {400}
        assert {code for kind, code in answers if kind == "oversize"} == {413}
        wait_until(lambda: all(offboarded(world, p) for p in people), 120, what="every valid person revoked")
        wait_until(lambda: not any(r["state"] in ("queued", "running") for r in runs(tmp_path)), 60,
                   what="every run to finish")
        rows = status(daemon)
        assert set(rows) == {f"{TENANT}/{p.number}" for p in people}           # nothing else was queued
        for person in people:
            counts = writes_for(world, person)
            ops = Counter(op for _, op, _ in counts.elements())
            assert ops["PATCH users/{id} accountEnabled"] == 1 and ops["POST users/{id}/revokeSignInSessions"] == 1
            assert set(counts.values()) == {1}, (person.email, counts)
        assert daemon.get("/healthz").status_code == 200                        # and it stayed up
    finally:
        assert daemon.stop() == 0


def runs(folder) -> list[dict]:
    with sqlite3.connect(folder / "state.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from runs")]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_stopped_mid_pass_and_restarted_converges_without_a_second_write(setup, tmp_path, how):
    world, config, env = setup
    people = cloud_only_stayers(world)[:4]
    world.cloud.graph.knobs.latency = (0.0, 0.4)         # each Graph write lands, then the answer is slow
    daemon = Daemon(tmp_path, config, env).start()
    for person in people:
        body = webhook_body(person)
        assert daemon.post("/webhook/generic", body, signed(body)).status_code == 202
    wait_until(lambda: len(world.sandbox.writes.entries(ok=True)) >= 3, 30, every=0.05, what="the pass to be writing")
    assert daemon.stop(how, timeout=45) == (0 if how == signal.SIGTERM else -signal.SIGKILL)
    written_before = len(world.sandbox.writes.entries(ok=True))
    assert not all(offboarded(world, p) and any(op == "Set-Mailbox Type" for _, op, _ in writes_for(world, p)) for p in people), \
        "the pass finished before it was stopped: nothing was tested"
    world.cloud.graph.knobs.latency = (0.0, 0.0)
    again = Daemon(tmp_path, config, env, name="restarted").start()
    try:
        wait_until(lambda: set(r["state"] for r in status(again).values()) == {"done"}, 150,
                   what="every termination done after the restart")
    finally:
        assert again.stop() == 0
    assert len(world.sandbox.writes.entries(ok=True)) > written_before        # the restart did the rest
    for person in people:
        counts = writes_for(world, person)
        assert set(counts.values()) == {1}, (person.email, counts)


def test_a_termination_that_becomes_due_while_serving_is_revoked_at_its_instant(setup, tmp_path):
    world, config, env = setup
    daemon = Daemon(tmp_path, config, env).start()      # poll_interval is one hour
    try:
        person = cloud_only_stayers(world)[0]
        soon = whole_minute_after(PLAN_AHEAD.total_seconds() + 8)     # its pass starts PLAN_AHEAD before the instant
        with requests_seen(world.sandbox) as asked:
            body = webhook_body(person, on=soon.date(), at=soon.strftime("%H:%M"))
            assert daemon.post("/webhook/generic", body, signed(body)).status_code == 202
            time.sleep(1)
            assert status(daemon)[f"{TENANT}/{person.number}"]["state"] == "scheduled"
            assert not offboarded(world, person)
            wait_until(lambda: offboarded(world, person), 140, every=0.1, what="the revoke at the due instant")
            block = next(w for w in world.sandbox.writes.entries(ok=True) if w.op == "PATCH users/{id} accountEnabled")
            assert soon.timestamp() <= block.at <= soon.timestamp() + 10, block.at - soon.timestamp()
            # read and matched ahead of the instant: the Graph search for the person (a later pass may search again)
            searches = [at for at, name, request in asked if name == "graph" and b"employeeId" in (request.body or b"")
                        and person.number.encode() in request.body]
            assert searches and min(searches) < soon.timestamp() <= block.at, (searches, soon)
    finally:
        assert daemon.stop() == 0


def test_sighup_swaps_in_a_good_config_and_keeps_the_running_one_when_the_new_one_is_broken(setup, tmp_path):
    world, config, env = setup
    daemon = Daemon(tmp_path, config, env).start()
    good = config.read_text()
    try:
        config.write_text(good.replace('poll_interval = "1h"', 'poll_interval = "2h"'))
        daemon.send(signal.SIGHUP)
        wait_until(lambda: any("reloaded" in r["message"] for r in daemon.records()), 20, what="the reload")
        config.write_text(good.replace('poll_interval = "1h"', 'poll_interval = "soon"'))
        daemon.send(signal.SIGHUP)
        refused = wait_until(lambda: [r for r in daemon.records() if "reload refused" in r["message"]], 20,
                             what="the refusal")
        assert len(refused) == 1 and refused[0]["level"] == "ERROR" and "poll_interval" in refused[0]["message"]
        assert daemon.proc.poll() is None and daemon.get("/healthz").status_code == 200
        person = cloud_only_stayers(world)[0]                # the running config still works
        body = webhook_body(person)
        assert daemon.post("/webhook/generic", body, signed(body)).status_code == 202
        wait_until(lambda: offboarded(world, person), 60, what="the offboarding under the kept config")
    finally:
        config.write_text(good)
        assert daemon.stop() == 0


def test_no_secret_or_generated_password_reaches_the_logs_or_the_state_store(setup, tmp_path):
    world, config, env = setup
    daemon = Daemon(tmp_path, config, env).start()
    people = cloud_only_stayers(world)[:3]
    try:
        for person in people:
            body = webhook_body(person)
            assert daemon.post("/webhook/generic", body, signed(body)).status_code == 202
        wait_until(lambda: all(offboarded(world, p) for p in people), 60, what="the offboardings")
        wait_until(lambda: len(world.cloud.passwords) >= len(people), 30, what="the password resets")
        daemon.cli("backup", str(tmp_path / "copy.db"))
    finally:
        assert daemon.stop() == 0
    secrets = [HOOK_SECRET, world.cloud.app.secret, *world.cloud.passwords.values()]
    assert len(secrets) >= 2 + len(people)
    haystacks = {path.name: path.read_bytes() for path in tmp_path.iterdir()
                 if path.is_file() and (path.suffix in (".log", ".db") or path.name.endswith(("-wal", "-shm")))}
    assert "serve.log" in haystacks and "state.db" in haystacks
    for name, data in haystacks.items():
        for secret in secrets:
            assert secret.encode() not in data, f"a secret is in {name}"


def test_two_daemons_on_one_store_work_each_termination_once(setup, tmp_path):
    world, config, env = setup
    people = cloud_only_stayers(world)[:6]
    world.cloud.graph.knobs.latency = (0.02, 0.02)       # long enough for the two daemons' passes to overlap
    first = Daemon(tmp_path, config, env, name="first").start()
    second = Daemon(tmp_path, config, env, name="second").start()
    try:
        for i, person in enumerate(people):               # each person told to both daemons, in two bodies
            sent_at = int(time.time())                    # (a slow post must not make the second body the first's)
            for daemon in (first, second):
                body = webhook_body(person, timestamp=sent_at - (daemon is second))
                assert daemon.post("/webhook/generic", body, signed(body)).status_code == 202
        wait_until(lambda: set(r["state"] for r in status(first).values()) == {"done"}, 150,
                   what="every termination done")
    finally:
        assert first.stop() == 0 and second.stop() == 0
    for person in people:
        counts = writes_for(world, person)
        assert counts and set(counts.values()) == {1}, (person.email, counts)


def test_pause_stops_new_work_at_once_shows_in_health_and_metrics_and_resume_goes_on(setup, tmp_path):
    world, config, env = setup
    daemon = Daemon(tmp_path, config, env).start()
    try:
        out = daemon.cli("pause", "--reason", "tenant migration")
        assert out.returncode == 0, out.stderr
        person = cloud_only_stayers(world)[0]
        body = webhook_body(person)
        assert daemon.post("/webhook/generic", body, signed(body)).status_code == 202      # recorded, not worked
        health = daemon.get("/healthz").json()
        assert "tenant migration" in health["paused"]
        families = {f.name: f for f in text_string_to_metric_families(daemon.get("/metrics").text)}
        assert families["offboard_paused"].samples[0].value == 1
        time.sleep(3)
        assert not offboarded(world, person) and not world.sandbox.writes.entries(ok=True)
        assert daemon.cli("resume").returncode == 0                    # worked at once, not at the next poll
        wait_until(lambda: offboarded(world, person), 30, what="the offboarding after resume")
    finally:
        assert daemon.stop() == 0


def test_a_connectwise_callback_is_only_a_hint_the_daemon_fetches_the_ticket_and_offboards(tmp_path):
    from connector.sandbox.world import PSA_COMPANY

    with sandbox_daemon_setup(tmp_path, psa=True) as (world, config, env):
        daemon = Daemon(tmp_path, config, env).start()
        try:
            person = cloud_only_stayers(world)[0]
            ticket = world.connectwise.add_ticket(PSA_COMPANY, f"Offboard: {person.email}")
            body = json.dumps({"Action": "added", "Type": "Ticket", "ID": ticket, "CompanyId": "example",
                               "Entity": json.dumps({"id": ticket, "summary": "anything at all"})}).encode()
            assert daemon.post(f"/webhook/connectwise/not-{CALLBACK_TOKEN}", body).status_code == 404
            assert all(r["trigger"] != "ticket" for r in runs(tmp_path))             # nothing queued
            answer = daemon.post(f"/webhook/connectwise/{CALLBACK_TOKEN}", body)
            assert answer.status_code == 202
            run_id = answer.json()["run_id"]
            wait_until(lambda: offboarded(world, person), 60, what="the offboarding the ticket asked for")
            run = wait_until(lambda: (r := daemon.get(f"/runs/{run_id}").json())["state"] in ("done", "failed") and r,
                             60, what="the ticket's run")
            assert run["state"] == "done" and len(run["terminations"]) == 1
            assert status(daemon)[run["terminations"][0]]["email"] == person.email
            notes = wait_until(lambda: world.connectwise.internal_notes(ticket), 120, what="the ticket note")
            assert person.email in notes[-1] or run["terminations"][0] in notes[-1]
        finally:
            assert daemon.stop() == 0
