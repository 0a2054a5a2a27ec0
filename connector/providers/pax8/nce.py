"""Microsoft NCE's rule for when subscription seats may be cut, as the connector implements it.

Under NCE a seat may be reduced only within 168 hours (7 days) of when *that seat* was added: bought,
renewed, or added mid-term. Each seat therefore carries the instant it was last added: its purchase or
mid-term add (every rise of `quantity` in the subscription's history), or the start of the current term
when that is later (a renewal adds every seat again). A seat added less than 168 h ago may go now. Any
other seat is paid until its term ends, and may go only in the window that opens at the renewal: the next
monthly anniversary of `startDate` for a monthly term (`commitmentTerm.endDate` is null), the commitment's
`endDate` for an annual or triennial one, so an annual or triennial seat is never cut mid-term.

The cut is level-based, as billing is: the wanted quantity is the seats still assigned (never "one fewer per
leaver"), the quantity is lowered by no more seats than are inside their window, and it is never raised.
Seats freed outside their window wait: the decision names the renewal (`next_window`), the engine brings
the action back then, and it counts again, so a seat re-used meanwhile is not cut. Freed seats are taken
from the newest first, since those are the ones a window may still cover.
"""
from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass

from ...errors import PermanentError

WINDOW = dt.timedelta(hours=168)
TERM_MONTHS = {"Monthly": 1, "Annual": 12, "2-Year": 24, "3-Year": 36}


@dataclass(frozen=True)
class Decision:
    term: str                 # the subscription's billingTerm
    quantity: int             # subscribed now
    assigned: int             # licences assigned now (what the quantity should be)
    new_quantity: int         # what may be written now (never above `quantity`)
    waiting: int              # freed seats that stay paid until `paid_until`
    in_window: int            # seats added (bought, renewed, added) less than 168 h ago: they may go now
    term_end: dt.datetime     # when the current term renews (the next window opens)

    @property
    def paid_until(self) -> dt.date | None:
        return self.term_end.date() if self.waiting else None

    @property
    def next_window(self) -> dt.datetime | None:
        return self.term_end if self.waiting else None


def instant(text: str, where: str = "") -> dt.datetime:
    """A Pax8 date or date-time (`2021-01-01`, `...T08:30:00Z`, `...-0700`) as an aware UTC instant."""
    try:
        value = dt.datetime.fromisoformat(str(text))
    except ValueError:
        raise PermanentError(f"not a date: {str(text)[:40]!r}", where) from None
    return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).astimezone(dt.timezone.utc)


def add_months(when: dt.datetime, months: int) -> dt.datetime:
    """The same day and time `months` later; the 31st becomes the month's last day where it has none."""
    index = when.month - 1 + months
    year, month = when.year + index // 12, index % 12 + 1
    return when.replace(year=year, month=month, day=min(when.day, calendar.monthrange(year, month)[1]))


def term_bounds(subscription: dict, now: dt.datetime, where: str = "") -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of the term `now` falls in: monthly from the anniversaries of `startDate`, annual and
    triennial from `commitmentTerm.endDate` (rolled on by whole terms once it has passed)."""
    term = subscription.get("billingTerm")
    months = TERM_MONTHS.get(term)
    if months is None:
        raise PermanentError(f"billing term {term!r}: the NCE rule covers {', '.join(TERM_MONTHS)}", where)
    end_text = (subscription.get("commitmentTerm") or {}).get("endDate")
    if months == 1 or not end_text:
        anchor = instant(subscription.get("startDate") or subscription.get("createdDate"), where)
        k = max(0, (now.year - anchor.year) * 12 + now.month - anchor.month)
        while k > 0 and add_months(anchor, k * months) > now:
            k -= 1
        while add_months(anchor, (k + 1) * months) <= now:
            k += 1
        return add_months(anchor, k * months), add_months(anchor, (k + 1) * months)
    end = instant(end_text, where)
    start = add_months(end, -months)
    while end <= now:
        start, end = end, add_months(end, months)
    return start, end


def seat_adds(subscription: dict, history: list[dict], where: str = "") -> list[tuple[dt.datetime, int]]:
    """(instant, seats) of every add still standing, oldest first: each rise of `quantity` in the history;
    a fall takes the newest seats away first."""
    def when(snapshot: dict) -> dt.datetime:
        return instant(snapshot.get("updatedDate") or snapshot.get("createdDate") or snapshot.get("startDate"), where)

    adds: list[tuple[dt.datetime, int]] = []
    level = 0
    for snapshot in sorted(history, key=when) + [subscription]:
        quantity = whole(snapshot.get("quantity"), where)
        if quantity > level:
            adds.append((when(snapshot), quantity - level))
        gone = level - quantity
        while gone > 0 and adds:
            at, seats = adds.pop()
            if seats > gone:
                adds.append((at, seats - gone))
            gone -= min(seats, gone)
        level = quantity
    return adds


def decide(subscription: dict, history: list[dict], assigned: int, now: dt.datetime, where: str = "") -> Decision:
    """What the rule allows now for one subscription with `assigned` licences in use."""
    quantity = whole(subscription.get("quantity"), where)
    start, end = term_bounds(subscription, now, where)
    in_window = sum(seats for at, seats in seat_adds(subscription, history, where) if now - max(at, start) < WINDOW)
    excess = max(0, quantity - max(0, assigned))
    cut = min(excess, in_window)
    return Decision(subscription["billingTerm"], quantity, assigned, quantity - cut, excess - cut, in_window, end)


def whole(value, where: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise PermanentError(f"quantity is not a whole number: {str(value)[:40]!r}", where)
    return int(value)
