"""Pax8 (the distributor): the partner API's token, subscriptions with their history, and quantity updates.

`POST /token` issues a bearer token for the registered client id and secret with a partner audience
(else 401, as Pax8 answers `access_denied`), living `token_seconds`; every other request needs a live one
(401). Each request is then checked against the excerpt of the API the connector uses
(specs/pax8-partner-excerpt.yaml, at the vendor's own URL): one it does not describe is recorded and
answered 400. As at Pax8, `PUT /subscriptions/{id}` applies a new quantity at once: NCE's timing is the
partner's business, so this fake lets a test see exactly what the connector chose to write. Every change
appends a snapshot to the subscription's history stamped with the fake's clock (`now`, set by the test,
else the machine's), so the seat-add dates the connector reads are real state. A throttle knob answers
429 with Retry-After.
"""
from __future__ import annotations

import datetime as dt
import itertools
import secrets
import time
import uuid
from typing import Any

from .contract import SpecViolation, check_openapi
from .web import Request, Response, System, json_response, retry_after_header

SPEC = "pax8-partner-excerpt.yaml"
VENDOR_URL = "https://api.pax8.com/v1"
AUDIENCES = ("https://api.pax8.com", "api://p8p.client")


def stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class Pax8(System):
    name = "pax8"

    def __init__(self, client_id: str = "pax8-client-5d1e2f", client_secret: str = "pax8-secret-8f2a~b9c",
                 token_seconds: int = 86400):
        super().__init__()
        self.client_id, self.client_secret, self.token_seconds = client_id, client_secret, token_seconds
        self.url = VENDOR_URL               # where a client reaches it: the sandbox server's address over HTTPS
        self.now: dt.datetime | None = None
        self.subscriptions: dict[str, dict] = {}
        self.history: dict[str, list[dict]] = {}
        self.tokens: dict[str, float] = {}  # token -> expiry (Unix time)
        self.token_requests = 0
        self._ids = itertools.count(1)

    def clock(self) -> dt.datetime:
        return self.now or dt.datetime.now(dt.timezone.utc)

    # -- the partner's data ---------------------------------------------------------------------
    def add_subscription(self, company_id: str, product: str, quantity: int, *, term: str = "Monthly",
                         start: dt.datetime, ends: dt.datetime | None = None, price: float = 36.0,
                         partner_cost: float = 30.0) -> str:
        """A subscription bought at `start`; `ends` is the commitment's end (annual, triennial; None: monthly)."""
        n = next(self._ids)
        sid = str(uuid.UUID(int=0x5ab5_0000_0000_4000_8000_0000_0000_0000 + n))
        self.subscriptions[sid] = {
            "id": sid, "companyId": company_id, "productId": str(uuid.UUID(int=0x9d0c_0000_0000_4000_8000_0000_0000_0000 + n)),
            "productName": product, "quantity": quantity, "startDate": stamp(start), "createdDate": stamp(start),
            "updatedDate": stamp(start), "billingStart": start.date().isoformat(), "status": "Active",
            "price": price, "partnerCost": partner_cost, "currencyCode": "USD", "billingTerm": term,
            "commitmentTerm": {"id": str(uuid.UUID(int=n)), "term": term, "endDate": stamp(ends)} if ends else None}
        self.history[sid] = [dict(self.subscriptions[sid])]
        return sid

    def set_quantity(self, sid: str, quantity: int) -> None:
        """A change at the fake's clock: a purchase of more seats, a reduction, the partner's own edit."""
        sub = self.subscriptions[sid]
        sub.update(quantity=quantity, updatedDate=stamp(self.clock()))
        self.history[sid].append(dict(sub))

    def quantity(self, sid: str) -> int:
        return self.subscriptions[sid]["quantity"]

    # -- serving --------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        with self.lock:
            self.calls.append(("pax8", request.method, request.path))
            try:
                check_openapi(SPEC, request.method, VENDOR_URL + request.path +
                              (f"?{request.query}" if request.query else ""), dict(request.headers), request.body)
            except SpecViolation as e:
                self.violations.append(str(e))
                return self._answer(request, 400, {"type": "BadRequest", "message": str(e)[:500], "status": 400})
            if request.segments == ["token"]:
                return self.token(request)
            kind, _, token = request.headers.get("Authorization", "").partition(" ")
            if kind != "Bearer" or self.tokens.get(token, 0) <= time.time():
                return self._answer(request, 401, {"type": "Unauthorized", "message": "invalid or expired token",
                                                   "status": 401})
            wait = self.knobs.throttled(self.client_id)
            if wait is not None:
                return self._answer(request, 429, {"type": "TooManyRequests", "message": "slow down", "status": 429},
                                    retry_after_header(wait))
            status, value = self.route(request)
            return self._answer(request, status, value)

    def token(self, request: Request) -> Response:
        self.token_requests += 1
        body = request.json() or {}
        if (body.get("client_id"), body.get("client_secret")) != (self.client_id, self.client_secret) \
                or body.get("audience") not in AUDIENCES:
            return json_response(401, {"error": "access_denied", "error_description": "Unauthorized"})
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.time() + self.token_seconds
        return json_response(200, {"access_token": token, "expires_in": self.token_seconds, "token_type": "Bearer"})

    def _answer(self, request: Request, status: int, value: Any, headers: dict | None = None) -> Response:
        if request.method == "PUT":
            self.wrote("PUT subscriptions/{id}", "/".join(request.segments), self.client_id, status)
        return json_response(status, value, headers)

    def route(self, request: Request) -> tuple[int, Any]:
        seg = request.segments
        if seg == ["subscriptions"]:
            company = request.arg("companyId")
            found = [s for s in self.subscriptions.values() if company in (None, s["companyId"])]
            page, size = int(request.arg("page") or 0), int(request.arg("size") or 10)
            return 200, {"content": found[page * size:(page + 1) * size],
                         "page": {"size": size, "totalElements": len(found), "totalPages": -(-len(found) // size),
                                  "number": page}}
        sub = self.subscriptions.get(seg[1]) if len(seg) >= 2 and seg[0] == "subscriptions" else None
        if sub is None:
            return 404, {"type": "NotFound", "message": "Subscription not found", "status": 404}
        if len(seg) == 3 and seg[2] == "history":
            return 200, {"content": [dict(h) for h in reversed(self.history[sub["id"]])]}
        if request.method == "PUT":
            quantity = request.json().get("quantity")
            if quantity is not None:
                if quantity != int(quantity):
                    return 422, {"type": "InvalidSubscriptionUpdate", "message": "quantity must be whole", "status": 422}
                self.set_quantity(sub["id"], int(quantity))
        return 200, dict(sub)
