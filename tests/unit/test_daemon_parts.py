"""The daemon's parts on their own: the queue of passes, the wake-up instants, alerts, metrics, sd_notify.

The daemon as a whole, a real `offboard serve` process, is tested in tests/integration/test_daemon.py.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import time
from types import SimpleNamespace

import pytest
import responses
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client import generate_latest

from connector.config import AlertSettings
from connector.daemon import alerts, metrics, runner, systemd
from connector.store import Store, iso, now
from tests.helpers import load, write_config


@pytest.fixture
def store():
    return Store.memory()


@pytest.fixture
def config(tmp_path):
    return load(write_config(tmp_path))


def termination(store: Store, tid: str, state: str, due: dt.datetime, **extra) -> None:
    tenant, employee = tid.split("/")
    store.upsert_terminations([{"id": tid, "tenant": tenant, "employee_id": employee, "email": f"{employee}@contoso.com",
                                "state": state, "due_at": iso(due), "reason": extra.pop("reason", ""),
                                "ticket": extra.pop("ticket", ""), **extra}])


# -- the queue of passes ---------------------------------------------------------------------
class SlowReconcile:
    """Stands in for reconcile(...): records each call and blocks until released."""

    def __init__(self):
        self.calls: list[dict] = []
        self.release = threading.Event()

    def __call__(self, config, store, **kw):
        self.calls.append(kw)
        self.release.wait(10)
        store.finish_run(kw["run_id"], 0, {}, sorted(kw["only"] or []))
        return SimpleNamespace(exit_code=0)


def test_triggers_for_a_busy_tenant_collapse_into_one_waiting_run_per_kind(monkeypatch, store, config):
    fake = SlowReconcile()
    monkeypatch.setattr(runner, "reconcile", fake)
    r = runner.Runner(lambda: config, store, "me", workers=2)
    first = r.submit("contoso", "schedule")                          # starts at once and blocks
    deadline = time.monotonic() + 5
    while not fake.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    a = r.submit("contoso", "webhook", ["contoso/E1"])
    b = r.submit("contoso", "webhook", ["contoso/E1"])               # the same person again: the same run
    c = r.submit("contoso", "webhook", ["contoso/E2"])               # another person joins the waiting run
    full = r.submit("contoso", "schedule")
    assert a == b == c and full != a and first not in (a, full)
    assert store.run(a)["state"] == "queued" and store.run(a)["terminations"] == ["contoso/E1", "contoso/E2"]
    fake.release.set()
    deadline = time.monotonic() + 5
    while len(fake.calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.shutdown(10)
    assert [c["only"] for c in fake.calls] == [None, {"contoso/E1", "contoso/E2"}, None]    # in the order asked
    assert store.run(a)["terminations"] == ["contoso/E1", "contoso/E2"]
    with pytest.raises(runner.ShuttingDown):
        r.submit("contoso", "schedule")


def test_a_failing_pass_fails_its_run_and_the_queue_goes_on(monkeypatch, store, config):
    def broken(config, store, **kw):
        raise RuntimeError("the tenant vanished")

    monkeypatch.setattr(runner, "reconcile", broken)
    done = threading.Event()
    r = runner.Runner(lambda: config, store, "me", workers=1, on_finished=done.set)
    run_id = r.submit("contoso", "schedule")
    assert done.wait(5)
    row = store.run(run_id)
    assert row["state"] == "failed" and "the tenant vanished" in row["summary"]["errors"][0]
    assert r.shutdown(5)


# -- the instants the daemon wakes up at --------------------------------------------------------
def test_the_next_wakeup_is_the_earliest_due_date_or_journaled_wait_after_the_horizon(backing, config):
    from connector.reconcile.schedule import next_wakeup

    store = backing.open()          # on both backends: every daemon on a shared database computes it
    t0 = now()
    termination(store, "contoso/E1", "scheduled", t0 + dt.timedelta(hours=3))
    termination(store, "contoso/E2", "scheduled", t0 - dt.timedelta(hours=1))        # past: the pass at start has it
    termination(store, "contoso/E3", "cancelled", t0 + dt.timedelta(minutes=5))      # withdrawn: nothing to wake for
    termination(store, "contoso/E4", "in_progress", t0 - dt.timedelta(days=1))
    assert next_wakeup(config, store, t0) == dt.datetime.fromisoformat(iso(t0 + dt.timedelta(hours=3)))
    store.record_intent("contoso/E4/m365/remove_licenses", "contoso/E4", "m365", "remove_licenses", "reclaim", "r1")
    store.record_outcome("contoso/E4/m365/remove_licenses", "pending", reason="converting",
                         next_attempt_at=t0 + dt.timedelta(seconds=30))
    assert next_wakeup(config, store, t0) == dt.datetime.fromisoformat(iso(t0 + dt.timedelta(seconds=30)))
    assert next_wakeup(config, store, t0 + dt.timedelta(hours=4)) is None


def test_daemons_share_the_tenants_evenly_keep_their_own_wakeups_and_take_a_dead_ones_once_its_leases_expire(
        tmp_path, monkeypatch):
    from connector.daemon import service
    from connector.reconcile.engine import PICKED
    from connector.reconcile.schedule import next_wakeup

    one = load(write_config(tmp_path))
    config = one.model_copy(update={"tenants": [one.tenants[0].model_copy(update={"id": f"t{i}"}) for i in range(5)]})
    store = Store.memory()

    def started(host: str) -> service.Daemon:
        monkeypatch.setattr(service, "owner_id", lambda run: f"{host}:1:{run}")
        daemon = service.Daemon(config, store)
        daemon.leases.take(f"process:{daemon.owner}")
        daemon.submitted = []
        monkeypatch.setattr(daemon.runner, "submit", lambda tenant, trigger, only=None, **kw: daemon.submitted.append(tenant))
        return daemon

    a = started("a")
    a.share_tenants()
    assert a.kept() == {f"t{i}" for i in range(5)}                        # alone: every tenant
    b = started("b")
    b.share_tenants()
    assert b.kept() == set()                                              # all held: it waits for a to give back
    a.share_tenants(), b.share_tenants()
    assert (a.kept(), b.kept()) == ({"t0", "t1", "t2"}, {"t3", "t4"})   # ceil(5 / 2) and the rest, none twice
    a.share_tenants(), b.share_tenants()
    assert (a.kept(), b.kept()) == ({"t0", "t1", "t2"}, {"t3", "t4"})   # stable: nothing moves back and forth

    at = now()
    termination(store, "t0/E1", "due", at - dt.timedelta(minutes=1))
    termination(store, "t4/E2", "due", at - dt.timedelta(minutes=1))
    termination(store, "t4/E3", "scheduled", at + dt.timedelta(hours=2))
    a._work_on_due(PICKED, at, "due"), b._work_on_due(PICKED, at, "due")
    assert (a.submitted, b.submitted) == (["t0"], ["t4"])                 # each due leaver worked by one daemon
    assert next_wakeup(config, store, at, a.kept()) is None
    assert next_wakeup(config, store, at, b.kept()) == dt.datetime.fromisoformat(iso(at + dt.timedelta(hours=2)))

    for key in b.leases.keys("tenant") + [f"process:{b.owner}"]:          # b dies: its leases run out
        assert store.renew_lease(key, b.owner, -1)
    a.share_tenants()
    assert a.kept() == {f"t{i}" for i in range(5)}
    assert next_wakeup(config, store, at, a.kept()) == dt.datetime.fromisoformat(iso(at + dt.timedelta(hours=2)))


def test_the_wake_up_works_a_done_leaver_whose_queued_seat_reduction_came_due(tmp_path, monkeypatch):
    from connector.daemon import service
    from connector.reconcile.engine import PICKED
    from connector.reconcile.schedule import next_wakeup

    config, store = load(write_config(tmp_path)), Store.memory()
    tenant = config.tenants[0].id
    daemon = service.Daemon(config, store)
    daemon.leases.take(f"process:{daemon.owner}")
    daemon.share_tenants()
    submitted = []
    monkeypatch.setattr(daemon.runner, "submit", lambda tenant, trigger, only=None, **kw: submitted.append(only))
    at, renewal = now(), now() + dt.timedelta(days=12)
    for tid, state in ((f"{tenant}/E1", "done"), (f"{tenant}/E2", "deleted")):
        termination(store, tid, state, at - dt.timedelta(days=3))
        store.upsert_action_status(f"{tid}/pax8/reduce_seats", tid, "pax8", "reduce_seats", "bill", "unchanged",
                                   "1 seat paid until then")
        store.record_outcome(f"{tid}/pax8/reduce_seats", "unchanged", next_attempt_at=renewal)
    assert next_wakeup(config, store, at) == dt.datetime.fromisoformat(iso(renewal))
    daemon._work_on_due(PICKED, at, "due")
    assert submitted == [], "a queued reduction was worked before its window"
    daemon._work_on_due(PICKED, renewal, "due")
    assert submitted == [[f"{tenant}/E1", f"{tenant}/E2"]]


# -- alerts ------------------------------------------------------------------------------------
def alert_config(config, monkeypatch, failing_after=0.0, psa_ticket=False):
    monkeypatch.setenv("ALERT_URL", "https://hooks.example.test/services/T000/B000/XXXX")
    return SimpleNamespace(tenants=config.tenants, alerts=AlertSettings.model_validate(
        {"target": [{"type": "slack", "url": "env:ALERT_URL"}], "psa_ticket": psa_ticket,
         "provider_failing_after": failing_after}))


@responses.activate
def test_holds_and_needs_human_are_told_once_and_not_again_after_a_restart(monkeypatch, store, config):
    cfg = alert_config(config, monkeypatch)
    hook = responses.post("https://hooks.example.test/services/T000/B000/XXXX", json={"ok": True})
    store.add_hold("contoso", "12 new terminations in one pull (limit 10)", ["contoso/E1"])
    termination(store, "contoso/E2", "needs_human", now(), reason="admin: Global Administrator")
    assert alerts.Alerter(lambda: cfg, store).check() == 2
    texts = sorted(json.loads(c.request.body)["text"] for c in hook.calls)
    assert "tenant contoso is held" in texts[1] and "approve --tenant contoso" in texts[1]
    assert "contoso/E2" in texts[0] and "Global Administrator" in texts[0]
    assert alerts.Alerter(lambda: cfg, store).check() == 0                 # a new process: nothing repeated
    store.set_state("contoso/E2", "needs_human", "protected: svc-*")      # a new reason is a new alert
    assert alerts.Alerter(lambda: cfg, store).check() == 1


@responses.activate
def test_an_alert_no_target_took_is_tried_again(monkeypatch, store, config):
    cfg = alert_config(config, monkeypatch)
    responses.post("https://hooks.example.test/services/T000/B000/XXXX", status=503)
    termination(store, "contoso/E2", "needs_human", now(), reason="ambiguous")
    alerter = alerts.Alerter(lambda: cfg, store)
    assert alerter.check() == 0
    responses.replace(responses.POST, "https://hooks.example.test/services/T000/B000/XXXX", json={"ok": True})
    assert alerter.check() == 1


def test_a_provider_is_reported_failing_only_after_the_threshold_and_again_after_it_recovered(store, config,
                                                                                             monkeypatch):
    termination(store, "contoso/E1", "in_progress", now(), ticket="4711")
    store.upsert_action_status("contoso/E1/entra/block_sign_in", "contoso/E1", "entra", "block_sign_in", "revoke",
                               "failed", "HTTP 503: service unavailable")
    assert alerts.conditions(config, store, failing_after=3600) == []        # first seen now
    store.set_cursor("failing-since:contoso/entra", iso(now() - dt.timedelta(hours=2)))
    [alert] = alerts.conditions(config, store, failing_after=3600)
    assert "entra of tenant contoso has been failing" in alert.text and alert.ticket == "4711"
    store.upsert_action_status("contoso/E1/entra/block_sign_in", "contoso/E1", "entra", "block_sign_in", "revoke",
                               "changed", "")
    assert alerts.conditions(config, store, failing_after=3600) == []
    assert store.cursor("failing-since:contoso/entra") is None


# -- metrics -------------------------------------------------------------------------------------
def test_metrics_are_read_from_the_store_and_parse_as_prometheus_text(store):
    t0 = now()
    termination(store, "contoso/E1", "done", t0 - dt.timedelta(minutes=10))
    termination(store, "contoso/E2", "needs_human", t0 - dt.timedelta(hours=2))
    for aid, status in (("contoso/E1/entra/block_sign_in", "changed"), ("contoso/E1/entra/revoke_sessions", "unchanged")):
        store.record_intent(aid, "contoso/E1", "entra", aid.rsplit("/", 1)[1], "revoke", "r1")
        store.record_outcome(aid, status)
    store.audit("action_changed", "contoso/E1", "r1", provider="entra", action="block_sign_in")
    store.audit("action_failed", "contoso/E2", "r1", provider="entra", action="block_sign_in", error="RetryableError")
    registry = metrics.registry(store)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    states = {(s.labels["tenant"], s.labels["state"]): s.value for s in families["offboard_terminations"].samples}
    assert states == {("contoso", "done"): 1, ("contoso", "needs_human"): 1}
    actions = {(s.labels["action"], s.labels["outcome"]): s.value for s in families["offboard_actions"].samples
               if s.name == "offboard_actions_total"}
    assert actions == {("block_sign_in", "changed"): 1, ("block_sign_in", "failed"): 1}
    errors = [s for s in families["offboard_provider_errors"].samples if s.name.endswith("_total")]
    assert [(s.labels["provider"], s.labels["error"], s.value) for s in errors] == [("entra", "RetryableError", 1)]
    revoke = {s.name: s.value for s in families["offboard_revoke_seconds"].samples if "le" not in s.labels}
    assert revoke["offboard_revoke_seconds_count"] == 1 and 590 <= revoke["offboard_revoke_seconds_sum"] <= 700
    oldest = families["offboard_oldest_open_termination_seconds"].samples[0].value
    assert 7190 <= oldest <= 7300
    store.audit("action_changed", "contoso/E1", "r2", provider="entra", action="block_sign_in")
    again = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert {(s.labels["action"], s.labels["outcome"]): s.value for s in again["offboard_actions"].samples
            if s.name == "offboard_actions_total"}[("block_sign_in", "changed")] == 2     # read incrementally


# -- sd_notify -----------------------------------------------------------------------------------
def test_notify_sends_one_datagram_to_the_notify_socket_and_nothing_outside_systemd(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert systemd.notify("READY=1", "STATUS=serving")
        assert sock.recv(1024) == b"READY=1\nSTATUS=serving"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert systemd.notify("READY=1") is False


def test_the_watchdog_interval_is_half_of_watchdog_usec_for_this_process_only(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() == 10
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert systemd.watchdog_interval() is None


# -- the listener's app ----------------------------------------------------------------------------
def call(app, method: str, path: str, body: bytes = b"", **environ) -> tuple[int, dict | str]:
    import io
    from wsgiref.util import setup_testing_defaults

    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(body),
           "CONTENT_LENGTH": str(len(body)), **environ}
    setup_testing_defaults(env)
    seen = {}
    data = b"".join(app(env, lambda status, headers: seen.update(status=int(status.split()[0]), headers=headers)))
    kind = dict(seen["headers"])["Content-Type"]
    return seen["status"], json.loads(data) if kind == "application/json" else data.decode()


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    from connector.daemon.service import Daemon

    monkeypatch.setenv("CW_TOKEN", "the-right-callback-token")
    path = write_config(tmp_path, top='[webhook]\nlisten = "127.0.0.1:0"\ntrusted_proxies = ["127.0.0.1"]\n'
                        'allow_from = ["10.0.0.0/8"]\n[psa]\ntype = "connectwise"\n'
                        'url = "https://cw.example.test/v4_6_release/apis/3.0"\ncompany = "msp"\n'
                        'public_key = "env:CW_PUB"\nprivate_key = "env:CW_PRIV"\nclient_id = "env:CW_ID"\n'
                        'callback_token = "env:CW_TOKEN"\n')
    return Daemon(load(path), Store.memory())


def test_the_listener_believes_x_forwarded_for_only_from_a_trusted_proxy_and_refuses_other_sources(daemon):
    from connector.daemon.web import App

    app = App(daemon)
    assert call(app, "GET", "/runs/abc", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="10.1.2.3")[0] == 404
    assert call(app, "GET", "/runs/abc", REMOTE_ADDR="127.0.0.1")[0] == 403                  # the proxy itself
    assert call(app, "GET", "/runs/abc", REMOTE_ADDR="10.9.9.9", HTTP_X_FORWARDED_FOR="192.0.2.1")[0] == 404
    assert call(app, "GET", "/runs/abc", REMOTE_ADDR="192.0.2.7", HTTP_X_FORWARDED_FOR="10.1.2.3")[0] == 403  # spoofed


def test_a_wrong_callback_token_is_not_found_and_a_bad_webhook_queues_nothing(daemon):
    from connector.daemon.web import App

    app = App(daemon)
    inside = {"REMOTE_ADDR": "10.0.0.5"}
    assert call(app, "POST", "/webhook/connectwise/wrong-token", b'{"ID": 1}', **inside)[0] == 404
    status, body = call(app, "POST", "/webhook/generic", b'{"tenant": "contoso"}', **inside)
    assert status == 401 and "X-Offboard-Signature" in body["error"]
    status, _ = call(app, "POST", "/webhook/generic", b"x" * ((1 << 20) + 1), **inside)
    assert status == 413
    assert daemon.store.runs(["queued", "running", "done", "failed"]) == [] and daemon.store.terminations() == []
    assert call(app, "DELETE", "/healthz", **inside)[0] == 405


def test_healthz_is_503_with_the_reason_when_the_scheduler_or_the_store_is_not_working(daemon, monkeypatch):
    from connector.daemon.web import App

    app, inside = App(daemon), {"REMOTE_ADDR": "10.0.0.5"}
    status, body = call(app, "GET", "/healthz", **inside)
    assert status == 503 and body["reasons"] == ["the scheduler is not running"]
    daemon.scheduler.start(paused=True)
    try:
        me = f"{socket.gethostname()}:{os.getpid()}"
        assert call(app, "GET", "/healthz", **inside) == (200, {
            "status": "ok", "reasons": [], "database": "reachable", "tenants": 1, "held_tenants": {}, "paused": "",
            "leases": {"daemon": me, "process": 1, "tenant": 0, "intake": 0, "termination": 0}})
        daemon.store.release_lease(f"process:{daemon.owner}", daemon.owner)      # lost: taken back, still healthy
        daemon.store.acquire_lease(f"process:{daemon.owner}", "elsewhere", 60)
        daemon.leases.lost.add(f"process:{daemon.owner}")
        status, body = call(app, "GET", "/healthz", **inside)
        assert status == 503 and body["reasons"] == ["this daemon lost its own lease: another process took it over"]
        daemon.store.release_lease(f"process:{daemon.owner}", "elsewhere")
        assert call(app, "GET", "/healthz", **inside)[0] == 200

        def refuse(*args):
            raise PermissionError("attempt to write a readonly database")

        monkeypatch.setattr(daemon.store, "set_cursor", refuse)
        status, body = call(app, "GET", "/healthz", **inside)
        assert status == 503 and body["reasons"] == ["the state store is not writable: attempt to write a readonly "
                                                     "database"] and body["database"] == "unreachable"
    finally:
        daemon.scheduler.shutdown(wait=False)
