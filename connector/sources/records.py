"""Turn one raw HR record (a CSV row, a JSON object) into a Termination.

Shared by every source so that dates, times, kinds and field renames behave the
same whichever feed they come from. `fields` maps our names to the feed's own
(`{"employee_id": "Employee Number"}`), so real exports work without code.
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
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


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
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            pass
    raise ValueError(f"termination_date {text!r} is not a date (YYYY-MM-DD)")


def to_termination(record: Mapping[str, Any], *, tenant: str, source: str, where: str,
                   fields: Mapping[str, str] | None = None, active: bool = False) -> Termination:
    """Validate and convert; raise InputRejected naming `where` (file:line, or a record id)."""
    names = {f: (fields or {}).get(f, f) for f in FIELDS}

    def get(name: str) -> str:
        value = record.get(names[name])
        return "" if value is None else str(value).strip()

    try:
        for name in REQUIRED:
            if not get(name):
                raise ValueError(f"{names[name]} is empty")
        email = get("email").lower()
        if not EMAIL_RE.match(email):
            raise ValueError(f"{names['email']} {get('email')!r} is not an email address")
        manager = get("manager_email").lower()
        if manager and not EMAIL_RE.match(manager):
            raise ValueError(f"{names['manager_email']} {manager!r} is not an email address")
        date = parse_date(get("termination_date"))
        time = parse_hhmm(get("termination_time")) if get("termination_time") else None
        kind = get("kind").lower() or "voluntary"
        if kind not in KINDS:
            raise ValueError(f"{names['kind']} must be voluntary or immediate, got {kind!r}")
    except ValueError as e:
        employee = get("employee_id")
        raise InputRejected(str(e), where, ids=(f"{tenant}/{employee}",) if employee else ()) from None
    return Termination(tenant=tenant, employee_id=get("employee_id"), email=email,
                       first_name=get("first_name"), last_name=get("last_name"), manager_email=manager,
                       termination_date=date, termination_time=time, kind=kind, source=source,
                       ticket=get("ticket"), active=active)
