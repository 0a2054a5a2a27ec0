from tests.contract.provider_contract import pytest_generate_tests  # noqa: F401  (parametrizes action_name)
