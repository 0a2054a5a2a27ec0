"""The CLI's one table helper: plain columns when piped, rich boxes on a terminal, the same cells either way."""
from __future__ import annotations

from connector.render import table

HEADERS = ["phase", "action", "outcome"]
ROWS = [["revoke", "disable_account", "changed"], ["reclaim", "remove_groups", None]]
BOX = set("╭╮╰╯─│┃━┏┓┗┛")


def test_piped_output_is_plain_columns_with_no_escape_codes():
    out = table(HEADERS, ROWS)                # under pytest stdout is not a terminal
    assert out == table(HEADERS, ROWS, terminal=False)
    lines = out.splitlines()
    assert lines[0].split() == HEADERS and set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ROWS[0] and lines[3].split() == ["reclaim", "remove_groups"]
    assert "\x1b" not in out and not BOX & set(out)


def test_a_terminal_gets_a_rich_table_with_the_same_cells():
    out = table(HEADERS, ROWS, terminal=True)
    assert BOX & set(out), out
    for cell in HEADERS + ROWS[0] + ROWS[1][:2]:
        assert cell in out
    assert "-----" not in out
