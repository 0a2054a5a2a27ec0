"""End to end through the `offboard` command against the real Samba DC.

The HR CSV of the demo holds every case: a due leaver, an immediate one, a future one,
a protected account, an ambiguous address and a malformed row. What AD shows afterwards
is read with an administrator's connection, never through the provider.
"""
from __future__ import annotations

import datetime as dt
import json

import ldap3
import pytest

from connector import config as configmod
from connector.cli import main
from connector.providers import active_directory
from connector.reconcile import reconcile
from connector.sandbox import company, demo
from connector.store import Store

TODAY = dt.datetime.now(dt.timezone.utc).date()     # the sandbox tenant lives in UTC


def ad_state(conn: ldap3.Connection, people) -> dict:
    """Every attribute offboarding touches, plus the member list of every group (removals change the group)."""
    state = {}
    for person in people:
        conn.search(company.BASE_DN, f"(sAMAccountName={person.sam})", attributes=[
            "distinguishedName", "userAccountControl", "memberOf", "description", "pwdLastSet"])
        entry = conn.entries[0]
        state[person.sam] = {"dn": entry.entry_dn, "uac": int(entry.userAccountControl.value),
                             "groups": sorted(entry.memberOf.values), "description": entry.description.value,
                             "pwdLastSet": str(entry.pwdLastSet.value)}
    conn.search(company.GROUPS_OU, "(objectClass=group)", attributes=["member"])
    state["groups"] = {e.entry_dn: sorted(e.member.values) for e in conn.entries}
    return state


def can_bind(dc, person) -> bool:
    try:
        dc.connect(person.upn, company.PASSWORD).unbind()
        return True
    except (ldap3.core.exceptions.LDAPBindError, ldap3.core.exceptions.LDAPInvalidCredentialsResult):
        return False


def offboard(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


CASES = (company.DAN, company.ERIN, company.FRANK, company.PROTECTED) + company.AMBIGUOUS


@pytest.fixture
def passwords(monkeypatch):
    """Every password the provider generates, so the test can look for it where it must not be."""
    made = []
    original = active_directory.new_password

    def recording(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(active_directory, "new_password", recording)
    return made


def test_csv_to_ad_through_the_cli(samba_dc, ad_admin, tmp_path, capsys, passwords, caplog):
    config = demo.write_sandbox(tmp_path, samba_dc, TODAY)
    cfg = ["--config", str(config)]
    untouched = ad_state(ad_admin, CASES)

    code, out, _ = offboard(capsys, *cfg, "plan")
    assert code == 0 and "disable_account" in out and "planned" in out
    code, _, _ = offboard(capsys, *cfg, "reconcile", "--once", "--dry-run")
    assert code == 2
    assert not (tmp_path / "state.db").exists(), "a plan or dry run created the state file"
    assert ad_state(ad_admin, CASES) == untouched

    code, out, err = offboard(capsys, *cfg, "--json", "reconcile", "--once")
    assert code == 2
    lines = [json.loads(line) for line in out.splitlines()]
    rejected = [o for o in lines if o.get("type") == "rejected"]
    assert len(rejected) == 1 and rejected[0]["where"].endswith("leavers.csv:7")
    after = ad_state(ad_admin, CASES)
    for person in (company.DAN, company.ERIN):
        s = after[person.sam]
        assert s["uac"] & 2, f"{person.sam} is not disabled"
        assert s["dn"].lower().endswith(company.LEAVERS_OU.lower())
        assert s["groups"] == []
        assert s["description"].startswith(f"Offboarded {TODAY}")
        assert not can_bind(samba_dc, person), f"{person.sam} still binds with the old password"
    for person in (company.FRANK, company.PROTECTED) + company.AMBIGUOUS:
        assert after[person.sam] == untouched[person.sam], f"{person.sam} was touched"
    assert can_bind(samba_dc, company.FRANK)

    code, out, _ = offboard(capsys, *cfg, "--json", "status", "--all")
    states = {o["employee_id"]: o["state"] for o in map(json.loads, out.splitlines())}
    assert states == {company.DAN.employee_id: "done", company.ERIN.employee_id: "done",
                      company.FRANK.employee_id: "scheduled", "E9999": "needs_human",
                      company.AMBIGUOUS_EMPLOYEE_ID: "needs_human"}

    code, _, _ = offboard(capsys, *cfg, "reconcile", "--once")
    assert code == 2                                  # the bad row and the two humans are still reported
    assert ad_state(ad_admin, CASES) == after, "the second pass changed AD"

    code, out, _ = offboard(capsys, *cfg, "--json", "history", f"example/{company.DAN.employee_id}")
    events = [json.loads(line) for line in out.splitlines()]
    assert {e.get("action") for e in events} >= {"disable_account", "reset_password", "remove_groups",
                                                  "stamp_description", "move_to_disabled_ou"}
    assert offboard(capsys, *cfg, "audit", "verify")[0] == 0

    assert len(passwords) == 2
    database = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))
    for secret in passwords + [samba_dc.admin_password]:
        assert secret.encode() not in database
        assert secret.encode("utf-16-le") not in database
        assert secret not in caplog.text and secret not in out


def test_mass_termination_hold_then_approve(samba_dc, ad_admin, leaver_pool, tmp_path, capsys):
    people = [leaver_pool.create() for _ in range(3)]
    config = demo.write_sandbox(tmp_path, samba_dc, TODAY, extra_tenant="max_terminations_per_run = 2")
    rows = [f"{p.employee_id},{p.mail},{p.given},{p.surname},,{TODAY},,immediate" for p in people]
    (tmp_path / "hr" / "leavers.csv").write_text(
        "employee_id,email,first_name,last_name,manager_email,termination_date,termination_time,kind\n"
        + "\n".join(rows) + "\n")
    cfg = ["--config", str(config)]
    before = ad_state(ad_admin, people)
    code, out, _ = offboard(capsys, *cfg, "reconcile", "--once")
    assert code == 3 and "max_terminations_per_run" in out
    assert offboard(capsys, *cfg, "reconcile", "--once")[0] == 3       # every later pass too
    assert ad_state(ad_admin, people) == before
    assert offboard(capsys, *cfg, "approve", "--tenant", "example")[0] == 0
    assert offboard(capsys, *cfg, "reconcile", "--once")[0] == 0
    assert all(s["uac"] & 2 for name, s in ad_state(ad_admin, people).items() if name != "groups")


class Crash(BaseException):
    """The process dies: not an error anything may catch."""


def test_crash_after_the_write_resumes_without_a_second_reset(samba_dc, ad_admin, leaver_pool, tmp_path,
                                                              monkeypatch):
    person = leaver_pool.take()          # old enough that its pwdLastSet predates the run
    config_path = demo.write_sandbox(tmp_path, samba_dc, TODAY)
    (tmp_path / "hr" / "leavers.csv").write_text(
        "employee_id,email,first_name,last_name,manager_email,termination_date\n"
        f"{person.employee_id},{person.mail},{person.given},{person.surname},,{TODAY - dt.timedelta(days=1)}\n")
    cfg = configmod.load(config_path)
    store = Store.open(str(tmp_path / "state.db"))
    real_reset = active_directory.ActiveDirectoryProvider.reset_password
    resets = []

    def reset_then_die(self, action, ctx):
        result = real_reset(self, action, ctx)
        resets.append(result.outcome)
        raise Crash()

    monkeypatch.setattr(active_directory.ActiveDirectoryProvider, "reset_password", reset_then_die)
    with pytest.raises(Crash):
        reconcile(cfg, store)
    tid = f"example/{person.employee_id}"
    journal = {a["action"]: a["status"] for a in store.actions(tid)}
    assert journal["reset_password"] == "in_flight"
    stamped = ad_state(ad_admin, [person])[person.sam]["pwdLastSet"]
    assert resets == ["changed"]

    monkeypatch.setattr(active_directory.ActiveDirectoryProvider, "reset_password",
                        lambda self, action, ctx: resets.append("again") or real_reset(self, action, ctx))
    report = reconcile(cfg, store)
    assert report.exit_code == 0
    assert ad_state(ad_admin, [person])[person.sam]["pwdLastSet"] == stamped, "the password was reset twice"
    assert store.termination(tid)["state"] == "done"


BAD_INPUTS = {
    "malformed TOML": (lambda text: text.replace("[[tenant]]", "[[tenant]"), "config.toml: not valid TOML"),
    "unknown key": (lambda text: text + 'colour = "red"\n', "tenant[0].provider[0].colour: unknown key"),
    "missing secret": (lambda text: text.replace('bind_password = "file:', 'bind_password = "env:NO_SUCH_VAR" #'),
                       "tenant[0].provider[0].bind_password: environment variable NO_SUCH_VAR is not set"),
}
# Refused or unreachable at run time: the feed is still read and every due leaver stays open,
# with the directory's part journaled failed, so nobody is reported done who can still sign in.
RUN_TIME_FAULTS = {
    "unreachable DC": (lambda text: text.replace("ldaps://127.0.0.1:636", "ldaps://127.0.0.1:1"), 2,
                       "tenant[0].provider[0] (ldaps://127.0.0.1:1): cannot reach the DC"),
    "wrong bind password": (None, 1, "tenant[0].provider[0] (ldaps://127.0.0.1:636): bind as"),
}


def reconcile_broken(samba_dc, ad_admin, tmp_path, capsys, edit, exit_code: int, expected: str) -> None:
    """One pass with a broken config or credential: one line on stderr, the exit code, AD untouched."""
    config = demo.write_sandbox(tmp_path, samba_dc, TODAY)
    if edit:
        config.write_text(edit(config.read_text()))
    else:
        (tmp_path / "ad-bind-password").write_text("Wrong-Password-1")
    before = ad_state(ad_admin, CASES)
    code, out, err = offboard(capsys, "--config", str(config), "reconcile", "--once")
    assert code == exit_code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("offboard: error: ") and expected in lines[0], err
    assert "Traceback" not in err and samba_dc.admin_password not in err + out
    assert ad_state(ad_admin, CASES) == before


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_1_and_changes_nothing(samba_dc, ad_admin, tmp_path, capsys, case):
    edit, expected = BAD_INPUTS[case]
    reconcile_broken(samba_dc, ad_admin, tmp_path, capsys, edit, 1, expected)
    if (tmp_path / "state.db").exists():
        assert Store.open(str(tmp_path / "state.db")).terminations() == []


@pytest.mark.parametrize("case", list(RUN_TIME_FAULTS))
def test_a_directory_refused_or_down_at_run_time_leaves_every_due_leaver_open(samba_dc, ad_admin, tmp_path, capsys,
                                                                                case):
    reconcile_broken(samba_dc, ad_admin, tmp_path, capsys, *RUN_TIME_FAULTS[case])
    store = Store.open(str(tmp_path / "state.db"))
    due = [t for t in store.terminations() if t["state"] not in ("scheduled", "cancelled")]
    assert due and all(t["state"] == "in_progress" for t in due)
    for t in due:
        assert {(a["provider"], a["action"], a["status"]) for a in store.actions(t["id"])} == \
            {("active_directory", "match_account", "failed")}


def test_check_online_proves_the_bind(samba_dc, tmp_path, capsys):
    config = demo.write_sandbox(tmp_path, samba_dc, TODAY)
    code, out, _ = offboard(capsys, "--config", str(config), "check", "--online")
    assert code == 0 and "every credential proven" in out
    (tmp_path / "ad-bind-password").write_text("Wrong-Password-1")
    code, _, err = offboard(capsys, "--config", str(config), "check", "--online")
    assert code == 1 and "tenant[0].provider[0] (ldaps://127.0.0.1:636)" in err and err.count("\n") == 1
    assert not (tmp_path / "state.db").exists()
