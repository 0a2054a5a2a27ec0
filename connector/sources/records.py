"""Turn one raw HR record (a CSV row, a JSON object) into a Termination.

Shared by every source so that dates, times, kinds, field renames and the
limits on hostile input behave the same whichever feed they come from. `fields`
maps our names to the feed's own (`{"employee_id": "Employee Number"}`), so
real exports work without code. A value that is not short plain text (a nested
object, a megabyte of name, control or bidi-override characters that would
land in a directory, a log line or an auto-reply) rejects its record, and so
does a date outside 1970..2100: a year 9999 would overflow later arithmetic,
and no real leaving date is there.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Mapping

from pydantic import AfterValidator

from ..config import PluginOptions, parse_hhmm
from ..errors import InputRejected
from ..model import KINDS, Termination

FIELDS = ("employee_id", "email", "first_name", "last_name", "manager_email",
          "termination_date", "termination_time", "kind", "ticket")
REQUIRED = ("employee_id", "email", "termination_date")
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
MAX_LENGTH = {"employee_id": 64, "email": 254, "manager_email": 254, "first_name": 128, "last_name": 128,
              "termination_date": 32, "termination_time": 16, "kind": 16, "ticket": 64}
# C0 and C1 controls, line and paragraph separators, bidi embeddings, overrides and isolates, lone surrogates
UNSAFE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
EARLIEST, LATEST = dt.date(1970, 1, 1), dt.date(2100, 12, 31)


def _fields(value: dict) -> dict:
    unknown = set(value) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown termination field(s): {', '.join(sorted(unknown))} (known: {', '.join(FIELDS)})")
    return value


class FeedOptions(PluginOptions):
    """What every HR feed's block has: `fields`, our field name -> the feed's, for exports with other names."""

    fields: Annotated[dict[str, str], AfterValidator(_fields)] = {}


def parse_date(text: str) -> dt.date:
    text = text.strip()
    for fmt in ("%Y-%m-%d", "%m/%d/%Y"):
        try:
            date = dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
        if not EARLIEST <= date <= LATEST:
            raise ValueError(f"termination_date {text!r} is outside {EARLIEST}..{LATEST}")
        return date
    raise ValueError(f"termination_date {text!r} is not a date (YYYY-MM-DD)")


def label(value: Any) -> str:
    """A record's id as it may appear in a `where`: short plain text, else '?'."""
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    return text if text and len(text) <= 64 and not UNSAFE_RE.search(text) else "?"


def _text(record: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, str]:
    """Every field as stripped plain text ('' when absent); ValueError naming the feed's field otherwise."""
    out = {}
    for name, column in names.items():
        value = record.get(column)
        if value is None:
            out[name] = ""
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError(f"{column} is not text")
        text = str(value).strip()
        if len(text) > MAX_LENGTH[name]:
            raise ValueError(f"{column} is {len(text)} characters long; the limit is {MAX_LENGTH[name]}")
        if UNSAFE_RE.search(text):
            raise ValueError(f"{column} contains control or bidi-override characters")
        out[name] = text
    return out


def _ids(record: Mapping[str, Any], names: Mapping[str, str], tenant: str) -> tuple[str, ...]:
    """The termination a rejected record was about, when its employee id itself is readable."""
    try:
        employee = _text(record, {"employee_id": names["employee_id"]})["employee_id"]
    except ValueError:
        return ()
    return (f"{tenant}/{employee}",) if employee else ()


def _email(value: dict[str, str], names: Mapping[str, str], name: str) -> str:
    email = value[name].lower()
    if email and not EMAIL_RE.fullmatch(email):
        raise ValueError(f"{names[name]} {value[name]!r} is not an email address")
    return email


def to_termination(record: Mapping[str, Any], *, tenant: str, source: str, where: str,
                   fields: Mapping[str, str] | None = None) -> Termination:
    """Validate and convert; raise InputRejected naming `where` (file:line, or a record id)."""
    names = {f: (fields or {}).get(f, f) for f in FIELDS}
    try:
        value = _text(record, names)
        for name in REQUIRED:
            if not value[name]:
                raise ValueError(f"{names[name]} is empty")
        email, manager = _email(value, names, "email"), _email(value, names, "manager_email")
        date = parse_date(value["termination_date"])
        time = parse_hhmm(value["termination_time"]) if value["termination_time"] else None
        kind = value["kind"].lower() or "voluntary"
        if kind not in KINDS:
            raise ValueError(f"{names['kind']} must be voluntary or immediate, got {kind!r}")
    except ValueError as e:
        raise InputRejected(str(e), where, ids=_ids(record, names, tenant)) from None
    return Termination(tenant=tenant, employee_id=value["employee_id"], email=email,
                       first_name=value["first_name"], last_name=value["last_name"], manager_email=manager,
                       termination_date=date, termination_time=time, kind=kind, source=source,
                       ticket=value["ticket"])


def to_active(record: Mapping[str, Any], *, tenant: str, source: str, where: str,
              fields: Mapping[str, str] | None = None) -> Termination | None:
    """A person the feed says is not leaving (a cancellation, a rehire); None without an employee id."""
    names = {f: (fields or {}).get(f, f) for f in ("employee_id", "email", "first_name", "last_name")}
    try:
        value = _text(record, names)
        email = value["email"].lower()
    except ValueError as e:
        raise InputRejected(str(e), where, ids=_ids(record, names, tenant)) from None
    if not value["employee_id"]:
        return None    # nothing the engine could have on file for this person
    return Termination(tenant=tenant, employee_id=value["employee_id"], email=email,
                       first_name=value["first_name"], last_name=value["last_name"], source=source, active=True)
