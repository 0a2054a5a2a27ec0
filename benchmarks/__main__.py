"""`make bench`: every benchmark, each against its baseline in the same run, one BENCHMARKS.md section each.

`python -m benchmarks NAME [NAME ...]` runs only those; the other sections in the file stay as
they were. Each benchmark prints its ratio last.
"""
from __future__ import annotations

import datetime as dt
import importlib
import sys
from pathlib import Path

from .sections import stamped, write

ROOT = Path(__file__).resolve().parents[1]
#: name -> the module whose `section()` measures it and whose `TITLE` heads its section, in the file's order
BENCHMARKS = {
    "revoke": "benchmarks.time_to_revoke",
    "layoff": "benchmarks.mass_layoff",
    "reclaim": "benchmarks.licence_reclaim",
    "scale": "benchmarks.scale",
    "matching": "benchmarks.matching",
    "soak": "benchmarks.soak",
    "two_daemons": "benchmarks.two_daemons",
}


def main(argv: list[str]) -> int:
    unknown = [name for name in argv if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 1
    modules = {name: importlib.import_module(path) for name, path in BENCHMARKS.items()}
    fresh = {}
    for name in argv or BENCHMARKS:
        started = dt.datetime.now(dt.timezone.utc)
        section = modules[name].section()
        text = stamped(section, f"python -m benchmarks {name}", started)
        print(text)
        fresh[section.title] = text
        write(ROOT / "BENCHMARKS.md", [m.TITLE for m in modules.values()], fresh)    # each as soon as it is measured
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
