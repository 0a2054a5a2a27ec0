"""BambooHR source against the sandbox's stateful, spec-checked BambooHR, behind responses and over HTTPS."""
from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
import requests

from connector import config
from connector.errors import ConfigError, SourceError
from connector.sources.bamboohr import BambooHRSource
from connector.sandbox.bamboohr import BambooHR
from connector.sandbox.web import Sandbox
from tests.sandboxes import MODES

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bamboohr"
SANDBOX_MODES = MODES


@pytest.fixture
def fake(reach):
    """The sandbox's BambooHR; a request the spec does not allow fails the test (`reach`)."""
    hr = BambooHR()
    hr.url = reach(Sandbox(hr), {"bamboohr": hr.vendor_url})["bamboohr"]
    return hr


@pytest.fixture
def sleeps(monkeypatch):
    """Retry-After waits, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(time, "sleep", waited.append)
    return waited


@pytest.fixture
def company(fake):
    """Three people; Kenji reports to Priya."""
    ids = {"priya": fake.hire("1001", "Priya.Natarajan@contoso.com", "Priya", "Natarajan"),
           "kenji": fake.hire("1042", "kenji.watanabe@contoso.com", "Kenji", "Watanabe",
                              supervisor_email="priya.natarajan@contoso.com"),
           "ana": fake.hire("1077", "ana.souza@contoso.com", "Ana", "Souza")}
    fake.advance(days=1)
    return ids


def make_source(monkeypatch, fake, key: str | None = None, **options) -> BambooHRSource:
    """Built through config.parse and the entry point, as the daemon builds it."""
    monkeypatch.setenv("CONTOSO_BAMBOOHR_KEY", key or fake.api_key)
    block = {"type": "bamboohr", "base_url": fake.url, "api_key": "env:CONTOSO_BAMBOOHR_KEY", **options}
    tenant = config.parse({"tenant": [{"id": "contoso", "source": [block], "provider": [{"type": "fake"}]}]}).tenants[0]
    plugin = tenant.sources[0]
    return BambooHRSource(plugin.name, plugin.options, tenant, plugin.where)


@pytest.fixture
def source(monkeypatch, fake):
    return make_source(monkeypatch, fake)


def by_id(pull) -> dict:
    return {t.employee_id: t for t in pull.terminations}


def leaving(pull) -> dict:
    return {t.employee_id: t for t in pull.terminations if not t.active}


def report_bodies(fake) -> list[dict]:
    return [json.loads(r.body) for r in fake.requests if r.url.split("?")[0].endswith("/reports/custom")]


def test_full_pull_maps_leavers_and_reports_everyone_else_active(fake, company, source):
    fake.terminate(company["kenji"], on=fake.today)
    pull = source.pull()
    assert pull.complete and not pull.rejected
    kenji = by_id(pull)["1042"]
    assert (kenji.email, kenji.first_name, kenji.last_name, kenji.manager_email, kenji.termination_date,
            kenji.tenant, kenji.source, kenji.active) == (
        "kenji.watanabe@contoso.com", "Kenji", "Watanabe", "priya.natarajan@contoso.com", fake.today,
        "contoso", "bamboohr", False)
    assert {t.employee_id for t in pull.terminations if t.active} == {"1001", "1077"}
    assert pull.cursor == fake.employees[company["kenji"]].last_changed.isoformat(timespec="seconds")


def test_cursor_poll_reads_only_what_changed(fake, company, source):
    cursor = source.pull().cursor
    fake.terminate(company["ana"], on=fake.today + dt.timedelta(days=3))
    pull = source.pull(cursor)
    assert not pull.complete
    assert list(by_id(pull)) == ["1077"] and not by_id(pull)["1077"].active
    assert report_bodies(fake)[-1]["filters"] == {"employeeIds": [company["ana"]]}
    asked = len(fake.requests)
    quiet = source.pull(pull.cursor)
    assert (quiet.terminations, quiet.cursor) == ([], pull.cursor)
    assert len(fake.requests) == asked + 1           # only employees/changed: no report for nobody


def test_full_pull_and_cursor_polls_agree(fake, company, source):
    first = source.pull()
    state, cursor = by_id(first), first.cursor
    newcomer = fake.hire("1200", "lina.berg@contoso.com", "Lina", "Berg")
    events = [lambda: fake.terminate(company["kenji"], on=fake.today + dt.timedelta(days=10)),
              lambda: fake.terminate(newcomer, on=fake.today),
              lambda: fake.change_termination_date(company["kenji"], fake.today + dt.timedelta(days=2)),
              lambda: fake.terminate(company["ana"], on=fake.today - dt.timedelta(days=1)),
              lambda: fake.cancel_termination(newcomer),
              lambda: fake.advance(days=5)]
    for event in events:
        event()
        pull = source.pull(cursor)
        state.update(by_id(pull))
        cursor = pull.cursor
    assert state == by_id(source.pull())


def test_future_dated_termination_is_visible_before_its_day(fake, company, source):
    last_day = fake.today + dt.timedelta(days=30)
    fake.terminate(company["kenji"], on=last_day)
    assert fake.report(only_current=True)[company["kenji"]]["employmentHistoryStatus"] == "Full-Time"
    assert leaving(source.pull())["1042"].termination_date == last_day
    fake.advance(days=31)
    assert leaving(source.pull())["1042"].termination_date == last_day


def test_changed_date_reaches_the_cursor_poll(fake, company, source):
    fake.terminate(company["kenji"], on=fake.today + dt.timedelta(days=14))
    cursor = source.pull().cursor
    fake.change_termination_date(company["kenji"], fake.today + dt.timedelta(days=7))
    assert leaving(source.pull(cursor))["1042"].termination_date == fake.today + dt.timedelta(days=7)


def test_cancelled_termination_reports_the_person_active(fake, company, source):
    fake.terminate(company["ana"], on=fake.today + dt.timedelta(days=20))
    cursor = source.pull().cursor
    fake.cancel_termination(company["ana"])
    polled = by_id(source.pull(cursor))
    assert polled["1077"].active and polled["1077"].termination_date is None
    assert by_id(source.pull())["1077"].active


def test_rehire_after_termination_reports_the_person_active(fake, company, source):
    fake.terminate(company["kenji"], on=fake.today - dt.timedelta(days=40))
    cursor = source.pull().cursor
    fake.rehire(company["kenji"], on=fake.today)
    # BambooHR keeps the old termination date after a rehire: only the status tells.
    assert fake.report(only_current=False)[company["kenji"]]["terminationDate"] != "0000-00-00"
    assert by_id(source.pull(cursor))["1042"].active
    assert by_id(source.pull())["1042"].active


def test_deleted_employee_is_left_to_the_full_pull(fake, company, source):
    cursor = source.pull().cursor
    fake.delete(company["ana"])
    assert source.pull(cursor).terminations == []
    assert "1077" not in by_id(source.pull())


def test_recorded_shapes(fake, source):
    fake.queue(200, (FIXTURES / "custom_report.json").read_text())
    pull = source.pull()
    assert {k: (t.active, t.termination_date, t.email) for k, t in by_id(pull).items()} == {
        "1001": (True, None, "priya.natarajan@contoso.com"),
        "1042": (False, dt.date(2026, 2, 27), "kenji.watanabe@contoso.com"),
        "1077": (False, dt.date(2026, 3, 31), "ana.souza@contoso.com"),
        "0988": (True, None, "tomas.ibarra@contoso.com")}        # rehired; the contractor without a number is skipped
    [rejected] = pull.rejected
    assert "employee 44" in str(rejected) and "workEmail is empty" in str(rejected)
    assert pull.cursor == "2026-03-02T08:59:12+00:00"
    fake.queue(200, (FIXTURES / "changed.json").read_text())
    fake.queue(200, (FIXTURES / "custom_report.json").read_text())
    assert source.pull("2026-03-01T00:00:00+00:00").cursor == "2026-03-02T08:59:12+00:00"
    assert report_bodies(fake)[-1]["filters"] == {"employeeIds": [41, 42]}     # 46 was deleted


def test_fields_remap_reads_the_number_from_a_custom_field(monkeypatch, fake):
    eid = fake.hire("", "kenji.watanabe@contoso.com", "Kenji", "Watanabe", customADNumber="E1042")
    fake.terminate(eid, on=fake.today)
    source = make_source(monkeypatch, fake, fields={"employee_id": "customADNumber"})
    assert list(leaving(source.pull())) == ["E1042"]


def test_field_the_report_leaves_out_is_a_source_error(monkeypatch, fake, company):
    source = make_source(monkeypatch, fake, fields={"employee_id": "customADNumbr"})
    with pytest.raises(SourceError, match="customADNumbr"):
        source.pull()


def test_full_read_of_nobody_is_a_source_error(fake, source):
    with pytest.raises(SourceError, match="no employees"):
        source.pull()


def test_short_429_is_waited_out(fake, company, source, sleeps):
    fake.queue(429, "", {"Retry-After": "4"})
    assert len(source.pull().terminations) == 3
    assert sleeps == [4.0]


def test_long_429_is_a_source_error_naming_the_wait(fake, company, source, sleeps):
    fake.queue(429, "", {"Retry-After": "3600"})
    with pytest.raises(SourceError, match="3600"):
        source.pull()
    assert (len(fake.requests), sleeps) == (1, [])


def test_401_is_a_config_error(monkeypatch, fake, company):
    with pytest.raises(ConfigError, match="401"):
        make_source(monkeypatch, fake, key="revoked-key").pull()


def test_5xx_is_a_source_error_after_short_retries(fake, company, source, sleeps):
    for _ in range(4):
        fake.queue(503, "Service Unavailable")
    with pytest.raises(SourceError, match="503"):
        source.pull("2026-03-01T00:00:00+00:00")
    assert len(sleeps) == 3


@pytest.mark.parametrize("since, body", [
    ("2026-03-01T00:00:00+00:00", '{"latest": "2026-03-02T08:59:12+00:00"}'),
    ("2026-03-01T00:00:00+00:00", '{"latest": "x", "employees": {"abc": {"action": "Updated"}}}'),
    ("2026-03-01T00:00:00+00:00", "<html>maintenance</html>"),
    (None, '{"title": "offboard-connector", "employees": {"40": {}}}'),
    (None, '{"employees": [{"employeeNumber": "1001"}]}'),
])
def test_body_that_breaks_the_schema_is_a_source_error(fake, company, source, since, body):
    fake.queue(200, body)
    with pytest.raises(SourceError):
        source.pull(since)


def test_check_online_is_one_read(fake, source):
    source.check_online()
    assert [r.method for r in fake.requests] == ["GET"]


@pytest.mark.parametrize("method, path, kwargs", [
    ("GET", "/api/v1/employee/changed", {"params": {"since": "2026-03-01T00:00:00+00:00"}}),
    ("GET", "/api/v1/employees/changed", {}),
    ("GET", "/api/v1/employees/changed", {"params": {"since": "yesterday"}}),
    ("POST", "/api/v1/reports/custom", {"params": {"format": "json"},
                                         "json": {"fields": ["id"], "filters": {"employeeIds": ["41"]}}}),
    ("POST", "/api/v1/reports/custom", {"params": {"format": "json", "onlyCurrent": "no"}, "json": {"fields": []}}),
])
def test_the_sandbox_refuses_requests_the_spec_does_not_allow(fake, method, path, kwargs):
    answer = requests.request(method, fake.url + path, auth=(fake.api_key, "x"), **kwargs)
    assert answer.status_code == 400
    assert len(fake.violations) == 1
    fake.violations.clear()              # the fixture fails any test that leaves one behind


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("since, body", [
    (None, DEEP),
    ("2026-03-01T00:00:00+00:00", '{"latest": ' + DEEP + ', "employees": []}'),
    (None, "<!DOCTYPE html><html><body>Sign in to BambooHR</body></html>"),
    ("2026-03-01T00:00:00+00:00", '{"latest": {"$date": 1}, "employees": {"41": {"action": "Updated"}}}'),
    ("2026-03-01T00:00:00+00:00", '{"latest": "2026-03-02", "employees": {"41": {"action": "Updated"}}}'),
    ("2026-03-01T00:00:00+00:00", r'{"employees": {"\u00b2": {"action": "Updated"}}}'),     # isdigit, not int()
    ("2026-03-01T00:00:00+00:00", '{"employees": {"' + "9" * 5000 + '": {"action": "Updated"}}}'),
], ids=["100000-deep JSON", "deep JSON inside", "200 with HTML", "cursor not text", "cursor without offset",
        "superscript id", "5000-digit id"])
def test_hostile_answer_is_a_source_error_not_a_crash(fake, company, source, since, body):
    fake.queue(200, body)
    with pytest.raises(SourceError):
        source.pull(since)


def test_hostile_employee_rows_are_rejected_one_by_one(fake, company, source):
    fake.terminate(company["kenji"], on=dt.date(9999, 12, 31))
    fake.terminate(company["ana"], on=fake.today)
    fake.employees[company["ana"]].first = "Ana\u202e"
    fake.employees[company["priya"]].email = "p" * 300 + "@contoso.com"    # active, but no less hostile
    pull = source.pull()
    assert pull.terminations == []
    assert sorted((e.where.rsplit(" ", 1)[1], e.message.split()[-1]) for e in pull.rejected) == [
        (str(company["priya"]), "254"), (str(company["kenji"]), "1970-01-01..2100-12-31"), (str(company["ana"]), "characters")]


def test_the_key_never_goes_over_plain_http_even_past_the_config(monkeypatch, fake):
    source = make_source(monkeypatch, fake)
    source.options = source.options.model_construct(**{**dict(source.options), "base_url": "http://contoso.bamboohr.com"})
    with pytest.raises(ConfigError, match="only over https"):
        source.pull()
    assert fake.requests == []
