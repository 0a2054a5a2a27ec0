"""Microsoft Graph v1.0 client: single requests, `@odata.nextLink` paging and `$batch`.

Bulk work goes through `$batch` (at most 20 sub-requests each). Throttling is answered
where it happens: a whole-response 429 is retried by `connector.http.send`; a 429
inside a batch is retried for that sub-request only, after its own Retry-After.
Long waits surface as RetryableError(delay) so the engine parks the action.
A per-tenant semaphore bounds the requests in flight, whoever sends them.
"""
from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator

import requests

from ... import http
from ...errors import OffboardError, RetryableError
from .auth import Tokens

BATCH_SIZE = 20
CONCURRENCY = 4            # Graph and Exchange both throttle harder above ~4 parallel requests per app and tenant
BATCH_ATTEMPTS = 5
_slots: dict[str, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()
_PERMISSION = re.compile(r"(?:API requires one of '([^']+)'|missing permission scope ([\w.,\s]+?)\.?(?:\"|$))")


def tenant_slots(tenant_id: str) -> threading.BoundedSemaphore:
    """The concurrency limit shared by every Graph and Exchange request to one tenant."""
    with _slots_lock:
        return _slots.setdefault(tenant_id, threading.BoundedSemaphore(CONCURRENCY))


@dataclass(frozen=True)
class GraphCall:
    """One Graph request, sent alone or inside a `$batch`. `path` is relative to /v1.0."""

    method: str
    path: str
    body: dict | None = None
    headers: tuple[tuple[str, str], ...] = ()


def describe(body: Any, fallback: str = "") -> str:
    """Graph's `error.code: error.message`, naming the missing permission when Graph reports one."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return fallback
    message = f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
    found = _PERMISSION.search(error.get("message", ""))
    if found:
        message += f" (missing permission: {(found.group(1) or found.group(2)).strip()})"
    return message or fallback


def _describe_response(resp: requests.Response) -> str:
    try:
        return describe(resp.json(), resp.reason or "")
    except ValueError:
        return resp.reason or ""


class GraphClient:
    def __init__(self, base_url: str, tenant_id: str, tokens: Tokens, where: str):
        self.base = f"{base_url.rstrip('/')}/v1.0"
        self.tokens = tokens
        self.where = where
        self.slots = tenant_slots(tenant_id)
        self.session = http.session()

    def request(self, call: GraphCall) -> dict:
        url = call.path if call.path.startswith("http") else self.base + call.path
        headers = {**self.tokens.header(), **dict(call.headers)}
        with self.slots:
            resp = http.send(self.session, call.method, url, f"{self.where} {call.method} {call.path.split('?')[0]}",
                             describe=_describe_response, json=call.body, headers=headers)
        return resp.json() if resp.content else {}

    def pages(self, call: GraphCall) -> Iterator[dict]:
        """Every item of a collection, following `@odata.nextLink`."""
        page = self.request(call)
        yield from page.get("value", [])
        while page.get("@odata.nextLink"):
            page = self.request(GraphCall("GET", page["@odata.nextLink"], headers=call.headers))
            yield from page.get("value", [])

    def batch(self, calls: list[GraphCall]) -> list[dict | OffboardError]:
        """Send `calls` as `$batch` requests of 20; one body or typed error per call, in order.

        Collections are read whole (`@odata.nextLink` followed); sub-requests answered 429
        are sent again after their Retry-After while it is short.
        """
        results: list[dict | OffboardError | None] = [None] * len(calls)
        pending = list(range(len(calls)))
        for attempt in range(BATCH_ATTEMPTS):
            chunks = [pending[i:i + BATCH_SIZE] for i in range(0, len(pending), BATCH_SIZE)]
            with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
                answers = list(pool.map(lambda chunk: self._send_chunk([calls[i] for i in chunk]), chunks))
            pending, wait = [], 0.0
            for chunk, answer in zip(chunks, answers):
                for index, result in zip(chunk, answer):
                    results[index] = result
                    if isinstance(result, RetryableError) and result.delay <= http.INLINE_WAIT_LIMIT:
                        pending.append(index)
                        wait = max(wait, result.delay)
            if not pending or attempt == BATCH_ATTEMPTS - 1:
                break
            time.sleep(wait)
        for index, result in enumerate(results):
            if isinstance(result, dict) and result.get("@odata.nextLink"):
                rest = list(self.pages(GraphCall("GET", result.pop("@odata.nextLink"), headers=calls[index].headers)))
                result["value"] = result.get("value", []) + rest
        return results

    def _send_chunk(self, calls: list[GraphCall]) -> list[dict | OffboardError]:
        requests_ = []
        for n, call in enumerate(calls):
            sub: dict[str, Any] = {"id": str(n), "method": call.method, "url": call.path}
            headers = dict(call.headers)
            if call.body is not None:
                sub["body"] = call.body
                headers["Content-Type"] = "application/json"    # Graph refuses a sub-request body without it
            if headers:
                sub["headers"] = headers
            requests_.append(sub)
        try:
            answer = self.request(GraphCall("POST", "/$batch", {"requests": requests_}))
        except OffboardError as e:
            return [e] * len(calls)
        by_id = {r["id"]: r for r in answer.get("responses", [])}
        out: list[dict | OffboardError] = []
        for n, call in enumerate(calls):
            sub = by_id.get(str(n))
            if sub is None:
                out.append(RetryableError("missing from the $batch answer", self.where, delay=5))
                continue
            body = sub.get("body")
            if isinstance(body, str):            # some services answer a JSON body as a string
                body = json.loads(body) if body.strip().startswith("{") else {}
            headers = {k.lower(): v for k, v in (sub.get("headers") or {}).items()}
            error = http.error_for(sub["status"], describe(body, f"HTTP {sub['status']}"),
                                   f"{self.where} {call.method} {call.path.split('?')[0]}",
                                   http.parse_retry_after(headers.get("retry-after"), 10.0))
            out.append(error or (body if isinstance(body, dict) else {}))
        return out
