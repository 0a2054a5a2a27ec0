"""Exchange Online through the admin endpoint: hand the leaver's mail over before anything is reclaimed.

Every action compares one piece of observed mailbox state with what the tenant policy
wants, so `plan` (on the state read in `prepare`) and `apply` (on a fresh read) share
one definition. Devices are wiped (account only) before the conversion to shared.

The HR feed never decides where mail goes. "manager" means the successor the engine
resolved from the directories (`Termination.successor`); with none, the hand-over is a
person's job. Forwarding stays inside the tenant's accepted domains unless the policy
lists the target's domain. Names from the feed reach the auto-reply only as plain,
short, escaped words, so a crafted "first name" cannot put a link or an address in a
message every outside sender receives.
"""
from __future__ import annotations

import html
import re
from typing import Any

from ... import http
from ...errors import NeedsHuman
from ...model import ActionContext, PlannedAction, Result, Subject, Termination
from .exchange_api import Cmdlet
from .provider import ROLE_READS, Microsoft365Provider, Step, successor_facts

SHARED = "SharedMailbox"
Wanted = tuple[Any, Any, list[Cmdlet]]       # before, after, the writes that get from one to the other


def plain(text: str | None) -> str:
    """Exchange stores auto-replies as HTML; compare what a reader sees."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text or "")).split())


def smtp(address: str | None) -> str:
    return (address or "").split(":", 1)[-1].lower()


def fill(template: str, fields: dict[str, str]) -> str:
    """`{first_name}`-style fields, HTML-escaped (Exchange stores HTML); an unknown field stays as written."""
    return re.sub(r"\{(\w+)\}", lambda m: html.escape(fields[m.group(1)]) if m.group(1) in fields else m.group(0),
                  template)


NAME_LIMIT = 64


def feed_name(text: str) -> str:
    """A person's name as the HR feed gave it, reduced to what a name needs: letters (any script), spaces,
    hyphens and apostrophes, at most 64 characters. No digits, '@', '.', ':' or '/', so no address or link."""
    kept = "".join(c if c.isalpha() or c in " -'’" else " " for c in text)
    return " ".join(kept.split())[:NAME_LIMIT].strip()


class NoSuccessor(NeedsHuman):
    """The policy hands something to the successor, and the directories name none (nor does policy.successor)."""


class ExchangeOnlineProvider(Microsoft365Provider):
    type = "exchange_online"
    actions = {
        "clear_mobile_devices": "preserve",
        "convert_mailbox_to_shared": "preserve",
        "grant_mailbox_access": "preserve",
        "set_auto_reply": "preserve",
        "set_forwarding": "preserve",
        "hide_from_gal": "preserve",
    }
    reads = {"clear_mobile_devices": ("devices",), "convert_mailbox_to_shared": ("mailbox",),
             "grant_mailbox_access": ("permissions",), "set_auto_reply": ("auto_reply",),
             "set_forwarding": ("mailbox",), "hide_from_gal": ("mailbox",)}

    def prepare(self, terminations: list[Termination]) -> None:
        self.tenant_domains()
        super().prepare(terminations)

    def observe(self, subject: Subject, seen: dict) -> Step:
        """The mailbox and its hand-over state, the directory manager (None when unset) and the admin roles."""
        subject.state["user"] = seen["user"]
        keys = ("mailbox", "devices", "permissions", "auto_reply", "manager", "memberOf", *ROLE_READS)
        mailbox, devices, permissions, auto_reply, manager, *_ = yield from self.fetch(seen, subject, *keys)
        if mailbox is None:
            return None
        subject.state.update(mailbox=mailbox, devices=devices or [], permissions=permissions or [],
                             auto_reply=auto_reply or {})
        subject.manager = successor_facts(manager)
        subject.names = list(dict.fromkeys(subject.names + [smtp(a) for a in mailbox.get("EmailAddresses") or []]))
        yield from self.mark_admin(subject, seen)
        return subject

    def recipient(self, setting: str, termination: Termination, what: str) -> str:
        """Policy `manager | none | address` -> an address, or '' for nobody. "manager" is the successor
        from the directories; when there is none the hand-over waits for a person (NoSuccessor)."""
        if setting == "none":
            return ""
        if setting != "manager":
            return setting.lower()
        if not termination.successor:
            raise NoSuccessor(f"{what}: the directories name no enabled manager who stays, and policy.successor is "
                              "empty: name a successor (policy.successor) or hand over by hand", self.where)
        return termination.successor

    def stays_inside(self, address: str) -> bool:
        """Is `address` in one of the tenant's accepted domains, or a domain the policy allows forwarding to?"""
        domain = address.rsplit("@", 1)[-1].lower()
        return domain in self.tenant_domains() or domain in {d.lower() for d in self.tenant.policy.forward_domains}

    # -- what each action wants ---------------------------------------------
    def wanted(self, name: str, state: dict, termination: Termination) -> Wanted | None:
        """(before, after, writes) for one action, or None when the policy does not ask for it."""
        return getattr(self, f"want_{name}")(state, termination, self.upn_of(state))

    @staticmethod
    def upn_of(state: dict) -> str:
        return state["user"]["userPrincipalName"]

    def want_clear_mobile_devices(self, state: dict, termination: Termination, upn: str) -> Wanted:
        unwiped = sorted(d["Identity"] for d in state["devices"] or [] if not d.get("DeviceWipeRequestTime"))
        wipes = [Cmdlet.of("Clear-MobileDevice", anchor=upn, Identity=d, AccountOnly=True, Confirm=False) for d in unwiped]
        return {"unwiped_devices": unwiped}, {"unwiped_devices": []}, wipes

    def want_convert_mailbox_to_shared(self, state: dict, termination: Termination, upn: str) -> Wanted | None:
        if self.tenant.policy.mailbox != "shared":
            return None
        return ({"RecipientTypeDetails": state["mailbox"].get("RecipientTypeDetails")}, {"RecipientTypeDetails": SHARED},
                [Cmdlet.of("Set-Mailbox", anchor=upn, Identity=upn, Type="Shared")])

    def want_grant_mailbox_access(self, state: dict, termination: Termination, upn: str) -> Wanted | None:
        delegate = self.recipient(self.tenant.policy.mailbox_delegate, termination, "FullAccess to the mailbox")
        if not delegate:
            return None
        have = sorted({p["User"].lower() for p in state["permissions"] or [] if "@" in p.get("User", "")
                       and any("FullAccess" in r for r in p.get("AccessRights") or [])
                       and not p.get("Deny") and not p.get("IsInherited")})
        return ({"FullAccess": have}, {"FullAccess": sorted({*have, delegate})},
                [Cmdlet.of("Add-MailboxPermission", anchor=upn, Identity=upn, User=delegate,
                           AccessRights=["FullAccess"], InheritanceType="All", AutoMapping=True)])

    def want_set_auto_reply(self, state: dict, termination: Termination, upn: str) -> Wanted | None:
        template = self.tenant.policy.auto_reply
        if not template:
            return None
        fields = {"first_name": feed_name(termination.first_name), "last_name": feed_name(termination.last_name),
                  "company": self.tenant.name}
        if "{manager_email}" in template:
            fields["manager_email"] = self.recipient("manager", termination, "the auto-reply names the successor")
        message = fill(template, fields)
        seen = state["auto_reply"] or {}
        return ({"AutoReplyState": seen.get("AutoReplyState"), "InternalMessage": plain(seen.get("InternalMessage")),
                 "ExternalMessage": plain(seen.get("ExternalMessage"))},
                {"AutoReplyState": "Enabled", "InternalMessage": plain(message), "ExternalMessage": plain(message)},
                [Cmdlet.of("Set-MailboxAutoReplyConfiguration", anchor=upn, Identity=upn, AutoReplyState="Enabled",
                           InternalMessage=message, ExternalMessage=message, ExternalAudience="All")])

    def want_set_forwarding(self, state: dict, termination: Termination, upn: str) -> Wanted | None:
        target = self.recipient(self.tenant.policy.forward_to, termination, "forwarding")
        if not target:
            return None
        if not self.stays_inside(target):
            raise NeedsHuman(f"forwarding to {target} would send the leaver's mail outside the tenant (its domain is "
                             "not an accepted domain): list the domain in policy.forward_domains to allow it",
                             self.where)
        return ({"ForwardingSmtpAddress": smtp(state["mailbox"].get("ForwardingSmtpAddress"))},
                {"ForwardingSmtpAddress": target},
                [Cmdlet.of("Set-Mailbox", anchor=upn, Identity=upn, ForwardingSmtpAddress=f"smtp:{target}",
                           DeliverToMailboxAndForward=True)])

    def want_hide_from_gal(self, state: dict, termination: Termination, upn: str) -> Wanted | None:
        if not self.tenant.policy.hide_from_gal:
            return None
        return ({"HiddenFromAddressListsEnabled": bool(state["mailbox"].get("HiddenFromAddressListsEnabled"))},
                {"HiddenFromAddressListsEnabled": True},
                [Cmdlet.of("Set-Mailbox", anchor=upn, Identity=upn, HiddenFromAddressListsEnabled=True)])

    # -- deciding and acting --------------------------------------------------
    def plan(self, subject: Subject, termination: Termination) -> list[PlannedAction]:
        out = []
        for name in self.actions:
            try:
                wanted = self.wanted(name, subject.state, termination)
            except NeedsHuman:       # planned all the same: applying it records why a person must act
                wanted = (None, name)
            if wanted and wanted[0] != wanted[1]:
                out.append(self.planned(name, name.replace("_", " ")))
        return out

    def reconcile_one(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Re-read the one thing this action compares, then settle the difference."""
        [key] = self.reads[action.action]
        [value] = yield from self.fetch(seen, ctx.subject, key)
        if key == "mailbox" and value is None:
            raise http.NotFound(f"{self.upn(ctx.subject)} has no mailbox any more", self.where)
        wanted = self.wanted(action.action, {**ctx.subject.state, key: value}, ctx.termination)
        if wanted is None:
            return Result("skipped", reason="the tenant policy does not ask for it")
        before, after, writes = wanted
        return (yield from self.settle(before, after, ctx, *writes))

    clear_mobile_devices = convert_mailbox_to_shared = grant_mailbox_access = reconcile_one
    set_auto_reply = set_forwarding = hide_from_gal = reconcile_one
