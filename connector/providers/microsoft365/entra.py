"""Entra ID (Azure AD) through Microsoft Graph: sign-in, sessions, MFA methods, groups, licences.

Users synced from on-prem AD are disabled and reset in AD (a cloud write is refused or
overwritten by the next sync); their sessions are still revoked here. Licences go only
after the mailbox reads back as SharedMailbox, because a licence removed first loses
the mailbox after 30 days; big, held or archived mailboxes keep theirs and a person decides.
A conversion still running is looked at again after 15 s, then 30 s, then every 60 s.

MFA methods go in the order Graph accepts: it refuses to delete the default method while
others remain, and a `mobile` phone while an `alternateMobile` one exists. v1.0 cannot say
which method is the default, so deletes go in rounds and a method refused as the default
waits for the next round, or the next pass. Kinds v1.0 has no collection to delete from
(`qrCodePin`, anything newer) are reported as kept, never sent; the password cannot be
deleted at all (the reset replaced it).

An AD disable reaches Entra only at the next directory sync (30 minutes by default), so a
synced leaver could still sign in to cloud apps until then. With `policy.block_group` set,
revoke adds them to that cloud-only security group, which a Conditional Access policy
blocks, and reclaim takes them out only once Entra reads the account back disabled.

Teams Phone numbers (teams_phone.py) go with the user: `policy.teams_numbers = "successor"`
hands each direct number to the successor in preserve; in reclaim whatever is still
assigned is unassigned, so no number stays routed to a disabled user.

What the leaver owns is handed over in preserve, so it is not lost with them: the successor
becomes an owner of their groups and Teams before reclaim takes the leaver out of any
ownership (Graph refuses to remove a group's last owner, and a sole ownership nobody took
over stays for a person), and may be invited to their OneDrive root. Delegated consents go
on revoke, since an app's refresh token outlives the session revoke. Intune devices are
retired or wiped in reclaim, after the hand-over; a wipe cannot be undone, so it has no undo.
The notice period leaves the cloud groups the policy's globs name and joins the ones it
adds. Retention deletes the user (soft: restorable from directory/deletedItems for 30 days;
purged there too only with `policy.hard_delete`); a synced user goes with its AD account.
Restore brings a soft-deleted user back first, then each journaled before-state: licences
only where the tenant has free units, and a Temporary Access Pass, shown once, for the
password that is never restored.
"""
from __future__ import annotations

import datetime as dt
import re
import secrets
from typing import ClassVar, Generator
from urllib.parse import quote

from ... import http
from ...config import remember_secret
from ...errors import ConfigError, NeedsHuman, NotYet, OffboardError, PermanentError, RetryableError
from ...model import ActionContext, PlannedAction, Result, Subject, Termination
from . import teams_phone
from .exchange_api import Cmdlet
from .graph import GraphCall
from .provider import (GROUP_FIELDS, ROLE_READS, Microsoft365Provider, Step, concurrently, odata_literal, recipient,
                       successor_facts)

SHARED = "SharedMailbox"
GB = 1024 ** 3
BIG_MAILBOX = 50 * GB                  # bytes: from here on a person decides about the licence
CONVERSION_WAITS = (15.0, 60.0)        # seconds: the first look again at a converting mailbox, and the longest wait
NO_ARCHIVE = "00000000-0000-0000-0000-000000000000"
#: authentication method kind -> the v1.0 collection it is deleted from
DELETABLE = {kind: f"{kind}Methods" for kind in ("email", "fido2", "microsoftAuthenticator", "phone",
                                                  "platformCredential", "softwareOath", "temporaryAccessPass",
                                                  "windowsHelloForBusiness")} | {
    "external": "externalAuthenticationMethods"}
SYNC_WAIT = 300.0                      # seconds between looks for the AD disable to reach Entra
OBJECT_ID = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", re.IGNORECASE)
#: the words of Graph's refusals that only mean "not yet, delete the others first"
ORDER_REFUSALS = ("default method", "default authentication method", "alternateMobile")


def method_kind(method: dict) -> str:
    """`#microsoft.graph.phoneAuthenticationMethod` -> `phone`."""
    return str(method.get("@odata.type", "")).removeprefix("#microsoft.graph.").removesuffix("AuthenticationMethod")


def method_label(method: dict) -> str:
    kind = method_kind(method) or "unknown"
    return f"{kind} ({method['phoneType']})" if kind == "phone" and method.get("phoneType") else kind


def removable_methods(methods: list[dict]) -> list[dict]:
    """The methods a DELETE can remove."""
    return [m for m in methods if method_kind(m) in DELETABLE and m.get("id")]


def is_mobile(method: dict) -> bool:
    return method_kind(method) == "phone" and method.get("phoneType") == "mobile"


def kept_methods(methods: list[dict]) -> dict[str, str]:
    """Methods that stay, and why (the password is no MFA method and is left out)."""
    return {method_label(m): "Graph v1.0 has no way to delete it: remove it in the Entra admin center"
            for m in methods if method_kind(m) not in DELETABLE and method_kind(m) != "password"}


def order_refusal(answer: object) -> bool:
    return isinstance(answer, PermanentError) and not isinstance(answer, http.NotFound) and any(
        words.lower() in answer.message.lower() for words in ORDER_REFUSALS)


def licence_groups(user: dict) -> set[str]:
    return {s["assignedByGroup"] for s in user.get("licenseAssignmentStates") or [] if s.get("assignedByGroup")}


def direct_skus(user: dict) -> list[str]:
    """SKUs assigned to the user directly; an inherited SKU can only go by leaving its group."""
    states = user.get("licenseAssignmentStates") or []
    inherited_only = {s["skuId"] for s in states if s.get("assignedByGroup")} - {
        s["skuId"] for s in states if not s.get("assignedByGroup")}
    return sorted(a["skuId"] for a in user.get("assignedLicenses") or [] if a["skuId"] not in inherited_only)


def groups_of(member_of: list[dict]) -> list[dict]:
    return [g for g in member_of if g.get("@odata.type") == "#microsoft.graph.group"]


def size_in_bytes(total_item_size: object) -> int | None:
    """Exchange writes sizes as `52.3 GB (56,158,883,840 bytes)`: the exact bytes count. None: unreadable."""
    if isinstance(total_item_size, int) and not isinstance(total_item_size, bool):
        return total_item_size
    found = re.fullmatch(r"[\d.,]+ ?[KMGT]?B \(([\d,]+) bytes\)", str(total_item_size).strip())
    return int(found.group(1).replace(",", "")) if found else None


def licence_holds(mailbox: dict, statistics: dict | None) -> list[str]:
    """Why this mailbox must keep its licence (a person decides), or nothing."""
    holds = []
    if mailbox.get("LitigationHoldEnabled"):
        holds.append("on litigation hold")
    if mailbox.get("InPlaceHolds"):
        holds.append(f"on {len(mailbox['InPlaceHolds'])} In-Place / eDiscovery / retention hold(s) (InPlaceHolds)")
    if mailbox.get("ComplianceTagHoldApplied"):
        holds.append("holding items under a retention label (ComplianceTagHoldApplied)")
    if mailbox.get("ArchiveStatus") == "Active" or (mailbox.get("ArchiveGuid") or NO_ARCHIVE) != NO_ARCHIVE:
        holds.append("with an active archive (a shared mailbox without a licence cannot keep it)")
    if statistics is not None:
        size = size_in_bytes(statistics.get("TotalItemSize"))
        if size is None:
            holds.append(f"of unreadable size ({str(statistics.get('TotalItemSize'))[:60]!r})")
        elif size >= BIG_MAILBOX:
            holds.append(f"{f'{size / GB:.1f}'.removesuffix('.0')} GB (50 GB or more)")
    return holds


def block_group_flaw(group: dict) -> str:
    """Why `group` cannot carry a Conditional Access block (a cloud-only security group), or ""."""
    types = group.get("groupTypes") or []
    if "DynamicMembership" in types:
        return "it has dynamic membership (the connector cannot add members)"
    if group.get("onPremisesSyncEnabled"):
        return "it is synced from on-premises AD (its members cannot be changed in the cloud)"
    if "Unified" in types:
        return "it is a Microsoft 365 (Unified) group"
    if group.get("mailEnabled"):
        return "it is mail-enabled"
    if not group.get("securityEnabled"):
        return "it is not a security group"
    return ""


def conversion_wait(since: dt.datetime | None, now: dt.datetime) -> float:
    """15 s, 30 s, 60 s, 60 s ... : the next wait is the time waited so far plus the first, up to a minute."""
    first, longest = CONVERSION_WAITS
    waited = max(0.0, (now - since).total_seconds()) if since else 0.0
    return min(longest, first + waited)


def now_stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class EntraProvider(Microsoft365Provider):
    type = "entra"
    manager_authority = 1          # the cloud directory: its manager names the successor unless AD knows the person
    actions = {
        "restrict_groups": "restrict",
        "block_sign_in": "revoke",
        "reset_password": "revoke",
        "add_to_block_group": "revoke",
        "revoke_sessions": "revoke",
        "remove_consents": "revoke",
        "hand_over_teams_numbers": "preserve",
        "hand_over_groups": "preserve",
        "share_onedrive": "preserve",
        "remove_sharing_links": "preserve",
        "unassign_teams_numbers": "reclaim",
        "remove_auth_methods": "reclaim",
        "remove_group_ownerships": "reclaim",
        "remove_groups": "reclaim",
        "remove_licenses": "reclaim",
        "remove_from_block_group": "reclaim",
        "retire_devices": "reclaim",
        "delete_user": "retain",
        "undelete_user": "restore",
        "restore_consents": "restore",
        "restore_group_ownerships": "restore",
        "unshare_onedrive": "restore",
        "remove_added_owners": "restore",
        "restore_teams_numbers": "restore",
        "restore_licenses": "restore",
        "restore_groups": "restore",
        "leave_block_group": "restore",
        "issue_temporary_access": "restore",
        "unblock_sign_in": "restore",
    }
    #: action -> the action that puts its journaled before-state back (`offboard restore`); a retired or wiped device,
    #: cancelled meetings and deleted sharing links cannot come back
    undo: ClassVar[dict[str, str]] = {"restrict_groups": "restore_groups", "block_sign_in": "unblock_sign_in",
                                      "reset_password": "issue_temporary_access",
                                      "add_to_block_group": "leave_block_group", "revoke_sessions": "",
                                      "hand_over_teams_numbers": "restore_teams_numbers",
                                      "unassign_teams_numbers": "restore_teams_numbers",
                                      "remove_consents": "restore_consents",
                                      "remove_group_ownerships": "restore_group_ownerships",
                                      "share_onedrive": "unshare_onedrive", "hand_over_groups": "remove_added_owners",
                                      "remove_groups": "restore_groups", "remove_licenses": "restore_licenses",
                                      "remove_from_block_group": "", "delete_user": "undelete_user"}
    reads = {"block_sign_in": ("user",), "reset_password": ("user",), "revoke_sessions": ("user",),
             "add_to_block_group": ("memberOf",), "remove_auth_methods": ("methods",),
             "remove_groups": ("user", "memberOf"), "remove_licenses": ("user", "memberOf", "mailbox", "statistics"),
             "remove_from_block_group": ("user", "memberOf"), "hand_over_teams_numbers": ("teamsNumbers",),
             "unassign_teams_numbers": ("teamsNumbers",), "remove_consents": ("grants",),
             "restore_consents": ("grants",), "hand_over_groups": ("owned",), "remove_group_ownerships": ("owned",),
             "restore_group_ownerships": ("owned",), "remove_added_owners": ("owned",),
             "share_onedrive": ("drive", "drivePermissions"), "unshare_onedrive": ("drive", "drivePermissions"),
             "retire_devices": ("managedDevices",), "remove_sharing_links": ("drive",), "restrict_groups": ("memberOf",),
             "delete_user": ("user",), "restore_licenses": ("user", "memberOf"), "restore_groups": ("memberOf",),
             "leave_block_group": ("memberOf",), "issue_temporary_access": ("methods",), "unblock_sign_in": ("user",)}

    def __init__(self, name, options, tenant, where=""):
        super().__init__(name, options, tenant, where)
        self.sku_names: dict[str, str] = {}
        self.block_group: dict | None = None       # policy.block_group as read this pass (an instance lives one pass)
        self.block_group_read = False
        self.restrict_add: list[dict] | None = None  # policy.restrict_add_groups as read this pass

    # -- reading -----------------------------------------------------------
    def online_reads(self) -> list:
        return [*super().online_reads(), self.remember_block_group]

    def remember_block_group(self) -> None:
        self.block_group, self.block_group_read = self.read_block_group(), True

    def prepare(self, terminations: list[Termination]) -> None:
        """The tenant's licences, domains and policy groups, read while the leavers are matched (they matter only
        to plans; the domains prove the Exchange permission the licence steps read mailboxes with)."""
        def read_skus() -> None:
            self.sku_names = {s["skuId"]: s["skuPartNumber"] for s in self.subscribed_skus()}

        def read_restrict_groups() -> None:
            self.restrict_add = [self.read_group(name, "restrict_add_groups", "")
                                 for name in self.tenant.policy.restrict_add_groups]

        match = super().prepare
        work = [read_skus, self.tenant_domains, lambda: match(terminations)]
        if not self.block_group_read:
            work.append(self.remember_block_group)
        if self.restrict_add is None:
            work.append(read_restrict_groups)
        concurrently(*work)

    def read_block_group(self) -> dict | None:
        """`policy.block_group` (an object id or an exact display name) as a group fit for a CA block; None: off."""
        wanted = self.tenant.policy.block_group.strip()
        if not wanted:
            return None
        found = self.read_group(wanted, "block_group", "a Conditional Access block needs one cloud-only security group")
        if flaw := block_group_flaw(found):
            raise ConfigError(f"group {wanted!r} cannot be the block group: {flaw}; a Conditional Access block needs "
                              "one cloud-only security group", f"{self.where.partition('.provider')[0]}.policy.block_group")
        return found

    def read_group(self, wanted: str, key: str, need: str) -> dict:
        """The one group `wanted` (an object id or an exact display name) names, for `policy.<key>`."""
        where = f"{self.where.partition('.provider')[0]}.policy.{key}"
        if OBJECT_ID.fullmatch(wanted):
            try:
                found = [self.graph.request(GraphCall("GET", f"/groups/{wanted}?$select={GROUP_FIELDS}"))]
            except http.NotFound:
                found = []
        else:
            found = list(self.graph.pages(GraphCall(
                "GET", f"/groups?$filter={quote(f'displayName eq {odata_literal(wanted)}')}&$select={GROUP_FIELDS}")))
        need = f": {need}" if need else ""
        if not found:
            raise ConfigError(f"no group {wanted!r} in Entra{need}", where)
        if len(found) > 1:
            raise ConfigError(f"{len(found)} groups are named {wanted!r}: give the object id of the one meant{need}",
                              where)
        return found[0]

    def observe(self, subject: Subject, seen: dict) -> Step:
        subject.state["user"] = seen["user"]
        elsewhere = self.reaches()
        member_of, methods, manager, numbers, *_ = yield from self.fetch(
            seen, subject, "memberOf", "methods", "manager", "teamsNumbers", *ROLE_READS, *elsewhere)   # one round
        subject.state.update(groups=groups_of(member_of), methods=methods,
                             teams_numbers=sorted(n["telephoneNumber"] for n in numbers)
                             if isinstance(numbers, list) else str(numbers))
        subject.manager = successor_facts(manager)
        yield from self.mark_admin(subject, seen)
        found = yield from self.fetch(seen, subject, *elsewhere)
        subject.state.update(zip(elsewhere, found))
        if "owned" in elsewhere:
            subject.state["owned"] = yield from self.ownerships(seen, subject)
        if subject.state.get("drive") and self.tenant.policy.onedrive_links == "remove":
            subject.state["links"] = yield from self.sharing_links(subject, subject.state["drive"]["id"])
        return subject

    def reaches(self) -> tuple[str, ...]:
        """The reads of what else the leaver reaches that this tenant's policy acts on."""
        policy = self.tenant.policy
        wanted = {"owned": policy.hand_over_groups != "none" or policy.remove_groups or policy.delete_after_days > 0,
                  "grants": policy.remove_consents, "managedDevices": policy.devices != "none",
                  "drive": policy.onedrive_access != "none" or policy.onedrive_links == "remove",
                  "drivePermissions": policy.onedrive_access != "none"}
        return tuple(key for key, on in wanted.items() if on)

    def subscribed_skus(self) -> list[dict]:
        return list(self.graph.pages(GraphCall("GET", "/subscribedSkus?$select=skuId,skuPartNumber,consumedUnits")))

    def consumed_units(self) -> dict[str, int]:
        """Licences really assigned now, per SKU part number: what the PSA `bill` phase invoices."""
        return {s["skuPartNumber"]: s["consumedUnits"] for s in self.subscribed_skus()}

    # -- deciding ----------------------------------------------------------
    def ad_owns(self, user: dict) -> bool:
        """A synced user's sign-in and password belong to the tenant's AD provider, when it has one."""
        return bool(user.get("onPremisesSyncEnabled")) and any(
            p.type == "active_directory" for p in self.tenant.providers)

    def plan(self, subject: Subject, termination: Termination) -> list[PlannedAction]:
        user, policy = subject.state["user"], self.tenant.policy
        wanted = []
        if policy.restrict_days_before and any(self.restricted_groups(subject.state["groups"], subject)):
            wanted.append(("restrict_groups", "notice period: leave and join the policy's groups"))
        if not self.ad_owns(user):
            if user.get("accountEnabled") is not False:
                wanted.append(("block_sign_in", "block sign-in"))
            wanted.append(("reset_password", "reset the password to a random one"))
        blocking = self.blocks(user)
        in_block_group = blocking and self.in_block_group(subject.state["groups"])
        enabled = user.get("accountEnabled") is not False
        if blocking and enabled and not in_block_group:
            wanted.append(("add_to_block_group", "add to the Conditional Access block group until sync disables"))
        wanted.append(("revoke_sessions", "revoke refresh tokens and sessions"))
        if subject.state["teams_numbers"]:              # a list of numbers, or why they could not be read
            if policy.teams_numbers == "successor":
                wanted.append(("hand_over_teams_numbers", "hand the Teams Phone numbers to the successor"))
            wanted.append(("unassign_teams_numbers", "unassign the Teams Phone numbers still assigned"))
        if removable_methods(subject.state["methods"]):
            wanted.append(("remove_auth_methods", "remove MFA / authentication methods"))
        if policy.remove_groups and self.group_removals(user, subject.state["groups"], subject)[0]:
            wanted.append(("remove_groups", "remove group memberships"))
        if policy.remove_licenses and (direct_skus(user) or licence_groups(user)):
            wanted.append(("remove_licenses", "remove licences (after the mailbox is shared)"))
        if blocking and (enabled or in_block_group):
            wanted.append(("remove_from_block_group", "leave the block group once Entra reads the account disabled"))
        if policy.delete_after_days and not self.ad_owns(user):
            wanted.append(("delete_user", "delete the user" + (" and purge it" if policy.hard_delete else
                                                              " (restorable for 30 days)")))
        wanted += self.plan_elsewhere(subject, termination)
        order = list(self.actions)
        return [self.planned(name, description) for name, description in sorted(wanted, key=lambda w: order.index(w[0]))]

    def blocks(self, user: dict) -> bool:
        """Does this user get the Conditional Access block while the AD disable syncs?"""
        return self.block_group is not None and self.ad_owns(user)

    def in_block_group(self, groups: list[dict]) -> bool:
        return self.block_group is not None and any(g["id"] == self.block_group["id"] for g in groups)

    def leave(self, group: dict, subject: Subject) -> GraphCall | Cmdlet | str:
        """How the user leaves `group`, or why the cloud cannot do it."""
        if "DynamicMembership" in (group.get("groupTypes") or []):
            return "dynamic membership (change the rule or the user's attributes)"
        if group.get("onPremisesSyncEnabled"):
            return "synced from on-premises AD (remove the member there)"
        if group.get("mailEnabled") and "Unified" not in (group.get("groupTypes") or []):
            return Cmdlet.of("Remove-DistributionGroupMember", anchor=self.upn(subject), Identity=group["mail"],
                             Member=self.upn(subject), BypassSecurityGroupManagerCheck=True, Confirm=False)
        return GraphCall("DELETE", f"/groups/{group['id']}/members/{subject.native_id}/$ref")

    def group_removals(self, user: dict, groups: list[dict], subject: Subject):
        """-> (removable {name: call}, kept {name: reason}); licence groups are left to remove_licenses."""
        removable, kept = {}, {}
        for group in groups:
            name = group.get("displayName") or group["id"]
            how = self.leave(group, subject)
            if group["id"] in licence_groups(user):
                kept[name] = "assigns a licence: left to remove_licenses"
            elif self.blocks(user) and self.in_block_group([group]):
                kept[name] = "the Conditional Access block group: removed by remove_from_block_group"
            elif isinstance(how, str):
                kept[name] = how
            else:
                removable[name] = how
        return removable, kept

    # -- acting ------------------------------------------------------------
    def cloud_owned(self, user: dict, action: str) -> Result | None:
        """needs_human for a synced user whose AD is not connected: the cloud write would be overwritten."""
        if user.get("onPremisesSyncEnabled"):
            return Result("needs_human", reason=f"{action}: {user['userPrincipalName']} is synced from on-premises "
                                                "AD and this tenant has no active_directory provider; do it in AD")
        return None

    def block_sign_in(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        [user] = yield from self.fetch(seen, ctx.subject, "user")
        before, after = {"accountEnabled": user.get("accountEnabled")}, {"accountEnabled": False}
        if before != after and (refused := self.cloud_owned(user, "block sign-in")):
            return refused
        return (yield from self.settle(before, after, ctx,
                                       GraphCall("PATCH", f"/users/{ctx.subject.native_id}", {"accountEnabled": False})))

    def reset_password(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        [user] = yield from self.fetch(seen, ctx.subject, "user")
        if refused := self.cloud_owned(user, "password reset"):
            return refused
        profile = {"forceChangePasswordNextSignIn": True, "password": f"{secrets.token_urlsafe(24)}-Aa1"}
        return (yield from self.since_intent(user, "lastPasswordChangeDateTime", ctx,
                                             GraphCall("PATCH", f"/users/{ctx.subject.native_id}",
                                                       {"passwordProfile": profile})))

    def revoke_sessions(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        [user] = yield from self.fetch(seen, ctx.subject, "user")
        return (yield from self.since_intent(user, "signInSessionsValidFromDateTime", ctx,
                                             GraphCall("POST", f"/users/{ctx.subject.native_id}/revokeSignInSessions")))

    def add_to_block_group(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        [member_of] = yield from self.fetch(seen, ctx.subject, "memberOf")
        before = {"block_group": self.in_block_group(groups_of(member_of))}
        reference = {"@odata.id": f"{self.graph.base}/directoryObjects/{ctx.subject.native_id}"}
        return (yield from self.settle(before, {"block_group": True}, ctx,
                                       GraphCall("POST", f"/groups/{self.block_group['id']}/members/$ref", reference)))

    def remove_from_block_group(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Last in reclaim: the block goes only when Entra itself reads the AD disable (the sync carried it)."""
        user, member_of = yield from self.fetch(seen, ctx.subject, "user", "memberOf")
        before, after = {"block_group": self.in_block_group(groups_of(member_of))}, {"block_group": False}
        if user.get("accountEnabled") is not False and (before != after or ctx.dry_run):
            waiting = ("Entra still reads the account enabled: it stays in the block group until the directory "
                       "sync carries the AD disable")
            if ctx.dry_run:
                return Result("planned", before, after, waiting)
            raise NotYet(waiting, self.where, delay=SYNC_WAIT)
        return (yield from self.settle(before, after, ctx, GraphCall(
            "DELETE", f"/groups/{self.block_group['id']}/members/{ctx.subject.native_id}/$ref"), gone_ok=True))

    def since_intent(self, user: dict, stamp: str, ctx: ActionContext, write: GraphCall) -> Step:
        """A write that leaves only a timestamp: done when the stamp is not older than the first intent."""
        value = user.get(stamp)
        since = ctx.since and ctx.since.replace(microsecond=0)          # Graph keeps whole seconds
        done = since is not None and value and dt.datetime.fromisoformat(value) >= since
        before = {stamp: value}
        return (yield from self.settle(before, before if done else {stamp: now_stamp()}, ctx, write))

    def remove_auth_methods(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        [methods] = yield from self.fetch(seen, ctx.subject, "methods")
        kept = kept_methods(methods)
        before = {"methods": sorted(method_label(m) for m in methods if method_kind(m) != "password")}
        reason = "; ".join(f"kept {label}: {why}" for label, why in sorted(kept.items()))
        result = self.outcome(before, {"methods": sorted(kept)}, ctx.dry_run, reason)
        if result.outcome == "changed":
            refused = yield from self.delete_methods(ctx.subject.native_id, removable_methods(methods))
            labels = sorted(map(method_label, refused))
            refusal = f"Graph refused to delete {', '.join(labels)} while other methods remained"
            if refused and kept:            # what v1.0 cannot delete may be what holds the default in place
                return Result("needs_human", before, {"methods": sorted({*kept, *labels})}, f"{refusal}; {reason}")
            if {"phone (mobile)", "phone (alternateMobile)"} <= set(labels):
                return Result("needs_human", before, {"methods": labels}, f"{refusal}: the alternateMobile phone is "
                              "the default and the mobile cannot go before it; change the default in the Entra "
                              "admin center")
            if refused:
                raise RetryableError(f"{refusal}: the next pass tries again", self.where, delay=60)
        return result

    def delete_methods(self, user_id: str, methods: list[dict]) -> Generator[list[GraphCall], list, list[dict]]:
        """DELETE in rounds: the mobile phone (the likeliest default, and refused while an alternateMobile exists)
        after the others; a method refused as the default again with what is left. A batch runs in any order, so
        nothing else is assumed. -> what the service still refused when one round with everything made no progress."""
        left, hold_mobile = methods, True
        while left:
            rest = [m for m in left if not is_mobile(m)]
            ready = rest if hold_mobile and rest else left
            answers = yield [GraphCall("DELETE", f"/users/{user_id}/authentication/{DELETABLE[method_kind(m)]}/{m['id']}")
                             for m in ready]
            for answer in answers:
                if isinstance(answer, OffboardError) and not isinstance(answer, http.NotFound) \
                        and not order_refusal(answer):
                    raise answer
            refused = [m for m, answer in zip(ready, answers) if order_refusal(answer)]
            if refused and ready is left and len(refused) == len(left):
                return left
            hold_mobile = hold_mobile and not refused       # what was refused may be waiting for the mobile itself
            left = [m for m in left if m not in ready or m in refused]
        return []

    def remove_groups(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        user, member_of = yield from self.fetch(seen, ctx.subject, "user", "memberOf")
        removable, kept = self.group_removals(user, groups_of(member_of), ctx.subject)
        reason = "; ".join(f"kept {name}: {why}" for name, why in sorted(kept.items()))
        return (yield from self.settle({"groups": sorted(removable)}, {"groups": []}, ctx, *removable.values(),
                                       reason=reason, gone_ok=True))

    def remove_licenses(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        user, member_of = yield from self.fetch(seen, ctx.subject, "user", "memberOf")
        skus = direct_skus(user)
        groups = [g for g in groups_of(member_of) if g["id"] in licence_groups(user)]
        ways = {g.get("displayName") or g["id"]: self.leave(g, ctx.subject) for g in groups}
        kept = {name: how for name, how in ways.items() if isinstance(how, str)}
        before = {"skus": sorted(self.sku_names.get(s, s) for s in skus), "groups": sorted(ways)}
        after = {"skus": [], "groups": sorted(kept)}
        if before == after:
            return self.outcome(before, after, ctx.dry_run)
        mailbox, statistics = yield from self.fetch(seen, ctx.subject, "mailbox", "statistics")
        if mailbox:
            holds = licence_holds(mailbox, statistics)
            if holds:
                return Result("needs_human", before, before,
                              f"mailbox {'; '.join(holds)}: the licence stays until a person decides")
            kind = mailbox.get("RecipientTypeDetails")
            if self.tenant.policy.mailbox == "keep" and kind != SHARED:
                return Result("needs_human", before, before, f"policy mailbox = keep and the mailbox is {kind}: "
                              "its licence stays (without one the mailbox is deleted after 30 days)")
            if self.tenant.policy.mailbox == "shared" and kind != SHARED:
                waiting = f"mailbox is {kind}, not yet {SHARED}: licences stay until the conversion reads back"
                if ctx.dry_run:
                    return Result("planned", before, after, waiting)
                raise NotYet(waiting, self.where, delay=conversion_wait(ctx.since, dt.datetime.now(dt.timezone.utc)))
        writes = [how for how in ways.values() if not isinstance(how, str)]
        if skus:
            writes.append(GraphCall("POST", f"/users/{ctx.subject.native_id}/assignLicense",
                                    {"addLicenses": [], "removeLicenses": skus}))
        result = yield from self.settle(before, after, ctx, *writes, gone_ok=True)
        if kept and not ctx.dry_run:
            reasons = "; ".join(f"{name}: {why}" for name, why in sorted(kept.items()))
            return Result("needs_human", before, after, f"licence groups the cloud cannot leave: {reasons}")
        return result

    def hand_over_teams_numbers(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        [answer] = yield from self.fetch(seen, ctx.subject, "teamsNumbers")
        numbers = teams_phone.assigned(answer, self.where)
        if not numbers:
            return self.outcome({"numbers": []}, {"numbers": []}, ctx.dry_run)
        address = ctx.termination.successor
        if not address:
            return Result("needs_human", reason="no successor for the Teams Phone numbers: the directories name no "
                                                "manager and the policy no successor")
        [successor] = yield [GraphCall("GET", f"/users/{quote(address)}?$select=id,accountEnabled")]
        if isinstance(successor, http.NotFound) or (isinstance(successor, dict) and not successor.get("accountEnabled")):
            return Result("needs_human", reason=f"successor {address} is not an enabled user in Entra")
        if isinstance(successor, OffboardError):
            raise successor
        return (yield from self.reassign(numbers, successor["id"], ctx))

    def unassign_teams_numbers(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        [answer] = yield from self.fetch(seen, ctx.subject, "teamsNumbers")
        return (yield from self.reassign(teams_phone.assigned(answer, self.where), None, ctx))

    def restore_teams_numbers(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Undo of both: each number journaled as the leaver's goes back to the leaver."""
        wanted = dict(action.params)["before"]["numbers"]
        answers = yield [teams_phone.read(n["telephoneNumber"]) for n in wanted]
        current = [teams_phone.state(n, teams_phone.assigned(a, self.where)) for n, a in zip(wanted, answers)]
        result = self.outcome({"numbers": current}, {"numbers": wanted}, ctx.dry_run)
        if result.outcome == "changed":
            for now, then in zip(current, wanted):
                if now != then:
                    yield from teams_phone.move(now, then["assignmentTargetId"], self.graph.base, self.where)
        return result

    def reassign(self, numbers: list[dict], target: str | None, ctx: ActionContext) -> Step:
        """Every number to `target` (a user id; None: unassigned), as one result the journal can undo."""
        before = [teams_phone.state(n, [n]) for n in numbers]
        result = self.outcome({"numbers": before}, {"numbers": [{**n, "assignmentTargetId": target} for n in before]},
                              ctx.dry_run)
        if result.outcome == "changed":
            for number in before:
                yield from teams_phone.move(number, target, self.graph.base, self.where)
        return result

    # -- what else the leaver reaches: groups they own, OneDrive, consents, devices ----------------------
    def plan_elsewhere(self, subject: Subject, termination: Termination) -> list[tuple[str, str]]:
        state, policy, wanted = subject.state, self.tenant.policy, []
        if state.get("grants"):
            wanted.append(("remove_consents", "remove the leaver's delegated consents to apps"))
        if "owned" in state:
            if policy.hand_over_groups != "none" and self.successor_missing(state["owned"], subject, termination):
                wanted.append(("hand_over_groups", "make the successor an owner of the groups and Teams the leaver "
                                                   f"owns ({policy.hand_over_groups})"))
            if policy.remove_groups and any(ownership_flaw(g) == "" for g, _ in state["owned"]):
                wanted.append(("remove_group_ownerships", "remove the leaver as owner where another owner stays"))
        if state.get("drive") and policy.onedrive_access != "none" and self.onedrive_lacks(state, termination):
            wanted.append(("share_onedrive", f"invite {policy.onedrive_access} to edit the leaver's OneDrive"))
        if state.get("links"):
            wanted.append(("remove_sharing_links", "turn off the sharing links on the leaver's OneDrive"))
        if policy.devices != "none" and device_verbs(state.get("managedDevices") or [], policy.devices)[0]:
            wanted.append(("retire_devices", "retire personal devices" + (
                " and wipe corporate-owned ones" if policy.devices == "wipe" else " and corporate-owned ones")))
        return wanted

    def onedrive_lacks(self, state: dict, termination: Termination) -> bool:
        """Does the OneDrive recipient still lack write access (True without a successor: a person acts)?"""
        try:
            target = recipient(self.tenant.policy.onedrive_access, termination, "OneDrive access", self.where)
        except NeedsHuman:
            return True
        return "write" not in drive_roles(state.get("drivePermissions") or [], target)

    def ownerships(self, seen: dict, subject: Subject) -> Generator[list, list, list[tuple[dict, list[dict]]]]:
        """The groups the leaver owns, each with its user owners (one read round for every group)."""
        [owned] = yield from self.fetch(seen, subject, "owned")
        groups = [g for g in owned or [] if g.get("@odata.type", "#microsoft.graph.group") == "#microsoft.graph.group"]
        missing = [g for g in groups if f"owners:{g['id']}" not in seen]
        if missing:
            answers = yield [GraphCall("GET", f"/groups/{g['id']}/owners?$select={OWNER_FIELDS}") for g in missing]
            seen.update((f"owners:{g['id']}", answer) for g, answer in zip(missing, answers))
        out = []
        for group in groups:
            answer = seen[f"owners:{group['id']}"]
            if isinstance(answer, OffboardError):
                raise answer
            out.append((group, [o for o in answer.get("value", []) if o.get("@odata.type") == "#microsoft.graph.user"]))
        return out

    def anchors(self, subject: Subject, termination: Termination) -> list[str]:
        """Retain waits while the user is a group's only owner: deleted, it would leave the group with nobody
        to run it (a hand-over, or a person adding an owner, lifts this)."""
        alone = [g.get("displayName") or g["id"] for g, owners in subject.state.get("owned") or []
                 if not [o for o in owners if o["id"] != subject.native_id]]
        return [f"the only owner of group(s) {', '.join(alone)}"] if alone else []

    def handover_groups(self, owned: list[tuple[dict, list[dict]]], subject: Subject) -> list[tuple[dict, list[dict]]]:
        """The owned groups the successor should co-own under policy.hand_over_groups."""
        sole = self.tenant.policy.hand_over_groups == "sole"
        return [(g, owners) for g, owners in owned if not ownership_flaw(g)
                and (not sole or not [o for o in owners if o["id"] != subject.native_id])]

    def successor_missing(self, owned: list, subject: Subject, termination: Termination) -> bool:
        """Is there a group to hand over that the successor does not own yet (True without a successor: a person acts)?"""
        return any(not termination.successor or termination.successor not in owner_addresses(owners)
                   for _, owners in self.handover_groups(owned, subject))

    def hand_over_groups(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Preserve: the successor becomes an owner before reclaim takes the leaver out (no group ends ownerless)."""
        owned = yield from self.ownerships(seen, ctx.subject)
        successor = recipient("manager", ctx.termination, "hand over the groups the leaver owns", self.where)
        groups = self.handover_groups(owned, ctx.subject)
        names = {g["id"]: g.get("displayName") or g["id"] for g, _ in groups}
        before = {"successor": successor, "names": names,
                  "successor_owns": {g["id"]: successor in owner_addresses(owners) for g, owners in groups}}
        after = {**before, "successor_owns": dict.fromkeys(names, True)}
        kept = "; ".join(f"kept {g.get('displayName') or g['id']}: {flaw}" for g, _ in owned
                         if (flaw := ownership_flaw(g)))
        if before == after or ctx.dry_run:
            return self.outcome(before, after, ctx.dry_run, kept)
        reference = {"@odata.id": f"{self.graph.base}/directoryObjects/{(yield from self.user_id(successor))}"}
        yield from self.send(*[GraphCall("POST", f"/groups/{gid}/owners/$ref", reference)
                               for gid, owns in before["successor_owns"].items() if not owns])
        return self.outcome(before, after, ctx.dry_run, kept)

    def remove_added_owners(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Undo of hand_over_groups: the successor stops owning what the hand-over gave them, where another owner
        stays (restore_group_ownerships runs first and makes the leaver an owner again)."""
        owned = yield from self.ownerships(seen, ctx.subject)
        original = action_params(action)["before"]
        successor, added = original["successor"], {g for g, owns in original["successor_owns"].items() if not owns}
        owns = {g["id"]: owners for g, owners in owned if g["id"] in added and successor in owner_addresses(owners)}
        removable = [gid for gid, owners in owns.items() if owner_addresses(owners) - {successor}]
        before = {"successor": successor, "owner_of": sorted(original["names"].get(g, g) for g in owns)}
        after = {**before, "owner_of": sorted(original["names"].get(g, g) for g in owns if g not in removable)}
        if before == after or ctx.dry_run:
            return self.outcome(before, after, ctx.dry_run)
        successor_id = yield from self.user_id(successor)
        yield from self.send(*[GraphCall("DELETE", f"/groups/{gid}/owners/{successor_id}/$ref") for gid in removable],
                             gone_ok=True)
        return self.outcome(before, after, ctx.dry_run)

    def user_id(self, address: str) -> Generator[list, list, str]:
        [found] = yield [GraphCall("GET", f"/users/{quote(address)}?$select=id,userPrincipalName")]
        if isinstance(found, http.NotFound):
            raise PermanentError(f"{address} has no account in this tenant", self.where)
        if isinstance(found, OffboardError):
            raise found
        return found["id"]

    def remove_group_ownerships(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Reclaim: leave every owned group another user still owns; a sole ownership stays and a person decides."""
        owned = yield from self.ownerships(seen, ctx.subject)
        editable = [(g, owners) for g, owners in owned if not ownership_flaw(g)]
        sole = {g["id"]: g.get("displayName") or g["id"] for g, owners in editable
                if not [o for o in owners if o["id"] != ctx.subject.native_id]}
        before = {"owner_of": {g["id"]: g.get("displayName") or g["id"] for g, _ in editable}}
        after = {"owner_of": sole}
        result = yield from self.settle(before, after, ctx, *[
            GraphCall("DELETE", f"/groups/{g['id']}/owners/{ctx.subject.native_id}/$ref")
            for g, _ in editable if g["id"] not in sole], gone_ok=True)
        if sole:
            return Result("needs_human", before, after, f"the only owner of {', '.join(sorted(sole.values()))}: "
                          "name another owner (policy.hand_over_groups hands them to the successor), then run again")
        return result

    def restore_group_ownerships(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Undo of remove_group_ownerships: the leaver owns again every group it owned before."""
        owned = yield from self.ownerships(seen, ctx.subject)
        wanted = dict(action_params(action)["before"].get("owner_of") or {})
        now = {g["id"]: g.get("displayName") or g["id"] for g, _ in owned if g["id"] in wanted}
        reference = {"@odata.id": f"{self.graph.base}/directoryObjects/{ctx.subject.native_id}"}
        return (yield from self.settle({"owner_of": now}, {"owner_of": wanted}, ctx, *[
            GraphCall("POST", f"/groups/{gid}/owners/$ref", reference) for gid in wanted if gid not in now]))

    def share_onedrive(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Preserve: the successor (or the address policy names) may edit the leaver's OneDrive; the link is kept."""
        drive, permissions = yield from self.fetch(seen, ctx.subject, "drive", "drivePermissions")
        if drive is None:
            return Result("skipped", reason="the leaver has no OneDrive")
        target = recipient(self.tenant.policy.onedrive_access, ctx.termination, "OneDrive access", self.where)
        roles = drive_roles(permissions or [], target)
        before = {"recipient": target, "roles": roles, "link": drive.get("webUrl")}
        after = {**before, "roles": sorted({*roles, "write"})}
        return (yield from self.settle(before, after, ctx, GraphCall(
            "POST", f"/users/{ctx.subject.native_id}/drive/root/invite",
            {"recipients": [{"email": target}], "roles": ["write"], "requireSignIn": True, "sendInvitation": False})))

    def unshare_onedrive(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Undo of share_onedrive: take away the access it granted (access held before stays)."""
        drive, permissions = yield from self.fetch(seen, ctx.subject, "drive", "drivePermissions")
        original = action_params(action)["before"]
        if drive is None:
            return Result("skipped", reason="the leaver has no OneDrive any more")
        target = original["recipient"]
        before = {"recipient": target, "roles": drive_roles(permissions or [], target), "link": drive.get("webUrl")}
        if original.get("roles"):
            return self.outcome(before, before, ctx.dry_run, "the recipient had access before the hand-over: kept")
        return (yield from self.settle(before, {**before, "roles": []}, ctx, *[
            GraphCall("DELETE", f"/users/{ctx.subject.native_id}/drive/root/permissions/{p['id']}")
            for p in permissions or [] if permission_email(p) == target and "owner" not in p.get("roles", [])],
            gone_ok=True))

    def sharing_links(self, subject: Subject, root_id: str) -> Generator[list, list, list[tuple[str, str, dict]]]:
        """[(item id, item name, permission)]: every sharing link (not inherited) on the OneDrive, read folder by
        folder (one round per level); only items Graph marks `shared` have their permissions read."""
        items = f"/users/{subject.native_id}/drive/items"
        folders, shared, count = [root_id], [(root_id, "(root)")], 0
        while folders:
            answers = yield [GraphCall("GET", f"{items}/{f}/children?$select=id,name,folder,shared") for f in folders]
            folders = []
            for answer in answers:
                if isinstance(answer, OffboardError):
                    raise answer
                for item in answer.get("value", []):
                    count += 1
                    if count > DRIVE_ITEMS:
                        raise NeedsHuman(f"the OneDrive holds more than {DRIVE_ITEMS} items: turn its sharing links "
                                         "off in the SharePoint admin center", self.where)
                    folders += [item["id"]] * bool(item.get("folder"))
                    shared += [(item["id"], item.get("name") or item["id"])] * bool(item.get("shared"))
        answers = yield [GraphCall("GET", f"{items}/{item_id}/permissions") for item_id, _ in shared]
        out = []
        for (item_id, name), answer in zip(shared, answers):
            if isinstance(answer, OffboardError):
                raise answer
            out += [(item_id, name, p) for p in answer.get("value", []) if p.get("link") and not p.get("inheritedFrom")]
        return out

    def remove_sharing_links(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Preserve: links the leaver gave out stop working (a deleted link cannot be made again: no undo)."""
        [drive] = yield from self.fetch(seen, ctx.subject, "drive")
        if drive is None:
            return Result("skipped", reason="the leaver has no OneDrive")
        links = yield from self.sharing_links(ctx.subject, drive["id"])
        return (yield from self.settle({"links": sorted(link_label(name, p) for _, name, p in links)}, {"links": []}, ctx, *[
            GraphCall("DELETE", f"/users/{ctx.subject.native_id}/drive/items/{item_id}/permissions/{p['id']}")
            for item_id, _, p in links], gone_ok=True))

    def remove_consents(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Revoke: apps the leaver consented to keep their refresh tokens' scopes until the grant goes."""
        [grants] = yield from self.fetch(seen, ctx.subject, "grants")
        mine = [g for g in grants or [] if g.get("principalId") == ctx.subject.native_id]
        return (yield from self.settle({"grants": consents(mine)}, {"grants": []}, ctx, *[
            GraphCall("DELETE", f"/oauth2PermissionGrants/{g['id']}") for g in mine], gone_ok=True))

    def restore_consents(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Undo of remove_consents: the same apps, the same scopes, for the same person."""
        [grants] = yield from self.fetch(seen, ctx.subject, "grants")
        now = consents([g for g in grants or [] if g.get("principalId") == ctx.subject.native_id])
        wanted = action_params(action)["before"].get("grants") or []
        missing = [g for g in wanted if g not in now]
        return (yield from self.settle({"grants": now}, {"grants": sorted(now + missing, key=consent_key)}, ctx, *[
            GraphCall("POST", "/oauth2PermissionGrants", {"clientId": g["clientId"], "consentType": "Principal",
                                                          "principalId": ctx.subject.native_id,
                                                          "resourceId": g["resourceId"], "scope": g["scope"]})
            for g in missing]))

    def retire_devices(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Reclaim, after the hand-over: Intune retires (company data off) or wipes (factory reset) each device."""
        [devices] = yield from self.fetch(seen, ctx.subject, "managedDevices")
        verbs, busy = device_verbs(devices or [], self.tenant.policy.devices)
        before = {"devices": {d["id"]: f"{d.get('deviceName')}: {d.get('managementState')}" for d in devices or []
                              if d["id"] in verbs}}
        after = {"devices": {d["id"]: f"{d.get('deviceName')}: {verbs[d['id']]}Pending" for d in devices or []
                             if d["id"] in verbs}}
        reason = "; ".join(f"left {name}: {state}, another action runs on it" for name, state in busy)
        return (yield from self.settle(before, after, ctx, *[
            GraphCall("POST", f"/deviceManagement/managedDevices/{device_id}/{verb}",
                      {"keepEnrollmentData": False, "keepUserData": False} if verb == "wipe" else None)
            for device_id, verb in verbs.items()], reason=reason))



    # -- the notice period and retention -------------------------------------
    def join(self, group: dict, subject: Subject) -> GraphCall | Cmdlet | str:
        """How the user joins `group`, or why the cloud cannot do it (the mirror of `leave`)."""
        how = self.leave(group, subject)
        if isinstance(how, str):
            return how.replace("remove the member", "add the member")
        if isinstance(how, Cmdlet):
            return Cmdlet.of("Add-DistributionGroupMember", anchor=self.upn(subject), Identity=group["mail"],
                             Member=self.upn(subject), BypassSecurityGroupManagerCheck=True)
        return GraphCall("POST", f"/groups/{group['id']}/members/$ref",
                         {"@odata.id": f"{self.graph.base}/directoryObjects/{subject.native_id}"})

    def restricted_groups(self, groups: list[dict], subject: Subject):
        """-> (the memberships the notice period ends {name: call}, the groups it joins {name: call},
        what it cannot change {name: why})."""
        policy, member = self.tenant.policy, {g["id"] for g in groups}
        leave, join, kept = {}, {}, {}
        for group in groups:
            name = group.get("displayName") or group["id"]
            if policy.restricts_group(name, group["id"]):
                how = self.leave(group, subject)
                (kept if isinstance(how, str) else leave)[name] = how
        for group in self.restrict_add or []:
            if group["id"] not in member:
                how = self.join(group, subject)
                (kept if isinstance(how, str) else join)[group.get("displayName") or group["id"]] = how
        return leave, join, kept

    def restrict_groups(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        [member_of] = yield from self.fetch(seen, ctx.subject, "memberOf")
        groups = groups_of(member_of)
        leave, join, kept = self.restricted_groups(groups, ctx.subject)
        names = {g.get("displayName") or g["id"] for g in groups}
        reason = "; ".join(f"kept {name}: {why}" for name, why in sorted(kept.items()))
        return (yield from self.settle({"groups": sorted(names)}, {"groups": sorted(names - set(leave) | set(join))},
                                       ctx, *leave.values(), *join.values(), reason=reason, gone_ok=True))

    def delete_user(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Soft delete (30 days in directory/deletedItems); purged there too only with policy.hard_delete."""
        [user] = yield from self.fetch(seen, ctx.subject, "user")
        if refused := self.cloud_owned(user, "delete the user"):
            return refused
        user_id, purge = ctx.subject.native_id, self.tenant.policy.hard_delete
        result = yield from self.settle({"deleted": False, "userPrincipalName": user["userPrincipalName"]},
                                        {"deleted": True, "purged": purge}, ctx, GraphCall("DELETE", f"/users/{user_id}"))
        if result.outcome == "changed" and purge:
            yield from self.send(GraphCall("DELETE", f"/directory/deletedItems/{user_id}"), gone_ok=True)
        return result

    # -- restore ---------------------------------------------------------------
    def undelete_user(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """First of all: a soft-deleted user back from directory/deletedItems (a purged one is a person's job)."""
        user_id = ctx.subject.native_id
        [answer] = yield [GraphCall("GET", f"/users/{user_id}?$select=id")]
        if not isinstance(answer, http.NotFound):
            if isinstance(answer, OffboardError):
                raise answer
            return Result("unchanged", {"deleted": False}, {"deleted": False})
        if ctx.dry_run:
            return Result("planned", {"deleted": True}, {"deleted": False})
        [answer] = yield [GraphCall("POST", f"/directory/deletedItems/{user_id}/restore")]
        if isinstance(answer, http.NotFound):
            raise NeedsHuman(f"user {user_id} is no longer in deleted items (purged, or deleted more than 30 days "
                             "ago): create the account again by hand", self.where)
        if isinstance(answer, OffboardError):
            raise answer
        return Result("changed", {"deleted": True}, {"deleted": False})

    def rejoin(self, names: list[str], groups: list[dict], subject: Subject):
        """The calls that put the user back into the groups `names` it is not in now, and the names that cannot
        be (no such group, several, or one the cloud cannot edit) with why."""
        have = {g.get("displayName") or g["id"] for g in groups}
        missing = [n for n in names if n not in have]
        if not missing:
            return [], {}
        answers = yield [GraphCall("GET", f"/groups?$filter={quote(f'displayName eq {odata_literal(n)}')}"
                                          f"&$select={GROUP_FIELDS}") for n in missing]
        calls, unresolved = [], {}
        for name, answer in zip(missing, answers):
            if isinstance(answer, OffboardError):
                raise answer
            found = answer.get("value", [])
            how = self.join(found[0], subject) if len(found) == 1 else f"{len(found) or 'no'} groups have this name"
            if isinstance(how, str):
                unresolved[name] = how
            else:
                calls.append(how)
        return calls, unresolved

    def restore_groups(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """The journaled groups back; the groups the notice period joined (and the user was not in) left.
        Those are the notice period's own undo's: the undo of a later removal leaves them out."""
        original, before = self.undone(action)
        [member_of] = yield from self.fetch(seen, ctx.subject, "memberOf")
        added = {g["id"] for g in self.restrict_add or []}
        added_names = {g.get("displayName") for g in self.restrict_add or []}
        groups = groups_of(member_of)
        wanted = [n for n in before["groups"] if original == "restrict_groups" or n not in added_names]
        calls, unresolved = yield from self.rejoin(wanted, groups, ctx.subject)
        joined = {g.get("displayName") or g["id"]: self.leave(g, ctx.subject) for g in groups
                  if g["id"] in added and (g.get("displayName") or g["id"]) not in wanted}
        calls += [how for how in joined.values() if not isinstance(how, str)]
        names = {g.get("displayName") or g["id"] for g in groups}
        result = yield from self.settle({"groups": sorted(names)},
                                        {"groups": sorted(names - set(joined) | set(wanted) - set(unresolved))},
                                        ctx, *calls, gone_ok=True)
        if unresolved:
            return Result("needs_human", result.before, result.after, "groups not put back: " + "; ".join(
                f"{name}: {why}" for name, why in sorted(unresolved.items())))
        return result

    def restore_licenses(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """The journaled SKUs back where the tenant has a free unit (else a person buys or frees one), the
        licence groups rejoined."""
        _, before = self.undone(action)
        user, member_of = yield from self.fetch(seen, ctx.subject, "user", "memberOf")
        [skus] = yield [GraphCall("GET", "/subscribedSkus?$select=skuId,skuPartNumber,consumedUnits,prepaidUnits")]
        if isinstance(skus, OffboardError):
            raise skus
        by_part = {s["skuPartNumber"]: s for s in skus.get("value", [])}
        have = {self.sku_names.get(s, s) for s in direct_skus(user)}
        missing = [p for p in before["skus"] if p not in have]
        free = {p: (by_part[p].get("prepaidUnits") or {}).get("enabled", 0) - by_part[p].get("consumedUnits", 0)
                for p in missing if p in by_part}
        short = sorted(p for p in missing if free.get(p, 0) < 1)
        adding = [by_part[p]["skuId"] for p in missing if p not in short]
        calls, unresolved = yield from self.rejoin(before["groups"], groups_of(member_of), ctx.subject)
        if adding:
            calls.append(GraphCall("POST", f"/users/{ctx.subject.native_id}/assignLicense",
                                   {"addLicenses": [{"skuId": s, "disabledPlans": []} for s in adding],
                                    "removeLicenses": []}))
        current = {g.get("displayName") or g["id"] for g in groups_of(member_of)}
        was = {"skus": sorted(have & set(before["skus"])), "groups": sorted(current & set(before["groups"]))}
        result = yield from self.settle(was, {"skus": sorted(set(before["skus"]) - set(short)),
                                              "groups": sorted(set(before["groups"]) - set(unresolved))}, ctx, *calls)
        problems = [f"no free unit of {p}: buy or free one, then run restore again" for p in short]
        problems += [f"licence group {name} not rejoined: {why}" for name, why in sorted(unresolved.items())]
        if problems:
            return Result("needs_human", result.before, result.after, "; ".join(problems))
        return result

    def leave_block_group(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        [member_of] = yield from self.fetch(seen, ctx.subject, "memberOf")
        if self.block_group is None:
            return Result("needs_human", reason="policy.block_group is no longer set: take the user out of the "
                                                "Conditional Access block group by hand")
        return (yield from self.settle({"block_group": self.in_block_group(groups_of(member_of))}, {"block_group": False},
                                       ctx, GraphCall("DELETE", f"/groups/{self.block_group['id']}/members/"
                                                                f"{ctx.subject.native_id}/$ref"), gone_ok=True))

    def unblock_sign_in(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        _, before = self.undone(action)
        [user] = yield from self.fetch(seen, ctx.subject, "user")
        now = {"accountEnabled": user.get("accountEnabled")}
        wanted = {"accountEnabled": True} if before.get("accountEnabled") is not False else now
        if now != wanted and (refused := self.cloud_owned(user, "unblock sign-in")):
            return refused
        return (yield from self.settle(now, wanted, ctx,
                                       GraphCall("PATCH", f"/users/{ctx.subject.native_id}", {"accountEnabled": True})))

    def issue_temporary_access(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        """Passwords never come back: a Temporary Access Pass (8 hours), shown to the operator once, never journaled.
        One issued since this restore began counts as done."""
        [methods] = yield from self.fetch(seen, ctx.subject, "methods")
        since = ctx.since and ctx.since.replace(microsecond=0)
        issued = [m for m in methods if method_kind(m) == "temporaryAccessPass" and since and m.get("createdDateTime")
                  and dt.datetime.fromisoformat(m["createdDateTime"]) >= since]
        before, after = {"temporaryAccessPass": bool(issued)}, {"temporaryAccessPass": True}
        if issued or ctx.dry_run:
            return self.outcome(before, after, ctx.dry_run, "" if issued else "a Temporary Access Pass is shown once")
        [answer] = yield from self.send(GraphCall("POST", f"/users/{ctx.subject.native_id}/authentication/"
                                                          "temporaryAccessPassMethods",
                                                  {"lifetimeInMinutes": 480, "isUsableOnce": False}))
        remember_secret(answer["temporaryAccessPass"])      # masked wherever it might surface
        ctx.show_once(f"{self.upn(ctx.subject) or ctx.subject.native_id}: Temporary Access Pass "
                      f"{answer['temporaryAccessPass']} (valid for 8 hours)")
        return Result("changed", before, after, "a Temporary Access Pass was shown to the operator once")


OWNER_FIELDS = "id,userPrincipalName,mail"
DRIVE_ITEMS = 20000             # a OneDrive walked for sharing links; beyond this a person does it
PENDING = ("retirePending", "wipePending", "retireIssued", "wipeIssued", "deletePending")


def link_label(item_name: str, permission: dict) -> str:
    link = permission.get("link") or {}
    return f"{item_name}: {link.get('scope')} {link.get('type')} link"


def ownership_flaw(group: dict) -> str:
    """Why the cloud cannot change this group's owners, or ""."""
    if group.get("onPremisesSyncEnabled"):
        return "synced from on-premises AD (change its owner there)"
    if group.get("mailEnabled") and "Unified" not in (group.get("groupTypes") or []):
        return "a mail-enabled security group or distribution list (its owners are ManagedBy in Exchange)"
    return ""


def owner_addresses(owners: list[dict]) -> set[str]:
    return {(o.get(k) or "").lower() for o in owners for k in ("userPrincipalName", "mail")} - {""}


def action_params(action: PlannedAction) -> dict:
    return dict(action.params)


def permission_email(permission: dict) -> str:
    granted = permission.get("grantedToV2") or permission.get("grantedTo") or {}
    return str((granted.get("user") or {}).get("email") or "").lower()


def drive_roles(permissions: list[dict], address: str) -> list[str]:
    return sorted({r for p in permissions if permission_email(p) == address for r in p.get("roles") or []})


def consent_key(grant: dict) -> tuple:
    return grant["clientId"], grant["resourceId"]


def consents(grants: list[dict]) -> list[dict]:
    """A person's delegated grants as the journal keeps them: enough to create each again."""
    return sorted(({"clientId": g.get("clientId"), "resourceId": g.get("resourceId"), "scope": g.get("scope") or ""}
                   for g in grants), key=consent_key)


def device_verbs(devices: list[dict], policy: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """-> ({device id: retire | wipe} still to send, [(name, state)] left because Intune is busy with them).
    "wipe" wipes only corporate-owned devices; a personal or unknown one is retired (Intune refuses to wipe it)."""
    verbs, busy = {}, []
    for device in devices:
        verb = "wipe" if policy == "wipe" and device.get("managedDeviceOwnerType") == "company" else "retire"
        state = device.get("managementState")
        if state not in PENDING:
            verbs[device["id"]] = verb
        elif not state.startswith(verb):
            busy.append((device.get("deviceName") or device["id"], state))
    return verbs, busy
