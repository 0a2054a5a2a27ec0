"""BambooHR: employees with an employment-status history, behind the two calls the source makes.

Every request is first checked against the published OpenAPI description (the copy in
`specs/`, at the company's own `https://COMPANY.bamboohr.com` URL whichever way it
arrived): a wrong path, a missing or malformed parameter or body is recorded in
`violations` and answered 400, instead of getting an answer the real service would never
give. Like BambooHR, it hides future-dated status rows unless `onlyCurrent=false`, keeps
`terminationDate` after a rehire, answers XML unless asked for JSON, parses a body that is
not `application/json` as XML, silently leaves out report fields it does not know, and
answers a rate limit with 429 and Retry-After (503 before September 2026; see
documentation.bamboohr.com, "Planned Changes to the API"). The clock is the sandbox's own
(`now`), so a test moves HR's "today" and the engine's together.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass, field

from .contract import SpecViolation, check_openapi
from .web import Request, Response, System, json_response, retry_after_header, text_response

SPEC = "bamboohr-openapi.yaml"
START = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.timezone.utc)
NO_DATE = "0000-00-00"


@dataclass
class Employee:
    id: int
    number: str
    email: str
    first: str
    last: str
    supervisor_email: str
    created: dt.datetime
    last_changed: dt.datetime
    history: list[tuple[dt.date, str]] = field(default_factory=list)   # employment status rows
    custom: dict[str, str] = field(default_factory=dict)
    deleted: bool = False

    def values(self, today: dt.date, only_current: bool) -> dict[str, str | None]:
        rows = sorted(self.history, key=lambda row: row[0])
        current = [status for day, status in rows if day <= today]
        visible = [row for row in rows if row[0] <= today or not only_current]
        ended = [day for day, status in visible if status == "Terminated"]
        return {"id": str(self.id), "employeeNumber": self.number, "workEmail": self.email or None,
                "firstName": self.first, "lastName": self.last, "supervisorEmail": self.supervisor_email or None,
                "status": "Inactive" if current[-1:] == ["Terminated"] else "Active",
                "employmentHistoryStatus": visible[-1][1] if visible else None,
                "terminationDate": ended[-1].isoformat() if ended else NO_DATE,
                "lastChanged": self.last_changed.isoformat(timespec="seconds"), **self.custom}


class BambooHR(System):
    name = "bamboohr"

    def __init__(self, company: str = "contoso", api_key: str = "bamboo-sandbox-key-4f1c", now: dt.datetime = START):
        super().__init__()
        self.company, self.api_key, self.now = company, api_key, now
        self.url = self.vendor_url        # where a client reaches it: the sandbox server's address over HTTPS
        self.employees: dict[int, Employee] = {}
        self.requests: list[Request] = []
        self.queued: list[Response] = []

    @property
    def vendor_url(self) -> str:
        return f"https://{self.company}.bamboohr.com"

    # -- HR actions; each one stamps lastChanged, as an edit in BambooHR does --------------------
    @property
    def today(self) -> dt.date:
        return self.now.date()

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)

    def hire(self, number: str, email: str, first: str, last: str, supervisor_email: str = "",
             on: dt.date | None = None, **custom: str) -> int:
        with self.lock:
            self.now += dt.timedelta(seconds=1)
            eid = 100 + len(self.employees)
            self.employees[eid] = Employee(eid, number, email, first, last, supervisor_email, self.now, self.now,
                                           [(on or self.today, "Full-Time")], custom)
        return eid

    def terminate(self, eid: int, on: dt.date) -> None:
        self._edit(eid).history.append((on, "Terminated"))

    def change_termination_date(self, eid: int, on: dt.date) -> None:
        employee = self._edit(eid)
        employee.history[_last_termination(employee)] = (on, "Terminated")

    def cancel_termination(self, eid: int) -> None:
        employee = self._edit(eid)
        employee.history.pop(_last_termination(employee))

    def rehire(self, eid: int, on: dt.date) -> None:
        self._edit(eid).history.append((on, "Full-Time"))

    def delete(self, eid: int) -> None:
        self._edit(eid).deleted = True

    def queue(self, status: int, body: str = "", headers: dict | None = None) -> None:
        """Answer the next request with this instead of the state (after checking it against the spec)."""
        with self.lock:
            self.queued.append(Response(status, headers or {}, body.encode()))

    def report(self, only_current: bool) -> dict[int, dict]:
        return {e.id: e.values(self.today, only_current) for e in self.employees.values() if not e.deleted}

    def _edit(self, eid: int) -> Employee:
        with self.lock:
            self.now += dt.timedelta(seconds=1)
            self.employees[eid].last_changed = self.now
            return self.employees[eid]

    # -- HTTP -----------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        with self.lock:
            self.requests.append(request)
            self.calls.append((self.name, request.method, request.path))
            vendor = f"{self.vendor_url}{request.path}" + (f"?{request.query}" if request.query else "")
            try:
                check_openapi(SPEC, request.method, vendor, request.headers, request.body)
            except SpecViolation as e:
                self.violations.append(str(e))
                return text_response(400, str(e))
            expected = "Basic " + base64.b64encode(f"{self.api_key}:x".encode()).decode()
            if request.headers.get("Authorization") != expected:
                return Response(401)
            wait = self.knobs.throttled(self.company)
            if wait is not None:
                return Response(429, retry_after_header(wait))
            if self.queued:
                return self.queued.pop(0)
            if (request.method, request.path) == ("GET", "/api/v1/employees/changed"):
                return self._changed(request)
            if (request.method, request.path) == ("POST", "/api/v1/reports/custom"):
                return self._custom_report(request)
            self.violations.append(f"the sandbox does not implement {request.method} {request.path}")
            return text_response(400, self.violations[-1])

    def _changed(self, request: Request) -> Response:
        if "application/json" not in request.headers.get("Accept", ""):
            return text_response(200, "<employees/>", "application/xml")
        since = dt.datetime.fromisoformat(request.arg("since"))
        changed = {str(e.id): {"id": str(e.id),
                               "action": "Deleted" if e.deleted else "Inserted" if e.created > since else "Updated",
                               "lastChanged": e.last_changed.isoformat(timespec="seconds")}
                   for e in self.employees.values() if e.last_changed > since}
        latest = max((c["lastChanged"] for c in changed.values()), default=request.arg("since"))
        return json_response(200, {"latest": latest, "employees": changed or []})

    def _custom_report(self, request: Request) -> Response:
        if request.headers.get("Content-Type") != "application/json":
            return text_response(400, "Malformed XML")          # BambooHR parses anything else as XML
        if (request.arg("format") or "").lower() != "json":
            return Response(404)
        body = json.loads(request.body)
        ids = (body.get("filters") or {}).get("employeeIds")
        everyone = self.report(request.arg("onlyCurrent") != "false")
        company_fields = {f for row in everyone.values() for f in row}
        known = [f for f in body["fields"] if f in company_fields]
        return json_response(200, {"title": body.get("title", ""),
                                   "fields": [{"id": f, "type": "text", "name": f} for f in known],
                                   "employees": [{"id": row["id"], **{f: row.get(f) for f in known}}
                                                 for eid, row in everyone.items() if ids is None or eid in ids]})


def _last_termination(employee: Employee) -> int:
    return max(i for i, (_, status) in enumerate(employee.history) if status == "Terminated")
