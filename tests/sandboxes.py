"""The sandbox (connector/sandbox/) made reachable for a test, in the mode the test runs in.

`responses` (the default, fast) answers the vendors' own URLs inside the test process;
`https` serves the same sandbox from a real cheroot server on 127.0.0.1 with the generated
CA, which the clients trust through REQUESTS_CA_BUNDLE. A test asks for `reach` and gets
the base URL of each system as its client must configure it; the spec violations of every
system fail the test at teardown, in both modes.
"""
from __future__ import annotations

import contextlib

import pytest
import responses

from connector.sandbox import mocked
from connector.sandbox.server import HttpsServer
from connector.sandbox.tls import write_tls
from connector.sandbox.web import Sandbox

MODES = ("responses", "https")


@pytest.fixture(scope="session")
def sandbox_tls(tmp_path_factory):
    """One CA and server certificate for every HTTPS sandbox of the session."""
    folder = tmp_path_factory.mktemp("sandbox-tls")
    write_tls(folder, ["localhost"], ["127.0.0.1"])
    return folder


@pytest.fixture(params=["responses"])
def sandbox_mode(request) -> str:
    """`responses` unless a test module parametrizes it (`@pytest.mark.parametrize("sandbox_mode", MODES, indirect=True)`)."""
    return request.param


@pytest.fixture
def reach(sandbox_mode, sandbox_tls, monkeypatch):
    """`reach(sandbox, {name: vendor URL})` -> {name: the base URL to configure}, until the test ends."""
    with contextlib.ExitStack() as stack:
        served: list[Sandbox] = []

        def reach_(sandbox: Sandbox, vendor: dict[str, str]) -> dict[str, str]:
            served.append(sandbox)
            if sandbox_mode == "responses":
                rsps = stack.enter_context(responses.RequestsMock(assert_all_requests_are_fired=False))
                mocked.register(rsps, sandbox, vendor)
                return dict(vendor)
            server = stack.enter_context(HttpsServer(sandbox, sandbox_tls))
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca_file)
            return {name: f"{server.url}/{name}" for name in vendor}

        yield reach_
    for sandbox in served:
        assert sandbox.violations == [], "requests the vendors' specs do not allow"
