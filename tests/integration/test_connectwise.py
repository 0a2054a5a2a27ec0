"""ConnectWise Manage as the PSA: billing, the leaver's contact, ticket notes and ticket-triggered runs.

The PSA and Microsoft 365 are the sandbox's stateful emulations in one sandbox (every
ConnectWise request checked against the excerpt in connector/sandbox/specs/, every Graph
request against the v1.0 schema), behind `responses` and over HTTPS.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from connector import config
from connector.errors import ConfigError, OffboardError, PermanentError
from connector.model import ActionContext, PlannedAction
from connector.providers.connectwise.provider import ConnectWiseProvider
from connector.providers.facts import TenantFacts
from connector.providers.microsoft365 import auth
from connector.reconcile import reconcile
from connector.reconcile.announce import StateChange
from connector.reconcile.tickets import handle_connectwise_callback, parse_callback, run_from_ticket
from connector.sandbox.connectwise import VENDOR_URL, ConnectWise
from connector.sandbox.microsoft365 import VENDOR_URLS, Microsoft365
from connector.sandbox.web import Sandbox
from connector.store import Store
from tests.contract.provider_contract import ProviderContract
from tests.helpers import check_retry_after, write_csv
from tests.sandboxes import MODES, SECRET, SECRET_ENV, add_leaver, build, entra_toml, seed

SANDBOX_MODES = MODES
COMPANY, OTHER_COMPANY, AGREEMENT = 250, 999, 4123
BILLING = {"SPE_E3": 9101, "EMS": 9102}
TOKEN = "cw-callback-token-7c2e9f"
NOW = dt.datetime(2026, 11, 23, 18, 0, tzinfo=dt.timezone.utc)


@dataclasses.dataclass
class Systems:
    cloud: Microsoft365
    cw: ConnectWise
    sandbox: Sandbox

    def consumed(self) -> dict[str, int]:
        counts = {self.cloud.skus[k]["skuPartNumber"]: v for k, v in self.cloud.consumed().items()}
        return {sku: counts[sku] for sku in BILLING}

    def quantities(self) -> dict[str, float]:
        return {sku: self.cw.quantity(AGREEMENT, addition) for sku, addition in BILLING.items()}

    def bill_as_now(self) -> None:
        """The agreement as the MSP keeps it before anyone leaves: what is assigned today."""
        counts = self.consumed()
        for sku, addition in BILLING.items():
            self.cw.additions[(AGREEMENT, addition)]["quantity"] = counts[sku]


@pytest.fixture
def systems(monkeypatch, reach) -> Systems:
    cw = ConnectWise()
    for name, value in {"CW_PUBLIC": cw.public_key, "CW_PRIVATE": cw.private_key, "CW_CLIENT_ID": cw.client_id,
                        "CW_TOKEN": TOKEN, SECRET_ENV: SECRET}.items():
        monkeypatch.setenv(name, value)
    auth.applications.clear()
    cloud = Microsoft365(secret=SECRET)
    seed(cloud)
    cw.add_company(COMPANY, "Contoso Ltd")
    cw.add_company(OTHER_COMPANY, "Fabrikam Inc")
    cw.add_agreement(AGREEMENT, COMPANY, {9101: ("M365-E3", 0), 9102: ("EMS-E3", 0)})
    sandbox = cloud.mount(Sandbox())
    sandbox.add(cw)
    urls = reach(sandbox, {**VENDOR_URLS, "connectwise": VENDOR_URL})
    cloud.urls = {name: urls[name] for name in VENDOR_URLS}
    cw.url = urls["connectwise"]
    return Systems(cloud, cw, sandbox)


def make_config(s: Systems, *, allow_increase: bool = False, public_key: str = "env:CW_PUBLIC", feed: str = "",
                **psa) -> config.Config:
    block = s.cloud.provider_block(f"env:{SECRET_ENV}")
    return config.parse({
        "psa": {"type": "connectwise", "url": s.cw.url, "company": "msp", "public_key": public_key,
                "private_key": "env:CW_PRIVATE", "client_id": "env:CW_CLIENT_ID", "callback_token": "env:CW_TOKEN",
                "leaver_field": "Leaver Email", "date_field": "Last Day", "allow_increase": allow_increase, **psa},
        "tenant": [{"id": "contoso", "name": "Contoso Ltd", "psa_company_id": COMPANY, "psa_agreement_id": AGREEMENT,
                    "billing": BILLING, "provider": [{"type": "entra", **block}, {"type": "exchange_online", **block}],
                    "source": [{"type": "csv", "path": feed}] if feed else [],
                    "policy": {"mailbox": "shared", "mailbox_delegate": "manager", "forward_to": "none"}}]})


def leaver_in_both(s: Systems, n: int, ticket: bool = True):
    t = add_leaver(s.cloud, n)
    s.cw.add_contact(COMPANY, t.first_name, t.last_name, t.email)
    if ticket:
        t = dataclasses.replace(t, ticket=str(s.cw.add_ticket(COMPANY, f"Offboard: {t.email}")))
    return t


def psa_provider(cfg: config.Config) -> ConnectWiseProvider:
    tenant = cfg.tenants[0]
    return ConnectWiseProvider("connectwise", cfg.psa, tenant, "psa", facts=TenantFacts([build(tenant, "entra")]))


def passes(cfg, store, *terminations, now=NOW, times=3, **kw):
    """Offboarding takes a few passes (the mailbox converts between them): run until nothing is open."""
    for i in range(times):
        report = reconcile(cfg, store, on_demand=list(terminations), now=now + dt.timedelta(minutes=10 * i), **kw)
    return report


# -- the provider on its own: three passes per action ---------------------------------------
class TestConnectWiseContract(ProviderContract):
    action_names = ["deactivate_contact", "sync_billing"]
    journal_only_actions = ("sync_billing",)    # level-based: always planned, the journal says it is done
    undo_rederives = ("sync_billing",)          # its undo is the real count again

    @pytest.fixture
    def provider(self, systems, leaver):
        systems.bill_as_now()
        for addition in BILLING.values():        # a licence already reclaimed: the invoice is one too high
            systems.cw.additions[(AGREEMENT, addition)]["quantity"] += 1
        return psa_provider(make_config(systems))

    @pytest.fixture
    def leaver(self, systems):
        return leaver_in_both(systems, 1, ticket=False)

    @pytest.fixture
    def snapshot(self, systems):
        def read(termination):
            contacts = {c["id"]: (c["inactiveFlag"], c.get("disablePortalLoginFlag"))
                        for c in systems.cw.contacts.values()
                        if termination.email in [i["value"] for i in c["communicationItems"]]}
            return {"contacts": contacts, "quantities": systems.quantities()}
        return read

    @pytest.fixture
    def secrets(self, systems):
        return [systems.cw.private_key, systems.cw.public_key, SECRET]


def restore_action(provider, original: str, before) -> PlannedAction:
    """What the restore engine hands a provider (common.md): the undo action, with the original's before-state."""
    name = provider.undo[original]
    return PlannedAction(provider.name, name, provider.actions[name], "", (("action", original), ("before", before)))


def test_undo_reactivates_the_contact_and_billing_resyncs_three_passes(systems):
    cfg = make_config(systems)
    provider = psa_provider(cfg)
    t = leaver_in_both(systems, 3, ticket=False)
    match = provider.match(t)
    ctx = ActionContext(termination=t, subject=match.subject, local_date=NOW.date())
    done = provider.apply(provider.planned("deactivate_contact"), ctx)
    assert done.outcome == "changed"
    undo = restore_action(provider, "deactivate_contact", done.before)
    results = [provider.apply(undo, dataclasses.replace(ctx, dry_run=dry)).outcome for dry in (True, False, False)]
    assert results == ["planned", "changed", "unchanged"]
    contact = next(iter(systems.cw.contacts.values()))
    assert contact["inactiveFlag"] is False and contact["disablePortalLoginFlag"] is False
    systems.bill_as_now()
    resync = restore_action(provider, "sync_billing", {})
    assert provider.apply(resync, ctx).outcome == "unchanged"


# -- billing through the engine ----------------------------------------------------------------
def test_two_leavers_at_once_then_a_second_run_leave_the_real_count(systems):
    cfg, store = make_config(systems), Store.memory()
    one, two = leaver_in_both(systems, 1), leaver_in_both(systems, 2)
    systems.bill_as_now()
    before = systems.quantities()
    report = passes(cfg, store, one, two)
    assert report.exit_code == 0, report.rows
    assert systems.quantities() == systems.consumed() == {sku: before[sku] - 2 for sku in BILLING}
    bills = {a["termination_id"]: (a["status"], json.loads(a["before"]), json.loads(a["after"]))
             for t in (one, two) for a in store.actions(t.id) if a["action"] == "sync_billing"}
    assert sorted(status for status, _, _ in bills.values()) == ["changed", "unchanged"]
    changed = next(b for b in bills.values() if b[0] == "changed")
    assert changed[1]["SPE_E3"]["quantity"] == before["SPE_E3"] and changed[2]["SPE_E3"]["quantity"] == before["SPE_E3"] - 2
    audited = [json.loads(e["data"]) for e in store.audit_trail(one.id) + store.audit_trail(two.id)
               if e["event"] == "action_changed"]
    [audited] = [e for e in audited if e["action"] == "sync_billing"]
    assert (audited["before"]["SPE_E3"]["quantity"], audited["after"]["SPE_E3"]["quantity"]) == (
        before["SPE_E3"], before["SPE_E3"] - 2)
    writes = len(systems.sandbox.writes.entries("connectwise"))
    passes(cfg, store, one, two, now=NOW + dt.timedelta(hours=1), times=1)       # asked again: nothing to write
    assert systems.quantities() == systems.consumed()
    assert len(systems.sandbox.writes.entries("connectwise")) == writes
    for t in (one, two):
        assert len(systems.cw.internal_notes(int(t.ticket))) == 1, "a second run posted the note again"


def test_contact_deactivated_and_the_ticket_note_holds_every_action(systems):
    cfg, store = make_config(systems), Store.memory()
    t = leaver_in_both(systems, 1)
    systems.bill_as_now()
    passes(cfg, store, t)
    contact = next(iter(systems.cw.contacts.values()))
    assert contact["inactiveFlag"] is True and contact["disablePortalLoginFlag"] is True
    [note] = systems.cw.internal_notes(int(t.ticket))
    assert "**done**" in note and "Nothing needs a person." in note
    for action in ("block_sign_in", "convert_mailbox_to_shared", "remove_licenses", "sync_billing",
                   "deactivate_contact"):
        assert f"| {action} |" in note
    assert systems.cw.notes[int(t.ticket)][0]["internalAnalysisFlag"] is True


def test_a_feed_started_offboarding_opens_a_ticket_and_notes_it(systems, tmp_path):
    t = leaver_in_both(systems, 1, ticket=False)
    write_csv(tmp_path, "feed.csv", [f"{t.employee_id},{t.email},Leaver,Person1,,2026-11-23,,immediate",
                                     "E77,long.gone@contoso.com,Long,Gone,,2025-01-10,,voluntary"])   # before lookback
    cfg, store = make_config(systems, feed=str(tmp_path / "*.csv"), ticket_board="Service Board",
                             ticket_status="New", ticket_type="Offboarding"), Store.memory()
    systems.bill_as_now()
    for i in range(3):
        reconcile(cfg, store, now=NOW + dt.timedelta(minutes=10 * i))
    [ticket] = systems.cw.tickets.values()          # none for the one ignored as too old
    assert store.termination("contoso/E77")["state"] == "cancelled"
    assert ticket["summary"] == f"Offboard: {t.email}" and ticket["company"]["id"] == COMPANY
    row = store.termination(t.id)
    assert row["state"] == "done" and row["ticket"] == str(ticket["id"])
    assert [n for n in systems.cw.internal_notes(ticket["id"]) if "**done**" in n]


def test_a_count_that_would_rise_is_reported_not_written_and_zero_cancels(systems):
    cfg, store = make_config(systems), Store.memory()
    t = leaver_in_both(systems, 1)          # holds the tenant's only EMS licence
    systems.bill_as_now()
    e3 = systems.cw.additions[(AGREEMENT, BILLING["SPE_E3"])]
    e3["quantity"] -= 2                     # the invoice was two short: one fewer assigned is still a rise
    passes(cfg, store, t)
    bill = next(a for a in store.actions(t.id) if a["action"] == "sync_billing")
    assert bill["status"] == "changed"
    assert f"SPE_E3: {e3['quantity']:g} -> {e3['quantity'] + 1:g} would rise: not written" in bill["reason"]
    assert e3["quantity"] == systems.consumed()["SPE_E3"] - 1, "a rise was written"
    ems = systems.cw.additions[(AGREEMENT, BILLING["EMS"])]
    assert ems["quantity"] == 0 and ems["cancelledDate"].endswith("T00:00:00Z"), "zero cancels the addition"
    assert "EMS (addition 9102): 1 -> 0 (cancelled)" in bill["reason"]


def test_allow_increase_writes_the_rise(systems):
    cfg, store = make_config(systems, allow_increase=True), Store.memory()
    t = leaver_in_both(systems, 1)
    systems.bill_as_now()
    systems.cw.additions[(AGREEMENT, BILLING["SPE_E3"])]["quantity"] -= 2
    passes(cfg, store, t)
    assert systems.quantities() == systems.consumed()


def test_plan_shows_the_quantities_and_writes_nothing(systems):
    cfg = make_config(systems)
    t = leaver_in_both(systems, 1)
    systems.bill_as_now()
    systems.cw.additions[(AGREEMENT, BILLING["SPE_E3"])]["quantity"] += 3     # three seats left to reclaim
    quantities, writes = systems.quantities(), systems.sandbox.writes.entries()
    report = reconcile(cfg, Store.memory(), on_demand=[t], now=NOW, dry_run=True)
    bill = [a for r in report.rows for a in r["actions"] if a["action"] == "sync_billing"]
    assert bill[0]["outcome"] == "planned"
    counts = systems.consumed()          # a dry run reads today's count: the leaver still holds a licence
    assert f"SPE_E3 (addition 9101): {counts['SPE_E3'] + 3} -> {counts['SPE_E3']}" in bill[0]["reason"]
    assert systems.quantities() == quantities and systems.sandbox.writes.entries() == writes


# -- HTTP behaviour ----------------------------------------------------------------------------
def test_429_with_retry_after_is_waited_for_or_parked(systems):
    check_retry_after(systems.cw.knobs, psa_provider(make_config(systems)).check_online)


def test_401_names_the_credential_and_stops_only_the_psa(systems, monkeypatch):
    monkeypatch.setenv("CW_WRONG", "not-the-key")
    cfg, store = make_config(systems, public_key="env:CW_WRONG"), Store.memory()
    with pytest.raises(ConfigError) as caught:
        psa_provider(cfg).check_online()
    assert "public_key env:CW_WRONG" in str(caught.value) and "not-the-key" not in str(caught.value)
    t = leaver_in_both(systems, 1)
    report = reconcile(cfg, store, on_demand=[t], now=NOW)
    assert report.exit_code == 1
    assert systems.cloud.snapshot(t.email)["accountEnabled"] is False, "the other providers stopped too"
    assert store.termination(t.id)["state"] != "done"


def test_a_psa_that_cannot_be_read_at_matching_holds_no_other_system(systems):
    provider = psa_provider(make_config(systems))
    t = leaver_in_both(systems, 1, ticket=False)
    systems.cw.knobs.outage = True
    match = provider.match(t)
    assert match.status == "matched" and match.subject.state["contacts"] is None
    assert [a.action for a in provider.plan(match.subject, t)] == ["deactivate_contact", "sync_billing"]
    systems.cw.knobs.outage = False
    ctx = ActionContext(termination=t, subject=match.subject, local_date=NOW.date())
    assert provider.apply(provider.planned("deactivate_contact"), ctx).outcome == "changed"   # looked up again


def test_check_online_proves_the_psa_keys(systems, monkeypatch, tmp_path, capsys):
    from connector.cli import main

    path = tmp_path / "config.toml"
    path.write_text(f"""[psa]
type = "connectwise"
url = "{systems.cw.url}"
company = "msp"
public_key = "env:CW_WRONG"
private_key = "env:CW_PRIVATE"
client_id = "env:CW_CLIENT_ID"

[[tenant]]
id = "contoso"

{entra_toml(systems.cloud)}""")
    monkeypatch.setenv("CW_WRONG", "not-the-key")
    assert main(["--config", str(path), "check", "--online"]) == 1
    assert "public_key env:CW_WRONG" in capsys.readouterr().err
    monkeypatch.setenv("CW_WRONG", systems.cw.public_key)
    assert main(["--config", str(path), "check", "--online"]) == 0


def test_paging_follows_link_next(systems):
    provider = psa_provider(make_config(systems))
    ticket = systems.cw.add_ticket(COMPANY, "busy")
    systems.cw.notes[ticket] = [{"id": i, "text": f"note {i}"} for i in range(2500)]
    assert len(list(provider.api.pages(f"/service/tickets/{ticket}/notes"))) == 2500
    assert sum(1 for _, m, p in systems.cw.calls if p.endswith(f"{ticket}/notes")) == 3


# -- tickets ------------------------------------------------------------------------------------
def callback(ticket_id, company="msp", entity_as_string=True) -> bytes:
    entity = {"id": ticket_id, "summary": "whatever the sender says", "company": {"id": COMPANY}}
    return json.dumps({"MessageId": "m-1", "Action": "added", "Type": "ticket", "ID": ticket_id,
                       "CompanyId": company, "Entity": json.dumps(entity) if entity_as_string else entity}).encode()


def test_a_callback_runs_the_ticket_to_its_note(systems):
    cfg, store = make_config(systems), Store.memory()
    t = add_leaver(systems.cloud, 1)
    systems.bill_as_now()
    ticket = systems.cw.add_ticket(COMPANY, "Leaver", **{"Leaver Email": t.email.upper()})
    heard: list[StateChange] = []
    status, payload, work = handle_connectwise_callback(cfg, store, TOKEN, callback(ticket), now=NOW,
                                                        listeners=(heard.append,))
    assert status == 202 and payload["run_id"]
    work()
    for i in range(1, 3):
        run_from_ticket(cfg, store, ticket, now=NOW + dt.timedelta(minutes=10 * i))
    row = store.termination(f"contoso/{t.email}")
    assert row["state"] == "done" and row["ticket"] == str(ticket)
    assert [n for n in systems.cw.internal_notes(ticket) if "**done**" in n]
    assert ("in_progress", payload["run_id"]) in [(c.after, c.run_id) for c in heard]


def test_a_wrong_token_is_404_with_nothing_queued(systems):
    cfg, store = make_config(systems), Store.memory()
    assert handle_connectwise_callback(cfg, store, "guess", callback(1)) == (404, {"error": "not found"}, None)
    assert handle_connectwise_callback(cfg, store, TOKEN, b"{not json")[0] == 400
    assert systems.cw.calls == []


def test_a_ticket_that_names_nobody_gets_a_note_and_nothing_else(systems):
    cfg, store = make_config(systems), Store.memory()
    nobody = systems.cw.add_ticket(COMPANY, "Printer on fire")
    unknown = systems.cw.add_ticket(COMPANY, "Offboard: ghost@contoso.com")
    for ticket in (nobody, unknown):
        assert run_from_ticket(cfg, store, ticket, now=NOW) is None
        assert run_from_ticket(cfg, store, ticket, now=NOW) is None      # asked twice: still one note
    assert "names no leaver" in systems.cw.internal_notes(nobody)[0]
    assert "nobody named ghost@contoso.com" in systems.cw.internal_notes(unknown)[0]
    assert [len(systems.cw.internal_notes(t)) for t in (nobody, unknown)] == [1, 1]
    assert store.terminations() == []
    assert [w.op for w in systems.sandbox.writes.entries()] == ["POST service/tickets/{id}/notes"] * 2


def test_a_forged_callback_naming_another_companys_ticket_does_nothing(systems):
    cfg, store = make_config(systems), Store.memory()
    t = add_leaver(systems.cloud, 1)
    foreign = systems.cw.add_ticket(OTHER_COMPANY, f"Offboard: {t.email}")
    status, _, work = handle_connectwise_callback(cfg, store, TOKEN, callback(foreign))   # body claims contoso
    assert status == 202
    assert work() is None
    assert store.terminations() == [] and systems.sandbox.writes.entries() == []
    assert systems.cloud.snapshot(t.email)["accountEnabled"] is True


def test_callback_entity_is_parsed_twice_and_hostile_bodies_are_refused():
    assert parse_callback(callback(42)).ticket == 42
    body = json.loads(callback(43))
    del body["ID"]
    assert parse_callback(json.dumps(body).encode()).ticket == 43
    for bad in (b"[]", b'{"ID": true}', b'{"ID": -1}', b'{"Entity": "{not json"}', b"x" * (1 << 21)):
        with pytest.raises(Exception) as caught:
            parse_callback(bad)
        assert type(caught.value).__name__ == "InputRejected"


def test_offboard_run_from_ticket(systems, tmp_path, capsys):
    from connector.cli import main

    block = "".join(f'{k} = "{v}"\n' for k, v in systems.cloud.provider_block(f"env:{SECRET_ENV}").items())
    path = tmp_path / "config.toml"
    path.write_text(f"""[connector]
state = "{tmp_path / 'state.db'}"

[psa]
type = "connectwise"
url = "{systems.cw.url}"
company = "msp"
public_key = "env:CW_PUBLIC"
private_key = "env:CW_PRIVATE"
client_id = "env:CW_CLIENT_ID"

[[tenant]]
id = "contoso"
psa_company_id = {COMPANY}
psa_agreement_id = {AGREEMENT}

[tenant.billing]
SPE_E3 = 9101
EMS = 9102

[[tenant.provider]]
type = "entra"
{block}
[[tenant.provider]]
type = "exchange_online"
{block}""")
    t = leaver_in_both(systems, 1)
    systems.bill_as_now()
    assert main(["--config", str(path), "run", "--from-ticket", t.ticket, "--dry-run"]) in (0, 2)
    assert systems.sandbox.writes.entries() == [], "a dry run wrote"
    assert main(["--config", str(path), "run", "--from-ticket", t.ticket]) == 2      # the mailbox is converting
    store = Store.open(str(tmp_path / "state.db"))
    tid = f"contoso/{t.email}"              # known to no feed: named by its address, as `run EMAIL` does
    assert store.termination(tid)["ticket"] == t.ticket
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10)
    for i in range(2):
        run_from_ticket(config.load(path), store, int(t.ticket), now=later + dt.timedelta(minutes=10 * i))
    assert store.termination(tid)["state"] == "done"
    assert main(["--config", str(path), "run", "--from-ticket", t.ticket]) == 0      # asked again: nothing new
    assert systems.quantities() == systems.consumed()
    assert len(systems.cw.internal_notes(int(t.ticket))) == 1
    capsys.readouterr()
    assert main(["--config", str(path), "run", "--from-ticket", t.ticket, t.email]) == 1
    assert main(["--config", str(path), "run"]) == 1
    assert "--from-ticket" in capsys.readouterr().err


def test_hostile_answers_are_errors_not_crashes(systems):
    provider = psa_provider(make_config(systems))
    ticket = systems.cw.add_ticket(COMPANY, "busy")
    systems.cw.notes[ticket] = [{"id": i, "text": "x"} for i in range(1500)]
    real = systems.cw.page_url
    systems.cw.page_url = lambda request, number: "https://attacker.example/steal" + real(request, number)[8:]
    with pytest.raises(PermanentError, match="points away"):
        list(provider.api.pages(f"/service/tickets/{ticket}/notes"))
    systems.cw.page_url = real
    systems.cw.route = lambda request: (200, "<html>maintenance</html>")
    with pytest.raises(PermanentError, match="expected a list"):
        list(provider.api.pages("/company/contacts"))


def test_a_psa_down_for_a_pass_holds_only_billing_and_the_next_pass_finishes(systems):
    cfg, store = make_config(systems), Store.memory()
    t = leaver_in_both(systems, 1)
    systems.cw.knobs.outage = True                       # down for the start-of-pass check: not dropped
    passes(cfg, store, t, times=2)
    assert store.action(f"{t.id}/connectwise/match_account")["phase"] == "bill"
    assert store.action(f"{t.id}/entra/remove_licenses")["status"] == "changed", \
        "the PSA being down held the licence removal"
    assert store.termination(t.id)["state"] == "in_progress"       # no word yet from the PSA: not done
    systems.cw.knobs.outage = False
    passes(cfg, store, t, now=NOW + dt.timedelta(hours=1), times=1)
    assert store.termination(t.id)["state"] == "done"


def test_a_note_the_psa_refused_is_posted_once_it_is_back(systems):
    from connector.reconcile.announce import PENDING, StateChange, TicketNotes

    cfg, store = make_config(systems), Store.memory()
    t = leaver_in_both(systems, 1)
    systems.bill_as_now()
    passes(cfg, store, t)
    ticket = int(t.ticket)
    systems.cw.notes[ticket].clear()                     # as if the PSA had been down when it settled
    systems.cw.knobs.outage = True
    notes = TicketNotes(cfg, store)
    with pytest.raises(OffboardError):
        notes(StateChange(t.id, "contoso", "in_progress", "done", "", "r1"))
    assert store.cursor(PENDING + t.id) == "done"
    assert notes.retry_pending() == 0                    # still down: kept for the next round
    systems.cw.knobs.outage = False
    assert notes.retry_pending() == 1 and len(systems.cw.internal_notes(ticket)) == 1
    assert store.cursor(PENDING + t.id) is None and notes.retry_pending() == 0
    assert len(systems.cw.internal_notes(ticket)) == 1
