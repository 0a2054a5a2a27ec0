"""Microsoft 365 as the sandbox serves it: one tenant and the three systems in front of it.

The identity platform (`login`), Graph (`graph`) and the Exchange admin endpoint
(`exchange`) share the tenant's state and one list of the calls they answered, in order,
as `(service, method, path or cmdlet)`. `urls` are the base URLs a client configures: the
vendor's own behind `responses`, the sandbox server's over HTTPS.
"""
from __future__ import annotations

from .exchange import Exchange
from .graph import Graph
from .identity import App, Identity
from .tenant import Tenant
from .web import Sandbox, System

TENANT_ID = "7f3c2a9e-1111-4c2b-9d7e-0a1b2c3d4e5f"
CLIENT_ID = "5b8e1d2c-2222-4e3f-8a9b-1c2d3e4f5a6b"
#: where each system lives in the real world: what a test behind `responses` answers
VENDOR_URLS = {"login": "https://login.microsoftonline.com", "graph": "https://graph.microsoft.com",
               "exchange": "https://outlook.office365.com"}


class Microsoft365(Tenant):
    """A tenant, with the app registration the connector signs in as, and the systems that serve it."""

    def __init__(self, tenant_id: str = TENANT_ID, domain: str = "contoso.com", *, client_id: str = CLIENT_ID,
                 secret: str | None = None, thumbprint: str | None = None):
        super().__init__(tenant_id, domain)
        self.client_id = client_id
        tenants = {tenant_id: self}
        self.identity = Identity()
        self.graph = Graph(self.identity, tenants)
        self.exchange = Exchange(self.identity, tenants)
        self.calls: list[tuple[str, str, str]] = []
        for system in self.systems:
            system.calls = self.calls
        self.identity.register(tenant_id, client_id, secret=secret, thumbprint=thumbprint)
        self.urls = dict(VENDOR_URLS)

    @property
    def app(self) -> App:
        """The app registration the connector signs in as."""
        return self.identity.apps[(self.tenant_id, self.client_id)]

    @property
    def systems(self) -> tuple[System, ...]:
        return self.identity, self.graph, self.exchange

    def mount(self, sandbox: Sandbox) -> Sandbox:
        for system in self.systems:
            sandbox.add(system)
        return sandbox

    @property
    def violations(self) -> list[str]:
        return [v for system in self.systems for v in system.violations]

    @property
    def tokens(self) -> dict:
        return self.identity.tokens

    def token(self, resource_url: str) -> str:
        """A bearer token for the app, as if msal had asked for `resource_url/.default`."""
        return self.identity.issue(self.tenant_id, self.client_id, f"{resource_url.rstrip('/')}/.default")

    def count(self, service: str, method: str | None = None) -> int:
        return sum(1 for s, m, _ in self.calls if s == service and (method is None or m == method))

    def provider_block(self, client_secret_ref: str) -> dict:
        """What `[[tenant.provider]]` of type entra or exchange_online says to reach this tenant."""
        return {"tenant_id": self.tenant_id, "client_id": self.client_id, "client_secret": client_secret_ref,
                "authority": self.urls["login"], "graph_url": self.urls["graph"], "exchange_url": self.urls["exchange"]}
