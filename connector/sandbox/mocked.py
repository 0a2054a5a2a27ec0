"""The sandbox behind `responses`, inside the test process: the fast mode, and the default in tests.

Each system is answered below the vendor URL the test names (`https://graph.microsoft.com`),
through the same `Sandbox.handle` the HTTPS server calls, so a test sees the same state,
spec checks, write log and knobs in either mode. Only the tests import this (and so
`responses`).
"""
from __future__ import annotations

import functools
import re

import responses
from requests.structures import CaseInsensitiveDict

from .web import Request, Sandbox

METHODS = ("GET", "POST", "PATCH", "PUT", "DELETE")


def register(rsps: responses.RequestsMock, sandbox: Sandbox, bases: dict[str, str]) -> None:
    """Answer every request below `bases[name]` from the system mounted as `name`."""
    for name, base in bases.items():
        base = base.rstrip("/")
        pattern = re.compile(re.escape(base) + r"(?=[/?]|$)")
        callback = functools.partial(_answer, sandbox, name, base)
        for method in METHODS:
            rsps.add_callback(method, pattern, callback=callback)


def _answer(sandbox: Sandbox, name: str, base: str, prepared) -> tuple[int, dict, bytes]:
    path, _, query = prepared.url[len(base):].partition("?")
    body = prepared.body or b""
    request = Request(prepared.method, base, path or "/", query, CaseInsensitiveDict(prepared.headers),
                      body.encode() if isinstance(body, str) else body)
    response = sandbox.handle(name, request)
    return response.status, response.headers, response.body
