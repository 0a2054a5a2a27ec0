"""Signed termination webhooks: `verify_and_parse`, the pure function the HTTP listener calls.

The checks run cheapest-and-safest first: size (never hash a huge body), then the
signature (never parse what an unknown sender wrote), then the timestamp and the
replay guard, then the fields. A body is remembered only once it is accepted, so
a sender can fix a rejected one and send it again. Every rejection is a
`WebhookRejected` whose `status` is the HTTP answer; nothing is returned, so
nothing can be queued.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from typing import Any, Callable, Container, Mapping, Protocol

from ..errors import ConfigError, InputRejected, OffboardError
from ..model import Termination
from .base import Pull, Source
from .records import FIELDS, to_termination

MAX_BODY = 1 << 20                 # 1 MiB; the listener should refuse a larger Content-Length before reading
WINDOW = 300.0                     # seconds a timestamp may be away from now, either way
SIGNATURE_HEADER = "X-Offboard-Signature"
ENVELOPE = ("tenant", "timestamp")


class WebhookRejected(OffboardError):
    status = 400


class BadSignature(WebhookRejected): status = 401
class StaleTimestamp(WebhookRejected): status = 400
class ReplayedBody(WebhookRejected): status = 400
class MalformedBody(WebhookRejected): status = 400
class BodyTooLarge(WebhookRejected): status = 413


class ReplayGuard(Protocol):
    """Digests of accepted bodies, kept until their timestamp leaves the window.

    The engine may back this with the state store so a restart forgets nothing;
    `remember` must be an atomic insert-if-absent (SQLite: INSERT OR IGNORE), so
    two processes given the same body accept it once.
    """

    def seen(self, digest: str) -> bool: ...

    def remember(self, digest: str, expires_at: float) -> bool:
        """Store the digest; False when it was already there."""


class MemoryReplayGuard:
    """The in-process guard: enough for one daemon, forgotten on restart."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def seen(self, digest: str) -> bool:
        with self._lock:
            return self._expiry.get(digest, float("-inf")) >= self._clock()

    def remember(self, digest: str, expires_at: float) -> bool:
        with self._lock:
            now = self._clock()
            self._expiry = {d: t for d, t in self._expiry.items() if t >= now}
            if digest in self._expiry:
                return False
            self._expiry[digest] = expires_at
            return True


def sign(body: bytes, secret: bytes) -> str:
    """The header value a sender puts in X-Offboard-Signature."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_and_parse(body: bytes, headers: Mapping[str, str], secret: bytes, now: float, guard: ReplayGuard,
                     tenants: Container[str] | None = None) -> Termination:
    """Return the termination of an authentic, fresh, first-time body; else raise WebhookRejected.

    `tenants`, when given, are the tenants that accept webhooks: a body naming another
    is malformed, and is not remembered.
    """
    if len(body) > MAX_BODY:
        raise BodyTooLarge(f"body is {len(body)} bytes; the limit is {MAX_BODY}")
    if not secret:
        raise ConfigError("the webhook secret is empty", "webhook.secret")
    given = next((v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER.lower()), "")
    if not given:
        raise BadSignature(f"missing {SIGNATURE_HEADER} header")
    if not hmac.compare_digest(given.strip().lower().encode(), sign(body, secret).encode()):
        raise BadSignature(f"{SIGNATURE_HEADER} does not match the body")
    try:
        data = json.loads(body)
    except ValueError as e:
        raise MalformedBody(f"body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise MalformedBody("body must be a JSON object")
    timestamp = data.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
        raise MalformedBody("timestamp must be Unix seconds (a number)")
    if abs(now - timestamp) > WINDOW:
        raise StaleTimestamp(f"timestamp is {now - timestamp:+.0f} s from now; the limit is {WINDOW:.0f} s")
    digest = hashlib.sha256(body).hexdigest()
    if guard.seen(digest):
        raise ReplayedBody("this body was accepted before")
    termination = _termination(data, tenants)
    if not guard.remember(digest, timestamp + WINDOW):
        raise ReplayedBody("this body was accepted before")
    return termination


def _termination(data: dict[str, Any], tenants: Container[str] | None) -> Termination:
    unknown = set(data) - set(FIELDS) - set(ENVELOPE)
    if unknown:
        raise MalformedBody(f"unknown field(s): {', '.join(sorted(unknown))}")
    tenant = data.get("tenant")
    if not isinstance(tenant, str) or not tenant:
        raise MalformedBody("tenant must be a non-empty string")
    if tenants is not None and tenant not in tenants:
        raise MalformedBody(f"tenant {tenant!r} does not accept webhooks")
    wrong = sorted(k for k in FIELDS if data.get(k) is not None and not isinstance(data[k], str))
    if wrong:
        raise MalformedBody(f"field(s) must be strings: {', '.join(wrong)}")
    try:
        return to_termination(data, tenant=tenant, source="webhook",
                              where=f"webhook {tenant}/{data.get('employee_id') or '?'}")
    except InputRejected as e:
        raise MalformedBody(e.message, e.where) from None


class WebhookSource(Source):
    """`type = "webhook"` lets a tenant accept signed webhooks; its terminations are pushed, not pulled.

    `pull` therefore yields nothing and says it is incomplete, so the engine never
    cancels a webhook termination for being absent from a pull.
    """

    type = "webhook"

    def pull(self, since: str | None = None) -> Pull:
        return Pull(cursor=since, complete=False)
