"""The ConnectWise Manage REST client: its auth headers, its paging and its error answers.

Every request carries `Authorization: Basic base64("{company}+{public}:{private}")` and the
`clientId` of the integration. Lists are read `pageSize=1000` at a time (the most Manage
gives) and followed by the `Link: <...>; rel="next"` header, only ever to the configured host,
so a hostile header cannot send the keys elsewhere. ConnectWise publishes no rate figure: a
429 is honoured through its Retry-After by connector/http.py's one table, nothing is paced
here. A refused key names the keys to check, never their values.
"""
from __future__ import annotations

import base64
import re
from typing import Any, Iterator
from urllib.parse import urlsplit

import requests

from ... import http
from ...config import PsaSettings
from ...errors import ConfigError, PermanentError

PAGE_SIZE = 1000
NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?', re.IGNORECASE)


class ConnectWise(http.JsonClient):
    def __init__(self, settings: PsaSettings, where: str = ""):
        super().__init__(settings.url, where or f"psa ({urlsplit(settings.url).hostname})")
        self.settings = settings

    def headers(self) -> dict[str, str]:
        s = self.settings
        user = f"{s.company}+{s.public_key.reveal()}:{s.private_key.reveal()}"
        return {"Authorization": "Basic " + base64.b64encode(user.encode()).decode(),
                "clientId": s.client_id.reveal(), "Accept": "application/json"}

    def _describe(self, resp: requests.Response) -> str:
        if resp.status_code in http.CONFIG:
            s = self.settings
            return (f"ConnectWise refused the API member keys (check [psa] company {s.company!r}, public_key "
                    f"{s.public_key.ref}, private_key {s.private_key.ref}, client_id {s.client_id.ref}, and the "
                    f"member's security role)")
        return self.message(resp)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        url = path if path.startswith(self.base + "/") else self.base + path
        resp = http.send(self._session(), method, url, self.where, describe=self._describe, **kwargs)
        return self._json(resp, f"{method} {path}") if resp.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def patch(self, path: str, operations: list[dict]) -> Any:
        return self.request("PATCH", path, json=operations)

    def post(self, path: str, body: dict) -> Any:
        return self.request("POST", path, json=body)

    def pages(self, path: str, **params: Any) -> Iterator[dict]:
        """Every item of a list, page by page through the Link header."""
        url, query = self.base + path, {**params, "page": 1, "pageSize": PAGE_SIZE}
        while url:
            resp = http.send(self._session(), "GET", url, self.where, describe=self._describe, params=query)
            items = self._json(resp, f"GET {path}")
            if not isinstance(items, list):
                raise PermanentError(f"GET {path}: expected a list, got {type(items).__name__}", self.where)
            yield from items
            url, query = self._next(resp.headers.get("Link", "")), None

    def _next(self, link: str) -> str | None:
        found = NEXT.search(link)
        if not found:
            return None
        url = found.group(1)
        if not url.startswith(self.base + "/"):
            raise PermanentError(f"a Link header points away from {self.base}: not followed", self.where)
        return url

    # -- the objects the connector uses --------------------------------------------------
    def contacts(self, company_id: int, email: str) -> list[dict]:
        return list(self.pages("/company/contacts", conditions=f"company/id={int(company_id)}",
                               childConditions=f'communicationItems/value={quoted(email)} AND '
                                               'communicationItems/communicationType="Email"'))

    def ticket(self, ticket_id: int) -> dict:
        return self.get(f"/service/tickets/{int(ticket_id)}")

    def add_note_once(self, ticket_id: int, text: str, tag: str) -> bool:
        """Post an internal note unless one carrying `tag` is on the ticket already. True: posted."""
        if any(tag in str(n.get("text", "")) for n in self.pages(f"/service/tickets/{int(ticket_id)}/notes")):
            return False
        self.post(f"/service/tickets/{int(ticket_id)}/notes",
                  {"text": text, "internalAnalysisFlag": True, "detailDescriptionFlag": False,
                   "resolutionFlag": False})
        return True

    def check(self) -> None:
        """One read that proves the keys: the system info every member may read."""
        info = self.get("/system/info")
        if not isinstance(info, dict):
            raise ConfigError("GET /system/info did not answer an object: is [psa] url the API root "
                              "(https://SITE/v4_6_release/apis/3.0)?", self.where)


def quoted(value: str) -> str:
    """A string literal of ConnectWise's conditions language."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
