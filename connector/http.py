"""One table maps HTTP answers to typed errors; one helper sends requests with short retries.

Short waits (a few seconds of Retry-After) are retried here with tenacity; longer
ones surface as RetryableError(delay) so the engine parks the action in the
journal's `next_attempt_at` instead of blocking a worker.
"""
from __future__ import annotations

import email.utils
import logging
import time
from typing import Any

import requests
import tenacity

from . import __version__
from .errors import ConfigError, OffboardError, PermanentError, RetryableError

log = logging.getLogger(__name__)

TIMEOUT = (5, 30)          # connect, read
INLINE_WAIT_LIMIT = 30.0   # seconds of Retry-After we wait for in place
RETRYABLE = {408, 424, 425, 429, 500, 502, 503, 504}   # 424: a Graph $batch dependency failed (throttled)
CONFIG = {401, 403}


def retry_after(resp: requests.Response, default: float = 30.0) -> float:
    return parse_retry_after(resp.headers.get("Retry-After"), default)


def parse_retry_after(value: str | None, default: float = 30.0) -> float:
    """Seconds to wait from a Retry-After value (seconds or an HTTP date), e.g. inside a Graph batch sub-response."""
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else default


class NotFound(PermanentError):
    """HTTP 404: the object is gone (a user deleted since matching, a member already removed)."""


def error_for(status: int, message: str, where: str, delay: float = 30.0) -> OffboardError | None:
    """The table: what an HTTP status means for the engine (None: success)."""
    if status < 400:
        return None
    if status == 404:
        return NotFound(f"HTTP 404: {message}", where)
    if status in CONFIG:
        return ConfigError(f"HTTP {status}: {message}", where)
    if status in RETRYABLE:
        return RetryableError(f"HTTP {status}: {message}", where, delay=delay)
    return PermanentError(f"HTTP {status}: {message}", where)


def session(user_agent: str = "") -> requests.Session:
    s = requests.Session()
    s.headers["User-Agent"] = user_agent or f"offboard-connector/{__version__}"
    return s


def _short(exc: BaseException) -> bool:
    return isinstance(exc, RetryableError) and exc.delay <= INLINE_WAIT_LIMIT


def _wait(retry_state: tenacity.RetryCallState) -> float:
    exc = retry_state.outcome.exception()
    return getattr(exc, "delay", 1.0)


def send(sess: requests.Session, method: str, url: str, where: str, *, attempts: int = 4,
         describe=None, **kwargs: Any) -> requests.Response:
    """Send one request; raise the typed error of the table for a failure.

    `describe(resp)` may return a better message from the body (Graph's error.message).
    Connection failures and timeouts are retryable; short Retry-After waits are taken here.
    """
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
