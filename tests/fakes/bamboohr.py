"""A stateful BambooHR for `responses`: employees with an employment-status history.

Every request is first checked against the published OpenAPI description
(the repo's copy, `tests/specs/bamboohr-openapi.yaml.gz`): a wrong path, a missing or malformed
parameter or body raises `SpecViolation` inside the caller and is recorded in
`violations`, so it fails the test instead of getting an answer the real service
would never give. Like BambooHR, the fake hides future-dated status rows unless
`onlyCurrent=false`, keeps `terminationDate` after a rehire, answers XML unless
asked for JSON, and silently leaves out report fields it does not know.
"""
from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import responses
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest
from openapi_core.exceptions import OpenAPIError

from tests.contract.specs import openapi_dict

SPEC = "bamboohr-openapi.yaml"
BASE_URL = "https://contoso.bamboohr.com"
API_KEY = "bamboo-test-key-4f1c"
START = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.timezone.utc)
NO_DATE = "0000-00-00"


class SpecViolation(AssertionError):
    """A request the BambooHR API description does not allow."""


@functools.cache
def spec() -> OpenAPI:
    return OpenAPI.from_dict(openapi_dict(SPEC))


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


class BambooHRFake:
    def __init__(self, rsps: responses.RequestsMock, base_url: str = BASE_URL, api_key: str = API_KEY):
        self.base_url = base_url
        self.api_key = api_key
        self.now = START
        self.employees: dict[int, Employee] = {}
        self.requests: list = []
        self.violations: list[str] = []
        self.queued: list[tuple[int, dict, str]] = []
        anything = re.compile(re.escape(base_url) + r"/.*")
        for method in (responses.GET, responses.POST):
            rsps.add_callback(method, anything, callback=self._answer)

    # HR actions; each one stamps lastChanged, as an edit in BambooHR does.

    @property
    def today(self) -> dt.date:
        return self.now.date()

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)

    def hire(self, number: str, email: str, first: str, last: str, supervisor_email: str = "",
             on: dt.date | None = None, **custom: str) -> int:
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
        self.queued.append((status, headers or {}, body))

    def report(self, only_current: bool) -> dict[int, dict]:
        return {e.id: e.values(self.today, only_current) for e in self.employees.values() if not e.deleted}

    def _edit(self, eid: int) -> Employee:
        self.now += dt.timedelta(seconds=1)
        self.employees[eid].last_changed = self.now
        return self.employees[eid]

    # HTTP

    def _answer(self, request):
        self.requests.append(request)
        try:
            spec().validate_request(RequestsOpenAPIRequest(request))
        except OpenAPIError as e:
            self.violations.append(f"{request.method} {request.url}: {e}")
            raise SpecViolation(self.violations[-1]) from e
        expected = "Basic " + base64.b64encode(f"{self.api_key}:x".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return 401, {}, ""
        if self.queued:
            return self.queued.pop(0)
        url = urlsplit(request.url)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if (request.method, url.path) == ("GET", "/api/v1/employees/changed"):
            return self._changed(request, query)
        if (request.method, url.path) == ("POST", "/api/v1/reports/custom"):
            return self._custom_report(request, query)
        self.violations.append(f"the fake does not implement {request.method} {url.path}")
        raise SpecViolation(self.violations[-1])

    def _changed(self, request, query):
        if "application/json" not in request.headers.get("Accept", ""):
            return 200, {"Content-Type": "application/xml"}, "<employees/>"
        since = dt.datetime.fromisoformat(query["since"])
        changed = {str(e.id): {"id": str(e.id),
                               "action": "Deleted" if e.deleted else "Inserted" if e.created > since else "Updated",
                               "lastChanged": e.last_changed.isoformat(timespec="seconds")}
                   for e in self.employees.values() if e.last_changed > since}
        latest = max((c["lastChanged"] for c in changed.values()), default=query["since"])
        return 200, {"Content-Type": "application/json"}, json.dumps({"latest": latest, "employees": changed or []})

    def _custom_report(self, request, query):
        if request.headers.get("Content-Type") != "application/json":
            return 400, {}, "Malformed XML"          # BambooHR parses anything else as XML
        if query.get("format", "").lower() != "json":
            return 404, {}, ""
        body = json.loads(request.body)
        ids = (body.get("filters") or {}).get("employeeIds")
        everyone = self.report(query.get("onlyCurrent") != "false")
        company_fields = {f for row in everyone.values() for f in row}
        known = [f for f in body["fields"] if f in company_fields]
        report = {"title": body.get("title", ""),
                  "fields": [{"id": f, "type": "text", "name": f} for f in known],
                  "employees": [{"id": row["id"], **{f: row.get(f) for f in known}}
                                for eid, row in everyone.items() if ids is None or eid in ids]}
        return 200, {"Content-Type": "application/json"}, json.dumps(report)


def _last_termination(employee: Employee) -> int:
    return max(i for i, (_, status) in enumerate(employee.history) if status == "Terminated")
