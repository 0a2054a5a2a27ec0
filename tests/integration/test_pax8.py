"""Pax8 as the distributor: seats freed by `reclaim` are cut when NCE allows, queued for the renewal otherwise.

Microsoft 365, ConnectWise and Pax8 are the sandbox's stateful emulations in one sandbox (every Pax8
request checked against specs/pax8-partner-excerpt.yaml), behind `responses` and over HTTPS. The Pax8
fake's clock is the pass's `now`, so the history's seat-add dates are what the rule reads.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from connector import config, report
from connector.cli import status_of
from connector.errors import ConfigError
from connector.model import ActionContext
from connector.providers.facts import TenantFacts
from connector.providers.microsoft365 import auth
from connector.providers.pax8 import api as pax8_api
from connector.providers.pax8.nce import decide
from connector.providers.pax8.provider import Pax8Provider
from connector.reconcile import reconcile
from connector.reconcile.engine import status_rows
from connector.reconcile.tickets import run_from_ticket
from connector.reconcile.schedule import next_wakeup, workable_phases
from connector.sandbox.connectwise import VENDOR_URL as CW_URL, ConnectWise
from connector.sandbox.microsoft365 import VENDOR_URLS, Microsoft365
from connector.sandbox.pax8 import VENDOR_URL, Pax8
from connector.sandbox.web import Sandbox
from connector.store import Store, parse_iso
from tests.contract.provider_contract import ProviderContract
from tests.helpers import check_retry_after
from tests.sandboxes import MODES, SECRET, SECRET_ENV, add_leaver, build, entra_toml, seed

SANDBOX_MODES = MODES
COMPANY_ID = "2aa4862a-9474-4138-9863-4f0a8e4cec74"
CW_COMPANY, AGREEMENT = 250, 4123
BILLING = {"SPE_E3": 9101, "EMS": 9102}
UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 23, 18, 0, tzinfo=UTC)
MONTHLY_START = dt.datetime(2026, 10, 5, 9, 0, tzinfo=UTC)      # renews on the 5th: 18 days into this term
RENEWAL = dt.datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


@dataclasses.dataclass
class Systems:
    cloud: Microsoft365
    cw: ConnectWise
    pax8: Pax8
    sandbox: Sandbox
    subs: dict[str, str] = dataclasses.field(default_factory=dict)

    def consumed(self) -> dict[str, int]:
        counts = {self.cloud.skus[k]["skuPartNumber"]: v for k, v in self.cloud.consumed().items()}
        return {sku: counts[sku] for sku in BILLING}

    def seats(self) -> dict[str, int]:
        return {sku: self.pax8.quantity(sid) for sku, sid in self.subs.items()}

    def invoiced(self) -> dict[str, float]:
        return {sku: self.cw.quantity(AGREEMENT, addition) for sku, addition in BILLING.items()}

    def buy(self, *, e3: tuple = ("Monthly", MONTHLY_START, None), ems: tuple = ("Monthly", MONTHLY_START, None)):
        """The subscriptions as the MSP bought them: the seats assigned today; the invoice the same."""
        counts = self.consumed()
        for sku, (term, start, ends) in (("SPE_E3", e3), ("EMS", ems)):
            self.subs[sku] = self.pax8.add_subscription(COMPANY_ID, sku, counts[sku], term=term, start=start, ends=ends)
        for sku, addition in BILLING.items():
            self.cw.additions[(AGREEMENT, addition)]["quantity"] = counts[sku]

    def writes(self) -> int:
        return len(self.sandbox.writes.entries("pax8"))


@pytest.fixture
def systems(monkeypatch, reach) -> Systems:
    cw, pax8 = ConnectWise(), Pax8()
    for name, value in {"CW_PUBLIC": cw.public_key, "CW_PRIVATE": cw.private_key, "CW_CLIENT_ID": cw.client_id,
                        "PAX8_SECRET": pax8.client_secret, SECRET_ENV: SECRET}.items():
        monkeypatch.setenv(name, value)
    auth.applications.clear()
    pax8_api.tokens.clear()
    cloud = Microsoft365(secret=SECRET)
    seed(cloud)
    cw.add_company(CW_COMPANY, "Contoso Ltd")
    cw.add_agreement(AGREEMENT, CW_COMPANY, {9101: ("M365-E3", 0), 9102: ("EMS-E3", 0)})
    sandbox = cloud.mount(Sandbox())
    sandbox.add(cw)
    sandbox.add(pax8)
    urls = reach(sandbox, {**VENDOR_URLS, "connectwise": CW_URL, "pax8": VENDOR_URL})
    cloud.urls = {name: urls[name] for name in VENDOR_URLS}
    cw.url, pax8.url = urls["connectwise"], urls["pax8"]
    return Systems(cloud, cw, pax8, sandbox)


def make_config(s: Systems, *, basis: str = "assigned", secret: str = "env:PAX8_SECRET", pax8: bool = True,
                policy: dict | None = None, **tenant) -> config.Config:
    block = s.cloud.provider_block(f"env:{SECRET_ENV}")
    if pax8:
        tenant = {"pax8_company_id": COMPANY_ID, "pax8_subscriptions": s.subs, **tenant}
    return config.parse({
        "psa": {"type": "connectwise", "url": s.cw.url, "company": "msp", "public_key": "env:CW_PUBLIC",
                "private_key": "env:CW_PRIVATE", "client_id": "env:CW_CLIENT_ID"},
        "distributor": {"type": "pax8", "base_url": s.pax8.url, "client_id": s.pax8.client_id,
                        "client_secret": secret},
        "tenant": [{"id": "contoso", "name": "Contoso Ltd", "psa_company_id": CW_COMPANY,
                    "psa_agreement_id": AGREEMENT, "billing": BILLING, "billing_basis": basis, **tenant,
                    "provider": [{"type": "entra", **block}, {"type": "exchange_online", **block}],
                    "policy": {"mailbox": "shared", "mailbox_delegate": "manager", "forward_to": "none",
                               **(policy or {})}}]})


def offboard(cfg, store, s: Systems, *terminations, now=NOW, times=3, **kw):
    """Offboarding takes a few passes (the mailbox converts between them); Pax8's clock is each pass's."""
    for i in range(times):
        s.pax8.now = now + dt.timedelta(minutes=10 * i)
        report = reconcile(cfg, store, on_demand=list(terminations), now=s.pax8.now, **kw)
    return report


def offboarded(s: Systems, **config):
    """One leaver offboarded at NOW from monthly subscriptions bought 18 days before (their seats outside the
    168 hours): -> (the leaver, the config, the store, the seats bought)."""
    one = add_leaver(s.cloud, 1)
    s.buy()
    cfg, store = make_config(s, **config), Store.memory()
    bought = s.seats()
    offboard(cfg, store, s, one)
    return one, cfg, store, bought


def later(cfg, store, s: Systems, now: dt.datetime, **kw):
    """A pass as the daemon runs it at `now`: no feed, whatever the store says is workable."""
    s.pax8.now = now
    return reconcile(cfg, store, now=now, **kw)


def reduce_row(store, t) -> dict:
    return next(a for a in store.actions(t.id) if a["action"] == "reduce_seats")


# -- the provider on its own: three passes ------------------------------------------------------------
class TestPax8Contract(ProviderContract):
    action_names = ["reduce_seats"]
    journal_only_actions = ("reduce_seats",)    # level-based: always planned, the journal says it is done

    @pytest.fixture
    def provider(self, systems, leaver):
        bought = dt.datetime.now(UTC) - dt.timedelta(days=1)      # the contract runs at the machine's clock
        systems.buy(e3=("Monthly", bought, None), ems=("Monthly", bought, None))
        for sid in systems.subs.values():                       # a licence already reclaimed: one seat too many
            systems.pax8.subscriptions[sid]["quantity"] += 1
        provider = distributor(make_config(systems), systems)
        provider.api.token()                                    # issued now: `secrets` lists it
        return provider

    @pytest.fixture
    def leaver(self, systems):
        return add_leaver(systems.cloud, 1)

    @pytest.fixture
    def snapshot(self, systems):
        return lambda termination: systems.seats()

    @pytest.fixture
    def secrets(self, systems):
        return [systems.pax8.client_secret, *systems.pax8.tokens, SECRET]


# -- inside and outside the window ---------------------------------------------------------------
def test_a_seat_freed_inside_its_168_hours_is_cut_now(systems):
    one = add_leaver(systems.cloud, 1)                     # the leaver holds EMS direct and SPE_E3 via a group
    systems.buy()                                          # EMS: its seats are 18 days old
    systems.subs["SPE_E3"] = systems.pax8.add_subscription(COMPANY_ID, "SPE_E3", systems.consumed()["SPE_E3"],
                                                           start=NOW - dt.timedelta(days=2))   # bought 2 days ago
    cfg, store = make_config(systems), Store.memory()
    assigned = systems.consumed()
    report = offboard(cfg, store, systems, one)
    assert report.exit_code == 0, report.rows
    seats = systems.seats()
    assert seats["SPE_E3"] == assigned["SPE_E3"] - 1 == systems.consumed()["SPE_E3"]
    assert seats["EMS"] == assigned["EMS"], "a seat outside its window was cut"
    row = reduce_row(store, one)
    assert row["status"] == "changed"
    after = json.loads(row["after"])
    assert after["SPE_E3"]["quantity"] == seats["SPE_E3"] and after["SPE_E3"]["paid_until"] == NOW.date().isoformat()
    assert after["EMS"]["paid_until"] == RENEWAL.date().isoformat() and after["EMS"]["waiting"] == 1
    assert f"1 seat paid until {RENEWAL.date()}" in row["reason"]
    assert store.termination(one.id)["state"] == "done"
    history = systems.pax8.history[systems.subs["SPE_E3"]]
    assert history[-1]["quantity"] == seats["SPE_E3"] and history[-1]["updatedDate"].startswith("2026-11-23")


def test_a_seat_freed_outside_is_queued_then_cut_when_the_window_opens(systems):
    one = add_leaver(systems.cloud, 1)
    one = dataclasses.replace(one, ticket=str(systems.cw.add_ticket(CW_COMPANY, f"Offboard: {one.email}")))
    systems.buy()
    cfg, store = make_config(systems), Store.memory()
    bought = systems.seats()
    offboard(cfg, store, systems, one)
    assert systems.seats() == bought, "nothing may be cut outside the window"
    row = reduce_row(store, one)
    assert row["status"] == "unchanged" and parse_iso(row["next_attempt_at"]) == RENEWAL
    assert f"1 seat paid until {RENEWAL.date()}" in row["reason"]
    [status] = [a for r in status_rows(store, [one.id]) for a in r["actions"] if a["action"] == "reduce_seats"]
    assert f"EMS (Monthly, subscription {systems.subs['EMS']}): {bought['EMS']}; 1 seat paid until " \
        f"{RENEWAL.date()}" in status["reason"]
    [note] = systems.cw.internal_notes(int(one.ticket))
    assert f"1 seat paid until {RENEWAL.date()}" in note
    [shown] = status_of(store, "contoso", everything=False)     # done, yet `status` lists it: a seat waits
    assert shown["id"] == one.id and shown["state"] == "done"
    assert store.termination(one.id)["state"] == "done", "a queued reduction reopened the termination"
    assert next_wakeup(cfg, store, NOW + dt.timedelta(hours=1)) == RENEWAL
    row, queued = store.termination(one.id), store.next_attempts("contoso", ("done",))[one.id]
    assert workable_phases(row, cfg.tenants[0], RENEWAL - dt.timedelta(seconds=1), queued) == ()
    assert workable_phases(row, cfg.tenants[0], RENEWAL, queued) == ("bill",)
    writes = systems.writes()
    later(cfg, store, systems, RENEWAL - dt.timedelta(minutes=1))            # not yet
    assert systems.writes() == writes and systems.seats() == bought
    report = later(cfg, store, systems, RENEWAL)
    assert report.exit_code == 0, report.rows
    assert systems.seats() == systems.consumed() == {sku: bought[sku] - 1 for sku in bought}
    row = reduce_row(store, one)
    assert row["status"] == "changed" and row["next_attempt_at"] is None
    assert store.termination(one.id)["state"] == "done"
    first, cut = systems.cw.internal_notes(int(one.ticket))         # the ticket hears of the cut too
    assert "| reduce_seats | changed |" in cut and f"{bought['EMS']} -> {bought['EMS'] - 1}" in cut
    audited = [json.loads(e["data"]) for e in store.audit_trail(one.id) if e["event"] == "action_changed"]
    [cut] = [e for e in audited if e["action"] == "reduce_seats"]
    assert (cut["before"]["EMS"]["quantity"], cut["after"]["EMS"]["quantity"]) == (bought["EMS"], bought["EMS"] - 1)
    writes = systems.writes()
    later(cfg, store, systems, RENEWAL + dt.timedelta(hours=1))              # asked again: nothing to do
    assert systems.writes() == writes and next_wakeup(cfg, store, RENEWAL + dt.timedelta(hours=1)) is None
    assert status_of(store, "contoso", everything=False) == []


def test_a_seat_re_used_before_the_window_is_not_cut(systems):
    one, cfg, store, bought = offboarded(systems)
    systems.cloud.add_user("new.starter@contoso.com", employee_id="N1", licences=("EMS", "SPE_E3"))
    later(cfg, store, systems, RENEWAL)
    assert systems.seats() == bought == systems.consumed(), "a re-used seat was cut"
    row = reduce_row(store, one)
    assert row["status"] == "unchanged" and row["next_attempt_at"] is None
    assert systems.writes() == 0


def test_a_leaver_deleted_before_the_renewal_still_frees_the_seat_then(systems):
    one = add_leaver(systems.cloud, 1, mailbox=False)            # nothing anchors the account: retain deletes it
    systems.buy()
    cfg, store = make_config(systems, policy={"delete_after_days": 2}), Store.memory()
    bought = systems.seats()
    offboard(cfg, store, systems, one)
    later(cfg, store, systems, NOW + dt.timedelta(days=3))
    assert store.termination(one.id)["state"] == "deleted" and systems.seats() == bought
    assert next_wakeup(cfg, store, NOW + dt.timedelta(days=3)) == RENEWAL
    later(cfg, store, systems, RENEWAL)
    assert systems.seats() == systems.consumed() == {sku: bought[sku] - 1 for sku in bought}
    assert store.termination(one.id)["state"] == "deleted", "the later job reopened a deleted termination"


def test_a_later_job_throttled_stays_done_and_comes_back(systems):
    one, cfg, store, bought = offboarded(systems)
    systems.pax8.knobs.throttle_next, systems.pax8.knobs.retry_after = 50, 600
    later(cfg, store, systems, RENEWAL)
    [row] = [a for a in store.actions(one.id) if a["provider"] == "pax8" and a["status"] == "failed"]
    assert systems.seats() == bought and "429" in row["reason"]
    assert store.termination(one.id)["state"] == "done"
    retry = parse_iso(row["next_attempt_at"])
    assert next_wakeup(cfg, store, RENEWAL) == retry and RENEWAL < retry <= RENEWAL + dt.timedelta(minutes=10)
    systems.pax8.knobs.throttle_next = 0
    later(cfg, store, systems, retry)
    assert systems.seats() == {sku: bought[sku] - 1 for sku in bought} and reduce_row(store, one)["status"] == "changed"


def test_a_ticket_triggered_run_cuts_seats_too(systems):
    one = add_leaver(systems.cloud, 1)
    systems.buy(e3=("Monthly", NOW - dt.timedelta(days=1), None), ems=("Monthly", NOW - dt.timedelta(days=1), None))
    ticket = systems.cw.add_ticket(CW_COMPANY, f"Offboard: {one.email}")
    cfg, store = make_config(systems), Store.memory()
    bought = systems.seats()
    for i in range(3):
        systems.pax8.now = NOW + dt.timedelta(minutes=10 * i)
        run_from_ticket(cfg, store, ticket, now=systems.pax8.now)
    [row] = store.terminations("contoso")              # the ticket names the address: the id is built from it
    assert row["state"] == "done"
    assert [a["status"] for a in store.actions(row["id"]) if a["action"] == "reduce_seats"] == ["changed"]
    assert systems.seats() == {sku: bought[sku] - 1 for sku in bought}


def test_annual_seats_are_never_cut_mid_term(systems):
    renews = dt.datetime(2027, 3, 1, tzinfo=UTC)
    one = add_leaver(systems.cloud, 1)
    systems.buy(ems=("Annual", dt.datetime(2026, 3, 1, tzinfo=UTC), renews))
    cfg, store = make_config(systems), Store.memory()
    bought = systems.seats()
    offboard(cfg, store, systems, one)
    later(cfg, store, systems, RENEWAL)                                      # the monthly one goes
    assert systems.seats() == {"SPE_E3": bought["SPE_E3"] - 1, "EMS": bought["EMS"]}
    row = reduce_row(store, one)
    assert "EMS (Annual" in row["reason"] and "1 seat paid until 2027-03-01" in row["reason"]
    assert next_wakeup(cfg, store, RENEWAL + dt.timedelta(minutes=1)) == renews
    later(cfg, store, systems, dt.datetime(2027, 2, 28, 23, 59, tzinfo=UTC))
    assert systems.seats()["EMS"] == bought["EMS"], "an annual seat was cut mid-term"
    later(cfg, store, systems, renews)
    assert systems.seats()["EMS"] == bought["EMS"] - 1


def test_a_term_the_rule_does_not_cover_is_left_as_it_is(systems):
    one = add_leaver(systems.cloud, 1)
    systems.buy(e3=("Monthly", NOW - dt.timedelta(days=1), None), ems=("Trial", NOW - dt.timedelta(days=1), None))
    cfg, store = make_config(systems), Store.memory()
    bought = systems.seats()
    offboard(cfg, store, systems, one)
    assert systems.seats() == {"SPE_E3": bought["SPE_E3"] - 1, "EMS": bought["EMS"]}
    assert "billing term 'Trial'" in reduce_row(store, one)["reason"] and store.termination(one.id)["state"] == "done"


def test_a_quantity_that_would_rise_is_never_written(systems):
    one = add_leaver(systems.cloud, 1)
    for n in range(2):
        systems.cloud.add_user(f"stays{n}@contoso.com", employee_id=f"S{n}", licences=("EMS",))
    systems.buy(e3=("Monthly", NOW - dt.timedelta(days=1), None), ems=("Monthly", NOW - dt.timedelta(days=1), None))
    short = systems.subs["EMS"]
    systems.pax8.subscriptions[short]["quantity"] = 1    # two short of the three assigned: one fewer is still a rise
    cfg, store = make_config(systems), Store.memory()
    offboard(cfg, store, systems, one)
    assert systems.pax8.quantity(short) == 1, "a rise was written"
    assert f"EMS (Monthly, subscription {short}): 1; 2 assigned would rise: not written" in reduce_row(store, one)["reason"]
    assert [w.target for w in systems.sandbox.writes.entries("pax8")] == [f"subscriptions/{systems.subs['SPE_E3']}"]
    assert systems.seats()["SPE_E3"] == systems.consumed()["SPE_E3"]


# -- level-based: many leavers, repeated runs, dry runs --------------------------------------------
def test_two_leavers_at_once_and_a_repeated_run_leave_the_right_numbers(systems):
    one, two = add_leaver(systems.cloud, 1), add_leaver(systems.cloud, 2)
    systems.buy(e3=("Monthly", NOW - dt.timedelta(days=1), None), ems=("Monthly", NOW - dt.timedelta(days=1), None))
    cfg, store = make_config(systems), Store.memory()
    bought = systems.seats()
    report = offboard(cfg, store, systems, one, two)
    assert report.exit_code == 0, report.rows
    assert systems.seats() == systems.consumed() == {sku: bought[sku] - 2 for sku in bought}
    assert sorted(reduce_row(store, t)["status"] for t in (one, two)) == ["changed", "unchanged"]
    writes = systems.writes()
    offboard(cfg, store, systems, one, two, now=NOW + dt.timedelta(hours=1), times=1)
    assert systems.writes() == writes and systems.seats() == systems.consumed()


def test_dry_run_then_first_then_second_run(systems):
    one = add_leaver(systems.cloud, 1)
    systems.buy(e3=("Monthly", NOW - dt.timedelta(days=1), None), ems=("Monthly", NOW - dt.timedelta(days=1), None))
    systems.pax8.subscriptions[systems.subs["EMS"]]["quantity"] += 1     # one seat more than assigned (bought today)
    cfg, store = make_config(systems), Store.memory()
    bought = systems.seats()
    plan = reconcile(cfg, store, on_demand=[one], now=NOW, dry_run=True)
    [dry] = [a for r in plan.rows for a in r["actions"] if a["action"] == "reduce_seats"]
    assert dry["outcome"] == "planned" and f"EMS (Monthly, subscription {systems.subs['EMS']}): " \
        f"{bought['EMS']} -> {bought['EMS'] - 1}" in dry["reason"]
    assert systems.writes() == 0 and systems.seats() == bought
    provider = distributor(cfg, systems)
    ctx = ActionContext(termination=one, subject=provider.match(one).subject, now=NOW)
    assert provider.apply(provider.planned("reduce_seats"), ctx).outcome == "changed"
    assert provider.apply(provider.planned("reduce_seats"), ctx).outcome == "unchanged"
    assert systems.writes() == 1


def test_the_invoice_follows_the_distributor_with_billing_on_subscribed_seats(systems):
    one = add_leaver(systems.cloud, 1)
    systems.buy()
    systems.subs["SPE_E3"] = systems.pax8.add_subscription(COMPANY_ID, "SPE_E3", systems.consumed()["SPE_E3"],
                                                           start=NOW - dt.timedelta(days=2))
    systems.cw.additions[(AGREEMENT, BILLING["SPE_E3"])]["quantity"] = systems.consumed()["SPE_E3"]
    cfg, store = make_config(systems, basis="subscribed"), Store.memory()
    bought = systems.seats()
    offboard(cfg, store, systems, one)
    assert systems.seats() == {"SPE_E3": bought["SPE_E3"] - 1, "EMS": bought["EMS"]}
    assert systems.invoiced() == systems.seats(), "the invoice did not follow the distributor's quantity"
    later(cfg, store, systems, RENEWAL)
    assert systems.seats() == systems.consumed() == systems.invoiced()


# -- HTTP: token, 429, 401 -----------------------------------------------------------------------
def distributor(cfg, s: Systems) -> Pax8Provider:
    tenant = cfg.tenants[0]
    return Pax8Provider("pax8", cfg.distributor, tenant, "distributor", facts=TenantFacts([build(tenant, "entra")]))


def test_one_token_serves_many_calls_and_passes(systems):
    one, two = add_leaver(systems.cloud, 1), add_leaver(systems.cloud, 2)
    systems.buy()
    cfg, store = make_config(systems), Store.memory()
    offboard(cfg, store, systems, one, two)
    later(cfg, store, systems, RENEWAL)
    assert sum(1 for c in systems.pax8.calls if c[2] != "/token") > 10
    assert systems.pax8.token_requests == 1


def test_429_with_retry_after_is_waited_for_or_parked(systems):
    systems.buy()
    check_retry_after(systems.pax8.knobs, distributor(make_config(systems), systems).check_online)


def test_401_names_the_distributor_and_stops_only_it(systems, monkeypatch):
    systems.buy()
    monkeypatch.setenv("PAX8_WRONG", "not-the-secret")
    cfg, store = make_config(systems, secret="env:PAX8_WRONG"), Store.memory()
    with pytest.raises(ConfigError) as caught:
        distributor(cfg, systems).check_online()
    message = str(caught.value)
    assert "Pax8 refused" in message and "client_secret env:PAX8_WRONG" in message
    assert "not-the-secret" not in message
    one = add_leaver(systems.cloud, 1)
    report = reconcile(cfg, store, on_demand=[one], now=NOW)
    assert report.exit_code == 1
    assert systems.cloud.snapshot(one.email)["accountEnabled"] is False, "the other providers stopped too"
    assert store.termination(one.id)["state"] != "done"


def test_the_rule_on_its_own():
    start = dt.datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    sub = {"quantity": 5, "billingTerm": "Monthly", "startDate": start.isoformat(), "commitmentTerm": None}
    history = [{**sub, "quantity": 3, "updatedDate": start.isoformat()},
               {**sub, "quantity": 5, "updatedDate": "2026-03-10T00:00:00Z"}]       # 2 added mid-term
    d = decide(sub, history, 2, dt.datetime(2026, 3, 12, tzinfo=UTC))
    assert (d.new_quantity, d.waiting, d.paid_until) == (3, 1, dt.date(2026, 3, 31))   # the 31st: the month's end
    d = decide(sub, history, 2, dt.datetime(2026, 3, 31, 13, 0, tzinfo=UTC))          # renewed: all may go
    assert (d.new_quantity, d.waiting) == (2, 0)


# -- the evidence report -------------------------------------------------------------------------
def test_the_report_shows_paid_until_and_the_cost_avoided(systems):
    one = add_leaver(systems.cloud, 1)
    systems.buy()
    cfg, store = make_config(systems), Store.memory()
    offboard(cfg, store, systems, one)
    later(cfg, store, systems, RENEWAL)
    facts = report.build(store, cfg.tenants[0], "2026-09")
    [x] = facts["leavers"]
    seats = {seat["licence"]: seat for seat in x["seats_freed"]}
    assert seats["EMS"] == {"licence": "EMS", "via": "direct", "paid_until": RENEWAL.date().isoformat(),
                            "monthly_cost": systems.pax8.subscriptions[systems.subs["EMS"]]["partnerCost"]}
    assert seats["E3 Licence"]["paid_until"] == "" and seats["E3 Licence"]["monthly_cost"] is None   # a group's seat
    assert facts["summary"]["cost_avoided_monthly"] == 30.0
    page = report.to_html(facts)
    assert f"EMS (direct; paid until: {RENEWAL.date()}; 30.00 a month)" in page
    rows = [r for r in report.to_csv(facts).splitlines() if r.startswith("seat,")]
    assert any(f"EMS,direct,{RENEWAL.date()},30.0" in r for r in rows)


def test_declared_terms_give_paid_until_without_a_distributor(systems):
    one = add_leaver(systems.cloud, 1)
    systems.buy()
    cfg, store = make_config(systems, pax8=False, licences={"EMS": {"term": "annual", "renews": "2027-03-01",
                                                                    "price": 12.5}}), Store.memory()
    offboard(cfg, store, systems, one)
    facts = report.build(store, cfg.tenants[0], "2026-09")
    [ems] = [seat for seat in facts["leavers"][0]["seats_freed"] if seat["licence"] == "EMS"]
    assert (ems["paid_until"], ems["monthly_cost"]) == ("2027-03-01", 12.5)
    assert facts["summary"]["cost_avoided_monthly"] == 12.5
    assert systems.pax8.calls == [], "no distributor configured, none asked"


def test_check_online_proves_the_distributor_credential(systems, monkeypatch, tmp_path, capsys):
    from connector.cli import main

    systems.buy()
    path = tmp_path / "config.toml"
    path.write_text(f"""[distributor]
type = "pax8"
base_url = "{systems.pax8.url}"
client_id = "{systems.pax8.client_id}"
client_secret = "env:PAX8_WRONG"

[[tenant]]
id = "contoso"
pax8_company_id = "{COMPANY_ID}"

{entra_toml(systems.cloud)}""")
    monkeypatch.setenv("PAX8_WRONG", "not-the-secret")
    assert main(["--config", str(path), "check", "--online"]) == 1
    err = capsys.readouterr().err
    assert "Pax8 refused" in err and "client_secret env:PAX8_WRONG" in err and "not-the-secret" not in err
    monkeypatch.setenv("PAX8_WRONG", systems.pax8.client_secret)
    assert main(["--config", str(path), "check", "--online"]) == 0
