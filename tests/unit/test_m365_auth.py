"""The msal application cache: one per app registration, rebuilt when the credential's value rotates,
keyed by nothing secret, and bounded."""
from __future__ import annotations

import pytest

from connector.config import parse
from connector.providers.microsoft365 import auth


class FakeApp:
    """Stands in for msal.ConfidentialClientApplication (its constructor would fetch the authority's document)."""

    def __init__(self, client_id, client_credential, authority, **kw):
        self.client_id, self.credential, self.authority = client_id, client_credential, authority


@pytest.fixture(autouse=True)
def fake_msal(monkeypatch):
    monkeypatch.setattr(auth.msal, "ConfidentialClientApplication", FakeApp)
    monkeypatch.setattr(auth, "applications", type(auth.applications)())


def options(tmp_path, tenant_id="00000000-0000-0000-0000-000000000001", client_id="app-1"):
    block = {"type": "entra", "tenant_id": tenant_id, "client_id": client_id,
             "client_secret": f"file:{tmp_path / 'graph-secret'}"}
    return parse({"tenant": [{"id": "t", "provider": [block]}]}).tenants[0].providers[0].options


def test_a_rotated_secret_builds_a_new_application_and_drops_the_old(tmp_path):
    (tmp_path / "graph-secret").write_text("first-secret-value\n")
    opts = options(tmp_path)
    first = auth.application(opts, "where")
    assert auth.application(opts, "where") is first and first.credential == "first-secret-value"
    (tmp_path / "graph-secret").write_text("second-secret-value\n")
    second = auth.application(opts, "where")
    assert second is not first and second.credential == "second-secret-value"
    assert len(auth.applications) == 1 and auth.application(opts, "where") is second


def test_nothing_in_the_cache_key_or_digest_is_the_secret(tmp_path):
    (tmp_path / "graph-secret").write_text("never-in-a-key\n")
    auth.application(options(tmp_path), "where")
    (key, (digest, _)), = auth.applications.items()
    assert "never-in-a-key" not in repr(key) + digest and len(digest) == 64


def test_the_cache_is_bounded_and_keeps_the_applications_in_use(tmp_path, monkeypatch):
    monkeypatch.setattr(auth, "MAX_APPLICATIONS", 8)
    (tmp_path / "graph-secret").write_text("shared-secret\n")
    busy = options(tmp_path, client_id="busy")
    kept = auth.application(busy, "where")
    for i in range(50):
        auth.application(options(tmp_path, client_id=f"app-{i}"), "where")
        assert auth.application(busy, "where") is kept
    assert len(auth.applications) == 8
