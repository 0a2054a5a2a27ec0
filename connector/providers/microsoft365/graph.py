"""Microsoft Graph v1.0 client: single requests, `@odata.nextLink` paging and `$batch`.

Bulk work goes through `$batch` (at most 20 sub-requests each). Throttling is answered
where it happens: a whole-response 429/503/424 is retried by `connector.http.send` and
then by `batch`; a 429, 503 or 424 (failed dependency) inside a batch is retried for that
sub-request only, after its own Retry-After. Calls marked `follows` go out as one batch in
sequence (`dependsOn`): one round trip, in order; what Graph did not run because the call
before it failed is sent again without it, so one refusal never holds back the rest. Long
waits surface as RetryableError(delay) so the engine parks the action. A semaphore per
service and tenant bounds the requests in flight.

Answers are hostile until parsed: a body that is not a JSON object (an HTML error page
with status 200, JSON nested beyond the parser's depth) is a typed error naming the
request, and a `@odata.nextLink` is followed only to the configured scheme and host, at
most `MAX_PAGES` times and never to a page already read: the bearer token goes with it.
"""
from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Iterator
from urllib.parse import urlsplit

import requests

from ... import http
from ...errors import OffboardError, PermanentError, RetryableError
from .auth import Tokens

BATCH_SIZE = 20
CONCURRENCY = 4            # Graph and Exchange both throttle harder above ~4 parallel requests per app and tenant
BATCH_ATTEMPTS = 5
MAX_PAGES = 1000           # of one collection: 100,000 objects at Graph's default page size
_slots: dict[str, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()
_PERMISSION = re.compile(r"(?:API requires one of '([^']+)'|missing permission scope ([\w.,\s]+?)\.?(?:\"|$))")


def tenant_slots(service: str, tenant_id: str) -> threading.BoundedSemaphore:
    """The concurrency limit shared by every request to one service (Graph, Exchange Online) of one tenant:
    each service throttles on its own, so one's requests never wait for the other's."""
    with _slots_lock:
        return _slots.setdefault(f"{service}/{tenant_id}", threading.BoundedSemaphore(CONCURRENCY))


def json_object(text: str | bytes, where: str) -> dict:
    """The body as a JSON object, or the typed error: an HTML page may be a passing outage, a bomb is not."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except RecursionError:
        raise PermanentError("the answer is JSON nested too deep to read", where) from None
    except ValueError:
        raise RetryableError("the answer is not JSON (an error page?)", where, delay=60) from None
    if not isinstance(value, dict):
        raise PermanentError(f"the answer is a JSON {type(value).__name__}, not an object", where)
    return value


def page_items(page: dict, where: str) -> list:
    """The `value` of one page of a collection."""
    items = page.get("value", [])
    if not isinstance(items, list):
        raise PermanentError("the collection's `value` is not a list", where)
    return items


def error_body(resp: requests.Response) -> dict:
    """An error answer's JSON object, or {} when it has none (the status and reason then speak)."""
    try:
        return json_object(resp.content, "")
    except OffboardError:
        return {}


class NextLinks:
    """The `@odata.nextLink`s of one collection read: same scheme and host as the base, MAX_PAGES, no repeats."""

    def __init__(self, base: str, first: str, where: str):
        self.origin = self._origin(base)
        self.seen = {first}
        self.where = where

    @staticmethod
    def _origin(url: str) -> tuple[str, str, int | None]:
        parts = urlsplit(url)
        return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port

    def check(self, link: Any) -> str:
        if not isinstance(link, str) or self._origin(link) != self.origin:
            shown = urlsplit(link).netloc if isinstance(link, str) else type(link).__name__
            raise PermanentError(f"@odata.nextLink points away from the configured host ({shown!r}): not followed",
                                 self.where)
        if link in self.seen:
            raise PermanentError("@odata.nextLink repeats a page already read: paging stopped", self.where)
        if len(self.seen) >= MAX_PAGES:
            raise PermanentError(f"more than {MAX_PAGES} pages: paging stopped", self.where)
        self.seen.add(link)
        return link


@dataclass(frozen=True)
class GraphCall:
    """One Graph request, sent alone or inside a `$batch`. `path` is relative to /v1.0."""

    method: str
    path: str
    body: dict | None = None
    headers: tuple[tuple[str, str], ...] = ()
    follows: bool = False        # in a `batch`: run only after the call before it (`dependsOn`)


class NotRun(RetryableError):
    """A call of a sequence Graph did not run because the call before it failed (424): sent again without it."""


def in_sequence(calls: list) -> list:
    """`calls` with each Graph call after the first marked to follow the one before it."""
    out, first = [], True
    for call in calls:
        if isinstance(call, GraphCall):
            call, first = (call if first else replace(call, follows=True)), False
        out.append(call)
    return out


def describe(body: Any, fallback: str = "") -> str:
    """Graph's `error.code: error.message`, naming the missing permission when Graph reports one."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return fallback
    message = f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
    found = _PERMISSION.search(str(error.get("message", "")))
    if found:
        message += f" (missing permission: {(found.group(1) or found.group(2)).strip()})"
    return message or fallback


class GraphClient:
    def __init__(self, base_url: str, tenant_id: str, tokens: Tokens, where: str):
        self.base = f"{base_url.rstrip('/')}/v1.0"
        self.tokens = tokens
        self.where = where
        self.slots = tenant_slots("graph", tenant_id)
        self.session = http.session()

    def place(self, call: GraphCall) -> str:
        return f"{self.where} {call.method} {urlsplit(call.path).path.removeprefix('/v1.0')}"

    def request(self, call: GraphCall) -> dict:
        """Relative paths only: an absolute URL (a nextLink) comes through `pages`, which checked its host."""
        return self._send(self.base + call.path, call)

    def _send(self, url: str, call: GraphCall) -> dict:
        headers = {**self.tokens.header(), **dict(call.headers)}
        with self.slots:
            resp = http.send(self.session, call.method, url, self.place(call),
                             describe=lambda r: describe(error_body(r), r.reason or ""), json=call.body,
                             headers=headers)
        return json_object(resp.content, self.place(call))

    def pages(self, call: GraphCall, page: dict | None = None) -> Iterator[dict]:
        """Every item of a collection, following `@odata.nextLink` (from `page` when the first one is read)."""
        page = self.request(call) if page is None else page
        links = NextLinks(self.base, self.base + call.path, self.place(call))
        yield from page_items(page, self.place(call))
        while page.get("@odata.nextLink"):
            page = self._send(links.check(page["@odata.nextLink"]), GraphCall("GET", call.path, headers=call.headers))
            yield from page_items(page, self.place(call))

    def batch(self, calls: list[GraphCall]) -> list[dict | OffboardError]:
        """Send `calls` as `$batch` requests of 20; one body or typed error per call, in order.

        Independent calls share batches; a sequence (a call and those that `follow` it) has a
        batch of its own, run in order by Graph (`dependsOn`), at most 20 of it per round.
        Collections are read whole (`@odata.nextLink` followed); sub-requests answered 429,
        503 or 424 (and whole batches answered so) are sent again after their Retry-After
        while it is short, each at most BATCH_ATTEMPTS times; a long wait comes back as the error.
        Once a round meets a throttled answer its chunks not yet sent wait for the next round
        without spending an attempt: thousands of calls against a throttle are paced by it,
        instead of all being sent into it and most giving up after their last attempt.
        """
        results: list[dict | OffboardError | None] = [None] * len(calls)
        attempts = [0] * len(calls)
        sequence = [0] * len(calls)            # the index of the call that starts each call's sequence
        for n, call in enumerate(calls):
            sequence[n] = sequence[n - 1] if n and call.follows else n
        pending = list(range(len(calls)))
        while pending:
            chunks, later = self._chunks(pending, sequence)
            held_back = threading.Event()

            def send(chunk: tuple[list[int], bool]) -> list[dict | OffboardError] | None:
                if held_back.is_set():
                    return None
                answer = self._send_chunk([calls[i] for i in chunk[0]], serial=chunk[1])
                if any(isinstance(r, RetryableError) and not isinstance(r, NotRun) for r in answer):
                    held_back.set()
                return answer

            with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
                answers = list(pool.map(send, chunks))
            pending, wait = [], 0.0
            for (chunk, _), answer in zip(chunks, answers):
                if answer is None:
                    pending += chunk
                    continue
                for index, result in zip(chunk, answer):
                    results[index] = result
                    attempts[index] += not isinstance(result, NotRun)    # each round runs a sequence's first call
                    if isinstance(result, RetryableError) and result.delay <= http.INLINE_WAIT_LIMIT \
                            and attempts[index] < BATCH_ATTEMPTS:
                        pending.append(index)
                        wait = max(wait, result.delay)
            pending = sorted(pending + later)
            if pending:
                time.sleep(wait)
        for index, result in enumerate(results):
            if isinstance(result, dict) and result.get("@odata.nextLink"):
                try:
                    result["value"] = list(self.pages(calls[index], result))
                except OffboardError as e:
                    results[index] = e
                result.pop("@odata.nextLink", None)
        return results

    @staticmethod
    def _chunks(pending: list[int], sequence: list[int]) -> tuple[list[tuple[list[int], bool]], list[int]]:
        """This round's batches, (indexes, in sequence?), and the calls that wait for a later round.

        A few sequences go out each in a batch of its own, run in order by Graph: one round trip.
        Many would cost an envelope each, so then every sequence's next call goes out together,
        packed 20 to a batch, round after round: the order holds either way, and the cheaper in
        waves of CONCURRENCY requests is taken.
        """
        runs: list[list[int]] = []
        for index in pending:
            if runs and sequence[index] == sequence[runs[-1][0]]:
                runs[-1].append(index)
            else:
                runs.append([index])
        alone = [members[0] for members in runs if len(members) == 1]
        sequences = [members for members in runs if len(members) > 1]

        def waves(envelopes: int) -> int:
            return -(-envelopes // CONCURRENCY)

        def packed(calls: int) -> int:
            return -(-calls // BATCH_SIZE)

        longest = max((len(members) for members in sequences), default=0)
        each_alone = waves(len(sequences) + packed(len(alone)))
        by_position = waves(packed(len(alone) + len(sequences))) + (longest - 1) * waves(packed(len(sequences)))
        chunks: list[tuple[list[int], bool]] = []
        later: list[int] = []
        if each_alone <= by_position:
            for members in sequences:
                chunks.append((members[:BATCH_SIZE], True))
                later += members[BATCH_SIZE:]
        else:
            for members in sequences:
                alone.append(members[0])
                later += members[1:]
        alone.sort()
        chunks += [(alone[i:i + BATCH_SIZE], False) for i in range(0, len(alone), BATCH_SIZE)]
        return chunks, later

    def _send_chunk(self, calls: list[GraphCall], serial: bool = False) -> list[dict | OffboardError]:
        requests_ = []
        for n, call in enumerate(calls):
            sub: dict[str, Any] = {"id": str(n), "method": call.method, "url": call.path}
            if serial and n:
                sub["dependsOn"] = [str(n - 1)]
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
        subs = answer.get("responses")
        by_id = {r.get("id"): r for r in subs if isinstance(r, dict)} if isinstance(subs, list) else {}
        out = [self._sub_answer(call, by_id.get(str(n))) for n, call in enumerate(calls)]
        if serial:      # a 424 after the first: the call before it failed, and this one never ran
            out[1:] = [NotRun(f"not run: {self.place(calls[n])} failed before it", self.place(call), delay=0)
                       if by_id.get(str(n + 1), {}).get("status") == 424 else result
                       for n, (call, result) in enumerate(zip(calls[1:], out[1:]))]
        return out

    def _sub_answer(self, call: GraphCall, sub: dict | None) -> dict | OffboardError:
        where = self.place(call)
        if sub is None or not isinstance(sub.get("status"), int):
            return RetryableError("missing from the $batch answer", where, delay=5)
        body = sub.get("body")
        if isinstance(body, str):            # some services answer a JSON body as a string
            try:
                body = json_object(body, where)
            except OffboardError as e:
                return e
        headers = {str(k).lower(): v for k, v in (sub.get("headers") or {}).items()} \
            if isinstance(sub.get("headers"), dict) else {}
        error = http.error_for(sub["status"], describe(body, f"HTTP {sub['status']}"), where,
                               http.parse_retry_after(headers.get("retry-after"), 10.0))
        if error:
            return error
        body = body if isinstance(body, dict) else {}
        if sub["status"] == 202 and isinstance(headers.get("location"), str):
            body["Location"] = headers["location"]      # an accepted long-running operation: where to poll it
        return body
