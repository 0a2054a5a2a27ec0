"""A real Samba AD DC for the whole session, seeded with Example Ltd, plus fresh leavers per test.

The DC is the one `make demo` uses (connector.sandbox). Without samba-tool the AD
tests skip on a developer machine, but in CI (`CI` set) provisioning fails loudly.
"""
from __future__ import annotations

import datetime as dt
import itertools
import os
import shutil
import time

import pytest

from connector import config, plugins
from connector.model import Termination
from connector.sandbox import company
from connector.sandbox.samba import SambaDC

TENANT = "example"
# The contract suite passes `since = now - 2 s` to reset_password; a leaver whose
# pwdLastSet (its creation) is younger than that would look already reset.
LEAVER_MIN_AGE = 2.5
LEAVER_BATCH = 40


@pytest.fixture(scope="session")
def samba_dc(tmp_path_factory):
    if not (shutil.which("samba-tool") and os.path.exists("/usr/sbin/samba")) and not os.environ.get("CI"):
        pytest.skip("samba-tool is not installed (apt-get install samba); CI runs these tests")
    dc = SambaDC(tmp_path_factory.mktemp("samba")).provision()
    with dc:
        company.seed(dc)
        yield dc


@pytest.fixture(scope="session")
def ad_admin(samba_dc):
    """An administrator's connection for arranging and inspecting AD behind the provider's back."""
    conn = samba_dc.connect()
    yield conn
    conn.unbind()


def secret_file(directory, name: str, value: str) -> str:
    path = directory / name
    path.write_text(value)
    path.chmod(0o600)
    return f"file:{path}"


@pytest.fixture(scope="session")
def bind_password_ref(samba_dc, tmp_path_factory):
    return secret_file(tmp_path_factory.mktemp("secrets"), "ad-bind", samba_dc.admin_password)


@pytest.fixture
def make_ad_provider(samba_dc, bind_password_ref):
    """Build the provider the way the engine does: config block -> validation -> entry point."""
    made = []

    def make(policy: dict | None = None, **options):
        block = {**company.provider_block(samba_dc, bind_password_ref), "page_size": 7, **options}
        block = {key: value for key, value in block.items() if value is not None}
        tenant = config.parse({"tenant": [{"id": TENANT, "policy": policy or {}, "provider": [block]}]}).tenants[0]
        pc = tenant.providers[0]
        provider = plugins.load("providers", pc.type)(pc.name, pc.options, tenant, pc.where)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


def termination(person: company.Person, employee_id: str | None = None, email: str | None = None,
                ticket: str = "") -> Termination:
    return Termination(TENANT, person.employee_id if employee_id is None else employee_id,
                       person.mail if email is None else email, person.given, person.surname,
                       termination_date=dt.date(2026, 11, 20), ticket=ticket)


class LeaverPool:
    """Fresh, untouched leaver accounts, created in batches and handed out once they are old enough."""

    def __init__(self, conn):
        self.conn = conn
        self.serial = itertools.count(1)
        self.ready: list[company.Person] = []
        self.born = 0.0

    def take(self) -> company.Person:
        if not self.ready:
            self.ready = [self.create() for _ in range(LEAVER_BATCH)]
            self.born = time.monotonic()
        time.sleep(max(0.0, self.born + LEAVER_MIN_AGE - time.monotonic()))
        return self.ready.pop()

    def create(self, **fields) -> company.Person:
        n = next(self.serial)
        person = company.Person(**{
            "sam": f"leaver{n}", "given": "Lee", "surname": f"Vermont{n}", "employee_id": f"L{n:04d}",
            "mail": f"lee.vermont{n}@{company.MAIL_DOMAIN}", "aliases": (f"lv{n}@{company.MAIL_DOMAIN}",),
            "manager": "bbaker", "groups": ("Sales", "Engineering"), "description": "Account Executive", **fields})
        company.add_person(self.conn, person)
        return person


@pytest.fixture(scope="session")
def leaver_pool(ad_admin):
    return LeaverPool(ad_admin)


@pytest.fixture
def ad_leaver(leaver_pool) -> company.Person:
    """A fresh, enabled account in OU=Staff with groups, aliases, a manager and a description."""
    return leaver_pool.take()
