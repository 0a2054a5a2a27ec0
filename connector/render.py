"""How the CLI draws tables and progress: with rich on a terminal, plain text when piped.

A person at a terminal reads boxes and a live status line; a script, a log or a ticket
pasted from `offboard status | ...` gets the same columns as plain text with no escape codes.
Every CLI table goes through `table`, so the two never drift apart.
"""
from __future__ import annotations

import contextlib
import io
import shutil
import sys
import time

from rich import box
from rich.console import Console
from rich.table import Table


def on_terminal(terminal: bool | None = None) -> bool:
    return sys.stdout.isatty() if terminal is None else terminal


def table(headers: list[str], rows: list[list], terminal: bool | None = None) -> str:
    """The rows under their headers: a rich table on a terminal, else columns padded with spaces."""
    rows = [[("" if c is None else str(c)) for c in r] for r in rows]
    if on_terminal(terminal):
        drawn = Table(*headers, box=box.ROUNDED, header_style="bold")
        for r in rows:
            drawn.add_row(*r)
        out = io.StringIO()
        Console(file=out, force_terminal=True, width=shutil.get_terminal_size().columns).print(drawn)
        return out.getvalue().rstrip("\n")
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()   # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


class Progress:
    """Steps that take a while: a spinner with the step's name on a terminal, one line per step otherwise;
    each ends with how long it took."""

    def __init__(self, terminal: bool | None = None):
        self.console = Console(highlight=False) if on_terminal(terminal) else None

    @contextlib.contextmanager
    def step(self, title: str):
        start = time.monotonic()
        if self.console:
            with self.console.status(title):
                yield
            self.console.print(f"[green]✓[/green] {title} [dim]({time.monotonic() - start:.1f} s)[/dim]")
        else:
            print(f"... {title}", flush=True)
            yield
            print(f"    done in {time.monotonic() - start:.1f} s", flush=True)

    def say(self, text: str) -> None:
        """A line between steps (a heading, a result)."""
        if self.console:
            self.console.print(text, markup=False)
        else:
            print(text, flush=True)
