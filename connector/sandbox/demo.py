"""`offboard demo`: the whole pipeline against a throwaway sandbox, no credentials needed.

It provisions a Samba AD DC seeded with Example Ltd, drops an HR CSV that holds every
case the connector must get right (due, future, immediate, protected, ambiguous, a
malformed row), and runs the real commands a technician would: `plan`, then
`reconcile --once` twice (the second pass changes nothing), `status --all`, and
`audit verify`.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import textwrap
from pathlib import Path

from . import company

TENANT = "example"


def hr_rows(today: dt.date) -> list[str]:
    """The demo's HR feed: one row per case, as `employee_id,email,...,kind`."""
    yesterday, tomorrow = today - dt.timedelta(days=1), today + dt.timedelta(days=7)
    boss = company.ALICE.mail
    return [
        f"{company.DAN.employee_id},{company.DAN.mail},Dan,Dawson,{boss},{yesterday},,voluntary",
        f"{company.ERIN.employee_id},{company.ERIN.mail},Erin,Evans,{boss},{today},,immediate",
        f"{company.FRANK.employee_id},{company.FRANK.mail},Frank,Fischer,{boss},{tomorrow},,voluntary",
        f"E9999,{company.PROTECTED.mail},Backup,Service,{boss},{yesterday},,immediate",
        f"{company.AMBIGUOUS_EMPLOYEE_ID},{company.AMBIGUOUS_EMAIL},Jo,Smith,{boss},{yesterday},,voluntary",
        f"E1011,not-an-email,Broken,Row,{boss},{yesterday},,voluntary",
    ]


def secret_file(folder: Path, name: str, value: str) -> str:
    """The value in a file only its owner reads; -> its secret reference."""
    path = folder / name
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(value)
    return f"file:{path}"


def config_head(folder: Path, comment: str, extra_tenant: str = "") -> str:
    """The top of a sandbox config: a state file in `folder` and Example Ltd's tenant, up to its sources."""
    return textwrap.dedent(f"""\
        # {comment}
        [connector]
        state = "{folder / 'state.db'}"

        [[tenant]]
        id = "{TENANT}"
        name = "Example Ltd"
        timezone = "UTC"
        protected = ["svc-*"]
        """) + extra_tenant + "\n"


def toml_table(name: str, values: dict) -> str:
    return f"[[{name}]]\n" + "".join(f'{key} = "{value}"\n' for key, value in values.items())


def write_sandbox(folder: Path, dc, today: dt.date, extra_tenant: str = "") -> Path:
    """Write the HR CSV, the bind password file and a config pointing at the sandbox DC."""
    (folder / "hr").mkdir(parents=True, exist_ok=True)
    header = "employee_id,email,first_name,last_name,manager_email,termination_date,termination_time,kind\n"
    (folder / "hr" / "leavers.csv").write_text(header + "\n".join(hr_rows(today)) + "\n")
    secret = secret_file(folder, "ad-bind-password", dc.admin_password)
    config = folder / "config.toml"
    config.write_text(config_head(folder, "written by `offboard demo`: the sandbox DC of Example Ltd", extra_tenant)
                      + toml_table("tenant.source", {"type": "csv", "path": folder / "hr" / "*.csv"}) + "\n"
                      + toml_table("tenant.provider", company.provider_block(dc, secret)))
    return config


def _step(title: str, argv: list[str]) -> int:
    from ..cli import main

    print(f"\n$ offboard {' '.join(argv[2:])}\n# {title}")
    code = main(argv)
    print(f"# exit {code}")
    return code


def main(args) -> int:
    from .samba import SambaDC

    if shutil.which("samba-tool") is None:
        print("offboard: error: demo: samba-tool not found; run `make demo` as root (it installs samba)")
        return 1
    if os.geteuid() != 0:
        print("offboard: error: demo: the sandbox DC needs root (it serves LDAPS on port 636)")
        return 1
    folder = Path(tempfile.mkdtemp(prefix="offboard-demo-"))
    print(f"Provisioning a Samba AD DC for Example Ltd in {folder} ...")
    dc = SambaDC(folder / "dc").provision()
    try:
        with dc:
            company.seed(dc)
            config = write_sandbox(folder, dc, dt.datetime.now(dt.timezone.utc).date())
            print(f"HR feed: {folder / 'hr' / 'leavers.csv'}")
            print((folder / "hr" / "leavers.csv").read_text())
            base = ["--config", str(config)]
            _step("what would be done (writes nothing)", base + ["plan"])
            first = _step("offboard everyone who is due", base + ["reconcile", "--once"])
            second = _step("a second pass: nothing left to change", base + ["reconcile", "--once"])
            _step("every termination, done or not", base + ["status", "--all"])
            _step("the audit log's hash chain", base + ["audit", "verify"])
            print(textwrap.dedent(f"""
                What happened: Dan (due yesterday) and Erin (immediate) were disabled, their passwords
                reset, their groups removed, their descriptions stamped, and both moved to OU=Leavers.
                Frank leaves next week: scheduled. svc-backup is protected and Jo Smith's address
                matches two accounts: both need a human (exit 2), as does the malformed CSV row.
                First pass exit {first}, second pass exit {second}; the second pass changed nothing.
                """))
    finally:
        if getattr(args, "keep", False):
            print(f"Sandbox kept in {folder} (config: {folder / 'config.toml'}; the DC is stopped)")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0 if first == 2 and second == 2 else 1
