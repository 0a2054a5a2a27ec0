"""The `offboard` command over an in-memory directory registered as a real plugin: every command, JSON shapes."""
from __future__ import annotations

import datetime as dt
import json
import sys
import types

import pytest

from connector import plugins
from connector.cli import main
from tests.fakes.directory import FakeDirectory
from tests.helpers import write_config, write_csv

ACCOUNTS: dict = {}


class RegisteredDirectory(FakeDirectory):
    """The fake as the config builds it: its accounts live in the module, so each CLI call sees the same AD."""

    def __init__(self, name, options, tenant, where=""):
        super().__init__(name, options, tenant, where, accounts=ACCOUNTS)


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    real = plugins.available

    def available(kind):
        found = dict(real(kind))
        if kind == "providers":
            found["fake"] = types.SimpleNamespace(load=lambda: RegisteredDirectory)
        return found

    monkeypatch.setattr(plugins, "available", available)
    ACCOUNTS.clear()
    ACCOUNTS.update({"u1": FakeDirectory.account("u1", "E1", "ann@contoso.com"),
                     "u2": FakeDirectory.account("u2", "E2", "bob@contoso.com"),
                     "svc": FakeDirectory.account("svc", "E9", "svc-x@contoso.com", names=("svc-x",))})
    config = write_config(tmp_path)

    def run(*argv):
        code = main(["--config", str(config), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    run.hr = tmp_path / "hr"
    run.state = tmp_path / "state.db"
    return run


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_status_json_has_the_documented_fields(cli):
    write_csv(cli.hr, "a.csv", ["E1,ann@contoso.com,Ann,Lee,,2020-01-01,,immediate",
                                "E2,bob@contoso.com,Bob,Ray,,2099-01-01,,"])
    cli("approve", "--tenant", "contoso")
    code, out, _ = cli("reconcile", "--once")
    assert code == 0 and "lookback" not in out
    code, out, _ = cli("--json", "status", "--all")
    rows = {r["id"]: r for r in lines(out)}
    assert code == 0 and set(rows) == {"contoso/E1", "contoso/E2"}
    ann = rows["contoso/E1"]
    assert {"id", "tenant", "employee_id", "email", "state", "effective_at", "actions"} <= set(ann)
    assert ann["state"] == "cancelled"         # dated long before lookback_days: recorded, not acted on
    assert rows["contoso/E2"]["state"] == "scheduled"
    code, out, _ = cli("--json", "status")
    assert [r["id"] for r in lines(out)] == ["contoso/E2"]


def test_run_on_demand_then_history_by_employee(cli):
    code, out, _ = cli("--json", "run", "ann@contoso.com", "--tenant", "contoso", "--ticket", "4711")
    assert code == 0
    row = [o for o in lines(out) if o.get("id")][0]
    assert row["state"] == "done" and {a["action"] for a in row["actions"]} >= {"disable_account", "remove_groups"}
    assert ACCOUNTS["u1"]["enabled"] is False
    code, out, _ = cli("--json", "history", "ann@contoso.com", "--tenant", "contoso")
    events = lines(out)
    assert events[0]["event"] == "termination_seen" and any(e.get("action") == "disable_account" for e in events)
    code, out, _ = cli("history", "contoso/ann@contoso.com")
    assert code == 0 and "disable_account" in out
    # the before-state a person needs to give the access back, in full (no cut-off group names)
    assert 'ad/remove_groups' in out and '["staff"]' in out and "..." not in out


def test_every_table_is_drawn_by_rich_on_a_terminal_and_plain_when_piped(cli, monkeypatch):
    assert cli("run", "ann@contoso.com", "--tenant", "contoso")[0] == 0
    piped = cli("status", "--all")[1]
    assert "disable_account" in piped and "------" in piped and "\x1b" not in piped and "│" not in piped
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    for argv in (("status", "--all"), ("history", "contoso/ann@contoso.com")):
        drawn = cli(*argv)[1]
        assert "disable_account" in drawn and "│" in drawn and "------" not in drawn, argv


def test_usage_errors_are_one_line_and_exit_1(cli):
    code, out, err = cli("reconcile", "--once", "--bogus")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("offboard: error: ") and "--bogus" in err
    code, _, err = cli("frobnicate")
    assert code == 1 and len(err.strip().splitlines()) == 1


def test_plan_and_dry_runs_write_nothing(cli):
    write_csv(cli.hr, "a.csv", [f"E1,ann@contoso.com,Ann,Lee,,{dt.date.today() - dt.timedelta(days=1)},,immediate"])
    code, out, _ = cli("plan", "--employee", "E1")
    assert code == 0 and "disable_account" in out and "planned" in out
    assert cli("reconcile", "--once", "--dry-run")[0] == 0
    assert cli("run", "bob@contoso.com", "--tenant", "contoso", "--dry-run")[0] == 0
    assert not cli.state.exists()
    assert ACCOUNTS["u1"]["enabled"] is True and ACCOUNTS["u2"]["enabled"] is True


def test_hold_cancel_retry_approve(cli):
    write_csv(cli.hr, "a.csv", ["E2,bob@contoso.com,Bob,Ray,,2099-01-01,,", "E9,svc-x@contoso.com,S,X,,2099-01-01,,"])
    cli("reconcile", "--once")
    assert cli("hold", "contoso/E2")[0] == 0
    code, out, _ = cli("--json", "status")
    assert {r["id"]: r["state"] for r in lines(out)}["contoso/E2"] == "held"
    assert cli("approve", "contoso/E2")[0] == 0
    assert cli("cancel", "E2", "--tenant", "contoso")[0] == 0
    code, _, err = cli("approve", "contoso/E2")
    assert code == 1 and err.startswith("offboard: error: contoso/E2: is cancelled")
    code, _, err = cli("retry", "contoso/E404")
    assert code == 1 and "no such termination" in err
    assert cli("retry", "contoso/E9")[0] == 0
    kinds = [json.loads(line)["event"] for line in cli("--json", "history", "contoso/E2")[1].splitlines()]
    assert kinds[-3:] == ["person_hold", "person_approve", "person_cancel"]


def test_audit_verify_fails_on_a_tampered_log(cli):
    import sqlite3

    cli("run", "ann@contoso.com", "--tenant", "contoso")
    assert cli("audit", "verify")[0] == 0
    raw = sqlite3.connect(cli.state)
    raw.execute("drop trigger audit_no_update")
    raw.execute("update audit set event = 'nothing_to_see' where seq = 2")
    raw.commit()
    code, _, err = cli("audit", "verify")
    assert code == 1 and "row 2 was edited" in err


def keyed_cli(cli, tmp_path, monkeypatch, key="k" * 32):
    """The same CLI with `[connector] audit_key` set."""
    (tmp_path / "audit.key").write_text(key)
    config = write_config(tmp_path, top=f'audit_key = "file:{tmp_path / "audit.key"}"\n')

    def run(*argv):
        return cli("--config", str(config), *argv)
    return run


def test_without_an_audit_key_verify_says_what_it_cannot_prove(cli):
    cli("run", "ann@contoso.com", "--tenant", "contoso")
    code, out, err = cli("audit", "verify")
    assert code == 0 and "hash chain intact" in out
    assert "no audit_key configured" in err and "not against someone who can write the database" in err


def test_a_keyed_chain_catches_a_rechained_trail_and_head_prints_the_head(cli, tmp_path, monkeypatch):
    import sqlite3

    from connector.store.base import GENESIS, audit_hash

    keyed = keyed_cli(cli, tmp_path, monkeypatch)
    keyed("run", "ann@contoso.com", "--tenant", "contoso")
    code, out, err = keyed("audit", "verify")
    assert code == 0 and "every row signed" in out and "no audit_key" not in err
    code, out, _ = keyed("--json", "audit", "head")
    head = json.loads(out)
    assert code == 0 and head["seq"] > 3 and head["mac"] and len(head["hash"]) == 64
    # the attacker can write the DB but not read the key: drop the triggers, delete, re-chain
    raw = sqlite3.connect(cli.state)
    raw.row_factory = sqlite3.Row
    raw.execute("drop trigger audit_no_update")
    raw.execute("drop trigger audit_no_delete")
    raw.execute("delete from audit where event like 'action_%'")
    prev = GENESIS
    for seq, row in enumerate(raw.execute("select * from audit order by seq").fetchall(), start=1):
        fixed = {**dict(row), "seq": seq, "prev_hash": prev}
        fixed["hash"] = prev = audit_hash(fixed)
        raw.execute("update audit set seq = ?, prev_hash = ?, hash = ? where seq = ?",
                    [seq, fixed["prev_hash"], fixed["hash"], row["seq"]])
    raw.execute("update runs set audit_seq = (select max(seq) from audit), audit_hash = ?", [prev])
    raw.commit()
    code, _, err = keyed("audit", "verify")
    assert code == 1 and "not signed with the audit key" in err


def test_an_unreadable_or_short_audit_key_is_one_config_error(cli, tmp_path, monkeypatch):
    keyed = keyed_cli(cli, tmp_path, monkeypatch, key="Zq9x")
    code, _, err = keyed("status")
    assert code == 1 and "audit key is shorter" in err and "Zq9x" not in err and len(err.splitlines()) == 1


def test_backup_is_a_verifiable_copy(cli, tmp_path):
    cli("run", "ann@contoso.com", "--tenant", "contoso")
    code, out, _ = cli("backup", str(tmp_path / "copy.db"))
    assert code == 0 and "copied" in out
    from connector.store import Store
    copy = Store.open(str(tmp_path / "copy.db"))
    assert copy.verify_audit()[0] and [t["id"] for t in copy.terminations()] == ["contoso/ann@contoso.com"]


def test_restore_names_what_it_cannot_undo_and_its_dry_run_writes_nothing(cli):
    assert cli("run", "E1", "--tenant", "contoso")[0] == 0
    code, out, err = cli("cancel", "contoso/E1")
    assert code == 1 and "`offboard restore contoso/E1` gives the access back" in err
    trail = cli("--json", "history", "contoso/E1")[1]
    code, out, _ = cli("--json", "restore", "contoso/E1", "--dry-run")
    [dry] = lines(out)
    assert code == 2 and dry["dry_run"] is True and dry["state"] == "done"
    assert cli("--json", "history", "contoso/E1")[1] == trail         # a dry run writes nothing
    code, out, _ = cli("restore", "contoso/E1")
    assert code == 2 and "contoso/E1: done -> needs_human" in out
    assert "ad/disable_account cannot be undone automatically" in out and "restore incomplete" in out
    assert ACCOUNTS["u1"]["enabled"] is False                         # the fake has no undo: nothing guessed
    code, out, _ = cli("--json", "status")
    assert [r["state"] for r in lines(out)] == ["needs_human"]
