"""The Microsoft identity platform's endpoints msal calls for an app-only token.

msal stays real: it reads the tenant's OpenID configuration (and, for a host it knows,
the instance discovery document first), then posts the client-credentials grant. Like
Entra, the token endpoint refuses an unknown tenant, an unknown app, a wrong secret, a
client assertion not made for this endpoint with a registered certificate, and a scope that
is not `RESOURCE/.default`. Tokens are opaque here and bound to tenant, app and resource:
Graph and Exchange ask `grant()` whether a bearer token is good for them.
"""
from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from .web import Request, Response, System, json_response, retry_after_header

TOKEN_SECONDS = 3599
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True)
class App:
    tenant_id: str
    client_id: str
    secret: str | None = None
    thumbprint: str | None = None     # hex SHA-1 of the certificate uploaded to the app registration


@dataclass(frozen=True)
class Grant:
    tenant_id: str
    client_id: str
    scope: str                        # "https://graph.microsoft.com/.default"
    expires: float                    # Unix time


def _error(status: int, error: str, code: str, description: str) -> Response:
    return json_response(status, {"error": error, "error_description": f"{code}: {description}\r\nTrace ID: sandbox",
                                  "error_codes": [int(code.removeprefix("AADSTS"))]})


def _jwt_part(text: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


class Identity(System):
    name = "login"

    def __init__(self):
        super().__init__()
        self.apps: dict[tuple[str, str], App] = {}
        self.tenants: set[str] = set()
        self.tokens: dict[str, Grant] = {}

    def register(self, tenant_id: str, client_id: str, *, secret: str | None = None,
                 thumbprint: str | None = None) -> App:
        app = App(tenant_id, client_id, secret, thumbprint.lower() if thumbprint else None)
        with self.lock:
            self.tenants.add(tenant_id)
            self.apps[(tenant_id, client_id)] = app
        return app

    def issue(self, tenant_id: str, client_id: str, scope: str) -> str:
        token = f"sandbox.{secrets.token_urlsafe(24)}"
        with self.lock:
            self.tokens[token] = Grant(tenant_id, client_id, scope, time.time() + TOKEN_SECONDS)
        return token

    def grant(self, request: Request) -> Grant | None:
        """The grant behind the request's bearer token, if it is valid for the system at `request.base`."""
        token = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
        found = self.tokens.get(token)
        if found is None or found.expires < time.time() or found.scope != f"{request.base}/.default":
            return None
        return found

    def handle(self, request: Request) -> Response:
        route = request.segments
        with self.lock:
            self.calls.append((self.name, request.method, request.path))
            if route[:1] == ["common"] and route[1:] == ["discovery", "instance"]:
                return self._instance_discovery(request)
            if not route or route[0] not in self.tenants:
                return _error(400, "invalid_request", "AADSTS90002",
                              f"Tenant '{route[0] if route else ''}' not found. Check to make sure you have the "
                              "correct tenant ID and are signing into the correct cloud.")
            tenant_id = route[0]
            wait = self.knobs.throttled(tenant_id)
            if wait is not None:
                throttled = _error(429, "temporarily_unavailable", "AADSTS50196", "The server terminated an operation "
                                   "because it encountered a client request loop.")
                throttled.headers.update(retry_after_header(wait))
                return throttled
            if request.method == "GET" and route[1:] == ["v2.0", ".well-known", "openid-configuration"]:
                return self._openid_configuration(request.base, tenant_id)
            if request.method == "POST" and route[1:] == ["oauth2", "v2.0", "token"]:
                return self._token(request, tenant_id)
            return json_response(404, {"error": "not_found"})

    def _openid_configuration(self, base: str, tenant_id: str) -> Response:
        root = f"{base}/{tenant_id}"
        return json_response(200, {
            "token_endpoint": f"{root}/oauth2/v2.0/token", "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
            "issuer": f"{root}/v2.0", "jwks_uri": f"{root}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "tenant_region_scope": "EU"})

    def _instance_discovery(self, request: Request) -> Response:
        """What msal asks a host it knows before the tenant's own document."""
        path = urlsplit(request.arg("authorization_endpoint") or "").path.strip("/").split("/")
        tenant = path[-4] if len(path) >= 4 and path[-3:] == ["oauth2", "v2.0", "authorize"] else "common"
        host = urlsplit(request.base).netloc
        return json_response(200, {
            "tenant_discovery_endpoint": f"{request.base}/{tenant}/v2.0/.well-known/openid-configuration",
            "api-version": "1.1", "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}]})

    def _token(self, request: Request, tenant_id: str) -> Response:
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "client_credentials":
            return _error(400, "unsupported_grant_type", "AADSTS70003", "The app requested an unsupported grant type.")
        app = self.apps.get((tenant_id, form.get("client_id", "")))
        if app is None:
            return _error(400, "unauthorized_client", "AADSTS700016",
                          f"Application with identifier '{form.get('client_id')}' was not found in the directory "
                          f"'{tenant_id}'.")
        if "client_assertion" in form:
            problem = self._assertion_problem(app, form, f"{request.base}/{tenant_id}/oauth2/v2.0/token")
            if problem:
                return _error(401, "invalid_client", "AADSTS700027", f"Client assertion failed validation: {problem}")
        elif app.secret is None or form.get("client_secret") != app.secret:
            return _error(401, "invalid_client", "AADSTS7000215", "Invalid client secret provided. Ensure the secret "
                          "being sent in the request is the client secret value, not the client secret ID.")
        scope = form.get("scope", "")
        if len(scope.split()) != 1 or not scope.endswith("/.default"):
            return _error(400, "invalid_scope", "AADSTS1002012", f"The provided value for scope {scope} is not "
                          "valid. Client credential flows must have a scope value with /.default suffixed to the "
                          "resource identifier (application ID URI).")
        token = self.issue(tenant_id, app.client_id, scope)
        return json_response(200, {"token_type": "Bearer", "expires_in": TOKEN_SECONDS,
                                   "ext_expires_in": TOKEN_SECONDS, "access_token": token})

    @staticmethod
    def _assertion_problem(app: App, form: dict, endpoint: str) -> str:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            return "client_assertion_type is not jwt-bearer"
        if app.thumbprint is None:
            return "the app has no certificate"
        try:
            header_b64, payload_b64, _signature = form["client_assertion"].split(".")
            header, payload = _jwt_part(header_b64), _jwt_part(payload_b64)
            shown = {base64.urlsafe_b64decode(header[k] + "=" * (-len(header[k]) % 4)).hex()
                     for k in ("x5t",) if k in header}
        except (ValueError, KeyError, binascii.Error):
            return "not a JWT"
        if app.thumbprint not in shown:
            return "the x5t thumbprint is not a certificate of the app"
        if payload.get("aud") != endpoint or payload.get("iss") != app.client_id or payload.get("sub") != app.client_id:
            return f"aud, iss and sub must be {endpoint} and the client id"
        if not isinstance(payload.get("exp"), (int, float)) or payload["exp"] < time.time():
            return "the assertion has expired"
        return ""
