"""The one adapter for Exchange Online's admin endpoint (not publicly documented, so kept small).

`POST {exchange_url}/adminapi/beta/{tenant_id}/InvokeCommand` runs one cmdlet, body
`{"CmdletInput": {"CmdletName": ..., "Parameters": {...}}}`; answers are `value` lists
paged with `@odata.nextLink`; failures carry the cmdlet's own words in
`error.details[].message`. `X-AnchorMailbox` routes the call: `UPN:{mailbox}` for a
cmdlet about one mailbox, and for tenant-level cmdlets the app-only default anchor, the
organization's system mailbox (the same GUID in every tenant), as Microsoft's own module
and CIPP send it. The endpoint has no batching, so many calls run side by side within
the tenant's limit.

A refused call names what the app lacks: a token without the `Exchange.ManageAsApp`
application permission is answered 401 with `x-ms-diagnostics` saying it carries no
permissions; a service principal with no Exchange role hears "not allowed to call".
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests

from ... import http
from ...errors import OffboardError, PermanentError
from .auth import Tokens
from .graph import CONCURRENCY, NextLinks, error_body, json_object, page_items, tenant_slots

#: the cmdlets' words for "no such object" and "not a member": both mean there is nothing to do
NOT_FOUND = ("couldn't be found", "isn't a member")
SYSTEM_MAILBOX = "SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}"
#: (words in a 401/403, what the app lacks)
REFUSALS = (
    (("contains no permissions", "roles claim", "ManageAsApp"),
     "the Exchange.ManageAsApp application permission (Office 365 Exchange Online API, with admin consent)"),
    (("not allowed to call", "isn't assigned to any management roles", "role assigned to application"),
     "an Exchange role for the app's service principal (e.g. the Exchange Administrator role)"),
)


@dataclass(frozen=True)
class Cmdlet:
    """One cmdlet call; `anchor` is the mailbox (UPN or SMTP address) it acts on; none for tenant-level cmdlets."""

    name: str
    parameters: tuple[tuple[str, Any], ...] = ()
    anchor: str = ""

    @classmethod
    def of(cls, name: str, anchor: str = "", **parameters: Any) -> "Cmdlet":
        return cls(name, tuple(parameters.items()), anchor)


def _describe(resp: requests.Response) -> str:
    error = error_body(resp).get("error")
    error = error if isinstance(error, dict) else {}
    details = [d.get("message", "") for d in error.get("details") or [] if isinstance(d, dict)]
    text = "; ".join(m for m in details if m) or error.get("message") or resp.reason or ""
    diagnostics = re.search(r'reason="([^"]*)"', resp.headers.get("x-ms-diagnostics", ""))
    if diagnostics:
        text = f"{text}: {diagnostics.group(1)}"
    if resp.status_code in http.CONFIG:
        lacking = [what for words, what in REFUSALS if any(w.lower() in text.lower() for w in words)]
        text += f" (missing: {' or '.join(lacking or [w for _, w in REFUSALS])})"
    return text


class ExchangeAdmin:
    def __init__(self, exchange_url: str, tenant_id: str, tokens: Tokens, where: str):
        self.base = exchange_url.rstrip("/")
        self.url = f"{self.base}/adminapi/beta/{tenant_id}/InvokeCommand"
        self.tenant_id = tenant_id
        self.tokens = tokens
        self.where = where
        self.slots = tenant_slots("exchange", tenant_id)
        self.session = http.session()

    def anchor(self, cmdlet: Cmdlet) -> str:
        return f"UPN:{cmdlet.anchor}" if cmdlet.anchor else f"APP:{SYSTEM_MAILBOX}@{self.tenant_id}"

    def invoke(self, cmdlet: Cmdlet) -> list[dict]:
        """Every object the cmdlet returns; raises the typed error of the HTTP table."""
        body = {"CmdletInput": {"CmdletName": cmdlet.name, "Parameters": dict(cmdlet.parameters)}}
        where = f"{self.where} {cmdlet.name}"
        links = NextLinks(self.base, self.url, where)
        url, out = self.url, []
        while url:
            headers = {**self.tokens.header(), "X-AnchorMailbox": self.anchor(cmdlet)}
            try:
                with self.slots:
                    resp = http.send(self.session, "POST", url, where, describe=_describe, json=body, headers=headers)
            except PermanentError as e:
                if any(marker in e.message for marker in NOT_FOUND):
                    raise http.NotFound(e.message, e.where) from None
                raise
            page = json_object(resp.content, where)
            out.extend(page_items(page, where))
            url = page.get("@odata.nextLink") and links.check(page["@odata.nextLink"])
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
