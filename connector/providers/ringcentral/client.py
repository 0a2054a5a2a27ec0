"""RingCentral REST client: the JWT bearer grant, one cached token, and the rate-limit groups.

The token endpoint allows about five calls a minute (the Auth group), so one token per
app and JWT is kept for the process until a minute before it expires, shared by every
provider instance and pass; a 401 on an API call drops it and asks once more. Every
answer names its rate-limit group in `X-Rate-Limit-*`: a group seen spent is not asked
again until its window refills (a short wait is taken here, a long one becomes
RetryableError so the engine parks the action), and a 429's Retry-After goes through
`connector.http`'s one table. A refused grant names the credential that was refused by
its key path, never its value.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import requests

from ... import http
from ...config import Secret
from ...errors import ConfigError, PermanentError, RetryableError
from ..microsoft365.graph import error_body, json_object

TOKEN_PATH = "/restapi/oauth/token"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
EARLY = 60.0                       # seconds before expiry a cached token is replaced

_tokens: dict[tuple[str, str, str], tuple[str, float]] = {}     # (server, client id, jwt ref) -> (token, expiry)
_tokens_lock = threading.Lock()


def oauth_error(resp: requests.Response) -> str:
    """The OAuth `error` of a refused grant: `invalid_client` (the app's id or secret) or `invalid_grant` (the JWT)."""
    return str(error_body(resp).get("error") or "")


def describe(resp: requests.Response) -> str:
    """RingCentral's `errorCode: message` (or the OAuth `error: error_description`)."""
    body = error_body(resp)
    code = body.get("errorCode") or body.get("error") or ""
    message = body.get("message") or body.get("error_description") or ""
    return f"{code}: {message}".strip(": ") or resp.reason or ""


class RingCentralClient:
    def __init__(self, server_url: str, client_id: str, client_secret: Secret, jwt: Secret, where: str):
        self.base = server_url.rstrip("/")
        self.client_id, self.client_secret, self.jwt = client_id, client_secret, jwt
        self.where = where
        self.session = http.session()
        self.key = (self.base, client_id, jwt.ref)
        self.spent_until: dict[str, float] = {}       # rate-limit group -> monotonic time its window refills
        self.groups: dict[str, str] = {}              # "METHOD route" -> the group RingCentral named for it

    # -- the token ---------------------------------------------------------------------
    def token(self) -> str:
        with _tokens_lock:
            cached = _tokens.get(self.key)
            if cached and cached[1] > time.monotonic():
                return cached[0]
            body = json_object(self._post_token().content, self.where)
            try:
                token, lifetime = str(body["access_token"]), http.bounded_delay(float(body.get("expires_in", 3600)))
            except (ValueError, KeyError, TypeError):
                raise PermanentError("the token endpoint answered without an access_token", self.where) from None
            _tokens[self.key] = (token, time.monotonic() + max(0.0, lifetime - EARLY))
            return token

    def _post_token(self) -> requests.Response:
        where = f"{self.where} POST {TOKEN_PATH}"
        http.require_tls(self.base, where)
        try:
            resp = self.session.post(self.base + TOKEN_PATH, timeout=http.TIMEOUT,
                                     auth=(self.client_id, self.client_secret.reveal()),
                                     data={"grant_type": JWT_GRANT, "assertion": self.jwt.reveal()})
        except requests.RequestException as e:
            raise RetryableError(f"token endpoint unreachable: {type(e).__name__}", where, delay=30) from None
        if resp.status_code in (400, 401):
            error = oauth_error(resp)
            refused = (f"client_id / client_secret ({self.client_secret.where or 'client_secret'} = "
                       f"{self.client_secret.ref})" if error == "invalid_client" else
                       f"the JWT credential ({self.jwt.where or 'jwt'} = {self.jwt.ref})")
            raise ConfigError(f"RingCentral refused {refused}: HTTP {resp.status_code} {error}: {describe(resp)}",
                              where)
        err = http.error_for(resp.status_code, describe(resp), where, http.retry_after(resp, 60.0))
        if err:
            raise err
        return resp

    def forget_token(self) -> None:
        with _tokens_lock:
            _tokens.pop(self.key, None)

    # -- requests ------------------------------------------------------------------------
    def request(self, method: str, path: str, *, params: dict | None = None, body: Any = None,
                raw: bool = False) -> Any:
        """One call below the server URL; the JSON answer, or the bytes with `raw`."""
        route = f"{method} {_route(path)}"
        where = f"{self.where} {route}"
        self._wait_for_group(self.groups.get(route), where)
        try:
            resp = self._send(method, path, where, params, body)
        except ConfigError as e:
            if "HTTP 401" not in e.message:
                raise ConfigError(f"{e.message} (the app lacks a permission for this call: see the README's "
                                  "RingCentral app scopes)", e.where) from None
            self.forget_token()                  # expired or revoked early: one new token, once
            try:
                resp = self._send(method, path, where, params, body)
            except ConfigError as again:
                raise ConfigError(f"{again.message} (the token from the JWT in {self.jwt.where or 'jwt'} = "
                                  f"{self.jwt.ref})", again.where) from None
        self._note_group(resp, route)
        return resp.content if raw else json_object(resp.content, where)

    def _send(self, method: str, path: str, where: str, params: dict | None, body: Any) -> requests.Response:
        return http.send(self.session, method, self.base + path, where, describe=describe, params=params, json=body,
                         headers={"Authorization": f"Bearer {self.token()}"})

    def _note_group(self, resp: requests.Response, route: str) -> None:
        headers = resp.headers
        group = headers.get("X-Rate-Limit-Group")
        if not group:
            return
        self.groups[route] = group
        try:
            remaining, window = int(headers.get("X-Rate-Limit-Remaining", "1")), float(
                headers.get("X-Rate-Limit-Window", "60"))
        except ValueError:
            return
        if remaining <= 0:
            self.spent_until[group] = time.monotonic() + http.bounded_delay(window)

    def _wait_for_group(self, group: str | None, where: str) -> None:
        wait = self.spent_until.get(group, 0.0) - time.monotonic() if group else 0.0
        if wait <= 0:
            return
        if wait > http.INLINE_WAIT_LIMIT:
            raise RetryableError(f"the {group} rate-limit group is spent for {wait:.0f} s", where, delay=wait)
        time.sleep(wait)


def _route(path: str) -> str:
    """`/restapi/v1.0/account/~/extension/6201/answering-rule` -> `.../extension/{id}/answering-rule`: the group key."""
    parts = path.split("?", 1)[0].split("/")
    return "/".join("{id}" if part.isdigit() else part for part in parts)
