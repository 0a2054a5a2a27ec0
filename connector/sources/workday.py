"""Workday: a Report-as-a-Service custom report, read whole as JSON on every pull.

RaaS has no change cursor and a termination report is small, so every pull is a
full read (`complete=True`): a rescinded termination drops out of the report and
the engine cancels it. The column names are the report's own aliases; `fields`
maps them. A required column missing from every entry means someone edited the
report (renamed an alias), so the whole report is refused naming the column
instead of every row being rejected one by one. An empty report is believable:
a week without leavers is normal.
"""
from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import AfterValidator

from .. import http
from ..config import Duration, HttpsUrl, SecretRef
from ..errors import InputRejected, SourceError
from .base import Pull, Source, fetch_json
from .records import REQUIRED, FeedOptions, to_termination

DEFAULT_FIELDS = {"employee_id": "Employee_ID", "email": "Work_Email", "first_name": "First_Name",
                  "last_name": "Last_Name", "manager_email": "Manager_Email",
                  "termination_date": "Termination_Date"}
ZONED_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:Z|[+-]\d{2}:\d{2})$")   # Workday's xs:date "2026-03-31-07:00"


def _report_url(url: str) -> str:
    """Accept a RaaS URL with or without `format=json`; refuse any other format. Prompts may repeat."""
    parts = urlsplit(url)
    if "/ccx/service/customreport2/" not in parts.path:
        raise ValueError("not a Workday RaaS URL (https://HOST/ccx/service/customreport2/TENANT/OWNER/REPORT)")
    query = parse_qsl(parts.query, keep_blank_values=True)
    formats = {v for k, v in query if k == "format"}
    if formats - {"json"}:
        raise ValueError(f"format must be json, got {', '.join(sorted(formats))}")
    return urlunsplit(parts._replace(query=urlencode(query if formats else query + [("format", "json")])))


class WorkdayOptions(FeedOptions):
    url: Annotated[HttpsUrl, AfterValidator(_report_url)]   # .../ccx/service/customreport2/TENANT/OWNER/REPORT?format=json
    username: str                                           # the integration system user
    password: SecretRef
    timeout: Duration = 120.0                               # read timeout: RaaS runs the report on request


class WorkdaySource(Source):
    type = "workday"
    options_model = WorkdayOptions

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields = {**DEFAULT_FIELDS, **self.options.fields}
        self.session = http.session()

    def pull(self, since: str | None = None) -> Pull:
        entries = self._entries()
        out = Pull(complete=True)
        date = self.fields["termination_date"]
        for i, entry in enumerate(entries, 1):
            value = entry.get(date)
            match = ZONED_DATE.match(value) if isinstance(value, str) else None
            record = {**entry, date: match.group(1)} if match else entry
            try:
                out.terminations.append(to_termination(record, tenant=self.tenant.id, source=self.name,
                                                       fields=self.fields, where=f"{self.where}: entry {i}"))
            except InputRejected as e:
                out.rejected.append(e)
        return out

    def check_online(self) -> None:
        self._entries()

    def _entries(self) -> list[dict]:
        body = fetch_json(self.session, "GET", self.options.url, self.where,
                          auth=(self.options.username, self.options.password.reveal()),
                          timeout=(http.TIMEOUT[0], self.options.timeout))
        entries = body.get("Report_Entry") if isinstance(body, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise SourceError("the report has no Report_Entry list of objects", self.where)
        for name in REQUIRED:
            column = self.fields[name]
            if entries and not any(column in e for e in entries):
                raise SourceError(f"no report entry has field {column!r} (our {name}): was the column renamed? "
                                  f"map it with fields.{name}", self.where)
        return entries
