"""Signed webhook verification: only an authentic, fresh, first-time, well-formed body yields a termination."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from connector import config
from connector.errors import ConfigError
from connector.sources.webhook import (MAX_BODY, WINDOW, MemoryReplayGuard, ReplayedBody, WebhookRejected,
                                       WebhookSource, sign, verify_and_parse)

SECRET = b"whsec-test-6b1d0c"
NOW = 1_780_000_000.0
TERMINATION = {"tenant": "contoso", "employee_id": "1042", "email": "Kenji.Watanabe@contoso.com",
               "first_name": "Kenji", "last_name": "Watanabe", "manager_email": "priya.natarajan@contoso.com",
               "termination_date": "2026-06-01", "termination_time": "16:30", "kind": "immediate",
               "ticket": "88213", "timestamp": int(NOW)}


def encode(**changes) -> bytes:
    return json.dumps({k: v for k, v in {**TERMINATION, **changes}.items() if v is not ...}).encode()


def signed(body: bytes, secret: bytes = SECRET) -> dict:
    return {"X-Offboard-Signature": sign(body, secret)}


class Listener:
    """What the HTTP listener does with the function: queue on success, answer the status otherwise."""

    def __init__(self):
        self.guard = MemoryReplayGuard(clock=lambda: NOW)
        self.queued = []

    def post(self, body: bytes, headers: dict, now: float = NOW) -> int:
        try:
            self.queued.append(verify_and_parse(body, headers, SECRET, now, self.guard, tenants={"contoso"}))
        except WebhookRejected as e:
            return e.status
        return 202


@pytest.fixture
def listener():
    return Listener()


def test_good_body_is_accepted(listener):
    body = encode()
    assert listener.post(body, signed(body)) == 202
    [t] = listener.queued
    assert (t.id, t.email, t.manager_email, t.termination_date, t.termination_time, t.kind, t.ticket, t.source) == (
        "contoso/1042", "kenji.watanabe@contoso.com", "priya.natarajan@contoso.com", dt.date(2026, 6, 1),
        dt.time(16, 30), "immediate", "88213", "webhook")


def test_header_name_and_hex_case_do_not_matter(listener):
    body = encode()
    assert listener.post(body, {"x-offboard-signature": sign(body, SECRET).upper().replace("SHA256", "sha256")}) == 202


def test_optional_fields_may_be_left_out(listener):
    body = encode(termination_time=..., kind=..., ticket=..., manager_email=None)
    assert listener.post(body, signed(body)) == 202
    assert (listener.queued[0].kind, listener.queued[0].termination_time) == ("voluntary", None)


REJECTIONS = {
    "wrong secret": (401, encode(), lambda b: signed(b, b"not-the-secret")),
    "no signature": (401, encode(), lambda b: {}),
    "other scheme": (401, encode(), lambda b: {"X-Offboard-Signature": "md5=" + sign(b, SECRET)[7:]}),
    "signature of another body": (401, encode(), lambda b: signed(encode(employee_id="1043"))),
    "stale": (400, encode(timestamp=int(NOW - WINDOW - 1)), signed),
    "from the future": (400, encode(timestamp=int(NOW + WINDOW + 1)), signed),
    "no timestamp": (400, encode(timestamp=...), signed),
    "timestamp as text": (400, encode(timestamp=str(int(NOW))), signed),
    "not JSON": (400, b"tenant=contoso&employee_id=1042", signed),
    "not an object": (400, json.dumps([TERMINATION]).encode(), signed),
    "bad email": (400, encode(email="kenji"), signed),
    "no date": (400, encode(termination_date=""), signed),
    "bad kind": (400, encode(kind="later"), signed),
    "number as id": (400, encode(employee_id=1042), signed),
    "unknown field": (400, encode(termination_data="2026-06-01"), signed),
    "unknown tenant": (400, encode(tenant="fabrikam"), signed),
    "oversized": (413, encode(first_name="K" * MAX_BODY), signed),
}


@pytest.mark.parametrize("status, body, headers", REJECTIONS.values(), ids=REJECTIONS.keys())
def test_rejected_with_its_status_and_nothing_queued_or_remembered(listener, status, body, headers):
    assert listener.post(body, headers(body)) == status
    assert listener.queued == []
    good = encode(ticket="corrected")
    assert listener.post(good, signed(good)) == 202       # a rejection leaves no trace in the guard


def test_replayed_body_is_rejected(listener):
    body = encode()
    assert [listener.post(body, signed(body)) for _ in range(2)] == [202, 400]
    assert len(listener.queued) == 1
    resent = encode(timestamp=int(NOW) + 1)
    assert listener.post(resent, signed(resent)) == 202    # a new send is a new body


def test_replay_lost_race_is_rejected():
    """Another process remembered the body between our check and our insert."""
    class Racing(MemoryReplayGuard):
        def remember(self, digest, expires_at):
            return False

    body = encode()
    with pytest.raises(ReplayedBody):
        verify_and_parse(body, signed(body), SECRET, NOW, Racing())


def test_empty_secret_is_a_config_error_not_an_open_door():
    body = encode()
    with pytest.raises(ConfigError):
        verify_and_parse(body, {"X-Offboard-Signature": sign(body, b"")}, b"", NOW, MemoryReplayGuard())


def test_memory_guard_forgets_digests_once_their_window_is_over():
    clock = [NOW]
    guard = MemoryReplayGuard(clock=lambda: clock[0])
    assert guard.remember("d1", NOW + WINDOW)
    assert guard.seen("d1") and not guard.remember("d1", NOW + WINDOW)
    clock[0] = NOW + WINDOW + 1
    assert not guard.seen("d1")
    guard.remember("d2", clock[0] + WINDOW)
    assert list(guard._expiry) == ["d2"]


def test_webhook_source_pulls_nothing_and_claims_no_completeness():
    tenant = config.parse({"tenant": [{"id": "contoso", "source": [{"type": "webhook"}], "provider": [{"type": "fake"}],
                                          "webhook_secret": "env:CONTOSO_WEBHOOK_SECRET"}]}).tenants[0]
    plugin = tenant.sources[0]
    pull = WebhookSource(plugin.name, plugin.options, tenant, plugin.where).pull("c1")
    assert (pull.terminations, pull.complete, pull.cursor) == ([], False, "c1")
