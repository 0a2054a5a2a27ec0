"""The sandbox (connector/sandbox/) made reachable for a test, in the mode the test runs in.

`responses` (the default, fast) answers the vendors' own URLs inside the test process;
`https` serves the same sandbox from a real cheroot server on 127.0.0.1 with the generated
CA, which the clients trust through REQUESTS_CA_BUNDLE. A test asks for `reach` and gets
the base URL of each system as its client must configure it; the spec violations of every
system fail the test at teardown, in both modes. A test module runs in both modes by
saying `SANDBOX_MODES = MODES`. This module is a pytest plugin (tests/conftest.py): its
fixtures need no import.
"""
from __future__ import annotations

import contextlib
import os
import datetime as dt
import time

import pytest
import responses

from connector import config, plugins
from connector.model import Termination
from connector.providers.microsoft365 import auth, provider as m365_provider
from connector.sandbox import mocked
from connector.sandbox.microsoft365 import VENDOR_URLS, Microsoft365
from connector.sandbox.tenant import GB, Mailbox
from connector.sandbox.server import HttpsServer
from connector.sandbox.web import Sandbox

MODES = ("responses", "https")


class Current:
    """The WSGI app of the session's HTTPS server: the sandbox of the test that runs now."""

    sandbox: Sandbox | None = None

    def __call__(self, environ, start_response):
        return self.sandbox(environ, start_response)


@pytest.fixture(scope="session")
def https_sandbox(tmp_path_factory):
    """One cheroot server on 127.0.0.1 for the session (its CA generated here); each test puts its sandbox in it."""
    current = Current()
    with HttpsServer(current, tmp_path_factory.mktemp("sandbox-tls")) as server:
        yield server, current


@pytest.fixture
def sandbox_mode() -> str:
    return "responses"


def pytest_generate_tests(metafunc):
    """Tests that reach a sandbox run in the modes their module lists in SANDBOX_MODES (default: responses);
    OFFBOARD_SANDBOX_MODES=responses (or https) narrows every run to one mode."""
    explicit = any("sandbox_mode" in m.args[0] for m in metafunc.definition.iter_markers("parametrize"))
    if "sandbox_mode" not in metafunc.fixturenames or explicit:
        return
    wanted = getattr(metafunc.module, "SANDBOX_MODES", ("responses",))
    only = os.environ.get("OFFBOARD_SANDBOX_MODES", "").split(",")
    metafunc.parametrize("sandbox_mode", [m for m in wanted if m in only] or wanted[:1] if any(only) else wanted)


@pytest.fixture
def reach(sandbox_mode, request, monkeypatch):
    """`reach(sandbox, {name: vendor URL})` -> {name: the base URL to configure}, until the test ends."""
    with contextlib.ExitStack() as stack:
        served: list[Sandbox] = []

        def reach_(sandbox: Sandbox, vendor: dict[str, str]) -> dict[str, str]:
            served.append(sandbox)
            if sandbox_mode == "responses":
                rsps = stack.enter_context(responses.RequestsMock(assert_all_requests_are_fired=False))
                mocked.register(rsps, sandbox, vendor)
                reach_.mocks.append(rsps)
                return dict(vendor)
            server, current = request.getfixturevalue("https_sandbox")
            if current.sandbox is not None and current.sandbox is not sandbox:
                raise RuntimeError("one sandbox per test over HTTPS: mount every system in it")
            current.sandbox = sandbox
            stack.callback(setattr, current, "sandbox", None)
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca_file)
            return {name: f"{server.url}/{name}" for name in vendor}

        reach_.mocks = []             # behind responses: every request the client sent, answered or not
        yield reach_
    for sandbox in served:
        assert sandbox.violations == [], "requests the vendors' specs do not allow"


# -- Microsoft 365 ------------------------------------------------------------------------------
SECRET = "s3cr3t-Value~of.the.app"
SECRET_ENV = "M365_SANDBOX_CLIENT_SECRET"
MANAGER = "morgan.manager@contoso.com"
GROUPS = ("All Staff", "Project X", "Finance DL", "Dynamic Sales", "AD Staff", "E3 Licence")
BLOCK_GROUP = "Offboarding - blocked"       # a cloud-only security group a Conditional Access policy blocks


def seed(tenant: Microsoft365) -> None:
    """The tenant every test starts from: SKUs, one group of each kind (and an empty block group), an admin role,
    a manager."""
    for part in ("SPE_E3", "EMS", "O365_BUSINESS_PREMIUM"):
        tenant.add_sku(part)
    tenant.add_group("All Staff")
    tenant.add_group("Project X", unified=True)
    tenant.add_group("Finance DL", mail_enabled=True)
    tenant.add_group("Dynamic Sales", dynamic=True)
    tenant.add_group("AD Staff", synced=True)
    tenant.add_group("E3 Licence", licences=("SPE_E3",))
    tenant.add_group(BLOCK_GROUP)
    tenant.add_role("Global Administrator")
    tenant.add_user(MANAGER, employee_id="M1", licences=("SPE_E3",), mailbox=Mailbox(MANAGER))


def add_leaver(tenant: Microsoft365, n: int, *, synced: bool = False, mailbox_kind: str = "UserMailbox",
               size: int = 3 * GB, hold: bool = False, roles: tuple[str, ...] = (), mailbox: bool = True,
               immutable_id: str = "") -> Termination:
    """A fresh leaver with everything offboarding touches: licences direct and inherited, every kind of group,
    MFA methods, a mailbox with a phone on it."""
    upn = f"leaver{n}.person@contoso.com"
    box = Mailbox(upn, kind=mailbox_kind, size=size, litigation_hold=hold,
                  devices=[{"Identity": f"{upn}/ExchangeActiveSyncDevices/iPhone{n}", "DeviceModel": "iPhone",
                            "DeviceWipeRequestTime": None, "Status": "DeviceOk"}]) if mailbox else None
    tenant.add_user(upn, employee_id=f"E{n}", synced=synced, licences=("EMS",), groups=GROUPS, roles=roles,
                    methods=("password", "phone", "microsoftAuthenticator"), default="phone", mailbox=box,
                    proxies=(f"l{n}@contoso.com",), manager=MANAGER, immutable_id=immutable_id)
    return Termination(tenant="contoso", employee_id=f"E{n}", email=upn, first_name="Leaver", last_name=f"Person{n}",
                       manager_email=MANAGER, termination_date=dt.date(2026, 9, 1),
                       successor=MANAGER)       # as the engine resolves it: the directory's manager


def batches_sent(tenant: Microsoft365) -> list[tuple[float, list[dict]]]:
    """(when, its sub-requests) of every `$batch` the tenant's Graph gets from now on."""
    sent, batch = [], tenant.graph.batch
    tenant.graph.batch = lambda call: sent.append((time.time(), call.body["requests"])) or batch(call)
    return sent

@pytest.fixture
def matched_a_while_ago(monkeypatch):
    """Every read older than FRESH_READ: each revoke action reads again before it writes."""
    monkeypatch.setattr(m365_provider, "FRESH_READ", 0.0)


@pytest.fixture
def matched_just_now(monkeypatch):
    """Every read of this test younger than FRESH_READ, however slow the machine: the revoke compares it."""
    monkeypatch.setattr(m365_provider, "FRESH_READ", 3600.0)


@pytest.fixture
def m365(monkeypatch, reach) -> Microsoft365:
    """A seeded tenant, reachable in this test's sandbox mode; any request against the specs fails the test."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    auth.applications.clear()
    tenant = Microsoft365(secret=SECRET)
    seed(tenant)
    tenant.urls = reach(tenant.mount(Sandbox()), VENDOR_URLS)
    return tenant


@pytest.fixture
def m365_policy() -> dict:
    """Override in a test module (or parametrize) to change `[tenant.policy]`."""
    return {"mailbox": "shared", "mailbox_delegate": "manager", "forward_to": "manager", "hide_from_gal": True,
            "auto_reply": "{first_name} {last_name} has left {company}. Please contact {manager_email}."}


@pytest.fixture
def m365_tenant(m365, m365_policy) -> config.Tenant:
    """A `Tenant` with an `entra` and an `exchange_online` provider pointed at the sandbox."""
    block = m365.provider_block(f"env:{SECRET_ENV}")
    raw = {"tenant": [{"id": "contoso", "name": "Contoso Ltd", "policy": m365_policy,
                       "provider": [{"type": "entra", **block}, {"type": "exchange_online", **block}]}]}
    return config.parse(raw).tenants[0]


def entra_toml(tenant: Microsoft365) -> str:
    """The `[[tenant.provider]]` block of an entra provider reaching `tenant`, as a config file says it."""
    block = tenant.provider_block(f"env:{SECRET_ENV}")
    return '[[tenant.provider]]\ntype = "entra"\n' + "".join(f'{k} = "{v}"\n' for k, v in block.items())


def build(tenant: config.Tenant, kind: str):
    block = next(p for p in tenant.providers if p.type == kind)
    return plugins.load("providers", kind)(block.name, block.options, tenant, block.where)


@pytest.fixture
def entra(m365_tenant):
    return build(m365_tenant, "entra")


@pytest.fixture
def exchange_online(m365_tenant):
    return build(m365_tenant, "exchange_online")
