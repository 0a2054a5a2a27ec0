"""The vendors' API descriptions are package data of the sandbox (connector/sandbox/specs/)."""
from connector.sandbox.contract import open_spec, openapi_dict  # noqa: F401
