"""The vendored OpenAPI documents are valid OpenAPI (the sandbox loads them without validating, for speed)."""
from __future__ import annotations

import pytest
from openapi_spec_validator import validate

from connector.sandbox.contract import openapi_dict

SPECS = ("bamboohr-openapi.yaml", "ringcentral-openapi.yaml", "ringcentral-v2-phone-numbers.yaml",
         "ringcentral-comm-handling.yaml", "pax8-partner-excerpt.yaml")


@pytest.mark.parametrize("name", SPECS)
def test_a_vendored_spec_is_valid_openapi(name):
    validate(openapi_dict(name))
