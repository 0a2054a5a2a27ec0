"""Decisions about a person, made across every system at once.

Admin, protected and ambiguous are facts about the person, not about one account:
an Entra-only Global Administrator is no less an admin in AD, and a row whose id and
address name two different people must not go ahead in the one system that happens
to see only one of them. Each provider's match (or, for a system that cannot be read
this pass, its last stored observation) is turned into an `Observation`, and one hold
reason is derived from all of them before any action is planned.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

from ..config import Tenant
from ..model import Match, Subject


@dataclass
class Observation:
    """What one provider knows of the person; stored as the `after` of its `match_account` row."""

    provider: str
    native_id: str
    names: list[str] = field(default_factory=list)
    is_admin: bool = False
    admin_reason: str = ""
    anchor: str = ""

    @classmethod
    def of(cls, subject: Subject) -> Observation:
        return cls(subject.provider, subject.native_id, list(subject.names), subject.is_admin, subject.admin_reason,
                   subject.anchor)

    @classmethod
    def load(cls, stored: dict | None) -> Observation | None:
        if not isinstance(stored, dict) or "native_id" not in stored:
            return None
        return cls(**{k: stored[k] for k in asdict(cls("", "")) if k in stored})

    def dump(self) -> dict:
        return asdict(self)


def person_hold(tenant: Tenant, matches: dict[str, Match], remembered: dict[str, Observation]) -> str:
    """The reason every provider must hold this person (needs_human), or '' when they may go ahead.

    `matches` are this pass's answers; `remembered` stands in for the providers that could
    not be read this pass. The text is stable from pass to pass, so an approval of it holds.
    """
    reasons = [f"ambiguous in {name}: {m.reason or ', '.join(m.candidates)}"
               for name, m in sorted(matches.items()) if m.status == "ambiguous"]
    seen = sorted([Observation.of(m.subject) for m in matches.values() if m.status == "matched" and m.subject]
                  + list(remembered.values()), key=lambda o: o.provider)
    for o in seen:
        pattern = tenant.is_protected(o.names)
        if pattern:
            reasons.append(f"protected account in {o.provider} (matches {pattern!r})")
        if o.is_admin:
            reasons.append(f"holds admin rights in {o.provider} ({o.admin_reason or 'privileged group'})")
    reasons += disagreements(seen)
    return "; ".join(dict.fromkeys(reasons))


def disagreements(seen: list[Observation]) -> list[str]:
    """Matches in different systems that cannot be the same person."""
    out = []
    anchors = {o.anchor for o in seen if o.anchor}
    if len(anchors) > 1:
        out.append("the accounts matched in " + ", ".join(o.provider for o in seen if o.anchor)
                   + " carry different on-premises identities (objectGUID / onPremisesImmutableId)")
    for i, a in enumerate(seen):
        for b in seen[i + 1:]:
            linked = a.native_id == b.native_id or (a.anchor and a.anchor == b.anchor)
            # a subject with no names (the manual steps: the leaver themself, no account) tells nobody apart
            if not linked and a.names and b.names and not {n.lower() for n in a.names} & {n.lower() for n in b.names}:
                out.append(f"the accounts matched in {a.provider} and {b.provider} share no name or address: "
                           "they may be different people")
    return out


def choose_successor(subjects: list[Subject], authority: dict[str, int], fallback: str,
                     is_leaving: Callable[[str], bool]) -> str:
    """DESIGN.md: the directory's manager (the most authoritative system's: AD for a synced user,
    else Entra), when set, enabled and not leaving too; else the policy's `successor`; else ''.

    Never the HR feed's manager field: a feed cannot choose who gets a leaver's mail.
    """
    ranked = sorted((s for s in subjects if s.manager), key=lambda s: -authority.get(s.provider, 0))
    if ranked:
        manager = ranked[0].manager
        address = (manager.get("address") or "").lower()
        if address and manager.get("enabled", False) and not is_leaving(address):
            return address
    return fallback.lower()
