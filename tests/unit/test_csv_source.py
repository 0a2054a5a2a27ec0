"""The CSV drop: bad rows are reported with file and line, a wrong header changes nothing."""
import datetime as dt

from connector.sources.csv_files import CsvSource
from tests.helpers import load, write_config, write_csv


def source(tmp_path, fields=None):
    cfg = load(write_config(tmp_path))
    options = cfg.tenants[0].sources[0].options
    if fields:
        options = options.model_copy(update={"fields": fields})
    return CsvSource("csv", options, cfg.tenants[0])


def test_good_rows_parse_and_bad_rows_are_reported_with_file_and_line(tmp_path):
    path = write_csv(tmp_path / "hr", "a.csv", [
        "E1,Ann@Contoso.com,Ann,Lee,boss@contoso.com,2026-11-23,09:30,immediate",
        "E2,not-an-email,Bob,Ray,,2026-11-23,,",
        "E3,cat@contoso.com,Cat,Poe,,2026-13-01,,",
        "E4,dan@contoso.com,Dan,Ng,,2026-11-24,,",
        "E5,eve@contoso.com,Eve,Ko,,2026-11-24,,sabbatical",
    ])
    pull = source(tmp_path).pull()
    assert [t.employee_id for t in pull.terminations] == ["E1", "E4"]
    first = pull.terminations[0]
    assert (first.email, first.termination_time, first.kind) == ("ann@contoso.com", dt.time(9, 30), "immediate")
    assert [e.where for e in pull.rejected] == [f"{path}:3", f"{path}:4", f"{path}:6"]
    assert "not an email" in pull.rejected[0].message


def test_a_file_with_the_wrong_header_contributes_nothing(tmp_path):
    write_csv(tmp_path / "hr", "payroll.csv", ["1,2,3"], header="id,amount,currency\n")
    write_csv(tmp_path / "hr", "ok.csv", ["E1,ann@contoso.com,Ann,Lee,,2026-11-23,,"])
    pull = source(tmp_path).pull()
    assert [t.employee_id for t in pull.terminations] == ["E1"]
    assert "not a termination feed" in pull.rejected[0].message and pull.rejected[0].where.endswith("payroll.csv:1")
    assert pull.complete is False       # a broken file means the read is not whole: nothing is cancelled


def test_field_mapping_reads_other_column_names(tmp_path):
    write_csv(tmp_path / "hr", "x.csv", ["7,ann@contoso.com,Ann,Lee,,11/23/2026"],
              header="Employee Number,Work Email,first_name,last_name,manager_email,Last Day\n")
    pull = source(tmp_path, {"employee_id": "Employee Number", "email": "Work Email",
                             "termination_date": "Last Day"}).pull()
    assert pull.rejected == []
    assert (pull.terminations[0].employee_id, pull.terminations[0].termination_date) == ("7", dt.date(2026, 11, 23))
