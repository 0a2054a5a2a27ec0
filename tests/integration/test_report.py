"""`offboard report` on a store built by real offboardings: the engine against the sandbox's Microsoft 365.

The store's clock is frozen at a chosen delay after each leaver's due instant, so every time to revoke is
known; the figures are then recomputed here from the journal alone and compared with all three formats.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import html.parser
import io
import json
import math
import shutil
import statistics
import struct
import subprocess
import zlib

import pytest

from connector import config
from connector.cli import main
from connector.reconcile import reconcile
from connector.store import Store, sqlite as sqlite_backend
from tests.helpers import utc, write_config
from tests.integration.conftest import secret_file
from tests.sandboxes import GB, SECRET_ENV, add_leaver

AUDIT_KEY = "k" * 32
#: (n, HR date, HR time, seconds from due to the pass that revokes, mailbox size): the due instant is
#: 17:00 Chicago (the default revoke_at) unless HR gave a time
LEAVERS = [(24, dt.date(2026, 10, 30), None, 3600, 3 * GB),              # October: not in the report
           (21, dt.date(2026, 11, 3), None, 20 * 60, 3 * GB),
           (22, dt.date(2026, 11, 10), dt.time(9, 0), 5 * 3600, 3 * GB),
           (23, dt.date(2026, 11, 17), None, 3 * 86400, 52 * GB),       # keeps its licence: needs a person
           (26, dt.date(2026, 11, 24), None, 600, 3 * GB)]               # sessions cannot be revoked: not confirmed
LATER = (25, dt.date(2026, 11, 28))                                     # still scheduled when the month is run
MONTH_IDS = ["contoso/E21", "contoso/E22", "contoso/E23", "contoso/E26"]
REVOKED = MONTH_IDS[:3]


@pytest.fixture
def built(m365, tmp_path, monkeypatch):
    """-> (config path, facts recomputed from the journal) for a store the engine wrote."""
    clock = [utc(2026, 10, 1)]
    monkeypatch.setattr(sqlite_backend, "now", lambda: clock[0])
    key = secret_file(tmp_path, "audit.key", AUDIT_KEY)
    path = write_config(tmp_path, top=f'audit_key = "{key}"\n')
    block = m365.provider_block(f"env:{SECRET_ENV}")
    cfg = config.parse({"tenant": [{"id": "contoso", "timezone": "America/Chicago", "provider": [
        {"type": "entra", **block}, {"type": "exchange_online", **block}]}]})
    store = Store.open(str(tmp_path / "state.db"), audit_key=AUDIT_KEY.encode())
    for n, date, time, delay, size in LEAVERS:
        leaver = dataclasses.replace(add_leaver(m365, n, size=size), termination_date=date, termination_time=time,
                                     ticket=f"70{n}")
        m365.mailboxes[leaver.email.lower()].conversion_reads = 0
        due = dt.datetime.combine(date, time or dt.time(17, 0), cfg.tenants[0].zone)
        clock[0] = due + dt.timedelta(seconds=delay)
        if n == 26:
            m365.graph.denied.append(("POST", r"/users/[^/]+/revokeSignInSessions", "User.RevokeSessions.All"))
        reconcile(cfg, store, on_demand=[leaver], now=clock[0])
    n, date = LATER
    reconcile(cfg, store, on_demand=[dataclasses.replace(add_leaver(m365, n), termination_date=date)], now=clock[0])
    assert store.termination(f"contoso/E{n}")["state"] == "scheduled"
    expected = recompute(store)
    store.close()
    return path, expected


def recompute(store: Store) -> dict:
    """The report's figures from the journal, the long way round."""
    start, end = "2026-11-01T05:00:00+00:00", "2026-12-01T06:00:00+00:00"     # the month in Chicago
    times, seats, people = {}, 0, 0
    ids = sorted(t["id"] for t in store.terminations("contoso") if t["state"] != "scheduled"
                 and start <= t["due_at"] < end)
    for tid in ids:
        rows = store.actions(tid)
        revoke = [a for a in rows if a["phase"] == "revoke"]
        if revoke and {a["status"] for a in revoke} <= {"changed", "unchanged", "skipped"}:
            last = max(dt.datetime.fromisoformat(a["finished_at"]) for a in revoke)
            times[tid] = (last - dt.datetime.fromisoformat(store.termination(tid)["due_at"])).total_seconds()
        for a in rows:
            if a["action"] == "remove_licenses" and a["status"] == "changed":
                before, after = json.loads(a["before"]), json.loads(a["after"])
                seats += len(set(before["skus"]) - set(after["skus"])) + len(set(before["groups"]) - set(after["groups"]))
        people += any(a["status"] == "needs_human" for a in rows)
    ordered = sorted(times.values())
    return {"ids": ids, "times": times, "median": statistics.median(ordered),
            "p95": ordered[math.ceil(0.95 * len(ordered)) - 1], "within_1h": sum(t <= 3600 for t in ordered) / len(ids),
            "within_24h": sum(t <= 86400 for t in ordered) / len(ids), "seats": seats, "needs_person": people,
            "head": store.audit_head(), "verified": store.verify_audit()}


def report(path, fmt: str, capsys) -> str:
    capsys.readouterr()
    assert main(["--config", str(path), "report", "--tenant", "contoso", "--month", "2026-11", "--format", fmt]) == 0
    return capsys.readouterr().out


class Page(html.parser.HTMLParser):
    """The chart's marks and the audit head as a browser's DOM would hold them."""

    def __init__(self, text: str):
        super().__init__()
        self.marks, self.head, self._in_head = [], "", False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "rect" and "mark" in (attrs.get("class") or "").split():
            self.marks.append(attrs["data-id"])
        self._in_head = attrs.get("id") == "audit-head"

    def handle_endtag(self, tag):
        self._in_head = False

    def handle_data(self, data):
        if self._in_head:
            self.head += data


def test_the_figures_match_the_journal_in_every_format(built, tmp_path, capsys):
    path, want = built
    assert want["ids"] == MONTH_IDS
    assert want["times"] == {"contoso/E21": 1200, "contoso/E22": 18000, "contoso/E23": 259200}   # the clocks set
    assert want["ids"][3] not in want["times"]
    assert want["seats"] >= 2 and want["needs_person"] == 1 and want["verified"][0]
    db = tmp_path / "state.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest(), Store.scratch_copy(str(db)).dump()

    facts = json.loads(report(path, "json", capsys))
    s = facts["summary"]
    assert [x["id"] for x in facts["leavers"]] == MONTH_IDS
    assert {x["id"]: x["revoke_seconds"] for x in facts["leavers"] if x["revoked_at"]} == want["times"]
    assert (s["leavers"], s["revoked"], s["median_seconds"], s["p95_seconds"]) == (4, 3, want["median"], want["p95"])
    assert (s["within_1h"], s["within_24h"]) == (0.25, 0.5)
    assert s["within_1h"] == round(want["within_1h"], 4) and s["within_24h"] == round(want["within_24h"], 4)
    assert s["licences_reclaimed"] == want["seats"] and s["needs_person"] == want["needs_person"]
    assert facts["audit_head"] == want["head"] and facts["audit_head"]["mac"]
    e21, e23, e26 = facts["leavers"][0], facts["leavers"][2], facts["leavers"][3]
    assert e26["revoked_at"] is None and e26["revoke_seconds"] is None
    assert any(a["action"] == "revoke_sessions" and a["outcome"] != "changed" for a in e26["actions"])
    assert e21["ticket"] == "7021" and e21["hr_date"] == "2026-11-03" and e21["due_at"] == "2026-11-03T23:00:00+00:00"
    assert e21["seats_freed"] and all(seat["paid_until"] == "" for seat in e21["seats_freed"])
    assert any(a["action"] == "revoke_sessions" and a["outcome"] == "changed" for a in e21["actions"])
    assert e23["seats_freed"] == [] and any("remove_licenses" in t and "52 GB" in t for t in e23["needs_person"])
    assert any("no distributor data" in n for n in facts["notes"]) and any("no prices" in n for n in facts["notes"])

    rows = list(csv.DictReader(io.StringIO(report(path, "csv", capsys))))
    summary = {r["key"]: r["value"] for r in rows if r["record"] == "summary"}
    assert summary == {k: str(v) for k, v in {**{k: facts[k] for k in ("tenant", "company", "timezone", "month")},
                                               **s}.items()}
    assert {r["key"]: r["value"] for r in rows if r["record"] == "audit_head"} == {k: str(v) for k, v in facts["audit_head"].items()}
    leavers = [r for r in rows if r["record"] == "leaver"]
    assert [(r["id"], r["revoke_seconds"], r["revoked_at"], r["ticket"]) for r in leavers] == [
        (x["id"], str(x["revoke_seconds"] or ""), x["revoked_at"] or "", x["ticket"]) for x in facts["leavers"]]
    for x in facts["leavers"]:
        assert [(r["action"], r["outcome"], r["at"]) for r in rows if r["record"] == "action" and r["id"] == x["id"]] == [
            (a["action"], a["outcome"], a["at"]) for a in x["actions"]]
        assert [r["licence"] for r in rows if r["record"] == "seat" and r["id"] == x["id"]] == [
            seat["licence"] for seat in x["seats_freed"]]
        assert [r["reason"] for r in rows if r["record"] == "needs_person" and r["id"] == x["id"]] == x["needs_person"]

    page = Page(report(path, "html", capsys))
    assert page.marks == MONTH_IDS, "one mark per leaver, in the order of the table"
    assert page.head == want["head"]["hash"]
    assert (hashlib.sha256(db.read_bytes()).hexdigest(), Store.scratch_copy(str(db)).dump()) == before, \
        "the report wrote to the store"


def test_a_month_with_no_leavers_and_a_bad_month(built, capsys):
    path, _ = built
    capsys.readouterr()
    assert main(["--config", str(path), "report", "--tenant", "contoso", "--month", "2026-12", "--format", "json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["leavers"] == [] and facts["summary"]["leavers"] == 0 and facts["summary"]["median_seconds"] is None
    assert main(["--config", str(path), "--json", "report", "--tenant", "contoso", "--month", "2026-11"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert [x["id"] for x in json.loads(line)["leavers"]] == MONTH_IDS
    assert main(["--config", str(path), "report", "--tenant", "contoso", "--month", "November"]) == 1
    assert "--month November: not a month (YYYY-MM)" in capsys.readouterr().err


def test_after_a_retention_purge_the_times_stay_and_the_personal_data_and_seats_go(built, tmp_path, capsys):
    path, want = built
    store = Store.open(str(tmp_path / "state.db"), audit_key=AUDIT_KEY.encode())
    purged, _ = store.purge("contoso", utc(2027, 1, 1), ["done"])
    store.close()
    assert "contoso/E21" in purged
    facts = json.loads(report(path, "json", capsys))
    e21 = facts["leavers"][0]
    assert (e21["email"], e21["name"], e21["seats_freed"]) == ("", "", [])
    assert e21["revoke_seconds"] == want["times"]["contoso/E21"]
    assert facts["summary"]["licences_reclaimed"] < want["seats"]
    assert "leaver21" not in report(path, "html", capsys)


def png_rows(data: bytes) -> tuple[list[bytes], int]:
    """(rows of pixel bytes, bytes per pixel) of a non-interlaced 8-bit PNG, as Chromium writes its screenshots."""
    chunks, pos = {}, 8
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.setdefault(kind, []).append(data[pos + 8:pos + 8 + size])
        pos += size + 12
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][0][:10])
    assert depth == 8 and colour in (2, 6)
    step = 3 if colour == 2 else 4
    raw, stride, rows, prev = zlib.decompress(b"".join(chunks[b"IDAT"])), width * step, [], bytes(width * step)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a, b, c = (line[i - step] if i >= step else 0), prev[i], (prev[i - step] if i >= step else 0)
            p = a + b - c
            predictor = [0, a, b, (a + b) // 2,
                         a if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - c) else b if abs(p - b) <= abs(p - c) else c][kind]
            line[i] = (line[i] + predictor) & 0xFF
        rows.append(bytes(line))
        prev = line
    return rows, step


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed (tools/install-system-deps "
                                                          "installs it as root)")
def test_a_real_browser_draws_one_mark_per_leaver_and_prints(built, tmp_path, capsys):
    path, _ = built
    page = tmp_path / "report.html"
    page.write_text(report(path, "html", capsys))
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1000,900",
               f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*browser, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True)
    assert Page(dom.stdout).marks == MONTH_IDS

    printed = tmp_path / "report-print.html"             # the print rules for every medium: a picture of the print layout
    printed.write_text(page.read_text().replace("@media print", "@media all"))
    for source, colour, drawn in ((page, "1f6feb", REVOKED), (page, "d1242f", MONTH_IDS[3:]), (printed, "000000", REVOKED)):
        shot = tmp_path / f"{source.stem}.png"
        subprocess.run([*browser, f"--screenshot={shot}", source.as_uri()], capture_output=True, timeout=120, check=True)
        rows, step = png_rows(shot.read_bytes())
        lines = {y for y, row in enumerate(rows) for x in range(0, len(row), step) if row[x:x + 3] == bytes.fromhex(colour)}
        bars = sum(1 for y in lines if y - 1 not in lines)
        assert bars == len(drawn), f"{shot.name}: the chart drew {bars} bars of #{colour}, not {len(drawn)}"
    pdf = tmp_path / "report.pdf"
    subprocess.run([*browser, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri()], capture_output=True,
                   timeout=120, check=True)
    assert pdf.read_bytes().startswith(b"%PDF") and b"/Type /Page" in pdf.read_bytes()
