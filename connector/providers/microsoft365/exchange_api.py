"""The one adapter for Exchange Online's admin endpoint (not publicly documented, so kept small).

`POST {exchange_url}/adminapi/beta/{tenant_id}/InvokeCommand` runs one cmdlet, body
`{"CmdletInput": {"CmdletName": ..., "Parameters": {...}}}`; answers are `value` lists
paged with `@odata.nextLink`; failures carry the cmdlet's own words in
`error.details[].message`. `X-AnchorMailbox` routes the call to the mailbox's server.
The endpoint has no batching, so many calls run side by side within the tenant's limit.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests

from ... import http
from ...errors import OffboardError, PermanentError
from .auth import Tokens
from .graph import CONCURRENCY, tenant_slots

#: the cmdlets' words for "no such object" and "not a member": both mean there is nothing to do
NOT_FOUND = ("couldn't be found", "isn't a member")


@dataclass(frozen=True)
class Cmdlet:
    """One cmdlet call; `anchor` is the mailbox (UPN or SMTP address) it acts on, if any."""

    name: str
    parameters: tuple[tuple[str, Any], ...] = ()
    anchor: str = ""

    @classmethod
    def of(cls, name: str, anchor: str = "", **parameters: Any) -> "Cmdlet":
        return cls(name, tuple(parameters.items()), anchor)


def _describe(resp: requests.Response) -> str:
    try:
        error = resp.json().get("error") or {}
    except (ValueError, AttributeError):
        return resp.reason or ""
    details = [d.get("message", "") for d in error.get("details") or [] if isinstance(d, dict)]
    return "; ".join(m for m in details if m) or error.get("message") or resp.reason or ""


class ExchangeAdmin:
    def __init__(self, exchange_url: str, tenant_id: str, tokens: Tokens, where: str):
        self.url = f"{exchange_url.rstrip('/')}/adminapi/beta/{tenant_id}/InvokeCommand"
        self.tenant_id = tenant_id
        self.tokens = tokens
        self.where = where
        self.slots = tenant_slots(tenant_id)
        self.session = http.session()

    def invoke(self, cmdlet: Cmdlet) -> list[dict]:
        """Every object the cmdlet returns; raises the typed error of the HTTP table."""
        body = {"CmdletInput": {"CmdletName": cmdlet.name, "Parameters": dict(cmdlet.parameters)}}
        anchor = cmdlet.anchor or f"SystemMailbox{{bb558c35-97f1-4cb9-8ff7-d53741dc928c}}@{self.tenant_id}"
        url, out = self.url, []
        while url:
            headers = {**self.tokens.header(), "X-AnchorMailbox": f"UPN:{anchor}"}
            try:
                with self.slots:
                    resp = http.send(self.session, "POST", url, f"{self.where} {cmdlet.name}", describe=_describe,
                                     json=body, headers=headers)
            except PermanentError as e:
                if any(marker in e.message for marker in NOT_FOUND):
                    raise http.NotFound(e.message, e.where) from None
                raise
            page = resp.json() if resp.content else {}
            out.extend(page.get("value", []))
            url = page.get("@odata.nextLink")
        return out

    def invoke_many(self, cmdlets: list[Cmdlet]) -> list[list[dict] | OffboardError]:
        """Run cmdlets side by side; one answer or typed error per cmdlet, in order."""
        def one(cmdlet: Cmdlet) -> list[dict] | OffboardError:
            try:
                return self.invoke(cmdlet)
            except OffboardError as e:
                return e

        if len(cmdlets) <= 1:
            return [one(c) for c in cmdlets]
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            return list(pool.map(one, cmdlets))
