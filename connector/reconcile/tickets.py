"""Offboardings a PSA ticket asks for: `offboard run --from-ticket N` and the ConnectWise callback.

The callback is only a hint. Its token is compared in constant time, then the connector GETs
the ticket itself, so a forged body can do nothing but make it look: the ticket's own company
picks the tenant (`psa_company_id`), `leaver_field` or the summary (`Offboard: user@domain`)
names the leaver, `date_field` the day. A ticket that names nobody, or someone no system of the
tenant knows, gets a note saying so and nothing else; a ticket of a company no tenant has
changes nothing at all.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hmac
import json
import re
import threading
import uuid
from typing import Any, Callable

from ..config import Config, Tenant
from ..errors import ConfigError, InputRejected, OffboardError, PermanentError
from ..http import NotFound
from ..model import Termination
from ..providers.connectwise.api import ConnectWise
from ..providers.connectwise.provider import ConnectWiseProvider
from ..store import Store, now as utcnow
from .engine import Report, config_providers, reconcile

MAX_BODY = 1 << 20
ADDRESS = re.compile(r"[A-Za-z0-9._%+'-]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,24}")
SUMMARY = re.compile(r"\boffboard\s*:\s*(\S+)", re.IGNORECASE)
IGNORED_ACTIONS = ("deleted",)


@dataclasses.dataclass(frozen=True)
class Callback:
    ticket: int
    action: str
    type: str


def parse_callback(body: bytes) -> Callback:
    """The ticket a ConnectWise callback names. `Entity` may be a JSON *string*: it is parsed twice."""
    if len(body) > MAX_BODY:
        raise InputRejected("callback body over 1 MiB", "callback")
    try:
        data = json.loads(body)
        entity = data.get("Entity") if isinstance(data, dict) else None
        if isinstance(entity, str):
            entity = json.loads(entity) if entity.strip() else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InputRejected("callback body is not JSON", "callback") from None
    if not isinstance(data, dict):
        raise InputRejected("callback body is not a JSON object", "callback")
    ticket = data.get("ID", entity.get("id") if isinstance(entity, dict) else None)
    if isinstance(ticket, str) and ticket.isdigit():
        ticket = int(ticket)
    if isinstance(ticket, bool) or not isinstance(ticket, int) or not 0 < ticket < 2 ** 31:
        raise InputRejected("callback names no ticket ID", "callback")
    return Callback(ticket, str(data.get("Action", ""))[:40].lower(), str(data.get("Type", "ticket"))[:40].lower())


def handle_connectwise_callback(config: Config, store: Store, token: str, body: bytes,
                                **run: Any) -> tuple[int, dict, Callable[[], Report | None] | None]:
    """For `POST /webhook/connectwise/<token>`: (status, JSON answer, the work to run in the background)."""
    expected = config.psa.callback_token if config.psa else None
    if expected is None or not hmac.compare_digest(token.encode(), expected.reveal().encode()):
        return 404, {"error": "not found"}, None
    try:
        callback = parse_callback(body)
    except InputRejected as e:
        return 400, {"error": e.message}, None
    if callback.type != "ticket" or callback.action in IGNORED_ACTIONS:
        return 200, {"ignored": f"{callback.type} {callback.action}".strip()}, None
    run_id = uuid.uuid4().hex[:12]
    return 202, {"run_id": run_id}, functools.partial(run_from_ticket, config, store, callback.ticket, run_id=run_id,
                                                      **run)


def run_from_ticket(config: Config, store: Store, ticket_id: int, *, dry_run: bool = False,
                    now: dt.datetime | None = None, run_id: str | None = None, providers=None,
                    listeners: tuple = (), stop: threading.Event | None = None) -> Report | None:
    """Read the ticket, find its tenant and leaver, and run; None when nothing was run."""
    if config.psa is None:
        raise ConfigError("--from-ticket needs a [psa] section", config.path)
    providers = providers or config_providers(config)
    with ConnectWise(config.psa) as psa:
        try:
            ticket = psa.ticket(ticket_id)
        except NotFound:
            raise PermanentError(f"ConnectWise has no ticket {ticket_id}", psa.where) from None
        company = (ticket.get("company") or {}).get("id") if isinstance(ticket, dict) else None
        tenant = next((t for t in config.tenants if t.psa_company_id is not None and t.psa_company_id == company), None)
        if tenant is None:
            return None
        try:
            who, day = leaver_of(ticket, config)
            if not who:
                raise InputRejected("names no leaver (a valid address in the "
                                    + (f"{config.psa.leaver_field!r} field or the " if config.psa.leaver_field else "")
                                    + "summary, as `Offboard: user@domain`)")
        except InputRejected as e:
            _say(psa, ticket_id, dry_run, f"offboard-connector: this ticket {e.message}: nothing was done.")
            return None
        termination = on_demand(tenant, store, who, day or (now or utcnow()), str(ticket_id), timed=day is None)
        if not known_somewhere(tenant, providers, termination, store):
            _say(psa, ticket_id, dry_run, f"offboard-connector: nobody named {who} was found in {tenant.name}'s "
                                          "systems: nothing was done.")
            return None
        report = reconcile(config, store, tenant=tenant.id, dry_run=dry_run, trigger="ticket", now=now,
                           on_demand=[termination], providers=providers, run_id=run_id, listeners=listeners,
                           stop=stop)
        row = store.termination(termination.id)
        if row and row["state"] == "scheduled":
            _say(psa, ticket_id, dry_run, f"offboard-connector: the offboarding of {who} ({row['id']}) is scheduled "
                                          f"for {row['due_at']}.")
        return report


def leaver_of(ticket: dict, config: Config) -> tuple[str, dt.datetime | None]:
    """The leaver's address and the termination date the ticket gives (either may be missing)."""
    fields = {str(f.get("caption", "")).strip().lower(): f.get("value")
              for f in ticket.get("customFields") or [] if isinstance(f, dict)}
    named = fields.get(config.psa.leaver_field.lower()) if config.psa.leaver_field else None
    if not named:
        found = SUMMARY.search(str(ticket.get("summary", ""))[:200])
        named = found.group(1).rstrip(".,;") if found else ""
    named = str(named or "").strip().lower()
    if named and not ADDRESS.fullmatch(named):
        raise InputRejected(f"names {named[:60]!r}, which is not an email address")
    day = fields.get(config.psa.date_field.lower()) if config.psa.date_field else None
    if not day:
        return named, None
    try:
        when = dt.date.fromisoformat(str(day)[:10])
    except ValueError:
        raise InputRejected(f"has an unreadable {config.psa.date_field!r} ({str(day)[:30]!r})") from None
    if not 1970 <= when.year <= 2100:
        raise InputRejected(f"has a {config.psa.date_field!r} outside 1970..2100")
    return named, dt.datetime.combine(when, dt.time(0))


def on_demand(tenant: Tenant, store: Store, who: str, at: dt.datetime, ticket: str, timed: bool = True) -> Termination:
    """The termination a person (`run`) or a ticket asks for: the stored one's details, at `at`.

    `timed`: due at that very minute (`immediate`); else on that date at the policy's `revoke_at`."""
    existing = store.find_termination(tenant.id, who) or {}
    local = at.astimezone(tenant.zone) if at.tzinfo else at.replace(tzinfo=tenant.zone)
    return Termination(
        tenant=tenant.id, employee_id=existing.get("employee_id") or who,
        email=existing.get("email") or (who.lower() if "@" in who else ""),
        first_name=existing.get("first_name") or "", last_name=existing.get("last_name") or "",
        manager_email=existing.get("manager_email") or "", termination_date=local.date(),
        termination_time=local.time().replace(second=0, microsecond=0) if timed else None,
        kind="immediate" if timed else "voluntary", source=existing.get("source") or "on-demand",
        ticket=ticket or existing.get("ticket") or "")


def known_somewhere(tenant: Tenant, providers, termination: Termination, store: Store) -> bool:
    """Does the store, or any of the tenant's systems besides the PSA, know this person?"""
    if store.find_termination(tenant.id, termination.email):
        return True
    built = providers(tenant)
    try:
        for p in built:
            if isinstance(p, ConnectWiseProvider):
                continue
            try:
                p.prepare([termination])
                if p.match(termination).status != "not_found":
                    return True
            except OffboardError:
                return True          # a system that cannot answer now: the run records it and retries
        return False
    finally:
        for p in built:
            p.close()


def _say(psa: ConnectWise, ticket_id: int, dry_run: bool, text: str) -> None:
    if not dry_run:
        psa.add_note_once(ticket_id, text, text)
