"""The sandbox over HTTPS in the test's process, and a config for `offboard serve` against it.

The daemon tests and the benchmarks share this: a generated company in Microsoft 365, a
config whose tenants take signed webhooks and offboard in Entra and Exchange, and the
sandbox's write log to count what the daemon really changed. Driving the daemon itself
(`Daemon`, signed webhooks) lives in connector.sandbox.serving, which `offboard demo` uses too.
"""
from __future__ import annotations

import contextlib
import os
import textwrap
from pathlib import Path

from connector.sandbox import world as worldmod
from connector.sandbox.company import Employee
from connector.sandbox.configs import TENANT, secret_file, toml_table
from connector.sandbox.server import HttpsServer
from connector.sandbox.serving import (CALLBACK_TOKEN, HOOK_SECRET, Daemon,  # noqa: F401 (shared with the benchmarks)
                                       cloud_only_stayers, signed, wait_until, webhook_body, whole_minute_after)


def independent_leavers(world: worldmod.World, count: int) -> list[Employee]:
    """People whose whole offboarding the cloud can do, none the manager of another: each hand-over has
    a successor who stays."""
    stayers = cloud_only_stayers(world)
    managers = {p.manager.lower() for p in stayers if p.manager}
    return [p for p in stayers if p.email.lower() not in managers][:count]


@contextlib.contextmanager
def sandbox_daemon_setup(folder: Path, size: int = 60, tenants: int = 1, poll_interval: str = "1h",
                         connector: str = "", psa: bool = False, state: str = "", tenant_extra: str = ""):
    """The sandbox over HTTPS and a config for `tenants` tenants (all in the one generated Microsoft 365
    tenant, each with its own webhook secret; with `psa`, the first is a ConnectWise company whose
    callbacks carry CALLBACK_TOKEN); `state` is a PostgreSQL URL (else a SQLite file in `folder`); `tenant_extra`
    is added to every tenant's block; yields (world, config path, env for the daemon)."""
    world = worldmod.build(size)
    with HttpsServer(world.sandbox, folder / "tls") as server:
        cloud = world.cloud
        cloud.urls = {name: f"{server.url}/{name}" for name in cloud.urls}
        m365 = cloud.provider_block(secret_file(folder, "m365-client-secret", cloud.app.secret))
        hook = secret_file(folder, "webhook-secret", HOOK_SECRET)
        text = textwrap.dedent(f"""\
            [connector]
            state = "{state or folder / 'state.db'}"
            poll_interval = "{poll_interval}"
            lease_seconds = 3
            {connector}
            [webhook]
            listen = "127.0.0.1:0"
            """)
        for i in range(tenants):
            text += textwrap.dedent(f"""
                [[tenant]]
                id = "{TENANT if i == 0 else f'{TENANT}{i}'}"
                name = "Example Ltd"
                timezone = "UTC"
                webhook_secret = "{hook}"
                {tenant_extra}
                {f"psa_company_id = {worldmod.PSA_COMPANY}" if psa and i == 0 else ""}
                [[tenant.source]]
                type = "webhook"
                """) + toml_table("tenant.provider", {"type": "entra", **m365}) \
                + toml_table("tenant.provider", {"type": "exchange_online", **m365})
        if psa:
            cw = world.connectwise
            text += "\n" + toml_table("psa", {
                "type": "connectwise", "url": f"{server.url}/connectwise", "company": cw.company,
                "public_key": secret_file(folder, "cw-public-key", cw.public_key),
                "private_key": secret_file(folder, "cw-private-key", cw.private_key),
                "client_id": secret_file(folder, "cw-client-id", cw.client_id),
                "callback_token": secret_file(folder, "cw-callback-token", CALLBACK_TOKEN)}).replace("[[psa]]", "[psa]")
        config = folder / "config.toml"
        config.write_text(text)
        env = dict(os.environ, REQUESTS_CA_BUNDLE=str(server.ca_file))
        env.pop("NOTIFY_SOCKET", None)
        yield world, config, env
