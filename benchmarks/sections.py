"""BENCHMARKS.md as one section per benchmark, so running one benchmark replaces only its own section.

Each section says when, where and with which command it was measured: numbers from different
runs can sit side by side in the file, and a reader can tell them apart and repeat any of them.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import re
import subprocess
from pathlib import Path

INTRO = ("# Benchmarks\n\n`make bench` runs every benchmark below and rewrites this file; `python -m benchmarks NAME`\n"
         "runs one and replaces only its section. Each speed goal is measured side by side with a baseline in the\n"
         "same run and reported as a ratio, so the numbers travel between machines better than seconds do.\n"
         "Tests check behaviour, never wall time.\n")


@dataclasses.dataclass
class Section:
    title: str
    body: str          # markdown: a table, then what it shows and what holds a missed goal back
    ratio: str         # the headline, printed last


def table(headers: list[str], rows: list[list]) -> str:
    return "\n".join([f"| {' | '.join(headers)} |", f"|{'---|' * len(headers)}"] +
                     [f"| {' | '.join(str(cell) for cell in row)} |" for row in rows])


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def commit() -> str:
    """The checkout measured: its short commit, marked when files other than BENCHMARKS.md differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "an unversioned copy"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!BENCHMARKS.md")   # but the results
    return f"commit {head}" + (" with local changes" if changed else "")


def stamped(section: Section, command: str, started: dt.datetime) -> str:
    return (f"## {section.title}\n\n_`{command}`, measured {started:%Y-%m-%d %H:%M} UTC at {commit()} on "
            f"{platform.node() or 'this machine'} ({os.cpu_count()} cores, Python {platform.python_version()}, "
            f"load average {load_average()} at the end)._\n\n{section.body}\n\n**{section.ratio}**\n")


def write(path: Path, order: list[str], fresh: dict[str, str]) -> None:
    """Sections by title in `order`: the fresh ones, and those already in the file that were not run."""
    old = path.read_text() if path.exists() else ""
    kept = {m.group(1): m.group(0).rstrip() + "\n"
            for m in re.finditer(r"^## (.+?)\n.*?(?=^## |\Z)", old, flags=re.M | re.S)}
    kept.update(fresh)
    path.write_text(INTRO + "".join("\n" + kept[title] for title in order if title in kept))
