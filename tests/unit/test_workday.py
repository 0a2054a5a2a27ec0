"""Workday RaaS source: field mapping from a realistic report, and reports that cannot be believed."""
from __future__ import annotations

import base64
import datetime as dt
import json
import time
from pathlib import Path

import pytest
import responses

from connector import config
from connector.errors import ConfigError, SourceError
from connector.sources.workday import WorkdaySource

REPORT = Path(__file__).resolve().parents[1] / "fixtures" / "workday" / "terminations.json"
URL = "https://wd5-services1.myworkday.com/ccx/service/customreport2/contoso/ISU_Offboard/Terminations"
FIELDS = {"email": "Email_-_Work", "first_name": "Legal_Name_-_First_Name", "last_name": "Legal_Name_-_Last_Name",
          "manager_email": "Manager_-_Email"}


def make_source(monkeypatch, url: str = URL) -> WorkdaySource:
    monkeypatch.setenv("CONTOSO_WORKDAY_PASSWORD", "wd-secret-91")
    block = {"type": "workday", "url": url, "username": "ISU_Offboard", "password": "env:CONTOSO_WORKDAY_PASSWORD",
             "fields": FIELDS}
    tenant = config.parse({"tenant": [{"id": "contoso", "source": [block], "provider": [{"type": "fake"}]}]}).tenants[0]
    plugin = tenant.sources[0]
    return WorkdaySource(plugin.name, plugin.options, tenant, plugin.where)


@pytest.fixture
def report():
    return json.loads(REPORT.read_text())


@pytest.fixture
def serve():
    with responses.RequestsMock() as rsps:
        def answer(body=None, status=200, text=None):
            rsps.get(URL, status=status, body=text if text is not None else json.dumps(body))
            return rsps
        yield answer


def test_report_entries_map_to_terminations(monkeypatch, serve, report):
    rsps = serve(report)
    pull = make_source(monkeypatch).pull()
    assert pull.complete and pull.cursor is None
    assert [(t.employee_id, t.email, t.first_name, t.last_name, t.manager_email, t.termination_date)
            for t in pull.terminations] == [
        ("21001", "logan.mcneil@contoso.com", "Logan", "McNeil", "teresa.brooks@contoso.com", dt.date(2026, 3, 13)),
        ("21017", "ravi.menon@contoso.com", "Ravi", "Menon", "", dt.date(2026, 4, 1))]
    [rejected] = pull.rejected                     # Jo has no work email: that entry only
    assert "entry 3" in str(rejected) and "Email_-_Work is empty" in str(rejected)
    request = rsps.calls[0].request
    assert "format=json" in request.url
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"ISU_Offboard:wd-secret-91").decode()


def test_renamed_field_fails_the_report_naming_it(monkeypatch, serve, report):
    for entry in report["Report_Entry"]:
        entry["Last_Day_of_Work"] = entry.pop("Termination_Date")
    serve(report)
    with pytest.raises(SourceError, match="'Termination_Date'.*termination_date"):
        make_source(monkeypatch).pull()


def test_empty_report_is_believable(monkeypatch, serve):
    serve({"Report_Entry": []})
    assert make_source(monkeypatch).pull().terminations == []


@pytest.mark.parametrize("text", ['{"Report_Data": []}', '{"Report_Entry": {"Employee_ID": "1"}}',
                                  "<wd:Report_Data/>"])
def test_report_that_breaks_the_shape_is_a_source_error(monkeypatch, serve, text):
    serve(text=text)
    with pytest.raises(SourceError):
        make_source(monkeypatch).pull()


def test_401_is_a_config_error(monkeypatch, serve):
    serve(text="", status=401)
    with pytest.raises(ConfigError, match="401"):
        make_source(monkeypatch).pull()


def test_5xx_is_a_source_error(monkeypatch, serve):
    monkeypatch.setattr(time, "sleep", lambda s: None)
    serve(text="", status=500)
    with pytest.raises(SourceError, match="500"):
        make_source(monkeypatch).pull()


def test_url_is_asked_for_json(monkeypatch):
    assert make_source(monkeypatch).options.url == URL + "?format=json"
    prompts = "?Organizations%21WID=a1&Organizations%21WID=b2&format=json"
    assert make_source(monkeypatch, URL + prompts).options.url == URL + prompts


@pytest.mark.parametrize("url, message", [(URL + "?format=csv", "format must be json"),
                                          ("https://contoso.example/report", "not a Workday RaaS URL")])
def test_bad_report_url_is_a_config_error_at_its_key(monkeypatch, url, message):
    with pytest.raises(ConfigError, match=message) as e:
        make_source(monkeypatch, url)
    assert e.value.where.endswith("tenant[0].source[0].url")


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000,
                                  '{"Report_Entry": [' + "{" * 100_000 + "}" * 100_000 + "]}",
                                  "<!DOCTYPE html><html><title>Workday sign in</title></html>"],
                         ids=["100000-deep JSON", "deep entry", "200 with HTML"])
def test_hostile_answer_is_a_source_error_not_a_crash(monkeypatch, serve, text):
    serve(text=text)
    with pytest.raises(SourceError):
        make_source(monkeypatch).pull()


def test_hostile_entries_are_rejected_one_by_one(monkeypatch, serve, report):
    first, second, third = report["Report_Entry"]
    first["Termination_Date"] = "9999-12-31-07:00"
    second["Termination_Date"] = {"Date": [["2026-04-01"]]}
    third["Email_-_Work"] = "jo.whitfield@contoso.com"
    third["Legal_Name_-_First_Name"] = "Jo\r\nBcc: everyone@contoso.com"
    serve(report)
    pull = make_source(monkeypatch).pull()
    assert pull.terminations == []
    assert [(e.where.rsplit(" ", 1)[1], e.message) for e in pull.rejected] == [
        ("1", "termination_date '9999-12-31' is outside 1970-01-01..2100-12-31"),
        ("2", "Termination_Date is not text"),
        ("3", "Legal_Name_-_First_Name contains control or bidi-override characters")]
