"""When a termination is due: the tenant's zone, DST included."""
import datetime as dt

import pytest

from connector import config
from connector.model import Termination
from connector.reconcile.schedule import due_at
from tests.helpers import utc

TENANT = config.parse({"tenant": [{"id": "contoso", "timezone": "America/Chicago", "provider": [{"type": "fake"}]}]}).tenants[0]


def term(date, time=None, kind="voluntary"):
    return Termination("contoso", "E1", "a@contoso.com", termination_date=date, termination_time=time, kind=kind)


@pytest.mark.parametrize("date, time, kind, expected", [
    (dt.date(2026, 3, 7), None, "voluntary", utc(2026, 3, 7, 23, 0)),     # CST, UTC-6
    (dt.date(2026, 3, 8), None, "voluntary", utc(2026, 3, 8, 22, 0)),     # spring forward: CDT, UTC-5
    (dt.date(2026, 3, 8), dt.time(2, 30), "voluntary", utc(2026, 3, 8, 8, 30)),  # 02:30 does not exist: 03:30 CDT
    (dt.date(2026, 11, 1), dt.time(1, 30), "voluntary", utc(2026, 11, 1, 6, 30)),  # happens twice: the first
    (dt.date(2026, 11, 1), None, "voluntary", utc(2026, 11, 1, 23, 0)),   # fall back: CST again
    (dt.date(2026, 11, 1), None, "immediate", utc(2026, 11, 1, 5, 0)),    # immediate: the start of its date
    (dt.date(2026, 11, 1), dt.time(9, 15), "immediate", utc(2026, 11, 1, 15, 15)),  # an explicit time wins
])
def test_due_at_in_the_tenant_zone(date, time, kind, expected):
    assert due_at(term(date, time, kind), TENANT) == expected
