"""One SCIM 2.0 app: deactivate the leaver, take them out of its groups, delete them after retention.

The app's /ServiceProviderConfig says what it can do, and the provider adapts: PATCH where
supported, else PUT of the whole resource as it was read (the app's own attributes kept);
`If-Match` with the version read where ETags are supported, so a concurrent change is never
overwritten: a 409 or 412 re-reads and plans the write again. Matching uses a filter with the
value quoted and escaped as RFC 7644 requires, and every user or group the app answers is
checked again here, so an app that ignores the filter cannot hand us someone else.
`delete = "never"` keeps a deactivated user for good, for apps that keep a user's history
only while the user exists; "after_retention" frees what the app bills for inactive users.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import logging
from typing import Any, Callable, ClassVar, Literal

from pydantic import Field
from scim2_models import Group, PatchOp, PatchOperation, ScimFilter, SearchRequest, ServiceProviderConfig

from ... import http
from ...config import HttpsUrl, PluginOptions, SecretRef
from ...errors import NotYet, PermanentError, RetryableError
from ...model import ActionContext, Match, PlannedAction, Result, Subject, Termination
from ..base import Provider
from .client import ScimClient, UserModel

log = logging.getLogger(__name__)

CONFLICT_TRIES = 3        # writes refused as stale (409/412) before the engine takes over, at the next pass
MAX_PAGES = 50
#: match_attribute -> the attribute the termination's address is compared with
ADDRESS_ATTRIBUTE = {"userName": "userName", "emails": "emails.value", "externalId": "userName"}


class ScimOptions(PluginOptions):
    base_url: HttpsUrl                         # the SCIM root, e.g. https://api.app.example/scim/v2
    token: SecretRef                           # sent as a Bearer token
    delete: Literal["after_retention", "never"]   # say per app why, in the config
    app_name: str = ""                         # how reports and errors name the app (default: the block's name)
    match_attribute: Literal["userName", "emails", "externalId"] = "userName"   # externalId: the employee id
    page_size: int = Field(100, ge=1, le=1000)


def supported(capability: Any) -> bool:
    return bool(capability is not None and capability.supported)


def carries(user: UserModel, attribute: str, value: str) -> bool:
    """Does this user really have `value` (an app may ignore the filter); userName and emails ignore case."""
    if attribute == "externalId":
        return user.external_id == value
    if attribute == "userName":
        return (user.user_name or "").casefold() == value.casefold()
    return any((e.value or "").casefold() == value.casefold() for e in user.emails or [])


def is_member(group: Group, user_id: str) -> bool:
    return any(m.value == user_id for m in group.members or [])


def membership(group: Group, member: bool) -> dict[str, Any]:
    return {"id": group.id, "displayName": group.display_name or "", "member": member}


class ScimProvider(Provider):
    type = "scim"
    options_model = ScimOptions
    actions: ClassVar[dict[str, str]] = {
        "restrict_leave_groups": "restrict", "restrict_join_groups": "restrict",
        "deactivate_user": "revoke", "remove_groups": "reclaim", "delete_user": "retain",
        "activate_user": "restore", "restore_groups": "restore"}
    undo: ClassVar[dict[str, str]] = {
        "deactivate_user": "activate_user", "remove_groups": "restore_groups",
        "restrict_leave_groups": "restore_groups", "restrict_join_groups": "restore_groups"}

    def __init__(self, name, options, tenant, where=""):
        super().__init__(name, options, tenant, where)
        self._scim: ScimClient | None = None
        self._config: ServiceProviderConfig | None = None

    @property
    def app(self) -> str:
        return self.options.app_name or self.name

    @property
    def scim(self) -> ScimClient:
        """Built on first use: `check` offline never resolves the token."""
        if self._scim is None:
            self._scim = ScimClient(self.options.base_url, self.options.token.reveal(), self.app, self.where)
        return self._scim

    def close(self) -> None:
        if self._scim is not None:
            self._scim.close()

    # -- reading -----------------------------------------------------------
    def capabilities(self) -> ServiceProviderConfig:
        """/ServiceProviderConfig, read once per pass: what the app supports decides how we write."""
        if self._config is None:
            with self.scim.checked():
                config = self.scim.query(ServiceProviderConfig)
            if not supported(config.filter):
                raise PermanentError(f"{self.app} does not support SCIM filters: its users cannot be matched",
                                     self.where)
            self.scim.provider = ScimClient.describing(config)
            self._config = config
        return self._config

    def check_online(self) -> None:
        """/ServiceProviderConfig needs no credential (RFC 7644 4), so one read of /Users proves the token."""
        config = self.capabilities()
        with self.scim.checked():
            self.scim.query(UserModel, query_parameters=SearchRequest(count=1))
        log.info("%s: %s supports %s", self.where, self.app, ", ".join(
            f"{name} {'yes' if supported(getattr(config, name)) else 'no'}" for name in ("patch", "filter", "etag", "bulk")))

    def prepare(self, terminations: list[Termination]) -> None:
        self.capabilities()

    def _search(self, model, attribute: str, value: str, verify: Callable[[Any], bool]) -> list:
        """Every resource the filter `attribute eq value` finds that really matches, page by page."""
        found, start = [], 1
        query = f"{attribute} eq {ScimFilter.quote(value)}"
        for _ in range(MAX_PAGES):
            with self.scim.checked():
                page = self.scim.query(model, query_parameters=SearchRequest(
                    filter=query, start_index=start, count=self.options.page_size))
            items = page.resources or []
            found += [r for r in items if verify(r)]
            start += len(items)
            if not items or start > (page.total_results or 0):
                return found
        raise PermanentError(f"more than {MAX_PAGES} pages for {query!r}: paging stopped", self.where)

    def users(self, attribute: str, value: str) -> list[UserModel]:
        return self._search(UserModel, attribute, value, lambda u: carries(u, attribute.split(".")[0], value))

    def groups_of(self, user_id: str) -> list[Group]:
        return sorted(self._search(Group, "members.value", user_id, lambda g: is_member(g, user_id)),
                      key=lambda g: (g.display_name or "", g.id))

    def group_named(self, name: str) -> Group:
        found = self._search(Group, "displayName", name, lambda g: (g.display_name or "").casefold() == name.casefold())
        if len(found) != 1:
            raise PermanentError(f"{len(found)} groups are named {name!r} in {self.app} (expected one)", self.where)
        return found[0]

    def user(self, user_id: str) -> UserModel:
        with self.scim.checked():
            return self.scim.query(UserModel, user_id)

    def match(self, termination: Termination) -> Match:
        """The employee id (externalId) is authoritative; an address only where no account carries the id."""
        t, attribute = termination, self.options.match_attribute
        self.capabilities()
        by_id = self.users("externalId", t.employee_id) if attribute == "externalId" and t.employee_id else []
        by_address = self.users(ADDRESS_ATTRIBUTE[attribute], t.email) if t.email else []
        found = by_id or by_address
        if not found:
            return Match("not_found")
        if len(found) > 1:
            value = t.employee_id if by_id else t.email
            return Match("ambiguous", candidates=[u.id for u in found],
                         reason=f"{len(found)} users in {self.app} match {value}")
        if by_id and any(u.id != found[0].id for u in by_address):
            return Match("ambiguous", candidates=sorted({u.id for u in by_id + by_address}),
                         reason="the employee id and the address point at different users")
        user = found[0]
        state = {"id": user.id, "userName": user.user_name, "active": user.active is not False,
                 "groups": [membership(g, True) for g in self.groups_of(user.id)]}
        names = [user.user_name or "", *(e.value or "" for e in user.emails or [])]
        return Match("matched", Subject(self.name, user.id, [n for n in names if n], state))

    # -- deciding ----------------------------------------------------------
    def restricted(self, groups: list[dict]) -> list[dict]:
        """The groups the policy's `restrict_remove_groups` globs name (case-insensitive)."""
        globs = [g.lower() for g in getattr(self.tenant.policy, "restrict_remove_groups", ())]
        return [g for g in groups if any(fnmatch.fnmatchcase(g["displayName"].lower(), p) for p in globs)]

    def plan(self, subject: Subject, termination: Termination) -> list[PlannedAction]:
        s, policy = subject.state, self.tenant.policy
        names = {g["displayName"].casefold() for g in s["groups"]}
        wanted = []
        if self.restricted(s["groups"]):
            wanted.append(self.planned("restrict_leave_groups", f"leave the restricted groups in {self.app}"))
        if any(g.casefold() not in names for g in getattr(policy, "restrict_add_groups", ())):
            wanted.append(self.planned("restrict_join_groups", f"join the notice-period groups in {self.app}"))
        if s["active"]:
            wanted.append(self.planned("deactivate_user", f"deactivate the user in {self.app}"))
        if policy.remove_groups and s["groups"]:
            wanted.append(self.planned("remove_groups", f"remove every group membership in {self.app}"))
        if self.options.delete == "after_retention" and policy.delete_after_days:
            wanted.append(self.planned("delete_user", f"delete the user in {self.app} after "
                                                      f"{policy.delete_after_days} days"))
        return wanted

    # -- acting ------------------------------------------------------------
    def _stale(self, what: str) -> RetryableError:
        return RetryableError(f"{what} changed in {self.app} {CONFLICT_TRIES} times while we wrote: "
                              "tried again at the next pass, from a fresh read", self.where, delay=60.0)

    def _set_active(self, ctx: ActionContext, active: bool) -> Result:
        for _ in range(CONFLICT_TRIES):
            user = self.user(ctx.subject.native_id)
            before, after = {"active": user.active is not False}, {"active": active}
            if before == after or ctx.dry_run:
                return self.outcome(before, after, ctx.dry_run)
            try:
                with self.scim.checked():
                    if supported(self.capabilities().patch):
                        self.scim.modify(user, PatchOp[UserModel](operations=[
                            PatchOperation(op="replace", path="active", value=active)]))
                    else:
                        user.active = active
                        self.scim.replace(user)
                return self.outcome(before, after, False)
            except http.Conflict as e:
                log.info("%s: %s; reading the user again", self.where, e.message)
        raise self._stale(f"user {ctx.subject.native_id}")

    def _set_member(self, group_id: str, user_id: str, member: bool, dry_run: bool) -> tuple[Group, bool]:
        """Make the user a member of the group or not; (the group as read, was it a member)."""
        for _ in range(CONFLICT_TRIES):
            with self.scim.checked():
                group = self.scim.query(Group, group_id)
            was = is_member(group, user_id)
            if was == member or dry_run:
                return group, was
            try:
                with self.scim.checked():
                    if supported(self.capabilities().patch):
                        op = PatchOperation(op="add", path="members", value=[{"value": user_id}]) if member else \
                            PatchOperation(op="remove", path=f"members[value eq {ScimFilter.quote(user_id)}]")
                        self.scim.modify(group, PatchOp[Group](operations=[op]))
                    else:
                        others = [m for m in group.members or [] if m.value != user_id]
                        group.members = others + ([{"value": user_id, "type": "User"}] if member else [])
                        self.scim.replace(group)
                return group, was
            except http.Conflict as e:
                log.info("%s: %s; reading group %s again", self.where, e.message, group_id)
        raise self._stale(f"group {group_id}")

    def _memberships(self, ctx: ActionContext, wanted: list[tuple[str, bool]]) -> Result:
        """Set each (group id, member?) pair; before and after list every group touched with its membership."""
        before, after = [], []
        for group_id, member in wanted:
            try:
                group, was = self._set_member(group_id, ctx.subject.native_id, member, ctx.dry_run)
            except http.NotFound:
                continue              # the group is gone: nobody is a member of it any more
            before.append(membership(group, was))
            after.append(membership(group, member))
        return self.outcome(before, after, ctx.dry_run)

    def deactivate_user(self, action: PlannedAction, ctx: ActionContext) -> Result:
        return self._set_active(ctx, False)

    def activate_user(self, action: PlannedAction, ctx: ActionContext) -> Result:
        return self._set_active(ctx, bool(dict(action.params)["before"]["active"]))

    def remove_groups(self, action: PlannedAction, ctx: ActionContext) -> Result:
        return self._memberships(ctx, [(g.id, False) for g in self.groups_of(ctx.subject.native_id)])

    def restrict_leave_groups(self, action: PlannedAction, ctx: ActionContext) -> Result:
        current = [membership(g, True) for g in self.groups_of(ctx.subject.native_id)]
        return self._memberships(ctx, [(g["id"], False) for g in self.restricted(current)])

    def restrict_join_groups(self, action: PlannedAction, ctx: ActionContext) -> Result:
        names = getattr(self.tenant.policy, "restrict_add_groups", ())
        return self._memberships(ctx, [(self.group_named(name).id, True) for name in names])

    def restore_groups(self, action: PlannedAction, ctx: ActionContext) -> Result:
        """Undo of every group action: each group the original touched gets its journaled membership back."""
        return self._memberships(ctx, [(g["id"], bool(g["member"])) for g in dict(action.params)["before"]])

    def delete_user(self, action: PlannedAction, ctx: ActionContext) -> Result:
        """Never before the retention is over, whoever asks: a deleted SCIM user cannot be brought back."""
        keep_until = ctx.termination.termination_date + dt.timedelta(days=self.tenant.policy.delete_after_days)
        if ctx.local_date is None or ctx.local_date < keep_until:
            raise NotYet(f"kept until {keep_until.isoformat()} (delete_after_days)", self.where, delay=86400.0)
        for _ in range(CONFLICT_TRIES):
            try:
                user = self.user(ctx.subject.native_id)
            except http.NotFound:
                return self.outcome({"exists": False}, {"exists": False}, ctx.dry_run)
            before = {"exists": True, "userName": user.user_name, "active": user.active is not False}
            if ctx.dry_run:
                return self.outcome(before, {"exists": False}, True)
            try:
                with self.scim.checked():
                    self.scim.delete(user)
                return self.outcome(before, {"exists": False}, False)
            except http.Conflict as e:
                log.info("%s: %s; reading the user again", self.where, e.message)
        raise self._stale(f"user {ctx.subject.native_id}")
