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

What else a leaver reaches through mail is cut on revoke: an inbox rule forwarding outside
keeps sending their mail out after the account is blocked, and their rights on shared
mailboxes outlive their own mailbox. Both are read from where each lives: rules through
Graph (`messageRules`), rights through the admin endpoint; the shared mailboxes and their
permissions are read once per pass, and a write re-reads only the leaver's own rights.

Restore puts each hand-over's journaled before-state back: the mailbox a user mailbox again
once the user holds a licence, the successor's FullAccess removed, the auto-reply,
forwarding and GAL visibility as they were. Before retention deletes anything, a shared
mailbox or a hold on it is what the account still anchors.
"""
from __future__ import annotations

import html
import re
import threading
from concurrent.futures import Future
from typing import Any, ClassVar

from ... import http
from ...errors import NeedsHuman, NotYet, OffboardError
from ...model import ActionContext, PlannedAction, Result, Subject, Termination
from .exchange_api import Cmdlet
from .graph import GraphCall
from .provider import MAILBOX_READS, ROLE_READS, Call, Microsoft365Provider, Step, concurrently, recipient, successor_facts

SHARED = "SharedMailbox"
Wanted = tuple[Any, Any, list[Call]]       # before, after, the writes that get from one to the other


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


class ExchangeOnlineProvider(Microsoft365Provider):
    type = "exchange_online"
    actions = {
        "disable_forwarding_rules": "revoke",
        "remove_mailbox_access": "revoke",
        "clear_mobile_devices": "preserve",
        "cancel_meetings": "preserve",
        "convert_mailbox_to_shared": "preserve",
        "grant_mailbox_access": "preserve",
        "set_auto_reply": "preserve",
        "set_forwarding": "preserve",
        "hide_from_gal": "preserve",
        "enable_inbox_rules": "restore",
        "restore_mailbox_access": "restore",
        "show_in_gal": "restore",
        "restore_forwarding": "restore",
        "restore_auto_reply": "restore",
        "revoke_mailbox_access": "restore",
        "convert_mailbox_back": "restore",
    }
    #: action -> the action that puts its journaled before-state back (cancelled meetings cannot come back; the
    #: account-only wipe needs nothing: mail syncs again when the person signs in)
    undo: ClassVar[dict[str, str]] = {"disable_forwarding_rules": "enable_inbox_rules",
                                      "remove_mailbox_access": "restore_mailbox_access", "clear_mobile_devices": "",
                                      "convert_mailbox_to_shared": "convert_mailbox_back",
                                      "grant_mailbox_access": "revoke_mailbox_access",
                                      "set_auto_reply": "restore_auto_reply", "set_forwarding": "restore_forwarding",
                                      "hide_from_gal": "show_in_gal"}
    reads = {"clear_mobile_devices": ("devices",), "convert_mailbox_to_shared": ("mailbox",),
             "grant_mailbox_access": ("permissions",), "set_auto_reply": ("auto_reply",),
             "set_forwarding": ("mailbox",), "hide_from_gal": ("mailbox",), "disable_forwarding_rules": ("rules",),
             "enable_inbox_rules": ("rules",), "cancel_meetings": ("meetings",), "remove_mailbox_access": ("mailbox",),
             "restore_mailbox_access": ("mailbox",), "show_in_gal": ("mailbox",), "restore_forwarding": ("mailbox",),
             "restore_auto_reply": ("auto_reply",), "revoke_mailbox_access": ("permissions",),
             "convert_mailbox_back": ("mailbox", "user")}

    def __init__(self, name, options, tenant, where=""):
        super().__init__(name, options, tenant, where)
        self.shared: list[tuple[dict, list[dict]]] | OffboardError | None = None   # shared mailboxes as read this pass
        self.shared_lock = threading.Lock()
        self.by_address: Future[dict[str, Any]] | None = None   # termination id -> Get-Mailbox by the feed's address

    def prepare(self, terminations: list[Termination]) -> None:
        """The tenant's domains and shared mailboxes (planning needs them), and each leaver's mailbox by the
        address the feed gave, read while the leavers are matched."""
        self.shared = None                  # read again by each pass's planning
        self.by_address = Future()
        match = super().prepare
        work = [self.tenant_domains, lambda: self.read_by_address(terminations), lambda: match(terminations)]
        if self.tenant.policy.remove_mailbox_access and terminations:
            work.append(self.read_shared_mailboxes)
        concurrently(*work)

    def read_by_address(self, terminations: list[Termination]) -> None:
        """Get-Mailbox takes any of a mailbox's addresses, so it need not wait for the match to name the UPN."""
        addressed = [t for t in terminations if t.email]
        answers: dict[str, Any] = {}
        try:
            answers = dict(zip((t.id for t in addressed), self.exchange.invoke_many(
                [Cmdlet.of(MAILBOX_READS["mailbox"], anchor=t.email, Identity=t.email) for t in addressed])))
        finally:
            self.by_address.set_result(answers)        # the match waits for it: set even when this failed

    def read_with_the_match(self, termination: Termination, user: dict) -> dict[str, Any]:
        """The mailbox read by the feed's address, kept only when Exchange says it is the matched account's
        (its directory object id): the feed's address never picks whose mailbox is read as the leaver's."""
        answer = self.by_address.result().get(termination.id) if self.by_address else None
        if isinstance(answer, list) and len(answer) == 1 and answer[0].get("ExternalDirectoryObjectId") == user["id"]:
            return {"mailbox": answer}
        return {}

    def read_call(self, key: str, subject: Subject):
        if key == "send_as":             # SendAs the leaver holds, across the organization
            return Cmdlet.of("Get-RecipientPermission", Trustee=self.upn(subject), ResultSize="Unlimited")
        return super().read_call(key, subject)

    def observe(self, subject: Subject, seen: dict) -> Step:
        """The mailbox and its hand-over state, the directory manager (None when unset) and the admin roles."""
        subject.state["user"] = seen["user"]
        policy = self.tenant.policy
        elsewhere = ("rules",) * (policy.forwarding_rules != "none") + ("meetings",) * bool(
            policy.cancel_meetings_days) + ("send_as",) * policy.remove_mailbox_access
        keys = ("mailbox", "devices", "permissions", "auto_reply", "manager", "memberOf", *ROLE_READS, *elsewhere)
        found = dict(zip(keys, (yield from self.fetch(seen, subject, *keys))))
        mailbox, manager = found["mailbox"], found["manager"]
        if mailbox is None:
            return None
        subject.state.update(mailbox=mailbox, **{k: found[k] or [] for k in ("devices", "permissions", *elsewhere)},
                             auto_reply=found["auto_reply"] or {})
        if policy.remove_mailbox_access:
            subject.state["access"] = rights_held(self.shared_mailboxes(), found["send_as"] or [], mailbox,
                                                  self.upn(subject))
        subject.manager = successor_facts(manager)
        subject.names = list(dict.fromkeys(subject.names + [smtp(a) for a in mailbox.get("EmailAddresses") or []]))
        yield from self.mark_admin(subject, seen)
        return subject

    def recipient(self, setting: str, termination: Termination, what: str) -> str:
        return recipient(setting, termination, what, self.where)

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
        for name, phase in self.actions.items():
            if phase == "restore":
                continue
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

    # -- what else the leaver reaches: inbox rules, other mailboxes, meetings ---------------------------
    def want_disable_forwarding_rules(self, state: dict, termination: Termination, upn: str) -> Wanted | None:
        """Rules that forward or redirect (outside the accepted and allowed domains, or anywhere) are disabled;
        the other enabled rules that move mail on are reported."""
        setting = self.tenant.policy.forwarding_rules
        if setting == "none":
            return None
        enabled = [r for r in state.get("rules") or [] if r.get("isEnabled")]
        targeted = {r["id"]: rule_label(r) for r in enabled if rule_targets(r) and (
            setting == "all" or not all(self.stays_inside(a) for a in rule_targets(r)))}
        writes = [GraphCall("PATCH", f"/users/{state['user']['id']}/mailFolders/inbox/messageRules/{rule_id}",
                            {"isEnabled": False}) for rule_id in targeted]
        return {"forwarding_rules": targeted}, {"forwarding_rules": {}}, writes

    def disable_forwarding_rules(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        [rules] = yield from self.fetch(seen, ctx.subject, "rules")
        result = yield from self.reconcile_one(action, ctx, seen)
        rest = [rule_label(r) for r in rules or [] if r.get("isEnabled") and r["id"] not in
                (result.before or {}).get("forwarding_rules", {}) and (rule_targets(r) or moves_mail(r))]
        if rest:
            result.reason = "; ".join(filter(None, [result.reason, "left enabled (they stay inside the tenant or do "
                                                                  "not forward): " + ", ".join(rest)]))
        return result

    def enable_inbox_rules(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Undo of disable_forwarding_rules: the rules it disabled are enabled again."""
        [rules] = yield from self.fetch(seen, ctx.subject, "rules")
        wanted = dict(dict(action.params)["before"].get("forwarding_rules") or {})
        present = {r["id"]: r for r in rules or [] if r["id"] in wanted}
        before = {"enabled": sorted(i for i, r in present.items() if r.get("isEnabled"))}
        reason = "; ".join(f"{label}: the rule is gone" for i, label in sorted(wanted.items()) if i not in present)
        return (yield from self.settle(before, {"enabled": sorted(present)}, ctx, *[
            GraphCall("PATCH", f"/users/{ctx.subject.native_id}/mailFolders/inbox/messageRules/{i}", {"isEnabled": True})
            for i, r in present.items() if not r.get("isEnabled")], reason=reason))

    def want_cancel_meetings(self, state: dict, termination: Termination, upn: str) -> Wanted | None:
        days = self.tenant.policy.cancel_meetings_days
        if not days:
            return None
        organised = sorted(e["id"] for e in state.get("meetings") or []
                           if e.get("isOrganizer") and e.get("attendees") and not e.get("isCancelled"))
        return ({"meetings_organised": len(organised)}, {"meetings_organised": 0},
                [Cmdlet.of("Remove-CalendarEvents", anchor=upn, Identity=upn, CancelOrganizedMeetings=True,
                           QueryWindowInDays=days, Confirm=False)])

    def shared_mailboxes(self) -> list[tuple[dict, list[dict]]]:
        """Every shared mailbox with its explicit permissions, read once per pass for planning everyone; a failed
        read fails the match of each leaver it was read for, as any other read does."""
        self.read_shared_mailboxes()
        if isinstance(self.shared, OffboardError):
            raise self.shared
        return self.shared

    def read_shared_mailboxes(self) -> None:
        with self.shared_lock:          # prepare starts the read; a leaver's planning waits for it
            if self.shared is not None:
                return
            try:
                boxes = self.exchange.invoke(Cmdlet.of("Get-Mailbox", RecipientTypeDetails=["SharedMailbox"],
                                                       ResultSize="Unlimited"))
                permissions = self.exchange.invoke_many([Cmdlet.of(
                    "Get-MailboxPermission", anchor=b["PrimarySmtpAddress"], Identity=b["PrimarySmtpAddress"])
                    for b in boxes])
                self.shared = next((p for p in permissions if isinstance(p, OffboardError)), None) or \
                    list(zip(boxes, permissions))
            except OffboardError as e:
                self.shared = e

    def fresh_access(self, seen: dict, subject: Subject, mailbox: dict, boxes: list[str]) -> Step:
        """The leaver's rights on `boxes` read again now (before a write, which acts only on what it read)."""
        upn = self.upn(subject)
        answers = yield [*(Cmdlet.of("Get-Mailbox", anchor=b, Identity=b) for b in boxes),
                         *(Cmdlet.of("Get-MailboxPermission", anchor=b, Identity=b, User=upn) for b in boxes),
                         self.read_call("send_as", subject)]
        for answer in answers:
            if isinstance(answer, OffboardError) and not isinstance(answer, http.NotFound):
                raise answer
        found = [(box[0], rights) for box, rights in zip(answers[:len(boxes)], answers[len(boxes):-1])
                 if isinstance(box, list) and box and isinstance(rights, list)]
        return rights_held(found, answers[-1] if isinstance(answers[-1], list) else [], mailbox, upn)

    def want_remove_mailbox_access(self, state: dict, termination: Termination, upn: str) -> Wanted | None:
        if not self.tenant.policy.remove_mailbox_access:
            return None
        return state["access"], dict.fromkeys(state["access"], []), access_writes(state["access"], upn, "remove")

    def remove_mailbox_access(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Revoke: FullAccess, SendAs and SendOnBehalf the leaver holds on shared mailboxes go."""
        return (yield from self.settle_access(ctx, seen, ctx.subject.state["access"], wanted=None))

    def restore_mailbox_access(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Undo of remove_mailbox_access: each right on each mailbox it removed is granted again."""
        return (yield from self.settle_access(ctx, seen, dict(action.params)["before"],
                                              wanted=dict(action.params)["before"]))

    def settle_access(self, ctx: ActionContext, seen: dict, rights: dict, wanted: dict | None) -> Step:
        """Read the leaver's rights on the mailboxes `rights` names again, then remove them all (wanted None)
        or grant what `wanted` holds and they lack."""
        [mailbox] = yield from self.fetch(seen, ctx.subject, "mailbox")
        if mailbox is None:
            raise http.NotFound(f"{self.upn(ctx.subject)} has no mailbox any more", self.where)
        boxes = sorted({b for held in rights.values() for b in held})
        now = yield from self.fresh_access(seen, ctx.subject, mailbox, boxes)
        upn = self.upn(ctx.subject)
        if wanted is None:
            return (yield from self.settle(now, dict.fromkeys(now, []), ctx, *access_writes(now, upn, "remove")))
        after = {right: sorted({*now[right], *wanted.get(right, [])}) for right in now}
        missing = {right: [b for b in after[right] if b not in now[right]] for right in now}
        return (yield from self.settle(now, after, ctx, *access_writes(missing, upn, "add")))

    cancel_meetings = reconcile_one

    # -- retention ---------------------------------------------------------------
    def anchors(self, subject: Subject, termination: Termination) -> list[str]:
        """DESIGN.md: never delete a user whose object anchors a shared mailbox (it goes with the user), nor one
        whose mailbox is on hold."""
        mailbox = subject.state.get("mailbox") or {}
        found = []
        if mailbox.get("RecipientTypeDetails") == SHARED:
            found.append(f"the shared mailbox {self.upn(subject)} (deleting the user deletes it: migrate it first)")
        if mailbox.get("LitigationHoldEnabled"):
            found.append("a litigation hold on its mailbox")
        if mailbox.get("InPlaceHolds"):
            found.append(f"{len(mailbox['InPlaceHolds'])} In-Place / eDiscovery hold(s) on its mailbox")
        return found

    # -- restore -------------------------------------------------------------------
    def restore_one(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Re-read what the original action changed, then put its journaled before-state back."""
        original, before = self.undone(action)
        [key] = self.reads[original]
        [value] = yield from self.fetch(seen, ctx.subject, key)
        if key == "mailbox" and value is None:
            raise http.NotFound(f"{self.upn(ctx.subject)} has no mailbox any more", self.where)
        now, writes = getattr(self, f"back_{original}")(value, before, self.upn(ctx.subject))
        return (yield from self.settle(now, before, ctx, *writes))

    show_in_gal = restore_forwarding = restore_auto_reply = revoke_mailbox_access = restore_one

    @staticmethod
    def back_hide_from_gal(mailbox: dict, before: dict, upn: str) -> tuple[dict, list[Cmdlet]]:
        hidden = before["HiddenFromAddressListsEnabled"]
        return ({"HiddenFromAddressListsEnabled": bool(mailbox.get("HiddenFromAddressListsEnabled"))},
                [Cmdlet.of("Set-Mailbox", anchor=upn, Identity=upn, HiddenFromAddressListsEnabled=hidden)])

    @staticmethod
    def back_set_forwarding(mailbox: dict, before: dict, upn: str) -> tuple[dict, list[Cmdlet]]:
        target = before["ForwardingSmtpAddress"]
        return ({"ForwardingSmtpAddress": smtp(mailbox.get("ForwardingSmtpAddress"))},
                [Cmdlet.of("Set-Mailbox", anchor=upn, Identity=upn, ForwardingSmtpAddress=f"smtp:{target}" if target
                           else None, DeliverToMailboxAndForward=bool(target))])

    @staticmethod
    def back_set_auto_reply(auto_reply: dict, before: dict, upn: str) -> tuple[dict, list[Cmdlet]]:
        seen = auto_reply or {}
        now = {"AutoReplyState": seen.get("AutoReplyState"), "InternalMessage": plain(seen.get("InternalMessage")),
               "ExternalMessage": plain(seen.get("ExternalMessage"))}
        return now, [Cmdlet.of("Set-MailboxAutoReplyConfiguration", anchor=upn, Identity=upn,
                               AutoReplyState=before["AutoReplyState"] or "Disabled",
                               InternalMessage=html.escape(before["InternalMessage"]),
                               ExternalMessage=html.escape(before["ExternalMessage"]))]

    @staticmethod
    def back_grant_mailbox_access(permissions: list[dict], before: dict, upn: str) -> tuple[dict, list[Cmdlet]]:
        have = sorted({p["User"].lower() for p in permissions or [] if "@" in p.get("User", "")
                       and any("FullAccess" in r for r in p.get("AccessRights") or [])
                       and not p.get("Deny") and not p.get("IsInherited")})
        granted = [u for u in have if u not in before["FullAccess"]]
        return {"FullAccess": have}, [Cmdlet.of("Remove-MailboxPermission", anchor=upn, Identity=upn, User=user,
                                                AccessRights=["FullAccess"], InheritanceType="All", Confirm=False)
                                      for user in granted]

    def convert_mailbox_back(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """A user mailbox again, once the user holds a licence (restore puts the licences back before this)."""
        _, before = self.undone(action)
        mailbox, user = yield from self.fetch(seen, ctx.subject, "mailbox", "user")
        if mailbox is None:
            raise http.NotFound(f"{self.upn(ctx.subject)} has no mailbox any more", self.where)
        now = {"RecipientTypeDetails": mailbox.get("RecipientTypeDetails")}
        if now != before and not (user or {}).get("assignedLicenses"):
            waiting = "the mailbox becomes a user mailbox once the user holds a licence again"
            if ctx.dry_run:
                return Result("planned", now, before, waiting)
            raise NotYet(waiting, self.where, delay=60)
        upn = self.upn(ctx.subject)
        return (yield from self.settle(now, before, ctx, Cmdlet.of("Set-Mailbox", anchor=upn, Identity=upn,
                                                                    Type="Regular")))


def rights_held(boxes: list[tuple[dict, list[dict]]], send_as: list[dict], mailbox: dict, upn: str) -> dict:
    """{FullAccess, SendAs, SendOnBehalf: [shared mailboxes]} the leaver holds, their own mailbox aside.
    GrantSendOnBehalfTo names recipients as Exchange shows them (alias, name, address): any of the leaver's counts."""
    names = {str(mailbox.get(k) or "").lower() for k in ("UserPrincipalName", "PrimarySmtpAddress", "Alias", "Name",
                                                          "DisplayName", "ExternalDirectoryObjectId")} - {""}
    others = [(b, held) for b, held in boxes if smtp(b.get("PrimarySmtpAddress")) != upn.lower()]
    return {"FullAccess": sorted(smtp(b["PrimarySmtpAddress"]) for b, held in others
                                 if any(p.get("User", "").lower() == upn.lower() and not p.get("Deny")
                                        and not p.get("IsInherited") and any("FullAccess" in r for r in p.get(
                                            "AccessRights") or []) for p in held)),
            "SendAs": sorted(smtp(p["Identity"]) for p in send_as if "SendAs" in (p.get("AccessRights") or [])
                             and smtp(p.get("Trustee")) == upn.lower() and smtp(p["Identity"]) != upn.lower()),
            "SendOnBehalf": sorted(smtp(b["PrimarySmtpAddress"]) for b, _ in others
                                   if names & {str(n).lower() for n in b.get("GrantSendOnBehalfTo") or []})}


def access_writes(rights: dict, upn: str, verb: str) -> list[Cmdlet]:
    """The cmdlets that remove (or add) the leaver's rights on each mailbox `rights` names."""
    full, send_as = ("Remove-MailboxPermission", "Remove-RecipientPermission") if verb == "remove" else (
        "Add-MailboxPermission", "Add-RecipientPermission")
    extra = {"Confirm": False} if verb == "remove" else {"AutoMapping": True}
    return [*(Cmdlet.of(full, anchor=box, Identity=box, User=upn, AccessRights=["FullAccess"], InheritanceType="All",
                        **extra) for box in rights.get("FullAccess", [])),
            *(Cmdlet.of(send_as, anchor=box, Identity=box, Trustee=upn, AccessRights=["SendAs"], Confirm=False)
              for box in rights.get("SendAs", [])),
            *(Cmdlet.of("Set-Mailbox", anchor=box, Identity=box, GrantSendOnBehalfTo=hashtable(verb, upn))
              for box in rights.get("SendOnBehalf", []))]


def hashtable(verb: str, value: str) -> dict:
    """A multivalued property's add or remove, as the admin endpoint binds a PowerShell hashtable."""
    return {"@odata.type": "#Exchange.GenericHashTable", verb: value}


def rule_targets(rule: dict) -> list[str]:
    """Where a messageRule sends mail on: forwardTo, forwardAsAttachmentTo and redirectTo addresses."""
    actions = rule.get("actions") or {}
    return sorted({str((r.get("emailAddress") or {}).get("address") or "").lower()
                   for key in ("forwardTo", "forwardAsAttachmentTo", "redirectTo") for r in actions.get(key) or []} - {""})


def moves_mail(rule: dict) -> bool:
    """Deletes mail or moves it away from the inbox: what a rule hiding mail from its owner does."""
    actions = rule.get("actions") or {}
    return bool(actions.get("delete") or actions.get("permanentDelete") or actions.get("moveToFolder"))


def rule_label(rule: dict) -> str:
    targets = rule_targets(rule)
    return f"{rule.get('displayName') or rule['id']}" + (f" -> {', '.join(targets)}" if targets else "")
