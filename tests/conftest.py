from importlib.metadata import EntryPoint

from connector import plugins
from tests.contract.provider_contract import pytest_generate_tests  # noqa: F401  (parametrizes action_name)

pytest_plugins = ["tests.sandboxes", "tests.stores"]   # the sandbox fixtures (m365, entra, reach, ...), `backing`

# The in-memory directory is provider type `fake` in every test, as if installed: a config
# needs a provider (`check` refuses a tenant without one), and engine tests bring their own.
FAKE_PROVIDER = EntryPoint("fake", "tests.fakes.directory:FakeDirectory", plugins.GROUPS["providers"])
_installed = plugins.available


def _with_fake(kind: str) -> dict:
    found = _installed(kind)
    return {**found, "fake": FAKE_PROVIDER} if kind == "providers" else found


plugins.available = _with_fake
