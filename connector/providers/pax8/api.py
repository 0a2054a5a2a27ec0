"""The Pax8 partner API client: its OAuth client-credentials token, and its error answers.

`POST {base_url}/token` with `client_id`, `client_secret`, `audience` and
`grant_type=client_credentials` answers a bearer token that lives a day (`expires_in` 86400): it is
kept in this process until a minute before it expires, shared by every tenant's provider (one
distributor account serves the MSP), and keyed by the SHA-256 of the secret, so a rotated secret
gets a new token at once. A token the API refuses is dropped and asked for again, once; a refused
credential is a config error naming the keys to check, never their values. Errors and retries
(429 with Retry-After, 5xx) are connector/http.py's one table.
"""
from __future__ import annotations

import hashlib
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import requests

from ... import http
from ...config import DistributorSettings, remember_secret
from ...errors import ConfigError, PermanentError

EARLY = 60.0             # seconds before expiry a token is renewed
#: (base URL, client id, audience, SHA-256 of the secret) -> (token, expires at, Unix time)
tokens: dict[tuple[str, str, str, str], tuple[str, float]] = {}
_lock = threading.Lock()


class Pax8(http.JsonClient):
    def __init__(self, settings: DistributorSettings, where: str = ""):
        super().__init__(settings.base_url, where or f"distributor ({urlsplit(settings.base_url).hostname})")
        self.settings = settings

    def _describe(self, resp: requests.Response) -> str:
        if resp.status_code in http.CONFIG:
            s = self.settings
            return (f"Pax8 refused the distributor's credentials (check [distributor] client_id {s.client_id!r}, "
                    f"client_secret {s.client_secret.ref}, audience {s.audience!r}, and that the API key may "
                    "read and update this company's subscriptions)")
        return self.message(resp)

    # -- the token -----------------------------------------------------------------------------
    def _key(self, secret: str) -> tuple[str, str, str, str]:
        s = self.settings
        return self.base, s.client_id, s.audience, hashlib.sha256(secret.encode()).hexdigest()

    def token(self) -> str:
        secret = self.settings.client_secret.reveal()
        key = self._key(secret)
        with _lock:
            held = tokens.get(key)
            if held and held[1] - EARLY > time.time():
                return held[0]
        resp = http.send(self._session(), "POST", f"{self.base}/token", self.where, describe=self._describe,
                         json={"client_id": self.settings.client_id, "client_secret": secret,
                               "audience": self.settings.audience, "grant_type": "client_credentials"})
        body = self._json(resp, "POST /token")
        token, ttl = body.get("access_token") if isinstance(body, dict) else None, body.get("expires_in", 0)
        if not isinstance(token, str) or not token or isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
            raise PermanentError("POST /token did not answer an access_token and expires_in", self.where)
        remember_secret(token)
        with _lock:
            tokens[key] = (token, time.time() + ttl)
        return token

    def forget_token(self) -> None:
        with _lock:
            tokens.pop(self._key(self.settings.client_secret.reveal()), None)

    # -- requests ------------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        for last in (False, True):
            headers = {"Authorization": f"Bearer {self.token()}"}
            try:
                resp = http.send(self._session(), method, self.base + path, self.where, describe=self._describe,
                                 headers=headers, **kwargs)
            except ConfigError:
                if last:
                    raise
                self.forget_token()     # revoked or expired early: one fresh token, then it is the credential
                continue
            return self._json(resp, f"{method} {path}") if resp.content else None

    # -- the objects the connector uses ----------------------------------------------------------
    def subscription(self, subscription_id: str) -> dict:
        found = self.request("GET", f"/subscriptions/{subscription_id}")
        if not isinstance(found, dict):
            raise PermanentError(f"GET /subscriptions/{subscription_id}: not an object", self.where)
        return found

    def history(self, subscription_id: str) -> list[dict]:
        body = self.request("GET", f"/subscriptions/{subscription_id}/history")
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, list):
            raise PermanentError(f"GET /subscriptions/{subscription_id}/history: expected content", self.where)
        return content

    def set_quantity(self, subscription_id: str, quantity: int) -> dict:
        return self.request("PUT", f"/subscriptions/{subscription_id}", json={"quantity": quantity})

    def check(self, company_id: str) -> None:
        """One read that proves the credential: the first page of the company's subscriptions."""
        self.request("GET", "/subscriptions", params={"companyId": company_id, "page": 0, "size": 1})
