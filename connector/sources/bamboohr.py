"""BambooHR: poll `employees/changed` from a cursor, then read those employees in one custom report.

Both paths read employees through the same call, `POST /api/v1/reports/custom`
(the cursor path restricts it with `filters.employeeIds`), so a full pull and a
cursor pull cannot disagree about a person. It is the one /api/v1/ read an API
key may use for every employee, Active and Inactive, in one request, and
`onlyCurrent=false` makes it show future-dated employment-status rows: without
it a termination entered today for next month stays invisible until that day.
BambooHR marks it deprecated in favour of Datasets, but neither Datasets API
documents a way to see future-dated rows, so this is the call that can.

Who is leaving is read from the employment status (`employmentHistoryStatus ==
"Terminated"`), not from `terminationDate` alone: BambooHR keeps the old
termination date after a rehire. Everyone else read is reported as
`active=True` ("not leaving"), which is how a cancelled termination or a rehire
reaches the engine on the cursor path, where absence means nothing.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Any

from .. import http
from ..config import Duration, HttpsUrl, SecretRef
from ..errors import InputRejected, SourceError
from ..model import Termination
from .base import Pull, Source, fetch_json
from .records import FeedOptions, label, to_active, to_termination

DEFAULT_FIELDS = {"employee_id": "employeeNumber", "email": "workEmail", "first_name": "firstName",
                  "last_name": "lastName", "manager_email": "supervisorEmail",
                  "termination_date": "terminationDate"}
STATUS_FIELDS = ("employmentHistoryStatus", "lastChanged")
TERMINATED = "Terminated"
NO_DATE = "0000-00-00"     # how BambooHR's JSON writes a date that is not set
EMPLOYEE_ID = re.compile(r"[0-9]{1,18}")


class BambooHROptions(FeedOptions):
    base_url: HttpsUrl         # https://COMPANY.bamboohr.com (the /api/v1/ paths are added)
    api_key: SecretRef         # HTTP Basic user; the password is 'x'
    timeout: Duration = 30.0   # read timeout of one request


class BambooHRSource(Source):
    type = "bamboohr"
    options_model = BambooHROptions

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields = {**DEFAULT_FIELDS, **self.options.fields}
        self.report_fields = sorted({*self.fields.values(), *STATUS_FIELDS})
        self.session = http.session()
        self.session.headers["Accept"] = "application/json"   # BambooHR answers XML otherwise

    def pull(self, since: str | None = None) -> Pull:
        if since is None:
            employees = self._report()
            if not employees:
                raise SourceError("a full read returned no employees at all; an empty company is not believable",
                                  self.where)
            return self._pull(employees, _latest(employees, self.where), complete=True)
        changed = self._call("GET", "/api/v1/employees/changed", params={"since": since})
        ids = _changed_ids(changed, self.where)
        if not ids:
            return Pull(cursor=since, complete=False)
        latest = changed.get("latest")
        return self._pull(self._report(ids), _stamp(latest, self.where) if latest else since, complete=False)

    def check_online(self) -> None:
        self._call("GET", "/api/v1/employees/changed",
                   params={"since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})

    def _pull(self, employees: list[dict], cursor: str | None, complete: bool) -> Pull:
        out = Pull(cursor=cursor, complete=complete)
        for employee in employees:
            try:
                termination = self._termination(employee)
            except InputRejected as e:
                out.rejected.append(e)
                continue
            if termination:
                out.terminations.append(termination)
        return out

    def _termination(self, employee: dict) -> Termination | None:
        record = {k: None if v == NO_DATE else v for k, v in employee.items()}
        convert = to_termination if record.get("employmentHistoryStatus") == TERMINATED else to_active
        return convert(record, tenant=self.tenant.id, source=self.name, fields=self.fields,
                       where=f"{self.where}: employee {label(employee['id'])}")

    def _report(self, ids: list[int] | None = None) -> list[dict]:
        request = {"title": "offboard-connector", "fields": self.report_fields}
        if ids:
            request["filters"] = {"employeeIds": ids}
        body = self._call("POST", "/api/v1/reports/custom", params={"format": "json", "onlyCurrent": "false"},
                          json=request)
        employees = body.get("employees") if isinstance(body, dict) else None
        if not isinstance(employees, list) or not all(isinstance(e, dict) and e.get("id") for e in employees):
            raise SourceError("the custom report is not what the schema says (no `employees` list of objects "
                              "with an `id`)", self.where)
        for name in self.report_fields:
            if employees and not any(name in e for e in employees):
                raise SourceError(f"BambooHR left out field {name!r}: it does not exist or this API key may "
                                  f"not see it (check `fields` and the key's permissions)", self.where)
        return employees

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return fetch_json(self.session, method, self.options.base_url.rstrip("/") + path, self.where,
                          auth=(self.options.api_key.reveal(), "x"),
                          timeout=(http.TIMEOUT[0], self.options.timeout), **kwargs)


def _changed_ids(body: Any, where: str) -> list[int]:
    """Employee ids from `employees/changed`; deleted ones are left to the next full pull."""
    changed = body.get("employees") if isinstance(body, dict) else None
    if changed == []:          # PHP writes an empty map as []
        return []
    if not isinstance(changed, dict) or not all(EMPLOYEE_ID.fullmatch(k) and isinstance(v, dict)
                                                for k, v in changed.items()):
        raise SourceError("employees/changed is not what the schema says (no `employees` map of ids)", where)
    return sorted(int(k) for k, v in changed.items() if v.get("action") != "Deleted")


def _stamp(value: Any, where: str) -> str:
    """A `lastChanged` or `latest` value, the next poll's `since`: an ISO 8601 date-time with its offset."""
    try:
        if isinstance(value, str) and len(value) <= 64 and dt.datetime.fromisoformat(value).tzinfo:
            return value
    except ValueError:
        pass
    raise SourceError("a lastChanged value is not an ISO 8601 date-time with its offset", where)


def _latest(employees: list[dict], where: str) -> str | None:
    """The newest `lastChanged` read: the cursor from which the next poll starts."""
    stamps = [_stamp(e["lastChanged"], where) for e in employees if e.get("lastChanged")]
    return max(stamps, key=dt.datetime.fromisoformat) if stamps else None
