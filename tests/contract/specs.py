"""The repo's own copies of the vendors' API descriptions (tests/specs/), gzipped where large."""
from __future__ import annotations

import functools
import gzip
from pathlib import Path

import yaml

FOLDER = Path(__file__).resolve().parents[1] / "specs"


def open_spec(name: str):
    """A binary file object for `name` (`graph-v1.0-metadata.xml`), read from `name.gz` when that is what is kept."""
    plain = FOLDER / name
    return open(plain, "rb") if plain.exists() else gzip.open(FOLDER / f"{name}.gz", "rb")


@functools.cache
def openapi_dict(name: str) -> dict:
    with open_spec(name) as fh:
        return yaml.safe_load(fh)
