"""The pieces every sandbox config is written from: `offboard demo`, `offboard sandbox` and the tests' daemons.

Each writes TOML text itself (the connector reads nothing else), with every secret in a file
only its owner reads and named by reference, as a technician's config would.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

TENANT = "example"


def secret_file(folder: Path, name: str, value: str) -> str:
    """The value in a file only its owner reads; -> its secret reference."""
    path = folder / name
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(value)
    return f"file:{path}"


def config_head(folder: Path, comment: str, extra_tenant: str = "", connector: str = "") -> str:
    """The top of a sandbox config: a state file in `folder` (then `connector`: more keys and sections) and
    Example Ltd's tenant, up to its sources."""
    return textwrap.dedent(f"""\
        # {comment}
        [connector]
        state = "{folder / 'state.db'}"
        """) + connector + textwrap.dedent(f"""
        [[tenant]]
        id = "{TENANT}"
        name = "Example Ltd"
        timezone = "UTC"
        protected = ["svc-*"]
        """) + extra_tenant + "\n"


def toml_table(name: str, values: dict) -> str:
    return f"[[{name}]]\n" + "".join(f'{key} = "{value}"\n' for key, value in values.items())
