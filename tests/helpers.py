"""Small builders and checks shared by the tests: a config on disk, a CSV feed, a frozen clock, throttling."""
from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import pytest

from connector import config as configmod
from connector.errors import RetryableError

CSV_HEADER = "employee_id,email,first_name,last_name,manager_email,termination_date,termination_time,kind\n"


def write_csv(folder: Path, name: str, rows: list[str], header: str = CSV_HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(header + "".join(r + "\n" for r in rows))
    return path


FAKE_PROVIDER = '[[tenant.provider]]\ntype = "fake"\nname = "ad"\n'   # tests/fakes/directory.py


def write_config(tmp: Path, tenant_extra: str = "", providers: str = FAKE_PROVIDER, top: str = "",
                 csv_glob: str | None = None) -> Path:
    csv_glob = csv_glob or str(tmp / "hr" / "*.csv")
    text = textwrap.dedent(f"""\
        [connector]
        state = "{tmp / 'state.db'}"
        {top}
        [[tenant]]
        id = "contoso"
        name = "Contoso Ltd"
        timezone = "America/Chicago"
        protected = ["svc-*", "breakglass@contoso.com"]
        {tenant_extra}
        [[tenant.source]]
        type = "csv"
        path = "{csv_glob}"
        """) + textwrap.dedent(providers)
    path = tmp / "config.toml"
    path.write_text(text)
    return path


def load(path: Path):
    return configmod.load(path)


def utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.timezone.utc)


def check_retry_after(knobs, call) -> None:
    """A 429 with a short Retry-After is waited for in place; a long one is raised with its delay (the engine parks
    the action in the journal until then)."""
    knobs.throttle_next, knobs.retry_after = 1, 1
    call()
    knobs.throttle_next, knobs.retry_after = 1, 120
    with pytest.raises(RetryableError) as caught:
        call()
    assert caught.value.delay == 120
