"""Signed webhook verification: only an authentic, fresh, first-time, well-formed body yields a termination."""
from __future__ import annotations

import datetime as dt
import io
import json

import pytest

from connector import config
from connector.errors import ConfigError
from connector.sources.webhook import (MAX_BODY, WINDOW, BadSignature, MemoryReplayGuard, ReplayedBody,
                                       WebhookRejected, WebhookSource, read_body, sign, verify_and_parse,
                                       webhook_secret_for)

SECRET = b"whsec-test-6b1d0c"
FABRIKAM_SECRET = b"whsec-fabrikam-20e9aa"
SECRETS = {"contoso": SECRET, "fabrikam": FABRIKAM_SECRET}
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
            self.queued.append(verify_and_parse(body, headers, SECRETS, now, self.guard))
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
    "unknown tenant": (401, encode(tenant="initech"), signed),
    "no tenant": (400, encode(tenant=...), signed),
    "tenant not a string": (400, encode(tenant=["contoso"]), signed),
    "float timestamp": (400, encode(timestamp=NOW), signed),
    "bool timestamp": (400, encode(timestamp=True), signed),
    "huge timestamp": (400, encode(timestamp=10**400), signed),
    "name with a control character": (400, encode(first_name="Kenji\x1b[2J"), signed),
    "name with a bidi override": (400, encode(last_name="\u202eebahctaW"), signed),
    "overlong name": (400, encode(first_name="K" * 129), signed),
    "year 9999": (400, encode(termination_date="9999-12-31"), signed),
    "year 0001": (400, encode(termination_date="0001-01-01"), signed),
    "repeated key": (400, encode()[:-1] + b', "tenant": "contoso"}', signed),
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
        verify_and_parse(body, signed(body), SECRETS, NOW, Racing())


def test_empty_secret_is_a_config_error_not_an_open_door():
    body = encode()
    with pytest.raises(ConfigError):
        verify_and_parse(body, {"X-Offboard-Signature": sign(body, b"")}, {"contoso": b""}, NOW, MemoryReplayGuard())


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


def test_a_body_signed_with_one_tenants_secret_cannot_speak_for_another(listener):
    """The attack: contoso's sender (or its leaked secret) names fabrikam's employee."""
    forged = encode(tenant="fabrikam")
    assert listener.post(forged, signed(forged, SECRET)) == 401
    assert listener.post(forged, signed(forged, FABRIKAM_SECRET)) == 202
    assert [t.tenant for t in listener.queued] == ["fabrikam"]


def test_an_unknown_tenant_answers_exactly_like_a_wrong_signature():
    body = encode(tenant="initech")
    answers = []
    for secrets in ({"contoso": SECRET}, {"contoso": SECRET, "initech": b"other"}):
        with pytest.raises(BadSignature) as e:
            verify_and_parse(body, signed(body), secrets, NOW, MemoryReplayGuard())
        answers.append((e.value.status, str(e.value)))
    assert answers[0] == answers[1] == (401, "X-Offboard-Signature does not match the body")


def test_secrets_may_be_a_function_returning_config_secrets(monkeypatch):
    monkeypatch.setenv("CONTOSO_WEBHOOK_SECRET", SECRET.decode())
    lookup = {"contoso": config.Secret("env:CONTOSO_WEBHOOK_SECRET")}.get
    body = encode()
    assert verify_and_parse(body, signed(body), lookup, NOW, MemoryReplayGuard()).tenant == "contoso"


@pytest.mark.parametrize("timestamp", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinite_timestamps_are_malformed_every_time(listener, timestamp):
    """NaN used to pass the window and never be remembered: the same body was accepted again and again."""
    body = encode(timestamp=timestamp)
    assert [listener.post(body, signed(body)) for _ in range(3)] == [400, 400, 400]
    assert listener.queued == []


@pytest.mark.parametrize("body", [
    b'{"tenant": "contoso", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b"[" * 500_000,
    b'{"a": ' * 100_000 + b"1" + b"}" * 100_000,
], ids=["deep array in a field", "unclosed arrays", "deep objects"])
def test_deep_nesting_is_a_400_not_a_crash(listener, body):
    assert listener.post(body, signed(body)) == 400


def test_timestamp_beyond_any_float_is_a_400_not_an_overflow():
    body = encode(timestamp=10**400)
    with pytest.raises(WebhookRejected) as e:
        verify_and_parse(body, signed(body), SECRETS, NOW, MemoryReplayGuard())
    assert e.value.status == 400


class Trickle(io.BytesIO):
    """A stream that hands back more than asked for: what counts is the bytes really read."""

    def read(self, n=-1):
        return super().read(-1 if n == -1 else n * 4)


@pytest.mark.parametrize("data, length, terminated, status", [
    (b"x" * 10, str(MAX_BODY + 1), False, 413),          # refused before a byte is read
    (b"x" * 10, "9" * 40, False, 413),
    (b"x" * (MAX_BODY + 10), None, True, 413),           # no length: the stream itself runs over
    (b"x" * (MAX_BODY + 10), "", True, 413),
    (b"x" * 2000, "10", True, 413),                      # longer than declared
    (b"x" * 10, "100", False, 400),                      # shorter than declared
    (b"x" * 10, "ten", False, 400),
    (b"x" * 10, "-1", False, 400),
    (b"x" * 10, None, False, 411),                       # unterminated, no length: cannot be read safely
], ids=["declared over", "declared absurd", "no length, over", "empty length, over", "longer than declared",
        "short", "not a number", "negative", "no length, unterminated"])
def test_read_body_enforces_the_limit_on_the_declared_and_the_read_length(data, length, terminated, status):
    stream = io.BytesIO(data)
    with pytest.raises(WebhookRejected) as e:
        read_body(stream, length, terminated=terminated)
    assert e.value.status == status
    if length == str(MAX_BODY + 1):
        assert stream.tell() == 0


def test_read_body_counts_what_a_stream_really_hands_back():
    with pytest.raises(WebhookRejected) as e:
        read_body(Trickle(b"x" * 2000), "100")
    assert e.value.status == 413


def test_read_body_reads_only_the_declared_bytes_of_a_kept_alive_connection():
    body = encode()
    stream = io.BytesIO(body + b"POST /webhook/generic HTTP/1.1\r\n")     # the next request
    assert read_body(stream, str(len(body))) == body
    assert read_body(io.BytesIO(body), None, terminated=True) == body
    assert read_body(io.BytesIO(body), len(body), terminated=True) == body
    assert read_body(io.BytesIO(b"x" * MAX_BODY), None, terminated=True) == b"x" * MAX_BODY


def webhook_secrets(monkeypatch, *tenants, shared=True):
    """`webhook_secret_for` over a parsed config: tenants as (id, own secret or None, takes webhooks)."""
    for name in ("SHARED", "CONTOSO", "FABRIKAM"):
        monkeypatch.setenv(f"WH_{name}", name)
    raw = {"tenant": [{"id": i, "source": [{"type": "webhook"} if takes else {"type": "csv", "path": "/srv/hr/*.csv"}],
                       "provider": [{"type": "fake"}], **({"webhook_secret": f"env:WH_{own}"} if own else {})}
                      for i, own, takes in tenants]}
    if shared:
        raw["webhook"] = {"secret": "env:WH_SHARED"}
    lookup = webhook_secret_for(config.parse(raw))
    return lambda tenant: (secret := lookup(tenant)) and secret.reveal()


def test_the_shared_secret_serves_only_where_one_tenant_alone_takes_webhooks(monkeypatch):
    one = webhook_secrets(monkeypatch, ("contoso", None, True), ("fabrikam", None, False))
    assert (one("contoso"), one("fabrikam"), one("initech")) == ("SHARED", None, None)
    two = webhook_secrets(monkeypatch, ("contoso", "CONTOSO", True), ("fabrikam", "FABRIKAM", True))
    assert (two("contoso"), two("fabrikam")) == ("CONTOSO", "FABRIKAM")
    own = webhook_secrets(monkeypatch, ("contoso", "CONTOSO", True), shared=False)
    assert own("contoso") == "CONTOSO"


def test_with_two_webhook_tenants_the_shared_secret_signs_for_neither(monkeypatch):
    """`check` refuses such a config; a caller that built one anyway still gets no shared fallback."""
    from types import SimpleNamespace as NS
    cfg = NS(webhook=NS(secret="SHARED"), tenants=[NS(id="contoso", webhook_secret=None, takes_webhooks=True),
                                                   NS(id="fabrikam", webhook_secret="FAB", takes_webhooks=True)])
    lookup = webhook_secret_for(cfg)
    assert (lookup("contoso"), lookup("fabrikam")) == (None, "FAB")
    with pytest.raises(config.ConfigError, match="each needs its own webhook_secret"):
        webhook_secrets(monkeypatch, ("contoso", None, True), ("fabrikam", "FABRIKAM", True))
