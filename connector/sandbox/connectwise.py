"""ConnectWise Manage: companies, contacts, agreements with their additions, tickets and notes.

Every request must carry the API member's Basic credential (`company+public:private`) and a
registered `clientId`, or it is answered 401; then it is checked against the excerpt of the
API the connector uses (specs/connectwise-manage-excerpt.yaml, at the vendor's own URL), and
a request it does not describe is recorded and answered 400. Like Manage, lists answer
`pageSize` items (25 unless asked, at most 1000) with a `Link` header naming the next and last
pages, `conditions` and `childConditions` filter with its small language (`a/b = "x" and
c != 1`, `like` with `%`; strings compare case-insensitively, as its SQL Server does), PATCH
takes a JSON Patch of `replace` operations, and a throttle knob answers 429 with Retry-After.
"""
from __future__ import annotations

import base64
import datetime as dt
import itertools
import re
from typing import Any
from urllib.parse import urlencode

from .contract import SpecViolation, check_openapi
from .web import Request, Response, System, json_response, retry_after_header

SPEC = "connectwise-manage-excerpt.yaml"
VENDOR_URL = "https://na.myconnectwise.net/v4_6_release/apis/3.0"
CLAUSE = re.compile(r'\s*([A-Za-z][\w/]*)\s*(=|!=|like)\s*("(?:[^"\\]|\\.)*"|[\w.-]+)\s*$', re.IGNORECASE)


class BadConditions(ValueError):
    """Conditions Manage would refuse with 400."""


def parse_conditions(text: str) -> list[tuple[str, str, Any]]:
    clauses = []
    for part in re.split(r'\s+and\s+(?=(?:[^"]*"[^"]*")*[^"]*$)', text.strip(), flags=re.IGNORECASE):
        found = CLAUSE.fullmatch(part)
        if not found:
            raise BadConditions(f"cannot read the condition {part!r}")
        path, op, raw = found.groups()
        if raw.startswith('"'):
            value: Any = re.sub(r'\\(.)', r'\1', raw[1:-1])
        elif raw.lower() in ("true", "false", "null"):
            value = {"true": True, "false": False, "null": None}[raw.lower()]
        else:
            try:
                value = float(raw) if "." in raw else int(raw)
            except ValueError:
                raise BadConditions(f"a string value needs double quotes: {raw!r}") from None
        clauses.append((path, op.lower(), value))
    return clauses


def lookup(item: dict, path: str) -> Any:
    value: Any = item
    for key in path.split("/"):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def holds(value: Any, op: str, wanted: Any) -> bool:
    if isinstance(value, str) and isinstance(wanted, str):
        value, wanted = value.lower(), wanted.lower()
    if op == "like":
        pattern = "".join(".*" if c == "%" else re.escape(c) for c in str(wanted))
        return isinstance(value, str) and re.fullmatch(pattern, value, re.DOTALL) is not None
    return (value == wanted) == (op == "=")


class ConnectWise(System):
    name = "connectwise"

    def __init__(self, company: str = "msp", public_key: str = "cw-public-4a1c", private_key: str = "cw-private-9e7d",
                 client_id: str = "5c1d2e3f-aaaa-4b5c-8d9e-0f1a2b3c4d5e"):
        super().__init__()
        self.company, self.public_key, self.private_key, self.client_id = company, public_key, private_key, client_id
        self.url = VENDOR_URL              # where a client reaches it: the sandbox server's address over HTTPS
        self.companies: dict[int, dict] = {}
        self.contacts: dict[int, dict] = {}
        self.agreements: dict[int, dict] = {}
        self.additions: dict[tuple[int, int], dict] = {}
        self.tickets: dict[int, dict] = {}
        self.notes: dict[int, list[dict]] = {}
        self._ids = itertools.count(1001)

    # -- the MSP's data -----------------------------------------------------------------------
    def add_company(self, company_id: int, name: str) -> int:
        self.companies[company_id] = {"id": company_id, "identifier": re.sub(r"\W", "", name)[:25], "name": name}
        return company_id

    def add_contact(self, company_id: int, first: str, last: str, email: str, portal: bool = True) -> int:
        cid = next(self._ids)
        contact = {"id": cid, "firstName": first, "lastName": last, "inactiveFlag": False,
                   "company": self.ref(company_id),
                   "communicationItems": [{"id": next(self._ids), "type": {"id": 1, "name": "Email"},
                                           "value": email, "defaultFlag": True, "communicationType": "Email"}]}
        if portal:                          # only contacts set up for the customer portal carry the flag
            contact["disablePortalLoginFlag"] = False
        self.contacts[cid] = contact
        return cid

    def add_agreement(self, agreement_id: int, company_id: int, additions: dict[int, tuple[str, float]]) -> None:
        self.agreements[agreement_id] = {"id": agreement_id, "name": "Managed Services",
                                         "company": self.ref(company_id)}
        for addition_id, (product, quantity) in additions.items():
            self.additions[(agreement_id, addition_id)] = {
                "id": addition_id, "agreementId": agreement_id, "product": {"id": addition_id, "identifier": product},
                "quantity": quantity, "lessIncluded": 0, "unitPrice": 20.0, "billCustomer": "Billable",
                "effectiveDate": "2026-01-01T00:00:00Z", "cancelledDate": None}

    def add_ticket(self, company_id: int, summary: str, **custom: str) -> int:
        tid = next(self._ids)
        self.tickets[tid] = {"id": tid, "summary": summary, "company": self.ref(company_id),
                             "board": {"id": 1, "name": "Service Board"}, "status": {"id": 1, "name": "New"},
                             "customFields": [{"id": i + 1, "caption": k, "type": "Text", "value": v}
                                              for i, (k, v) in enumerate(custom.items())]}
        self.notes[tid] = []
        return tid

    def ref(self, company_id: int) -> dict:
        known = self.companies.get(company_id, {"identifier": f"C{company_id}", "name": f"Company {company_id}"})
        return {"id": company_id, "identifier": known["identifier"], "name": known["name"]}

    def quantity(self, agreement_id: int, addition_id: int) -> float:
        return self.additions[(agreement_id, addition_id)]["quantity"]

    def internal_notes(self, ticket_id: int) -> list[str]:
        return [n["text"] for n in self.notes[ticket_id] if n.get("internalAnalysisFlag")]

    def state(self, emails: list[str]) -> dict:
        """Every agreement addition's quantity (what the MSP bills), and the tickets naming these people, with their
        internal notes."""
        wanted = [e.lower() for e in emails]
        with self.lock:
            return {"additions": {f"{agreement}/{addition}": {"product": a["product"]["identifier"],
                                                              "quantity": a["quantity"]}
                                  for (agreement, addition), a in self.additions.items()},
                    "tickets": {str(tid): {"summary": t["summary"], "notes": self.internal_notes(tid)}
                                for tid, t in self.tickets.items() if any(e in t["summary"].lower() for e in wanted)}}

    # -- serving --------------------------------------------------------------------------------
    def authorised(self, request: Request) -> bool:
        kind, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            user = base64.b64decode(encoded, validate=True).decode()
        except ValueError:
            return False
        wanted = f"{self.company}+{self.public_key}:{self.private_key}"
        return kind == "Basic" and user == wanted and request.headers.get("clientId") == self.client_id

    def handle(self, request: Request) -> Response:
        with self.lock:
            self.calls.append(("connectwise", request.method, request.path))
            writing = request.method != "GET"
            if not self.authorised(request):
                return self._answer(request, 401, {"code": "Unauthorized", "message": "Authentication failed"})
            wait = self.knobs.throttled(self.company)
            if wait is not None:
                return self._answer(request, 429, {"code": "TooManyRequests", "message": "slow down"},
                                    retry_after_header(wait))
            try:
                check_openapi(SPEC, request.method, VENDOR_URL + request.path + (f"?{request.query}" if request.query
                                                                                 else ""),
                              dict(request.headers), request.body)
            except SpecViolation as e:
                self.violations.append(str(e))
                return self._answer(request, 400, {"code": "InvalidObject", "message": str(e)[:500]})
            try:
                status, value = self.route(request)
            except BadConditions as e:
                status, value = 400, {"code": "InvalidObject", "message": str(e)}
            if isinstance(value, list):
                return self.page(request, value)
            return self._answer(request, status, value) if writing else json_response(status, value)

    def _answer(self, request: Request, status: int, value: Any, headers: dict | None = None) -> Response:
        if request.method != "GET":
            self.wrote(f"{request.method} {self.op(request)}", "/".join(request.segments), "api member", status)
        return json_response(status, value, headers)

    @staticmethod
    def op(request: Request) -> str:
        return "/".join("{id}" if s.isdigit() else s for s in request.segments)

    def route(self, request: Request) -> tuple[int, Any]:
        seg, method = request.segments, request.method
        if seg == ["system", "info"]:
            return 200, {"version": "v2025.1.10431", "isCloud": True, "serverTimeZone": "Eastern Standard Time"}
        if seg == ["company", "contacts"]:
            return 200, self.filtered(list(self.contacts.values()), request)
        if seg[:2] == ["company", "contacts"] and len(seg) == 3:
            return self.edit(self.contacts.get(int(seg[2])), method, request)
        if seg[:2] == ["finance", "agreements"] and len(seg) == 5 and seg[3] == "additions":
            return self.edit(self.additions.get((int(seg[2]), int(seg[4]))), method, request)
        if seg == ["service", "tickets"]:
            body = request.json()
            tid = self.add_ticket(body["company"]["id"], body["summary"])
            return 201, self.tickets[tid]
        if seg[:2] == ["service", "tickets"] and len(seg) >= 3:
            ticket = self.tickets.get(int(seg[2]))
            if ticket is None:
                return 404, {"code": "NotFound", "message": f"Ticket ID {seg[2]} not found"}
            if len(seg) == 3:
                return 200, ticket
            if method == "GET":
                return 200, list(self.notes[ticket["id"]])
            note = {"id": next(self._ids), "ticketId": ticket["id"], **request.json(),
                    "dateCreated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
            self.notes[ticket["id"]].append(note)
            return 201, note
        return 404, {"code": "NotFound", "message": "no such resource"}

    def edit(self, item: dict | None, method: str, request: Request) -> tuple[int, Any]:
        if item is None:
            return 404, {"code": "NotFound", "message": "not found"}
        if method == "PATCH":
            for op in request.json():
                if op["path"] not in item:
                    return 400, {"code": "InvalidObject", "message": f"{op['path']} is not a field of this object"}
                item[op["path"]] = op["value"]
        return 200, item

    def filtered(self, items: list[dict], request: Request) -> list[dict]:
        conditions = parse_conditions(request.arg("conditions")) if request.arg("conditions") else []
        children = parse_conditions(request.arg("childConditions")) if request.arg("childConditions") else []
        out = [i for i in items if all(holds(lookup(i, p), op, v) for p, op, v in conditions)]
        if children:
            out = [i for i in out if self.child_match(i, children)]
        return out

    @staticmethod
    def child_match(item: dict, clauses: list[tuple[str, str, Any]]) -> bool:
        """Child conditions hold together for one child (one communication item)."""
        lists = {p.split("/", 1)[0] for p, _, _ in clauses}
        for name in lists:
            if not any(all(holds(lookup({name: child}, p), op, v) for p, op, v in clauses if p.startswith(name + "/"))
                       for child in item.get(name) or []):
                return False
        return True

    def page(self, request: Request, items: list[dict]) -> Response:
        number = int(request.arg("page") or 1)
        size = min(int(request.arg("pageSize") or 25), 1000)
        last = max(1, -(-len(items) // size))
        links = []
        if number < last:
            links.append(f'<{self.page_url(request, number + 1)}>; rel="next"')
        links.append(f'<{self.page_url(request, last)}>; rel="last"')
        return json_response(200, items[(number - 1) * size:number * size], {"Link": ", ".join(links)})

    @staticmethod
    def page_url(request: Request, number: int) -> str:
        params = {k: v[0] for k, v in request.params().items()}
        params["page"] = str(number)
        return f"{request.base}{request.path}?{urlencode(params)}"
