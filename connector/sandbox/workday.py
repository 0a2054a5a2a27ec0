"""Workday Report-as-a-Service: one custom report of terminations, run on every request.

As in Workday: the integration system user signs in with HTTP Basic (`USER` or
`USER@TENANT`); the report answers XML unless asked for `format=json`; its columns are
the report's own aliases (`rename` is someone editing the report); a field with no value
is left out of the entry, not sent empty; dates are `xs:date` with the tenant's UTC offset
(`2026-03-13-07:00`); a rescinded termination drops out of the report. There is no
machine-readable description of RaaS to check requests against: the path, the format and
the credentials are what is checked.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
from dataclasses import dataclass

from .web import Request, Response, System, json_response, retry_after_header, text_response

#: our name -> the report's alias: the aliases the connector expects by default, and two it ignores
COLUMNS = {"employee_id": "Employee_ID", "worker": "Worker", "first_name": "First_Name", "last_name": "Last_Name",
           "email": "Work_Email", "manager_email": "Manager_Email", "termination_date": "Termination_Date",
           "reason": "Primary_Termination_Reason"}
REPORT_PATH = ("ccx", "service", "customreport2")


@dataclass
class Worker:
    employee_id: str
    first: str
    last: str
    email: str = ""
    manager_email: str = ""
    termination: dt.date | None = None
    reason: str = ""

    def entry(self, columns: dict[str, str], offset: str) -> dict[str, str]:
        values = {"employee_id": self.employee_id, "worker": f"{self.first} {self.last}", "first_name": self.first,
                  "last_name": self.last, "email": self.email, "manager_email": self.manager_email,
                  "termination_date": f"{self.termination.isoformat()}{offset}" if self.termination else "",
                  "reason": self.reason}
        return {columns[k]: v for k, v in values.items() if v and k in columns}


class Workday(System):
    name = "workday"

    def __init__(self, tenant: str = "contoso", owner: str = "ISU_Offboard", report: str = "Terminations",
                 username: str = "ISU_Offboard", password: str = "wd-sandbox-password", offset: str = "-07:00"):
        super().__init__()
        self.tenant, self.owner, self.report = tenant, owner, report
        self.username, self.password, self.offset = username, password, offset
        self.columns = dict(COLUMNS)
        self.workers: dict[str, Worker] = {}
        self.queued: list[Response] = []

    def report_path(self) -> str:
        return "/" + "/".join((*REPORT_PATH, self.tenant, self.owner, self.report))

    # -- HR actions ---------------------------------------------------------------------------
    def hire(self, employee_id: str, first: str, last: str, email: str = "", manager_email: str = "") -> Worker:
        with self.lock:
            worker = self.workers[employee_id] = Worker(employee_id, first, last, email, manager_email)
        return worker

    def terminate(self, employee_id: str, on: dt.date, reason: str = "Terminate Employee > Voluntary > Resignation"):
        with self.lock:
            worker = self.workers[employee_id]
            worker.termination, worker.reason = on, reason

    def rescind(self, employee_id: str) -> None:
        with self.lock:
            worker = self.workers[employee_id]
            worker.termination, worker.reason = None, ""

    def rename(self, ours: str, alias: str) -> None:
        """Someone edits the report and renames a column."""
        with self.lock:
            self.columns[ours] = alias

    def queue(self, status: int, body: str = "", headers: dict | None = None) -> None:
        """Answer the next request with this instead of the report."""
        with self.lock:
            self.queued.append(Response(status, headers or {}, body.encode()))

    def entries(self) -> list[dict]:
        return [w.entry(self.columns, self.offset) for w in self.workers.values() if w.termination]

    # -- HTTP ---------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        with self.lock:
            self.calls.append((self.name, request.method, request.path))
            wait = self.knobs.throttled(self.tenant)
            if wait is not None:
                return Response(429, retry_after_header(wait))
            if request.method != "GET" or request.path != self.report_path():
                return text_response(404, "Not Found")
            if not self._signed_in(request):
                return Response(401, {"WWW-Authenticate": 'Basic realm="Workday"'})
            if self.queued:
                return self.queued.pop(0)
            fmt = request.arg("format")
            if fmt == "json":
                return json_response(200, {"Report_Entry": self.entries()})
            if fmt not in (None, "simplexml", "xml"):
                return text_response(400, f"Invalid format: {fmt}")
            return text_response(200, self._xml(), "application/xml")

    def _signed_in(self, request: Request) -> bool:
        scheme, _, encoded = (request.headers.get("Authorization") or "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return False
        return scheme == "Basic" and user in (self.username, f"{self.username}@{self.tenant}") \
            and password == self.password

    def _xml(self) -> str:
        rows = "".join("<wd:Report_Entry>" + "".join(f"<wd:{k}>{html.escape(v)}</wd:{k}>" for k, v in e.items())
                       + "</wd:Report_Entry>" for e in self.entries())
        return f'<?xml version="1.0" encoding="UTF-8"?><wd:Report_Data xmlns:wd="urn:com.workday.report/' \
               f'{self.report}">{rows}</wd:Report_Data>'
