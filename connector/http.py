"""One table maps HTTP answers to typed errors; one helper sends requests with short retries.

Short waits (a few seconds of Retry-After) are retried here with tenacity; longer
ones surface as RetryableError(delay) so the engine parks the action in the
journal's `next_attempt_at` instead of blocking a worker. A server names the
delay, so every delay is bounded (0 to MAX_DELAY): `Retry-After: 1e12` must not
overflow a date in the engine, and `nan` must not become "retry now, forever".
Credentials go only over TLS: a plain-http URL is refused unless its host is
this machine (tests, the sandbox), whatever the caller was handed.
"""
from __future__ import annotations

import email.utils
import logging
import math
import time
from typing import Any
from urllib.parse import urlsplit

import requests
import tenacity

from . import __version__
from .config import is_loopback
from .errors import ConfigError, OffboardError, PermanentError, RetryableError

log = logging.getLogger(__name__)

TIMEOUT = (5, 30)          # connect, read
INLINE_WAIT_LIMIT = 5.0    # seconds of Retry-After waited for in place; longer goes to the journal (next_attempt_at)
MAX_DELAY = 3600.0         # a longer wait is parked for an hour, then the server is asked again
RETRYABLE = {408, 424, 425, 429, 500, 502, 503, 504}   # 424: a Graph $batch dependency failed (throttled)
CONFIG = {401, 403}
CONFLICT = {409, 412}      # the object changed since it was read (an ETag's If-Match failed): re-read, re-plan


def retry_after(resp: requests.Response, default: float = 30.0) -> float:
    return parse_retry_after(resp.headers.get("Retry-After"), default)


def parse_retry_after(value: Any, default: float = 30.0) -> float:
    """Seconds to wait from a Retry-After value (seconds or an HTTP date), e.g. inside a Graph batch sub-response.

    Anything unreadable is `default`; the result is always within 0..MAX_DELAY.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or value == "":
        return default
    if isinstance(value, int) and abs(value) > MAX_DELAY:
        value = math.inf if value > 0 else 0.0       # an integer beyond any float would raise in float()
    try:
        return bounded_delay(float(value), default)
    except ValueError:                              # not a number: maybe an HTTP date
        pass
    try:
        return bounded_delay(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), default)
    except (TypeError, ValueError, OverflowError, OSError):
        return default


def bounded_delay(delay: float, default: float = 30.0) -> float:
    """A delay the engine can add to a date: NaN is `default`, the rest is clamped to 0..MAX_DELAY."""
    return default if math.isnan(delay) else min(max(delay, 0.0), MAX_DELAY)


def require_tls(url: str, where: str) -> None:
    """Refuse to send anything over plain http to another machine; loopback (tests, the sandbox) may."""
    parts = urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback(parts.hostname or "")):
        raise ConfigError(f"refusing {parts.scheme}://{parts.hostname}: credentials go only over https "
                          f"(plain http only to this machine)", where)


class NotFound(PermanentError):
    """HTTP 404: the object is gone (a user deleted since matching, a member already removed)."""


class Conflict(RetryableError):
    """HTTP 409 or 412: someone changed the object since it was read; the caller re-reads and plans again.

    Never resent as it is (the same If-Match fails the same way): a caller that gives up
    leaves it to the engine, which tries again at the next pass, from a fresh read.
    """


def error_for(status: int, message: str, where: str, delay: float = 30.0) -> OffboardError | None:
    """The table: what an HTTP status means for the engine (None: success)."""
    if status < 400:
        return None
    if status == 404:
        return NotFound(f"HTTP 404: {message}", where)
    if status in CONFIG:
        return ConfigError(f"HTTP {status}: {message}", where)
    if status in CONFLICT:
        return Conflict(f"HTTP {status}: {message}", where, delay=5.0)
    if status in RETRYABLE:
        return RetryableError(f"HTTP {status}: {message}", where, delay=bounded_delay(delay))
    return PermanentError(f"HTTP {status}: {message}", where)


def session(user_agent: str = "") -> requests.Session:
    s = requests.Session()
    s.headers["User-Agent"] = user_agent or f"offboard-connector/{__version__}"
    return s


class JsonClient:
    """What the REST clients of the PSA and the distributor share: a base URL, one lazy session with their own
    headers, JSON answers (a body that is not JSON is a PermanentError), the `message` of an error body."""

    def __init__(self, base_url: str, where: str):
        self.base = base_url.rstrip("/")
        self.where = where
        self.session: requests.Session | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.session:
            self.session.close()
            self.session = None

    def headers(self) -> dict[str, str]:
        return {"Accept": "application/json"}

    def _session(self) -> requests.Session:
        if self.session is None:
            self.session = session()
            self.session.headers.update(self.headers())
        return self.session

    @staticmethod
    def message(resp: requests.Response) -> str:
        try:
            body = resp.json()
        except ValueError:
            return ""
        return str(body.get("message", ""))[:300] if isinstance(body, dict) else ""

    def _json(self, resp: requests.Response, what: str) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise PermanentError(f"{what}: the answer is not JSON ({resp.headers.get('Content-Type', 'no type')})",
                                 self.where) from None


def _short(exc: BaseException) -> bool:
    return isinstance(exc, RetryableError) and not isinstance(exc, Conflict) and exc.delay <= INLINE_WAIT_LIMIT


def _wait(retry_state: tenacity.RetryCallState) -> float:
    exc = retry_state.outcome.exception()
    return getattr(exc, "delay", 1.0)


def send(sess: requests.Session, method: str, url: str, where: str, *, attempts: int = 4,
         describe=None, **kwargs: Any) -> requests.Response:
    """Send one request; raise the typed error of the table for a failure.

    `describe(resp)` may return a better message from the body (Graph's error.message).
    Connection failures and timeouts are retryable; short Retry-After waits are taken here.
    """
    require_tls(url, where)
    kwargs.setdefault("timeout", TIMEOUT)

    @tenacity.retry(retry=tenacity.retry_if_exception(_short), wait=_wait,
                    stop=tenacity.stop_after_attempt(attempts), reraise=True)
    def once() -> requests.Response:
        try:
            resp = sess.request(method, url, **kwargs)
        except requests.Timeout:
            raise RetryableError(f"timed out after {kwargs['timeout']} s", where, delay=5.0) from None
        except requests.ConnectionError as e:
            raise RetryableError(f"cannot connect: {type(e).__name__}", where, delay=5.0) from None
        message = (describe(resp) if describe else None) or resp.reason or ""
        err = error_for(resp.status_code, message, where,
                        retry_after(resp, default=30.0 if resp.status_code == 429 else 2.0))
        if err:
            raise err
        return resp

    return once()
