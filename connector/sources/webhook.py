"""Signed termination webhooks: `read_body` and `verify_and_parse`, the pure functions the HTTP listener calls.

The checks run cheapest-and-safest first: size (never read or hash a huge body),
then one bounded parse to learn which tenant the body claims (each tenant has its
own secret, so a body signed with tenant A's secret cannot speak for tenant B),
then the signature with that tenant's secret (nothing else in the body is
trusted before it), then the timestamp and the replay guard, then the fields. An
unknown tenant fails exactly like a wrong signature, so the answers do not tell
which tenants exist. A body is remembered only once it is accepted, so a sender
can fix a rejected one and send it again. Every rejection is a `WebhookRejected`
whose `status` is the HTTP answer; nothing is returned, so nothing can be queued.

The listener does, per request:
    body = read_body(environ["wsgi.input"], environ.get("CONTENT_LENGTH"),
                     terminated=environ.get("wsgi.input_terminated", False))
    termination = verify_and_parse(body, headers, webhook_secret_for(config), time.time(), store)
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import threading
import time
from typing import Any, BinaryIO, Callable, Mapping, Protocol

from ..config import Config, Secret
from ..errors import ConfigError, InputRejected, OffboardError
from ..model import Termination
from .base import Pull, Source
from .records import FIELDS, label, to_termination

MAX_BODY = 1 << 20                 # 1 MiB
CHUNK = 64 << 10
WINDOW = 300                       # seconds a timestamp may be away from now, either way
SIGNATURE_HEADER = "X-Offboard-Signature"
ENVELOPE = ("tenant", "timestamp")
NO_TENANT_KEY = os.urandom(32)     # an unknown tenant costs the same HMAC as a known one

SecretFor = Callable[[str], Secret | bytes | None] | Mapping[str, Secret | bytes]


class WebhookRejected(OffboardError):
    status = 400


class BadSignature(WebhookRejected): status = 401
class StaleTimestamp(WebhookRejected): status = 400
class ReplayedBody(WebhookRejected): status = 400
class MalformedBody(WebhookRejected): status = 400
class BodyTooLarge(WebhookRejected): status = 413
class LengthRequired(WebhookRejected): status = 411


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


def webhook_secret_for(config: Config) -> Callable[[str], Secret | None]:
    """Which secret signs a tenant's bodies: its own `webhook_secret`; else `[webhook] secret`, but only
    where one tenant alone takes webhooks. A tenant without a webhook source accepts none (None)."""
    takers = [t for t in config.tenants if t.takes_webhooks]
    shared = config.webhook.secret if config.webhook and len(takers) == 1 else None
    return {t.id: t.webhook_secret or shared for t in takers}.get


def read_body(stream: BinaryIO, content_length: str | int | None, terminated: bool = False) -> bytes:
    """The body from a WSGI-style input stream, never more than MAX_BODY bytes.

    `content_length` is the declared length (CONTENT_LENGTH; '' or None when absent): over
    the limit is 413 before anything is read. The stream is read up to the declared length
    only, since what follows is the next request on a kept-alive connection; `terminated`
    (wsgi.input_terminated, or an in-memory body) says the stream ends with the body, so it
    is read on to its end, and more than declared or than MAX_BODY is 413. Without a length
    an unterminated stream cannot be read safely: 411. The bytes really read are what count,
    whatever a stream's `read(n)` returns.
    """
    declared = _declared_length(content_length)
    if declared is None and not terminated:
        raise LengthRequired("a Content-Length is required")
    if declared is not None and declared > MAX_BODY:
        raise BodyTooLarge(f"Content-Length is {declared} bytes; the limit is {MAX_BODY}")
    want = (MAX_BODY if declared is None else declared) + (1 if terminated else 0)   # one more shows an overrun
    chunks, size = [], 0
    while size < want:
        chunk = stream.read(min(CHUNK, want - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > MAX_BODY:
        raise BodyTooLarge(f"the body is over the limit of {MAX_BODY} bytes")
    if declared is not None and size > declared:
        raise BodyTooLarge(f"the body is longer than its Content-Length ({declared})")
    if declared is not None and size < declared:
        raise MalformedBody(f"the body ended after {size} of its {declared} bytes")
    return b"".join(chunks)


def _declared_length(value: str | int | None) -> int | None:
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    if not re.fullmatch(r"[0-9]+", text):
        raise MalformedBody("Content-Length is not a number of bytes")
    return int(text) if len(text) <= 9 else MAX_BODY + 1


def verify_and_parse(body: bytes, headers: Mapping[str, str], secrets: SecretFor, now: float,
                     guard: ReplayGuard) -> Termination:
    """Return the termination of an authentic, fresh, first-time body; else raise WebhookRejected.

    `secrets` gives the secret of a tenant that takes webhooks (a mapping, or a function such
    as `webhook_secret_for(config)`), None or absent for any other.
    """
    if len(body) > MAX_BODY:
        raise BodyTooLarge(f"body is {len(body)} bytes; the limit is {MAX_BODY}")
    given = next((v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER.lower()), "")
    if not given:
        raise BadSignature(f"missing {SIGNATURE_HEADER} header")
    data = _object(body)
    tenant = data.get("tenant")
    if not isinstance(tenant, str) or not tenant:
        raise MalformedBody("tenant must be a non-empty string")
    secret = _secret(secrets, tenant)
    expected = sign(body, secret or NO_TENANT_KEY)
    if not hmac.compare_digest(given.strip().lower().encode(), expected.encode()) or secret is None:
        raise BadSignature(f"{SIGNATURE_HEADER} does not match the body")
    timestamp = data.get("timestamp")
    if type(timestamp) is not int:
        raise MalformedBody("timestamp must be Unix seconds as an integer")
    offset = int(now) - timestamp
    if abs(offset) > WINDOW:
        raise StaleTimestamp(f"timestamp is {'behind' if offset > 0 else 'ahead of'} now by more than {WINDOW} s")
    digest = hashlib.sha256(body).hexdigest()
    if guard.seen(digest):
        raise ReplayedBody("this body was accepted before")
    termination = _termination(data, tenant)
    if not guard.remember(digest, timestamp + WINDOW):
        raise ReplayedBody("this body was accepted before")
    return termination


def _object(body: bytes) -> dict[str, Any]:
    """Parse once, before anything is trusted: nesting is bounded by the parser's recursion
    limit, and NaN, Infinity and a repeated key (two readers, two meanings) are malformed."""
    try:
        data = json.loads(body, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError:
        raise MalformedBody("body nests too deep") from None
    except ValueError as e:
        raise MalformedBody(f"body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise MalformedBody("body must be a JSON object")
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("a key is repeated")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _secret(secrets: SecretFor, tenant: str) -> bytes | None:
    secret = (secrets.get if isinstance(secrets, Mapping) else secrets)(tenant)
    if secret is None:
        return None
    value = secret.reveal().encode() if isinstance(secret, Secret) else secret
    if not value:
        raise ConfigError("the webhook secret is empty", f"webhook secret of tenant {tenant}")
    return value


def _termination(data: dict[str, Any], tenant: str) -> Termination:
    unknown = set(data) - set(FIELDS) - set(ENVELOPE)
    if unknown:
        raise MalformedBody(f"unknown field(s): {', '.join(sorted(unknown))}")
    wrong = sorted(k for k in FIELDS if data.get(k) is not None and not isinstance(data[k], str))
    if wrong:
        raise MalformedBody(f"field(s) must be strings: {', '.join(wrong)}")
    try:
        return to_termination(data, tenant=tenant, source="webhook",
                              where=f"webhook {tenant}/{label(data.get('employee_id'))}")
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
