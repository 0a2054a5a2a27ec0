"""Plain data passed between sources, the engine and providers.

Kept free of behaviour and imports from the rest of the package so that every
layer can depend on it without depending on each other.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Callable

PHASES = ("restrict", "revoke", "preserve", "reclaim", "bill", "retain")
RESTORE = "restore"                       # the phase of the undo actions `offboard restore` runs
OUTCOMES = ("changed", "unchanged", "planned", "skipped", "failed", "needs_human")
KINDS = ("voluntary", "immediate")
#: seconds a read is compared as if made now: a write within it needs no re-read first (read ahead of a due
#: instant, each action re-reads this long before it; an unannounced pass's first actions use prepare's read)
FRESH_READ = 1.0


@dataclass(frozen=True)
class Termination:
    """One HR record saying a person leaves."""

    tenant: str
    employee_id: str
    email: str
    first_name: str = ""
    last_name: str = ""
    manager_email: str = ""
    termination_date: dt.date | None = None
    termination_time: dt.time | None = None
    kind: str = "voluntary"
    source: str = ""
    ticket: str = ""
    successor: str = ""   # who inherits mail, calls and numbers: resolved by the engine from the directories, never the feed
    active: bool = False  # the feed says this person is (again) active: a cancellation or a rehire

    @property
    def id(self) -> str:
        return f"{self.tenant}/{self.employee_id}"


@dataclass
class Subject:
    """The leaver as one provider knows them: its native immutable id plus what it read."""

    provider: str
    native_id: str
    names: list[str]                      # every name the account has: for `protected` globs
    state: dict[str, Any] = field(default_factory=dict)
    is_admin: bool = False
    admin_reason: str = ""
    anchor: str = ""                      # the on-premises identity: AD's objectGUID (base64), Entra's onPremisesImmutableId
    manager: dict | None = None           # the directory's manager: {"address", "enabled", "leaving"} or None


@dataclass
class Match:
    """The result of matching one termination in one provider."""

    status: str                           # matched | not_found | ambiguous
    subject: Subject | None = None
    candidates: list[str] = field(default_factory=list)
    reason: str = ""


@dataclass(frozen=True)
class PlannedAction:
    """One idempotent step a provider proposes for one subject."""

    provider: str
    action: str                           # verb_noun
    phase: str
    description: str = ""
    params: tuple[tuple[str, Any], ...] = ()


@dataclass
class Result:
    """What an action found and left: the Ansible contract of changed / before / after."""

    outcome: str                          # see OUTCOMES
    before: Any = None
    after: Any = None
    reason: str = ""
    #: a later job: done for now, but come back then (a seat reduction queued for a licence's renewal window)
    next_attempt_at: dt.datetime | None = None


@dataclass
class ActionContext:
    """What `apply` needs besides the action: whom, for which termination, and how."""

    termination: Termination
    subject: Subject
    dry_run: bool = False
    since: dt.datetime | None = None      # first intent for this action: a resumed run checks for its own earlier write
    ticket: str = ""
    local_date: dt.date | None = None     # the tenant-local date to stamp in descriptions
    now: dt.datetime | None = None        # the pass's instant (what licence terms are judged at)
    approved: frozenset[str] = frozenset()   # needs_human reasons a person approved for this action
    proceed: Callable[[], bool] = lambda: True   # False once a person cancelled or held the termination mid-pass
    wait_until_due: Callable[[], None] = lambda: None   # a pass read ahead of its instant: returns at the instant
    show_once: Callable[[str], None] = lambda text: None   # a new password or pass for the operator: never logged or stored
