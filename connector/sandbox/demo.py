"""`offboard demo`: the whole pipeline against a throwaway sandbox, no credentials needed.

It provisions a Samba AD DC seeded with Example Ltd and serves the rest of its hybrid tenant
(Entra, Exchange, BambooHR, RingCentral, ConnectWise) over HTTPS on 127.0.0.1, then runs what
a technician would: `plan`, then the real daemon (`offboard serve`, a subprocess) while a
scheduled leaver falls due, HR sends a signed webhook and the MSP's ConnectWise calls back
about a ticket. The HR CSV also holds the cases that need a person (protected, ambiguous, a
malformed row). A second pass changes nothing and the audit chain verifies. What it prints as
the outcome is read back from the systems (AD over LDAP, the sandbox through its
`/_sandbox/state`, the store through `offboard status`), never written by hand, and the demo
fails when an event it shows did not happen.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from ..render import Progress, table
from . import company, world as worldmod
from .configs import TENANT, config_head, secret_file, toml_table
from .samba import SambaDC
from .server import HttpsServer
from .serving import (CALLBACK_TOKEN, HOOK_SECRET, Daemon, cloud_only_stayers, signed, wait_until, webhook_body,
                      whole_minute_after)

SIZE = 30                       # people in the generated company: eight BambooHR leavers, one in each state
LEAD = 15                       # seconds at least before the scheduled leaver's instant (plan, serve's start)
SETTLE = 120                    # seconds after that instant by which every shown event must have happened
CSV_HEADER = "employee_id,email,first_name,last_name,manager_email,termination_date,termination_time,kind\n"


def hr_rows(today: dt.date, dan_at: dt.datetime | None = None) -> list[str]:
    """The demo's HR feed: one row per case, as `employee_id,email,...,kind`; Dan left yesterday, or leaves at
    `dan_at` (UTC, the tenant's zone) when given."""
    yesterday, tomorrow = today - dt.timedelta(days=1), today + dt.timedelta(days=7)
    boss = company.ALICE.mail
    dan = f"{dan_at.date()},{dan_at:%H:%M}" if dan_at else f"{yesterday},"
    return [
        f"{company.DAN.employee_id},{company.DAN.mail},Dan,Dawson,{boss},{dan},voluntary",
        f"{company.ERIN.employee_id},{company.ERIN.mail},Erin,Evans,{boss},{today},,immediate",
        f"{company.FRANK.employee_id},{company.FRANK.mail},Frank,Fischer,{boss},{tomorrow},,voluntary",
        f"E9999,{company.PROTECTED.mail},Backup,Service,{boss},{yesterday},,immediate",
        f"{company.AMBIGUOUS_EMPLOYEE_ID},{company.AMBIGUOUS_EMAIL},Jo,Smith,{boss},{yesterday},,voluntary",
        f"E1011,not-an-email,Broken,Row,{boss},{yesterday},,voluntary",
    ]


def write_hr(folder: Path, today: dt.date, dan_at: dt.datetime | None = None) -> Path:
    """The HR CSV drop of `hr_rows`; -> its path."""
    (folder / "hr").mkdir(parents=True, exist_ok=True)
    path = folder / "hr" / "leavers.csv"
    path.write_text(CSV_HEADER + "\n".join(hr_rows(today, dan_at)) + "\n")
    return path


def write_sandbox(folder: Path, dc: SambaDC, today: dt.date, extra_tenant: str = "") -> Path:
    """Write the HR CSV, the bind password file and a config pointing at the sandbox DC (AD alone)."""
    write_hr(folder, today)
    secret = secret_file(folder, "ad-bind-password", dc.admin_password)
    config = folder / "config.toml"
    config.write_text(config_head(folder, "written by `offboard demo`: the sandbox DC of Example Ltd", extra_tenant)
                      + toml_table("tenant.source", {"type": "csv", "path": folder / "hr" / "*.csv"}) + "\n"
                      + toml_table("tenant.provider", company.provider_block(dc, secret)))
    return config




def write_hybrid(folder: Path, dc: SambaDC, world: worldmod.World, url: str, today: dt.date,
                 dan_at: dt.datetime) -> Path:
    """The demo's config: the sandbox's tenant (BambooHR, Entra, Exchange, RingCentral, ConnectWise billing) made
    hybrid with the DC before Entra, the CSV drop and signed webhooks as more feeds, ConnectWise calling back,
    and the daemon listening on a free port."""
    write_hr(folder, today, dan_at)
    return worldmod.write_config(
        world, url, folder, by="offboard demo",
        connector='poll_interval = "1h"\n\n[webhook]\nlisten = "127.0.0.1:0"\n',
        tenant_keys=f'webhook_secret = "{secret_file(folder, "webhook-secret", HOOK_SECRET)}"\n',
        sources=({"type": "csv", "path": folder / "hr" / "*.csv"}, {"type": "webhook"}),
        providers=(company.provider_block(dc, secret_file(folder, "ad-bind-password", dc.admin_password)),),
        psa={"callback_token": secret_file(folder, "cw-callback-token", CALLBACK_TOKEN)})


@contextlib.contextmanager
def trusting(ca_file: str):
    """The commands run in this process (and the daemon, which inherits the environment) trust the sandbox's CA."""
    before = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = ca_file
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = before


def shortened(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 1].rsplit(" ", 1)[0] + " …"


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@dataclass
class Shown:
    """One leaver the outcome table shows, and how HR (or the MSP) told the connector."""

    name: str
    email: str
    employee_id: str
    came: str

    @property
    def id(self) -> str:
        return f"{TENANT}/{self.employee_id}"


@dataclass
class Demo:
    """One run of the demo: where everything is, what it shows, and what did not happen."""

    dc: SambaDC
    folder: Path
    world: worldmod.World
    url: str
    config: Path
    due: dt.datetime
    progress: Progress
    cast: list[Shown] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)

    def cli(self, *args: str) -> tuple[int, str]:
        """An `offboard` command in this process, as a technician types it; -> (exit code, stdout)."""
        from ..cli import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["--config", str(self.config), *args])
        return code, out.getvalue()

    def terminations(self) -> dict[str, dict]:
        """The store, read through `offboard status --all`."""
        return {row["id"]: row for row in jsonl(self.cli("--json", "status", "--all")[1])}

    @staticmethod
    def row(p: Shown, rows: dict[str, dict]) -> dict:
        """A person's termination: by employee id, else by address (a ticket names only the address)."""
        return rows.get(p.id) or next((r for r in rows.values() if r["email"] == p.email), {"state": "not in the store"})

    def sandbox(self, what: str, **params) -> dict:
        """The sandbox's control surface over HTTPS: `writes`, or `state` of some people."""
        answer = requests.get(f"{self.url}/_sandbox/{what}", params=params, timeout=10)
        answer.raise_for_status()
        return answer.json()

    def state(self) -> dict:
        return self.sandbox("state", email=[p.email for p in self.cast])

    def ad(self) -> dict[str, str]:
        """Each shown person's AD account over LDAP, as an administrator sees it."""
        conn = self.dc.connect()
        try:
            found = {}
            for p in self.cast:
                conn.search(company.BASE_DN, f"(|(mail={p.email})(proxyAddresses=smtp:{p.email}))",
                            attributes=["userAccountControl"])
                entries = conn.entries
                if len(entries) != 1:
                    found[p.email] = f"{len(entries)} accounts" if entries else "not in AD"
                    continue
                disabled = int(entries[0].userAccountControl.value) & 2
                ou = entries[0].entry_dn.split(",")[1]
                found[p.email] = f"{'disabled' if disabled else 'enabled'}, {ou}"
            return found
        finally:
            conn.unbind()

    def expect(self, happened: bool, what: str) -> bool:
        if not happened:
            self.missed.append(what)
        return happened

    def wait(self, title: str, check, timeout: float):
        """Wait for `check` under a progress line; a timeout is a missed event, not a crash."""
        with self.progress.step(title):
            try:
                return wait_until(check, timeout, every=0.5, what=title)
            except TimeoutError:
                self.missed.append(title)
                return None


def cast_of(world: worldmod.World, dan_at: dt.datetime, webhook, ticket_person) -> list[Shown]:
    """The CSV's people, the webhook's and the ticket's leaver, then BambooHR's leavers: the outcome table's rows."""
    csv = [(company.DAN, company.DAN.employee_id, f"CSV: today {dan_at:%H:%M} UTC, due while serving"),
           (company.ERIN, company.ERIN.employee_id, "CSV: immediate"),
           (company.FRANK, company.FRANK.employee_id, "CSV: next week"),
           (company.PROTECTED, "E9999", "CSV: a protected account (svc-*)"),
           (company.AMBIGUOUS[0], company.AMBIGUOUS_EMPLOYEE_ID, "CSV: an address two accounts carry")]
    return ([Shown(p.cn, p.mail, eid, came) for p, eid, came in csv]
            + [Shown(f"{webhook.given} {webhook.surname}", webhook.email, webhook.number, "signed webhook, unannounced"),
               Shown(f"{ticket_person.given} {ticket_person.surname}", ticket_person.email, ticket_person.number,
                     "ConnectWise ticket callback")]
            + [Shown(f"{p.given} {p.surname}", p.email, p.number, f"BambooHR: {p.leaver.replace('_', ' ')}")
               for p in world.company.leavers()])


def run(dc: SambaDC, folder: Path, world: worldmod.World | None = None, terminal: bool | None = None) -> int:
    """The demo against a started DC seeded with Example Ltd; -> 0 when every event it shows happened."""
    progress = Progress(terminal)
    with progress.step(f"Serving Entra, Exchange, BambooHR, RingCentral and ConnectWise for {SIZE} people"):
        world = world or worldmod.build(SIZE)
        server = HttpsServer(world.sandbox, folder / "tls").start()
    try:
        with trusting(server.ca_file):
            return show(dc, folder, world, server.url, progress)
    finally:
        server.stop()


def show(dc: SambaDC, folder: Path, world: worldmod.World, url: str, progress: Progress) -> int:
    """plan, serve and its events, the second pass, audit verify, then the outcome; -> the exit code."""
    started = time.monotonic()
    now = dt.datetime.now(dt.timezone.utc)
    dan_at = whole_minute_after(LEAD)
    config = write_hybrid(folder, dc, world, url, now.date(), dan_at)
    demo = Demo(dc, folder, world, url, config, dan_at, progress)
    webhook, ticket_person = cloud_only_stayers(world)[:2]
    demo.cast = cast_of(world, dan_at, webhook, ticket_person)
    before = demo.state()
    progress.say(f"\nconfig: {config}\nHR CSV drop: {folder / 'hr' / 'leavers.csv'}\n"
                 + (folder / "hr" / "leavers.csv").read_text())

    progress.say("$ offboard plan    # what would be done now; writes nothing")
    code, out = demo.cli("--json", "plan")
    planned = jsonl(out)
    progress.say(table(["termination", "email", "state", "due", "actions", "why"],
                       [[r["id"], r["email"], r["state"], r["effective_at"], len(r["actions"]), shortened(r["reason"])]
                        for r in planned if "actions" in r]))
    rejected = [o for o in planned if o.get("type") == "rejected"]
    for o in rejected:
        progress.say(f"rejected {o['where']}: {o['error']}")
    demo.expect(code == 0 and len(rejected) == 1, "plan: exit 0 and the malformed CSV row rejected")

    progress.say(f"\n$ offboard serve    # the daemon; Dan falls due at {dan_at:%H:%M:%S} UTC")
    with progress.step("starting `offboard serve` (first pass: the due and immediate leavers)"):
        daemon = Daemon(folder, config, dict(os.environ)).start()
    try:
        events(demo, daemon, webhook, ticket_person, before)
    finally:
        demo.expect(daemon.stop() == 0, "serve stopped cleanly (exit 0)")

    writes = len(demo.sandbox("writes")["writes"])
    ad_before = demo.ad()
    progress.say("\n$ offboard reconcile --once    # a second pass: nothing left to change")
    code, out = demo.cli("--json", "reconcile", "--once")
    again = len(demo.sandbox("writes")["writes"]) - writes
    demo.expect(again == 0 and demo.ad() == ad_before, "the second pass changed nothing")
    progress.say(f"exit {code} (people still need a person); {again} writes to the cloud systems, AD unchanged")
    code, out = demo.cli("audit", "verify")
    progress.say(f"$ offboard audit verify\n{out.strip()}")
    demo.expect(code == 0, "the audit chain verifies")

    outcome(demo, before)
    progress.say(f"\nThe demo took {time.monotonic() - started:.0f} s after set-up.")
    progress.say(f"Where to look next (the sandbox stops with the demo; `offboard demo --keep` keeps {folder}):\n"
                 f"  offboard --config {config} status --all\n"
                 f"  offboard --config {config} history {TENANT}/{company.DAN.employee_id}\n"
                 f"  {daemon.url}/metrics    # while `offboard --config {config} serve` runs")
    if demo.missed:
        progress.say("NOT SHOWN: " + "; ".join(demo.missed))
    return 1 if demo.missed else 0


def events(demo: Demo, daemon: Daemon, webhook, ticket_person, before: dict) -> None:
    """What the daemon is shown while it serves, each waited for and checked in the systems."""
    say = demo.progress.say
    hr, left = demo.world.bamboohr, dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    hr.terminate(next(e.id for e in hr.employees.values() if e.number == webhook.number), left)   # else HR says "active"
    body = webhook_body(webhook, on=left)
    answer = daemon.post("/webhook/generic", body, signed(body))
    say(f"signed webhook: HR enters {webhook.email} in BambooHR as left yesterday, and its webhook tells the daemon "
        f"now, not at the next hourly poll -> {answer.status_code}")
    if demo.expect(answer.status_code == 202, "the signed webhook accepted"):
        run_id = answer.json()["run_id"]
        demo.wait("the signed webhook's run", lambda: daemon.get(f"/runs/{run_id}").json()["state"] == "done", 60)
    ticket = demo.world.connectwise.add_ticket(worldmod.PSA_COMPANY, f"Offboard: {ticket_person.email}")
    callback = json.dumps({"Action": "added", "Type": "Ticket", "ID": ticket, "CompanyId": TENANT,
                           "Entity": json.dumps({"id": ticket, "summary": f"Offboard: {ticket_person.email}"})})
    answer = daemon.post(f"/webhook/connectwise/{CALLBACK_TOKEN}", callback.encode())
    say(f"ConnectWise ticket callback: ticket #{ticket} 'Offboard: {ticket_person.email}' -> {answer.status_code}")
    demo.expect(answer.status_code == 202, "the ConnectWise ticket callback accepted")

    dan = f"{TENANT}/{company.DAN.employee_id}"

    def revoked() -> list[dict] | None:
        """Dan's revoke actions once the cloud's sign-out is journaled with the rest (the pass plans 10 s ahead: an
        action found already done then settles before the instant, the writes only at it; an AD account already
        disabled has no disable_account at all)."""
        actions = [a for a in demo.terminations().get(dan, {}).get("actions", []) if a["phase"] == "revoke"]
        settled = all(a["outcome"] in ("changed", "unchanged") for a in actions)
        signed_out = any(f"{a['provider']}/{a['action']}" == "entra/revoke_sessions" for a in actions)
        return actions if settled and signed_out else None

    seconds = (demo.due - dt.datetime.now(dt.timezone.utc)).total_seconds()
    actions = demo.wait(f"the scheduled leaver revoked at its instant ({demo.due:%H:%M:%S}, in {seconds:.0f} s)",
                        revoked, seconds + 30)
    if actions:
        writes = sorted(dt.datetime.fromisoformat(a["at"]) - demo.due for a in actions if a["outcome"] == "changed")
        say(f"Dan Dawson: {len(actions)} revoke actions, {len(writes)} of them writes"
            + (f", the first {writes[0].total_seconds():.1f} s and the last {writes[-1].total_seconds():.1f} s after "
               "the instant" if writes else ""))
        demo.expect(bool(writes) and writes[0].total_seconds() >= 0 and writes[-1].total_seconds() < 30,
                    "the revoke at the scheduled instant")
    note = demo.wait(f"the ticket note on #{ticket}",
                     lambda: demo.state()["connectwise"]["tickets"][str(ticket)]["notes"], SETTLE)
    if note:
        say(f"ticket #{ticket} internal note: {note[-1].splitlines()[0]}")
    worked = [p for p in demo.cast if p.email in (company.DAN.mail, company.ERIN.mail, webhook.email, ticket_person.email)]

    def finished() -> bool:
        rows = demo.terminations()
        return all(demo.row(p, rows)["state"] == "done" for p in worked)

    demo.wait("mailboxes shared, then licences removed (Dan, Erin, the webhook's and the ticket's leaver)",
              finished, SETTLE)
    billed = lambda state: {k: a["quantity"] for k, a in state["connectwise"]["additions"].items()}   # noqa: E731
    fell = demo.wait("the billing quantity falling in ConnectWise",
                     lambda: [k for k, q in billed(demo.state()).items() if q < billed(before)[k]], 30)
    demo.expect(bool(fell), "the billing quantity falling")
    metrics = [line for line in daemon.get("/metrics").text.splitlines()
               if line.startswith(("offboard_terminations{", "offboard_revoke_seconds_count"))]
    say(f"{daemon.url}/metrics:\n" + "\n".join(f"  {line}" for line in metrics))


def sign_in(user: dict | None) -> str:
    if user is None:
        return "not in Entra"
    if not user["accountEnabled"]:
        return "blocked"
    return "enabled (synced: AD blocks it)" if user["synced"] else "enabled"


def outcome(demo: Demo, before: dict) -> None:
    """The outcome table, every cell read back from the systems and the store."""
    now, ad, rows = demo.state(), demo.ad(), demo.terminations()
    cells = []
    for p in demo.cast:
        user, phone = now["graph"].get(p.email.lower()), now["ringcentral"].get(p.email.lower())
        was = before["graph"].get(p.email.lower())
        cells.append([p.name, p.came, demo.row(p, rows)["state"], ad[p.email], sign_in(user),
                      "revoked" if user and user["sessions"] != was["sessions"] else "",
                      (user["mailbox"] or "").replace("Mailbox", "").lower() if user else "",
                      ", ".join(user["licences"]) or "none" if user else "",
                      f"{phone['status'].lower()}, {len(phone['numbers'])} numbers" if phone else ""])
    demo.progress.say("\nOutcome, read back from AD (LDAP), the sandbox (/_sandbox/state) and the store (status):")
    demo.progress.say(table(["person", "how the connector heard", "state", "AD account", "Entra sign-in", "sessions",
                             "mailbox", "licences", "RingCentral"], cells))
    additions = [[k, a["product"], before["connectwise"]["additions"][k]["quantity"], a["quantity"]]
                 for k, a in now["connectwise"]["additions"].items()]
    demo.progress.say("\nBilling in ConnectWise (agreement/addition):")
    demo.progress.say(table(["addition", "product", "before", "after"], additions))
    for tid, ticket in now["connectwise"]["tickets"].items():
        if ticket["notes"]:
            demo.progress.say(f"ticket #{tid} ({ticket['summary']}): {len(ticket['notes'])} internal note(s), the last: "
                              f"{ticket['notes'][-1].splitlines()[0]}")


def main(args) -> int:
    if shutil.which("samba-tool") is None:
        print("offboard: error: demo: samba-tool not found; run `make demo` as root (it installs samba)")
        return 1
    if os.geteuid() != 0:
        print("offboard: error: demo: the sandbox DC needs root (it serves LDAPS on port 636)")
        return 1
    folder = Path(tempfile.mkdtemp(prefix="offboard-demo-"))
    progress = Progress()
    try:
        with progress.step(f"Provisioning a Samba AD DC for Example Ltd in {folder / 'dc'}"):
            dc = SambaDC(folder / "dc").provision()
        with progress.step("Starting it"):
            dc.start()
        try:
            with progress.step("Seeding Example Ltd's staff, groups and service accounts"):
                company.seed(dc)
            return run(dc, folder)
        finally:
            dc.stop()
    finally:
        if getattr(args, "keep", False):
            print(f"Sandbox kept in {folder} (config: {folder / 'config.toml'}; the DC and the sandbox are stopped)")
        else:
            shutil.rmtree(folder, ignore_errors=True)
