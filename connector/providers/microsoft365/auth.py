"""App-only tokens for Graph and the Exchange admin endpoint, through msal.

One `ConfidentialClientApplication` (and so one token cache) per app registration
in a tenant: the Entra and Exchange providers of a tenant share it, and a token is
fetched once per hour, not once per request. For an authority host msal does not
know (a national cloud it lacks, the sandbox), instance discovery is turned off:
otherwise a failed token call makes msal reach for login.microsoftonline.com.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import msal
import requests
from msal.authority import WELL_KNOWN_AUTHORITY_HOSTS

from ...errors import ConfigError, RetryableError

if TYPE_CHECKING:
    from .provider import Microsoft365Options

applications: dict[tuple[str, str, str, str], msal.ConfidentialClientApplication] = {}
_lock = threading.Lock()


def _credential(options: Microsoft365Options, where: str) -> str | dict:
    if options.client_secret is not None:
        return options.client_secret.reveal()
    try:
        key = Path(options.certificate_path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read certificate_path {options.certificate_path}: {e.strerror}", where) from None
    return {"private_key": key, "thumbprint": options.thumbprint}


def application(options: Microsoft365Options, where: str) -> msal.ConfidentialClientApplication:
    authority = options.authority.rstrip("/")
    credential_ref = str(options.client_secret or options.certificate_path)
    key = (authority, options.tenant_id, options.client_id, credential_ref)
    with _lock:
        if key not in applications:
            known = urlsplit(authority).hostname in WELL_KNOWN_AUTHORITY_HOSTS
            try:
                applications[key] = msal.ConfidentialClientApplication(
                    options.client_id, client_credential=_credential(options, where),
                    authority=f"{authority}/{options.tenant_id}", instance_discovery=known,
                    token_cache=msal.TokenCache(), timeout=30)
            except ValueError as e:        # msal refuses an authority whose discovery document is bad
                raise ConfigError(f"authority {authority}: {e}", where) from None
            except requests.RequestException as e:
                raise RetryableError(f"authority {authority} unreachable: {type(e).__name__}", where, delay=30) from None
        return applications[key]


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
