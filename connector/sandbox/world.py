"""The generated company in every emulated system at once, and `offboard sandbox`, which serves it.

The same people are in Microsoft 365 (users, managers, groups of every kind the cloud
treats differently, licences direct and through a group, MFA methods, mailboxes, some on
hold or too big to unlicense), in RingCentral (an extension with a direct number each, and
voicemail older and younger than a day for every leaver), in BambooHR (with the employment-status history that puts
each leaver in its state), in Workday's termination report and in ConnectWise Manage (a
contact each, the agreement billing today's licences, an "Offboard:" ticket per leaver) and at Pax8 (the seats of
today's licences, E3 on an annual commitment, Business Premium monthly). `offboard sandbox` serves
them over HTTPS on 127.0.0.1 and writes a config that points the connector at them, so
every command can be tried without a real tenant; `make demo` adds the Samba DC to it and runs the daemon.
"""
from __future__ import annotations

import datetime as dt
import secrets
import shutil
import signal
import tempfile
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .bamboohr import BambooHR
from .company import E3_GROUP, Company, generate
from .connectwise import ConnectWise
from .configs import TENANT, config_head, secret_file, toml_table
from .pax8 import Pax8
from .microsoft365 import Microsoft365
from .ringcentral import LIMITS, RingCentral
from .server import HttpsServer
from .tenant import GB, Mailbox
from .web import Sandbox
from .workday import Workday

HIRED = dt.date(2020, 1, 6)
#: a whole company offboarded at once from one laptop: RingCentral's rate limits, twenty times over
SANDBOX_LIMITS = {group: limit * 20 for group, limit in LIMITS.items()}
VOICEMAIL_HOURS = (3.0, 50.0)             # one message inside message-store's default 24 hours, one outside
PSA_COMPANY, PSA_AGREEMENT = 250, 4123
BILLING = {"SPE_E3": 9101, "O365_BUSINESS_PREMIUM": 9102}      # SKU -> agreement addition
PAX8_COMPANY = "2aa4862a-9474-4138-9863-4f0a8e4cec74"


@dataclass
class World:
    company: Company
    cloud: Microsoft365
    bamboohr: BambooHR
    workday: Workday
    ringcentral: RingCentral
    connectwise: ConnectWise
    pax8: Pax8
    sandbox: Sandbox


def build(size: int, today: dt.date | None = None, *, client_secret: str = "",
          bamboohr_key: str = "", workday_password: str = "", ringcentral_secret: str = "",
          ringcentral_jwt: str = "") -> World:
    company = generate(size, today or dt.datetime.now(dt.timezone.utc).date())
    cloud = Microsoft365(domain=company.domain, secret=client_secret or secrets.token_urlsafe(24))
    populate_cloud(cloud, company)
    hr = BambooHR(TENANT, bamboohr_key or secrets.token_hex(20),
                  now=dt.datetime.combine(company.today, dt.time(9), dt.timezone.utc))
    populate_bamboohr(hr, company)
    wd = Workday(TENANT, password=workday_password or secrets.token_urlsafe(18))
    populate_workday(wd, company)
    rc = RingCentral(client_secret=ringcentral_secret or None, jwt=ringcentral_jwt or None, limits=SANDBOX_LIMITS)
    populate_ringcentral(rc, company)
    psa = ConnectWise(public_key=secrets.token_hex(8), private_key=secrets.token_hex(8))
    populate_psa(psa, company, cloud)
    distributor = Pax8(client_secret=secrets.token_urlsafe(18))
    populate_pax8(distributor, company, cloud)
    sandbox = cloud.mount(Sandbox())
    for system in (hr, wd, rc, psa, distributor):
        sandbox.add(system)
    return World(company, cloud, hr, wd, rc, psa, distributor, sandbox)


def populate_cloud(cloud: Microsoft365, company: Company) -> None:
    """Each group a kind the cloud treats differently: a distribution list Exchange must edit, Teams groups,
    a group synced from AD that refuses cloud edits, and the group the E3 licence comes through."""
    for part in ("SPE_E3", "O365_BUSINESS_PREMIUM"):
        cloud.add_sku(part, prepaid=len(company.people) + 10)
    kinds = {"All Staff": {"mail_enabled": True}, "VPN Users": {"synced": True}, E3_GROUP: {"licences": ("SPE_E3",)}}
    for name in company.groups():
        cloud.add_group(name, **kinds.get(name, {"unified": True}))
    cloud.add_role("Global Administrator")
    for p in company.people:
        box = Mailbox(p.email, size=int(p.mailbox_gb * GB), litigation_hold=p.litigation_hold,
                      devices=[{"Identity": f"{p.email}/ExchangeActiveSyncDevices/Phone", "DeviceModel": "iPhone",
                                "DeviceWipeRequestTime": None, "Status": "DeviceOk"}])
        cloud.add_user(p.email, employee_id=p.number, given=p.given, surname=p.surname, synced=p.synced,
                       licences=() if p.licence_by_group else (p.licence,), groups=p.groups, manager=p.manager,
                       methods=("password", "phone", "microsoftAuthenticator"), default="phone", mailbox=box)


def populate_psa(psa: ConnectWise, company: Company, cloud: Microsoft365) -> None:
    """The MSP bills Example Ltd for the licences assigned today; each leaver has a ticket asking for it."""
    psa.add_company(PSA_COMPANY, "Example Ltd")
    consumed = {cloud.skus[sku]["skuPartNumber"]: n for sku, n in cloud.consumed().items()}
    psa.add_agreement(PSA_AGREEMENT, PSA_COMPANY, {addition: (sku, consumed.get(sku, 0))
                                                   for sku, addition in BILLING.items()})
    for p in company.people:
        psa.add_contact(PSA_COMPANY, p.given, p.surname, p.email)
        if p.leaves_on:
            psa.add_ticket(PSA_COMPANY, f"Offboard: {p.email}")


def populate_pax8(pax8: Pax8, company: Company, cloud: Microsoft365) -> None:
    """The seats assigned today, bought through Pax8: E3 on an annual commitment half-way through its term
    (nothing freed is cut before it renews), Business Premium monthly, renewing every month."""
    consumed = {cloud.skus[sku]["skuPartNumber"]: n for sku, n in cloud.consumed().items()}
    midnight = dt.datetime.combine(company.today, dt.time(0), dt.timezone.utc)
    pax8.add_subscription(PAX8_COMPANY, "SPE_E3", consumed.get("SPE_E3", 0), term="Annual",
                          start=midnight - dt.timedelta(days=180), ends=midnight + dt.timedelta(days=185))
    pax8.add_subscription(PAX8_COMPANY, "O365_BUSINESS_PREMIUM", consumed.get("O365_BUSINESS_PREMIUM", 0),
                          start=midnight - dt.timedelta(days=40))


def populate_bamboohr(hr: BambooHR, company: Company) -> None:
    steps = {"terminate": hr.terminate, "move": hr.change_termination_date, "rehire": hr.rehire}
    for p in company.people:
        eid = hr.hire(p.number, p.email, p.given, p.surname, p.manager, on=HIRED)
        for what, day in p.history:
            if what == "withdraw":
                hr.cancel_termination(eid)
            else:
                steps[what](eid, day)


def populate_workday(wd: Workday, company: Company) -> None:
    """The report lists who is leaving now: a withdrawn termination or a rehire is not in it."""
    for p in company.people:
        if p.leaves_on:
            wd.hire(p.number, p.given, p.surname, p.email, p.manager)
            wd.terminate(p.number, p.leaves_on, "Terminate Employee > Involuntary > Misconduct"
                         if p.leaver == "immediate" else "Terminate Employee > Voluntary > Resignation")


def populate_ringcentral(rc: RingCentral, company: Company) -> None:
    for n, p in enumerate(company.people):
        rc.add_extension(p.email, p.given, p.surname, numbers=(f"+1312{n:07d}",),
                         voicemail_ages=VOICEMAIL_HOURS if p.leaver else ())


def write_config(world: World, url: str, folder: Path, *, connector: str = "", tenant_keys: str = "",
                 sources: tuple[dict, ...] = (), providers: tuple[dict, ...] = (), psa: dict | None = None,
                 by: str = "offboard sandbox") -> Path:
    """A config whose tenant reads BambooHR, offboards in Entra, Exchange and RingCentral, bills in ConnectWise and
    cuts seats at Pax8, all in the sandbox. `offboard demo` adds to it: `connector` keys and sections after the
    state file, `tenant_keys`, `sources` after BambooHR, `providers` before Entra (a hybrid tenant's AD comes
    first), `psa` keys."""
    cloud, hr, wd, rc, cw = world.cloud, world.bamboohr, world.workday, world.ringcentral, world.connectwise
    subscriptions = {sub["productName"]: sub["id"] for sub in world.pax8.subscriptions.values()}
    distributor = {"type": "pax8", "base_url": f"{url}/pax8", "client_id": world.pax8.client_id,
                   "client_secret": secret_file(folder, "pax8-client-secret", world.pax8.client_secret)}
    cloud.urls = {name: f"{url}/{name}" for name in cloud.urls}
    psa_block = {"type": "connectwise", "url": f"{url}/connectwise", "company": cw.company,
                 "public_key": secret_file(folder, "cw-public-key", cw.public_key),
                 "private_key": secret_file(folder, "cw-private-key", cw.private_key),
                 "client_id": secret_file(folder, "cw-client-id", cw.client_id), **(psa or {})}
    m365 = cloud.provider_block(secret_file(folder, "m365-client-secret", cloud.app.secret))
    workday = {"type": "workday", "url": f"{url}/workday{wd.report_path()}", "username": wd.username,
               "password": secret_file(folder, "workday-password", wd.password)}
    config = folder / "config.toml"
    config.write_text(
        config_head(folder, f"written by `{by}`: Example Ltd ({len(world.company.people)} people) at "
                            f"{url}; the connector trusts it through REQUESTS_CA_BUNDLE={folder / 'tls' / 'ca.pem'}",
                    f"psa_company_id = {PSA_COMPANY}\npsa_agreement_id = {PSA_AGREEMENT}\n"
                    f'pax8_company_id = "{PAX8_COMPANY}"\n{tenant_keys}', connector)
        + toml_table("tenant.source", {"type": "bamboohr", "base_url": f"{url}/bamboohr",
                                       "api_key": secret_file(folder, "bamboohr-api-key", hr.api_key)})
        + "".join("\n" + toml_table("tenant.source", block) for block in sources)
        + "\n# the same leavers from Workday instead (the report lists no withdrawn or rehired person):\n"
        + "".join(f"# {line}\n" for line in toml_table("tenant.source", workday).splitlines())
        + "".join("\n" + toml_table("tenant.provider", block) for block in providers)
        + "\n" + toml_table("tenant.provider", {"type": "entra", **m365})
        + "\n" + toml_table("tenant.provider", {"type": "exchange_online", **m365})
        + "\n" + toml_table("tenant.provider", {
            "type": "ringcentral", "server_url": f"{url}/ringcentral", "client_id": rc.client_id,
            "client_secret": secret_file(folder, "ringcentral-client-secret", rc.client_secret),
            "jwt": secret_file(folder, "ringcentral-jwt", rc.jwt), "voicemail_archive": folder / "voicemail"})
        + "\n[tenant.billing]\n" + "".join(f"{sku} = {addition}\n" for sku, addition in BILLING.items())
        + "\n[tenant.pax8_subscriptions]\n" + "".join(f'{sku} = "{sid}"\n' for sku, sid in subscriptions.items())
        + "\n" + toml_table("psa", psa_block).replace("[[psa]]", "[psa]")
        + "\n" + toml_table("distributor", distributor).replace("[[distributor]]", "[distributor]"))
    return config


def main(args) -> int:
    """`offboard sandbox [--port N] [--size N]`: serve until interrupted."""
    try:
        world = build(args.size)
    except ValueError as e:
        raise ConfigError(str(e), "--size") from None
    folder = Path(tempfile.mkdtemp(prefix="offboard-sandbox-"))
    try:
        with HttpsServer(world.sandbox, folder / "tls", port=args.port) as server:
            config = write_config(world, server.url, folder)
            leavers = world.company.leavers()
            print(textwrap.dedent(f"""\
                Example Ltd: {len(world.company.people)} people, {len(leavers)} leavers in HR, served at {server.url}
                  login, graph, exchange, bamboohr, workday, ringcentral, connectwise, pax8 below it; the write log at {server.url}/_sandbox/writes
                config: {config}
                Try it:
                  export REQUESTS_CA_BUNDLE={server.ca_file}
                  offboard --config {config} check --online
                  offboard --config {config} plan
                  offboard --config {config} reconcile --once
                  offboard --config {config} status --all
                Ctrl-C stops the sandbox and removes {folder}.
                """), flush=True)
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            while not stop.wait(1):
                pass
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0
