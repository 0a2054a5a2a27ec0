"""Telling a person, once: a tenant held by a safety limit, a termination that newly needs a human, a
provider failing for longer than `[alerts] provider_failing_after`.

The conditions are read from the store on each check, so they are caught whoever caused them
(a pass of this daemon, another daemon, a `reconcile --once`), and what was already said is
remembered in the store too: a restart repeats nothing. An alert is remembered only once some
target took it, so a chat service that is down is tried again at the next check.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Callable

from .. import http
from ..config import Config
from ..errors import OffboardError
from ..store import Store, iso, now, parse_iso

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    key: str            # what was said, as the store remembers it
    text: str
    ticket: str = ""    # the PSA ticket it concerns, if any


def conditions(config: Config, store: Store, failing_after: float) -> list[Alert]:
    alerts = []
    for tenant in config.tenants:
        for hold in store.open_holds(tenant.id):
            alerts.append(Alert(f"alert:hold:{tenant.id}:{hold['id']}",
                                f"offboard-connector: tenant {tenant.id} is held: {hold['reason']}. Check the feed, "
                                f"then `offboard approve --tenant {tenant.id}` (or fix the feed)."))
        for row in store.terminations(tenant.id, ["needs_human"]):
            digest = hashlib.sha256((row["reason"] or "").encode()).hexdigest()[:12]
            alerts.append(Alert(f"alert:needs_human:{row['id']}:{digest}",
                                f"offboard-connector: {row['id']} ({row['email']}) needs a person: {row['reason']}. "
                                f"See `offboard status --tenant {tenant.id}`.", row["ticket"] or ""))
    failing = {f"{f['tenant']}/{f['provider']}": f for f in store.failing()}
    for key, f in failing.items():
        first = store.cursor(f"failing-since:{key}")
        if first is None:
            store.set_cursor(f"failing-since:{key}", iso(now()))
            continue
        if (now() - parse_iso(first)).total_seconds() >= failing_after:
            alerts.append(Alert(f"alert:failing:{key}:{first}",
                                f"offboard-connector: {f['provider']} of tenant {f['tenant']} has been failing since "
                                f"{first} ({f['actions']} action(s)): {f['reason']}",
                                f["tickets"][0] if f["tickets"] else ""))
    for key in [k for k in store.cursors("failing-since:") if k.split(":", 1)[1] not in failing]:
        store.set_cursor(key, None)          # recovered: a later failure is a new one
    return alerts


def payload(kind: str, alert: Alert) -> dict:
    """Slack's incoming webhooks take `text`; a Teams incoming webhook takes a MessageCard."""
    if kind == "teams":
        return {"@type": "MessageCard", "@context": "https://schema.org/extensions",
                "summary": alert.text[:80], "text": alert.text}
    return {"text": alert.text}


class Alerter:
    def __init__(self, config: Callable[[], Config], store: Store,
                 ticket_note: Callable[[Config, str, str], None] | None = None):
        self.config, self.store, self.ticket_note = config, store, ticket_note
        self.session = http.session()

    def check(self) -> int:
        """Send what is new; returns how many alerts went out."""
        config = self.config()
        settings = config.alerts
        if not settings.targets and not (settings.psa_ticket and self.ticket_note):
            return 0
        sent = 0
        for alert in conditions(config, self.store, settings.provider_failing_after):
            if self.store.cursor(alert.key) is not None:
                continue
            if self._send(config, alert):
                self.store.set_cursor(alert.key, iso(now()))
                sent += 1
        return sent

    def _send(self, config: Config, alert: Alert) -> bool:
        delivered = False
        for i, target in enumerate(config.alerts.targets):
            where = f"alerts.target[{i}] ({target.type})"
            try:
                http.send(self.session, "POST", target.endpoint(), where, attempts=2, json=payload(target.type, alert),
                          timeout=(5, 10))
                delivered = True
            except OffboardError as e:
                log.warning("alert not delivered to %s: %s", where, e)
        if alert.ticket and config.alerts.psa_ticket and self.ticket_note is not None:
            try:
                self.ticket_note(config, alert.ticket, alert.text)
                delivered = True
            except OffboardError as e:
                log.warning("alert not noted on ticket %s: %s", alert.ticket, e)
        if delivered:
            log.info("alert sent: %s", alert.text)
        return delivered
