"""App-only tokens for Graph and the Exchange admin endpoint, through msal.

One `ConfidentialClientApplication` (and so one token cache) per app registration
in a tenant: the Entra and Exchange providers of a tenant share it, and a token is
fetched once per hour, not once per request. The credential is read on every use and
the application kept only while its SHA-256 matches (never the value itself), so a
rotated `file:` or `credential:` secret is used from the next token on; the cache is
bounded, so tenants removed by reloads do not pile up. For an authority host msal does not
know (a national cloud it lacks, the sandbox), instance discovery is turned off:
otherwise a failed token call makes msal reach for login.microsoftonline.com.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import msal
import requests
from msal.authority import WELL_KNOWN_AUTHORITY_HOSTS

from ...errors import ConfigError, RetryableError

if TYPE_CHECKING:
    from .provider import Microsoft365Options

MAX_APPLICATIONS = 1024        # app registrations: one or two per tenant
#: (authority, tenant id, client id) -> (SHA-256 of the credential it was built with, the application), newest last
applications: OrderedDict[tuple[str, str, str], tuple[str, msal.ConfidentialClientApplication]] = OrderedDict()
_lock = threading.Lock()


def _credential(options: Microsoft365Options, where: str) -> str | dict:
    if options.client_secret is not None:
        return options.client_secret.reveal()
    try:
        key = Path(options.certificate_path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read certificate_path {options.certificate_path}: {e.strerror}", where) from None
    return {"private_key": key, "thumbprint": options.thumbprint}


def _digest(credential: str | dict) -> str:
    text = credential if isinstance(credential, str) else json.dumps(credential, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def application(options: Microsoft365Options, where: str) -> msal.ConfidentialClientApplication:
    authority = options.authority.rstrip("/")
    key = (authority, options.tenant_id, options.client_id)
    credential = _credential(options, where)
    digest = _digest(credential)
    with _lock:
        held = applications.get(key)
        if held and held[0] == digest:
            applications.move_to_end(key)
            return held[1]
        known = urlsplit(authority).hostname in WELL_KNOWN_AUTHORITY_HOSTS
        try:
            app = msal.ConfidentialClientApplication(
                options.client_id, client_credential=credential, authority=f"{authority}/{options.tenant_id}",
                instance_discovery=known, token_cache=msal.TokenCache(), timeout=30)
        except ValueError as e:        # msal refuses an authority whose discovery document is bad
            raise ConfigError(f"authority {authority}: {e}", where) from None
        except requests.RequestException as e:
            raise RetryableError(f"authority {authority} unreachable: {type(e).__name__}", where, delay=30) from None
        applications[key] = (digest, app)
        applications.move_to_end(key)
        while len(applications) > MAX_APPLICATIONS:
            applications.popitem(last=False)
        return app


class Tokens:
    """Bearer tokens for one resource (`https://graph.microsoft.com`, the Exchange endpoint)."""

    def __init__(self, options: Microsoft365Options, resource: str, where: str):
        self.options = options
        self.scope = f"{resource.rstrip('/')}/.default"
        self.where = where

    def header(self) -> dict[str, str]:
        app = application(self.options, self.where)
        try:
            result = app.acquire_token_for_client(scopes=[self.scope])
        except requests.RequestException as e:
            raise RetryableError(f"token endpoint unreachable: {type(e).__name__}", self.where, delay=30) from None
        if "access_token" not in result:
            description = (result.get("error_description") or "").splitlines()[0:1]
            raise ConfigError(f"token for {self.scope} refused: {result.get('error')}: {' '.join(description)}",
                              self.where)
        return {"Authorization": f"Bearer {result['access_token']}"}
