"""Time to revoke, one leaver, every sandbox call 100 ms away: `python -m benchmarks revoke`.

Each span is broken down by what the sandbox was asked in it, so a missed goal shows what holds it back.

Two cases in the daemon (`offboard serve`, a real subprocess, against the sandbox over HTTPS):
a *scheduled* leaver, timed from the due instant to the last revoke-phase outcome the daemon
logged (each is logged right after its call answered), and an *unannounced* one, timed from
the signed webhook's 202 to the same point. Each is divided by one write round trip, measured
in the same run. Side by side, the baseline does what CIPP's offboarding job does: the same
kind of revoke calls for another person, one after another, each waiting for the last.

The tenant is cloud-only (Entra and Exchange Online): the Samba DC has no latency knob, so a
hybrid tenant's AD calls would run at LAN speed and flatter the ratio; BENCHMARKS.md says so.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from connector import config as configmod
from connector.providers.microsoft365.auth import Tokens
from connector.providers.microsoft365.graph import GraphCall, GraphClient
from connector.sandbox.serving import requests_seen
from connector.sandbox.web import Request
from tests.serving import (Daemon, cloud_only_stayers, sandbox_daemon_setup, signed, wait_until, webhook_body,
                           whole_minute_after)

from .sections import Section, table

TITLE = "Time to revoke"
LATENCY = 0.1                     # seconds before each sandbox request is handled
WHAT_HOLDS_IT_BACK = """\
Scheduled: the daemon starts a leaver's pass 10 s before the due instant (`PLAN_AHEAD` in
connector/daemon/service.py), so the credential checks, the reads of every system, matching and the
plan are done by then. Each action's own re-read goes 1 s before the instant (`REREAD_AHEAD` in
connector/reconcile/engine.py: read before write, so a change made since the plan is compared, not
overwritten), and at the instant Entra's revoke writes go as one `$batch` in sequence (`dependsOn`):
block sign-in, then reset the password, then revoke the sessions, so no session can be opened in
between. That is one round trip; the goal is met. The sandbox adds its latency once per HTTP
request; Graph runs a sequence's sub-requests one after another, so on the real service each adds
its own processing time (not another network trip) to that round trip.

Unannounced: nothing can be read ahead. The daemon had served its first pass, so its tokens were
cached (msal; a token lives about an hour, and the first pass after it expires fetches a new one).
From the 202, three rounds are on the critical path. Matching: the Graph search, with the tenant's
licences and domains, its shared mailboxes and the leaver's mailbox (read by the address the webhook
gave, kept only when Exchange names the matched account's object id) beside it. A pass whose
leavers are known before it starts sends no separate credential check: those reads prove both
credentials (`prepare_checks_online`). Then the account's state in every system: Graph's reads in
one `$batch`, Exchange Online's four cmdlets side by side. Then the writes: the revoke actions
compare the state just read (younger than `FRESH_READ`, 1 s, in connector/model.py) instead of
reading it again. What holds the 2.5 goal back: the three rounds depend on each other. Whether
the person is an admin (DESIGN.md: admins are never touched) is read from role assignments and
PIM eligibility, which Graph filters by the object id, and the object id comes from the search.
Nothing is revoked before every system's reads are in. So the floor is three round trips, plus
the daemon's own time in each round (threads, TLS, and the journal written before each call).
Going lower would need the object id before the webhook arrives, from a directory index kept
across passes, and the daemon keeps none."""
BREAKDOWN: dict[str, Counter] = {}     # filled by bench_revoke: what the sandbox was asked in each span
FIRST_WRITE: list[float] = []          # seconds from the due instant to the scheduled leaver's first write answered
SCHEDULED_LEAD = 20               # at least this many seconds between the webhook announcing a leaver and its due instant


class LogWatch:
    """When each line of the daemon's JSON log first appeared (polled every 5 ms): the log's own stamps are whole seconds."""

    def __init__(self, path: Path):
        self.path, self.seen, self._stop = path, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        offset, partial = 0, b""
        while not self._stop.is_set():
            with open(self.path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            if chunk:
                offset += len(chunk)
                now = time.time()
                *lines, partial = (partial + chunk).split(b"\n")
                self.seen += [(now, json.loads(line)) for line in lines if line.startswith(b"{")]
            time.sleep(0.005)

    def stop(self) -> list[tuple[float, dict]]:
        self._stop.set()
        self._thread.join()
        return self.seen


def revoke_done_at(seen: list[tuple[float, dict]], termination: str) -> tuple[float, int]:
    """When the last revoke outcome of `termination` was logged, and how many there were; all must have succeeded."""
    revokes = [(at, r) for at, r in seen if r.get("termination") == termination and r.get("phase") == "revoke"]
    bad = [r["message"] for _, r in revokes if r.get("outcome") not in ("changed", "unchanged", "skipped")]
    if not revokes or bad:
        raise RuntimeError(f"revoke phase of {termination} not confirmed: {bad or 'no outcome logged'}")
    return max(at for at, _ in revokes), len(revokes)


def purpose(system: str, request) -> str:
    """A token, a read or a write, by what it asks (a $batch by its items, an Exchange call by its cmdlet)."""
    if system == "login":
        return "token"
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        body = {}
    if request.path.endswith("$batch"):
        methods = {item.get("method", "GET") for item in body.get("requests", [])}
        return f"{system} $batch of " + ("reads" if methods == {"GET"} else "writes")
    if system == "exchange":
        cmdlet = (body.get("CmdletInput") or {}).get("CmdletName", "")
        return f"exchange {'read' if cmdlet.startswith('Get-') else 'write'} ({cmdlet})"
    return f"{system} {'read' if request.method == 'GET' else 'write'}"


def kinds(requests: list[tuple[float, str, Request]], start: float, end: float) -> Counter:
    return Counter(purpose(system, request) for at, system, request in requests if start <= at <= end)


def termination_of(daemon: Daemon, person) -> str:
    return next(r["termination"] for r in daemon.records()
                if r.get("employee") == person.number and r.get("termination"))


def sequential_baseline(config_path: Path, person) -> tuple[float, list[float], int]:
    """CIPP's way: token, find the user, then each revoke write alone, each waiting for the one before."""
    tenant = configmod.load(config_path).tenants[0]
    options = next(p for p in tenant.providers if p.type == "entra").options
    client = GraphClient(options.graph_url, options.tenant_id, Tokens(options, options.graph_url, "baseline"),
                         "baseline")
    start = time.perf_counter()
    user = client.request(GraphCall("GET", f"/users/{person.email}?$select=id,accountEnabled"))
    uid = user["id"]
    writes = [GraphCall("PATCH", f"/users/{uid}", {"accountEnabled": False}),
              GraphCall("PATCH", f"/users/{uid}", {"passwordProfile": {
                  "password": "Bench-" + os.urandom(12).hex(), "forceChangePasswordNextSignIn": True}}),
              GraphCall("POST", f"/users/{uid}/revokeSignInSessions")]
    grants = client.request(GraphCall("GET", f"/users/{uid}/oauth2PermissionGrants")).get("value", [])
    writes += [GraphCall("DELETE", f"/oauth2PermissionGrants/{g['id']}") for g in grants]
    each = []
    for call in writes:
        t0 = time.perf_counter()
        client.request(call)
        each.append(time.perf_counter() - t0)
    return time.perf_counter() - start, each, len(writes) + 2 + 1     # + the two reads and the token request


def bench_revoke() -> list[tuple]:
    folder = Path(tempfile.mkdtemp(prefix="bench-revoke-"))
    with sandbox_daemon_setup(folder, size=40) as (world, config_path, env):
        os.environ["REQUESTS_CA_BUNDLE"] = env["REQUESTS_CA_BUNDLE"]
        scheduled, unannounced, baseline_person = cloud_only_stayers(world)[:3]
        daemon = Daemon(folder, config_path, env).start()
        wait_until(lambda: any(str(r.get("message", "")).startswith("run ") for r in daemon.records()), 120,
                   every=0.2)            # a daemon that has served a pass, as one in service has: its tokens cached
        with requests_seen(world.sandbox) as requests:
            try:
                for system in ("login", "graph", "exchange"):
                    world.sandbox.systems[system].knobs.latency = (LATENCY, 0.0)
                watch = LogWatch(daemon.log)
                # scheduled: announced SCHEDULED_LEAD s ahead; the daemon may observe and plan before the instant
                due = whole_minute_after(SCHEDULED_LEAD)
                body = webhook_body(scheduled, on=due.date(), at=f"{due:%H:%M}")
                answer = daemon.post("/webhook/generic", body, signed(body))
                assert answer.status_code == 202, answer.text
                # unannounced: due at once, timed from the 202
                body = webhook_body(unannounced)
                answer = daemon.post("/webhook/generic", body, signed(body))
                accepted = time.time()
                assert answer.status_code == 202, answer.text
                wait_until(lambda: sum(r.get("phase") == "revoke" for _, r in watch.seen) >= 2
                           and time.time() > due.timestamp() + 1, SCHEDULED_LEAD + 120, every=0.2)
                time.sleep(5)                                             # the rest of each pass (later phases)
                seen = watch.stop()
                sched_done, sched_n = revoke_done_at(seen, termination_of(daemon, scheduled))
                unann_done, unann_n = revoke_done_at(seen, termination_of(daemon, unannounced))
                total, each, calls = sequential_baseline(config_path, baseline_person)
            finally:
                assert daemon.stop() == 0
    trip = statistics.median(each)
    sched, unann = sched_done - due.timestamp(), unann_done - accepted
    uid = world.cloud.user_by_upn(scheduled.email)["id"]
    first_write = min(w.at for w in world.sandbox.writes.entries(ok=True) if w.target.startswith(uid))
    BREAKDOWN.update({
        "scheduled, due -> its first write answered": kinds(requests, due.timestamp(), first_write - trip),
        "scheduled, first write -> last revoke outcome": kinds(requests, first_write - trip, sched_done),
        "unannounced, 202 -> last revoke outcome": kinds(requests, accepted - 0.05, unann_done)})
    FIRST_WRITE.append(first_write - due.timestamp())
    return [
        ("one write round trip (sandbox latency 100 ms)", f"{trip * 1000:.0f} ms", "", trip),
        (f"scheduled leaver: due instant -> {sched_n} revoke outcomes confirmed", f"{sched:.2f} s",
         f"{sched / trip:.2f} round trips (goal <= 1.3)", sched / trip),
        (f"unannounced leaver: webhook 202 -> {unann_n} revoke outcomes confirmed", f"{unann:.2f} s",
         f"{unann / trip:.2f} round trips (goal <= 2.5)", unann / trip),
        (f"baseline, CIPP-style: {calls} calls one after another", f"{total:.2f} s",
         f"{total / trip:.2f} round trips", total / trip),
    ]


def section() -> Section:
    rows = bench_revoke()
    sched, unann = rows[1][3], rows[2][3]
    return Section(TITLE, table(["measurement", "figure", "in write round trips"], [row[:3] for row in rows]) +
                   f"\n\nThe scheduled leaver's first write was answered {FIRST_WRITE[0]:.2f} s after the due instant "
                   f"({FIRST_WRITE[0] / rows[0][3]:.1f} round trips).\n"
                   "What the sandbox was asked in each span (a $batch is one request, whatever it holds):\n\n" +
                   table(["case", "requests", "of which"], [[case, sum(c.values()), ", ".join(
                       f"{n} {k}" for k, n in c.most_common())] for case, c in BREAKDOWN.items()]) +
                   "\n\n" + WHAT_HOLDS_IT_BACK,
                   f"scheduled {sched:.2f}x a write round trip (goal <= 1.3), unannounced {unann:.2f}x (goal <= 2.5)")
