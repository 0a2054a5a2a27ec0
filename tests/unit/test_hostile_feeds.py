"""One tenant's hostile HR input is a reported error for that file, row or source; the pass goes on.

Each attack here used to raise out of the source (csv.Error, OverflowError in `due_at`,
RecursionError) and abort the pass for every tenant, on every pass.
"""
from __future__ import annotations


import pytest

from connector.errors import InputRejected
from connector.reconcile import reconcile
from connector.sources.records import MAX_LENGTH, to_active, to_termination
from connector.store import Store
from tests.fakes.directory import FakeDirectory
from tests.helpers import FAKE_PROVIDER, load, utc, write_config, write_csv

NOW = utc(2026, 11, 23, 23, 30)          # 17:30 in Chicago: past the default revoke_at
HUGE = "x" * (200 << 10)                 # over csv's 128 KiB field limit


def leaver(eid, email, date="2026-11-23", first="Ann"):
    return f"{eid},{email},{first},Lee,,{date},,"


@pytest.fixture
def two_tenants(tmp_path):
    """contoso reads a hostile CSV drop; fabrikam, a good one, through the same pass."""
    fabrikam = (f'[[tenant]]\nid = "fabrikam"\ntimezone = "Europe/Berlin"\n'
                f'[[tenant.source]]\ntype = "csv"\npath = "{tmp_path / "fabrikam" / "*.csv"}"\n')
    cfg = load(write_config(tmp_path, providers=FAKE_PROVIDER + fabrikam + FAKE_PROVIDER))
    write_csv(tmp_path / "fabrikam", "feed.csv", [leaver("F1", "fay@fabrikam.com")])
    directories = {t.id: FakeDirectory("ad", {}, t, accounts={
        "u1": FakeDirectory.account("u1", "F1", "fay@fabrikam.com"),
        "u2": FakeDirectory.account("u2", "E1", "ann@contoso.com")}) for t in cfg.tenants}

    def run():
        store = Store.open(str(tmp_path / "state.db"))
        return store, reconcile(cfg, store, now=NOW, providers=lambda t: [directories[t.id]])

    return tmp_path / "hr", run


@pytest.mark.parametrize("rows", [
    [leaver("E2", "bob@contoso.com", first=HUGE)],
    [leaver("E2", "bob@contoso.com", first=f'"{HUGE}')],                     # inside an unclosed quote
    [leaver("E2", "bob@contoso.com", date="9999-12-31")],
    [leaver("E2", "bob@contoso.com", date="0001-01-01")],
    [leaver("E2", "bob@contoso.com", first="Bob\x1b]8;;https://evil.example\x07")],
    [leaver("E2", "b" * 300 + "@contoso.com")],
], ids=["field over 128 KiB", "quoted field over 128 KiB", "year 9999", "year 0001", "terminal escape",
        "overlong email"])
def test_a_hostile_row_is_rejected_with_file_and_line_and_every_tenant_goes_on(two_tenants, rows):
    hr, run = two_tenants
    path = write_csv(hr, "feed.csv", [leaver("E1", "ann@contoso.com"), *rows])
    store, report = run()
    states = {r["id"]: r["state"] for r in store.terminations()}
    assert states == {"contoso/E1": "done", "fabrikam/F1": "done"}
    assert [e.where for e in report.rejected] == [f"{path}:3"]
    assert report.exit_code == 2


def test_a_framing_error_rejects_the_rest_of_the_file_and_cancels_nobody(two_tenants):
    hr, run = two_tenants
    path = write_csv(hr, "feed.csv", [leaver("E1", "ann@contoso.com", date="2026-12-01")])
    store, _ = run()
    assert {r["id"]: r["state"] for r in store.terminations("contoso")} == {"contoso/E1": "scheduled"}
    store.close()
    write_csv(hr, "feed.csv", [leaver("E2", "bob@contoso.com", first=HUGE), leaver("E1", "ann@contoso.com")])
    store, report = run()
    [rejected] = report.rejected
    assert rejected.where == f"{path}:2" and "field larger than field limit" in rejected.message
    # E1 was behind the broken line, unread: the read is not whole, so it is not cancelled either.
    assert {r["id"]: r["state"] for r in store.terminations("contoso")} == {"contoso/E1": "scheduled"}


def test_an_oversized_file_is_refused_without_reading_it_all(tmp_path, monkeypatch):
    from connector.sources import csv_files

    monkeypatch.setattr(csv_files, "MAX_FILE", 1000)
    cfg = load(write_config(tmp_path))
    write_csv(tmp_path / "hr", "big.csv", [leaver(f"E{i}", f"p{i}@contoso.com") for i in range(100)])
    write_csv(tmp_path / "hr", "ok.csv", [leaver("E1", "ann@contoso.com")])
    plugin = cfg.tenants[0].sources[0]
    pull = csv_files.CsvSource(plugin.name, plugin.options, cfg.tenants[0]).pull()
    assert [t.employee_id for t in pull.terminations] == ["E1"]
    assert "larger than" in pull.rejected[0].message and pull.complete is False


RECORD = {"employee_id": "E1", "email": "ann@contoso.com", "first_name": "Ann", "last_name": "Lee",
          "termination_date": "2026-11-23"}


@pytest.mark.parametrize("change, message", [
    ({"termination_date": "2101-01-01"}, "outside 1970-01-01..2100-12-31"),
    ({"termination_date": "1969-12-31"}, "outside"),
    ({"first_name": "A" * (MAX_LENGTH["first_name"] + 1)}, "characters long"),
    ({"employee_id": "9" * 65}, "characters long"),
    ({"email": "a" * 250 + "@contoso.com"}, "characters long"),
    ({"last_name": "Lee\nDear customer, our bank details changed"}, "control"),
    ({"last_name": "Lee\u2028IBAN"}, "control"),
    ({"first_name": "\u202eAnn"}, "bidi"),
    ({"first_name": "\ud800"}, "control"),            # a lone surrogate from a JSON escape breaks UTF-8 later
    ({"first_name": "\x00"}, "control"),
    ({"first_name": {"nested": ["object"]}}, "not text"),
    ({"email": ["ann@contoso.com"]}, "not text"),
    ({"employee_id": True}, "not text"),
    ({"email": "ann@contoso.com\n"}, None),           # trailing whitespace is stripped, not an error
], ids=lambda v: v if isinstance(v, str) else None)
def test_the_shared_record_rules(change, message):
    record = {**RECORD, **change}
    if message is None:
        assert to_termination(record, tenant="t", source="s", where="w").email == "ann@contoso.com"
        return
    with pytest.raises(InputRejected, match=message) as e:
        to_termination(record, tenant="t", source="s", where="feed.csv:7")
    assert e.value.where == "feed.csv:7"


def test_names_of_any_script_pass(tmp_path):
    record = {**RECORD, "first_name": "Zoë-Łucja", "last_name": "محمد\u200cزاده"}    # ZWNJ is part of Persian
    assert to_termination(record, tenant="t", source="s", where="w").last_name == "محمد\u200cزاده"


def test_a_person_reported_active_is_held_to_the_same_text_rules():
    assert to_active({"employee_id": "E1", "email": "Ann@Contoso.com"}, tenant="t", source="s", where="w").active
    assert to_active({"email": "ann@contoso.com"}, tenant="t", source="s", where="w") is None
    with pytest.raises(InputRejected, match="not text"):
        to_active({"employee_id": {"$gt": ""}}, tenant="t", source="s", where="w")


def test_a_rejected_record_names_its_leaver_only_when_the_id_itself_is_readable():
    with pytest.raises(InputRejected) as e:
        to_termination({**RECORD, "first_name": "Ann\x07"}, tenant="t", source="s", where="w")
    assert e.value.ids == ("t/E1",)                  # still present: the bad row does not cancel E1
    with pytest.raises(InputRejected) as e:
        to_termination({**RECORD, "employee_id": "E1\x1b[2J"}, tenant="t", source="s", where="w")
    assert e.value.ids == ()
    with pytest.raises(InputRejected) as e:
        to_active({"employee_id": "E1", "first_name": ["x"]}, tenant="t", source="s", where="w")
    assert e.value.ids == ("t/E1",)
