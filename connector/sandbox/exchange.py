"""Exchange Online's admin endpoint (`adminapi/beta/TENANT/InvokeCommand`): the cmdlets the providers run.

Over the same tenant Graph serves. As the service does: parameters outside a cmdlet's set
are refused by name; a mailbox cmdlet routes by `X-AnchorMailbox: UPN:<mailbox>` and a
tenant-level one wants the app-only anchor; a missing `Exchange.ManageAsApp` permission or
role is a 401 worded the way Exchange words it; conversion to a shared mailbox is
asynchronous (Get-Mailbox shows the old type for `conversion_reads` more reads, or for
`conversion_seconds`); results
page with `@odata.nextLink` (`page` items at a time). There is no machine-readable
description of InvokeCommand to check against: `CMDLETS` is that description.
"""
from __future__ import annotations

import datetime as dt
import html
import uuid
from typing import TYPE_CHECKING

from .tenant import GB, Mailbox, stamp
from .web import Request, Response, System, json_response, retry_after_header

if TYPE_CHECKING:
    from .identity import Identity
    from .tenant import Tenant

NO_GUID = "00000000-0000-0000-0000-000000000000"
CMDLETS = {
    "Get-Mailbox": {"Identity", "RecipientTypeDetails", "ResultSize"},
    "Get-MailboxStatistics": {"Identity"},
    "Get-MailboxPermission": {"Identity", "User"},
    "Get-RecipientPermission": {"Identity", "Trustee", "AccessRights", "ResultSize"},
    "Remove-MailboxPermission": {"Identity", "User", "AccessRights", "InheritanceType", "Confirm"},
    "Add-RecipientPermission": {"Identity", "Trustee", "AccessRights", "Confirm"},
    "Remove-RecipientPermission": {"Identity", "Trustee", "AccessRights", "Confirm"},
    "Remove-CalendarEvents": {"Identity", "CancelOrganizedMeetings", "QueryWindowInDays", "QueryStartDate",
                              "PreviewOnly", "Confirm"},
    "Get-MailboxAutoReplyConfiguration": {"Identity"},
    "Get-MobileDeviceStatistics": {"Mailbox"},
    "Set-Mailbox": {"Identity", "Type", "ForwardingSmtpAddress", "DeliverToMailboxAndForward",
                    "HiddenFromAddressListsEnabled", "GrantSendOnBehalfTo"},
    "Add-MailboxPermission": {"Identity", "User", "AccessRights", "InheritanceType", "AutoMapping"},
    "Add-DistributionGroupMember": {"Identity", "Member", "BypassSecurityGroupManagerCheck"},
    "Set-MailboxAutoReplyConfiguration": {"Identity", "AutoReplyState", "InternalMessage", "ExternalMessage",
                                          "ExternalAudience"},
    "Clear-MobileDevice": {"Identity", "AccountOnly", "Confirm"},
    "Remove-DistributionGroupMember": {"Identity", "Member", "BypassSecurityGroupManagerCheck", "Confirm"},
    "Get-AcceptedDomain": set(),
    "Get-OrganizationConfig": set(),
}
TENANT_LEVEL = {"Get-AcceptedDomain", "Get-OrganizationConfig"}
#: cmdlets that are tenant-level when they name no mailbox (a listing across the organization)
LISTINGS = {"Get-Mailbox", "Get-RecipientPermission"}


def cmdlet_error(status: int, message: str) -> Response:
    return json_response(status, {"error": {
        "code": "InternalServerError" if status >= 500 else "BadRequest",
        "message": "Error executing cmdlet", "details": [{"code": "Context", "target": "", "message": message}]}})


def app_anchor(tenant_id: str) -> str:
    return f"APP:SystemMailbox{{bb558c35-97f1-4cb9-8ff7-d53741dc928c}}@{tenant_id}"


class Exchange(System):
    name = "exchange"

    def __init__(self, identity: Identity, tenants: dict[str, Tenant]):
        super().__init__()
        self.identity, self.tenants = identity, tenants
        self.faults: list[int] = []                      # statuses the next calls answer
        self.denied = ""                                 # "permission" (no Exchange.ManageAsApp) or "role"
        self.raw: dict[str, str] = {}                    # cmdlet -> a 200 body as it is
        self.next_link: str | None = None                # forged on every page; "SELF": the page itself
        self.page = 1000
        self.anchors: list[tuple[str, str]] = []         # (cmdlet, X-AnchorMailbox) of every call
        self.tenant: Tenant | None = None                # the tenant of the cmdlet being run

    def handle(self, request: Request) -> Response:
        with self.lock:
            segments = request.segments
            body = request.json()
            cmdlet = body.get("CmdletInput") if isinstance(body, dict) else None
            if request.method != "POST" or len(segments) != 4 or segments[:2] != ["adminapi", "beta"] \
                    or segments[3] != "InvokeCommand" or not isinstance(cmdlet, dict):
                return json_response(404, {"error": {"code": "NotFound", "message": "no such endpoint"}})
            name, params = cmdlet.get("CmdletName", ""), cmdlet.get("Parameters") or {}
            self.calls.append(("exchange", "POST", name))
            grant = self.identity.grant(request)
            if grant is None or grant.tenant_id != segments[2]:
                return Response(401)
            tenant = self.tenants[grant.tenant_id]
            anchor = request.headers.get("X-AnchorMailbox", "")
            self.anchors.append((name, anchor))
            refused = self._refusal(name) or self._fault(tenant) or self._anchor_refusal(
                tenant, name, anchor, name in TENANT_LEVEL or (name in LISTINGS and "Identity" not in params))
            if refused:
                return refused
            if name in self.raw:
                return Response(200, {"Content-Type": "text/html"}, self.raw[name].encode())
            if name not in CMDLETS:
                return cmdlet_error(400, f"The term '{name}' is not recognized as a name of a cmdlet")
            unknown = set(params) - CMDLETS[name]
            if unknown:
                return cmdlet_error(400, f"A parameter cannot be found that matches parameter name '{min(unknown)}'.")
            with tenant.lock:
                self.tenant = tenant
                try:
                    items = getattr(self, "cmd_" + name.replace("-", "_").lower())(**params)
                except LookupError as e:
                    items = cmdlet_error(404, f"|Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException|"
                                              f"The operation couldn't be performed because object '{e.args[0]}' "
                                              "couldn't be found on 'NAMPR01A001.prod.outlook.com'.")
                finally:
                    self.tenant = None
            if not name.startswith("Get-"):
                target = params.get("Identity") or params.get("Mailbox") or ""
                target += f"/{params['Member']}" if "Member" in params else ""
                asked = ",".join(sorted(set(params) - {"Identity", "Mailbox", "Member"}))
                self.wrote(f"{name} {asked}".strip(), target, f"{grant.client_id}@{request.peer}",
                           items.status if isinstance(items, Response) else 200)
            if isinstance(items, Response):
                return items
            start = int(request.arg("skip", "0"))
            page = {"@odata.context": "https://outlook.office365.com/adminapi/beta/$metadata#Collection",
                    "value": items[start:start + self.page]}
            if start + self.page < len(items):
                page["@odata.nextLink"] = f"{request.base}{request.path}?skip={start + self.page}"
            if self.next_link:
                page["@odata.nextLink"] = request.url if self.next_link == "SELF" else self.next_link
            return json_response(200, page)

    def _fault(self, tenant: Tenant) -> Response | None:
        if self.faults:
            status = self.faults.pop(0)
            return json_response(status, {"error": {"code": "Fault", "message": f"HTTP {status}"}},
                                 retry_after_header(self.knobs.retry_after))
        wait = self.knobs.throttled(tenant.tenant_id)
        if wait is None:
            return None
        return json_response(429, {"error": {"code": "TooManyRequests", "message": "Too many requests"}},
                             retry_after_header(wait))

    @staticmethod
    def _anchor_refusal(tenant: Tenant, name: str, anchor: str, tenant_level: bool) -> Response | None:
        """Tenant-level cmdlets need the app-only anchor; the others route by the mailbox's UPN."""
        if not anchor:
            return cmdlet_error(400, "X-AnchorMailbox header is required")
        if tenant_level and anchor != app_anchor(tenant.tenant_id):
            return cmdlet_error(400, f"{name} is a tenant-level cmdlet: anchor it to {app_anchor(tenant.tenant_id)}, "
                                     f"not {anchor}")
        if not tenant_level and not (anchor.startswith("UPN:") and "@" in anchor):
            return cmdlet_error(400, f"{name} acts on a mailbox: anchor it to UPN:<mailbox>, not {anchor}")
        return None

    def _refusal(self, name: str) -> Response | None:
        """What Exchange answers an app without Exchange.ManageAsApp, or whose service principal has no role."""
        if self.denied == "permission":
            return Response(401, {"x-ms-diagnostics": '2000008;reason="The token contains no permissions, or '
                                  'permissions can not be understood.";error_category="invalid_grant"'})
        if self.denied == "role":
            return json_response(401, {"error": {
                "code": "Unauthorized", "message": f"User is not allowed to call {name}",
                "innererror": {"message": f"User is not allowed to call {name}",
                               "type": "Microsoft.Exchange.Admin.OData.Core.ODataServiceException"}}})
        return None

    # -- cmdlets, on `self.tenant` -------------------------------------------------------------
    def mailbox(self, identity: str) -> Mailbox:
        found = self.tenant.mailboxes.get(identity.lower())
        if found is None or not self.tenant.named(found.upn):       # its user deleted: the mailbox went with it
            raise LookupError(identity)
        return found

    def cmd_get_mailbox(self, Identity=None, RecipientTypeDetails=None, ResultSize=None):
        """One mailbox, or (no Identity) every mailbox of the kinds named, as a listing across the organization."""
        if Identity is not None:
            return [self.describe(self.mailbox(Identity))]
        kinds = set([RecipientTypeDetails] if isinstance(RecipientTypeDetails, str) else RecipientTypeDetails or [])
        return [self.describe(box) for box in self.tenant.mailboxes.values() if not kinds or box.kind in kinds]

    def describe(self, box: Mailbox) -> dict:
        user = self.tenant.user_by_upn(box.upn)
        return {"UserPrincipalName": box.upn, "PrimarySmtpAddress": box.upn, "ExternalDirectoryObjectId": user["id"],
                 "RecipientTypeDetails": box.read_type(), "ForwardingSmtpAddress": box.forwarding,
                 "DeliverToMailboxAndForward": bool(box.forwarding), "HiddenFromAddressListsEnabled": box.hidden,
                 "LitigationHoldEnabled": box.litigation_hold, "InPlaceHolds": list(box.in_place_holds),
                 "ComplianceTagHoldApplied": box.compliance_tag_hold, "ArchiveStatus": "Active" if box.archive else "None",
                 "ArchiveGuid": str(uuid.uuid5(uuid.NAMESPACE_URL, box.upn)) if box.archive else NO_GUID,
                 "EmailAddresses": user["proxyAddresses"], "Alias": box.upn.split("@")[0], "Name": box.upn.split("@")[0],
                 "DisplayName": user["displayName"], "GrantSendOnBehalfTo": list(box.send_on_behalf)}

    def cmd_get_accepteddomain(self):
        return [dict(d) for d in self.tenant.accepted_domains]

    def cmd_get_organizationconfig(self):
        return [{"Name": self.tenant.accepted_domains[-1]["DomainName"], "IsDehydrated": False}]

    def cmd_get_mailboxstatistics(self, Identity):
        box = self.mailbox(Identity)
        return [{"DisplayName": box.upn, "ItemCount": 1234,
                 "TotalItemSize": f"{box.size / GB:.1f} GB ({box.size:,} bytes)"}]

    def cmd_get_mailboxpermission(self, Identity, User=None):
        box = self.mailbox(Identity)
        found = [{"Identity": box.upn, "User": "NT AUTHORITY\\SELF", "AccessRights": ["FullAccess, ReadPermission"],
                  "IsInherited": False, "Deny": False}] + box.permissions
        if User is None:
            return found
        self.recipient(User)
        return [p for p in found if p["User"].lower() == User.lower()]

    def recipient(self, name: str) -> dict:
        """The user a cmdlet's -User or -Trustee names (UPN or alias); LookupError as Exchange's "couldn't be found"."""
        for user in self.tenant.users.values():
            if name.lower() in (user["userPrincipalName"].lower(), user["userPrincipalName"].split("@")[0].lower()):
                return user
        raise LookupError(name)

    def cmd_remove_mailboxpermission(self, Identity, User, AccessRights, InheritanceType="All", Confirm=True):
        box = self.mailbox(Identity)
        self.recipient(User)
        held = [p for p in box.permissions if p["User"].lower() == User.lower()
                and set(AccessRights) & {r for rights in p["AccessRights"] for r in rights.split(", ")}]
        if not held:
            return cmdlet_error(400, f"WARNING: Can't remove the access control entry on the object '{box.upn}' for "
                                     f"account '{User}' because the ACE doesn't exist on the object.")
        for p in held:
            box.permissions.remove(p)
        return []

    def cmd_get_recipientpermission(self, Identity=None, Trustee=None, AccessRights=None, ResultSize=None):
        boxes = [self.mailbox(Identity)] if Identity else list(self.tenant.mailboxes.values())
        if Trustee:
            self.recipient(Trustee)
        return [{"Identity": box.upn, "Trustee": t, "AccessControlType": "Allow", "AccessRights": ["SendAs"],
                 "IsInherited": False} for box in boxes for t in box.send_as
                if not Trustee or t.lower() == Trustee.lower()]

    def cmd_add_recipientpermission(self, Identity, Trustee, AccessRights, Confirm=True):
        box = self.mailbox(Identity)
        user = self.recipient(Trustee)
        if AccessRights != ["SendAs"]:
            return cmdlet_error(400, "Cannot process argument transformation on parameter 'AccessRights': only SendAs.")
        if not any(t.lower() == user["userPrincipalName"].lower() for t in box.send_as):
            box.send_as.append(user["userPrincipalName"])
        return []

    def cmd_remove_recipientpermission(self, Identity, Trustee, AccessRights, Confirm=True):
        box = self.mailbox(Identity)
        user = self.recipient(Trustee)
        held = [t for t in box.send_as if t.lower() == user["userPrincipalName"].lower()]
        if not held:
            return cmdlet_error(400, f"WARNING: Can't remove the access control entry on the object '{box.upn}' for "
                                     f"account '{Trustee}' because the ACE doesn't exist on the object.")
        box.send_as.remove(held[0])
        return []

    def cmd_remove_calendarevents(self, Identity, QueryWindowInDays=None, CancelOrganizedMeetings=False,
                                  QueryStartDate=None, PreviewOnly=False, Confirm=True):
        """Cancels the future meetings the mailbox organised that have attendees; appointments stay."""
        box = self.mailbox(Identity)
        if not isinstance(QueryWindowInDays, int) or not 1 <= QueryWindowInDays <= 1825:
            return cmdlet_error(400, "Cannot validate argument on parameter 'QueryWindowInDays': give 1 to 1825 days.")
        if not CancelOrganizedMeetings:
            return []
        start = dt.datetime.now(dt.timezone.utc) if QueryStartDate is None else \
            dt.datetime.fromisoformat(QueryStartDate).replace(tzinfo=dt.timezone.utc)
        end = start + dt.timedelta(days=QueryWindowInDays)
        for event in self.tenant.events[self.tenant.user_by_upn(box.upn)["id"]]:
            when = dt.datetime.fromisoformat(event["start"]["dateTime"][:19]).replace(tzinfo=dt.timezone.utc)
            if event["isOrganizer"] and event["attendees"] and start <= when < end and not PreviewOnly:
                event["isCancelled"] = True
        return []

    def cmd_get_mailboxautoreplyconfiguration(self, Identity):
        return [dict(self.mailbox(Identity).auto_reply, Identity=Identity)]

    def cmd_get_mobiledevicestatistics(self, Mailbox):
        return list(self.mailbox(Mailbox).devices)

    def cmd_set_mailbox(self, Identity, **changes):
        box = self.mailbox(Identity)
        kind = {"Shared": "SharedMailbox", "Regular": "UserMailbox"}.get(changes.get("Type"))
        if kind and box.kind != kind:
            box.convert(kind)
        if "ForwardingSmtpAddress" in changes:
            box.forwarding = changes["ForwardingSmtpAddress"]
        if "HiddenFromAddressListsEnabled" in changes:
            box.hidden = changes["HiddenFromAddressListsEnabled"]
        if "GrantSendOnBehalfTo" in changes:
            edit = changes["GrantSendOnBehalfTo"]
            if not isinstance(edit, dict) or edit.get("@odata.type") != "#Exchange.GenericHashTable" \
                    or not set(edit) - {"@odata.type"} <= {"add", "remove"}:
                return cmdlet_error(400, "Cannot bind parameter 'GrantSendOnBehalfTo': give a hashtable "
                                         "{'@odata.type': '#Exchange.GenericHashTable', 'add'|'remove': ...}.")
            for verb in ("remove", "add"):
                for name in [edit[verb]] if isinstance(edit.get(verb), str) else edit.get(verb) or []:
                    alias = self.recipient(name)["userPrincipalName"].split("@")[0]
                    box.send_on_behalf = [a for a in box.send_on_behalf if a.lower() != alias.lower()]
                    box.send_on_behalf += [alias] if verb == "add" else []
        return []

    def cmd_add_mailboxpermission(self, Identity, User, AccessRights, InheritanceType, AutoMapping):
        box = self.mailbox(Identity)
        if not any(u["userPrincipalName"].lower() == User.lower() for u in self.tenant.users.values()):
            return cmdlet_error(404, f"The operation couldn't be performed because object '{User}' couldn't be found.")
        if not any(p["User"].lower() == User.lower() for p in box.permissions):
            box.permissions.append({"Identity": box.upn, "User": User, "AccessRights": AccessRights,
                                    "IsInherited": False, "Deny": False, "AutoMapping": AutoMapping})
        return []

    def cmd_set_mailboxautoreplyconfiguration(self, Identity, **settings):
        box = self.mailbox(Identity)
        for key in ("InternalMessage", "ExternalMessage"):       # Exchange keeps them as HTML
            if settings.get(key):
                settings[key] = f"<html>\n<body>\n{html.escape(settings[key])}\n</body>\n</html>\n"
        box.auto_reply.update({k: v for k, v in settings.items() if k != "ExternalAudience"})
        return []

    def cmd_clear_mobiledevice(self, Identity, AccountOnly, Confirm):
        device = next((d for box in self.tenant.mailboxes.values() for d in box.devices if d["Identity"] == Identity),
                      None)
        if device is None:
            raise LookupError(Identity)
        device.update(DeviceWipeRequestTime=stamp(), Status="DeviceWipePending", AccountOnly=AccountOnly)
        return []

    def cmd_add_distributiongroupmember(self, Identity, Member, BypassSecurityGroupManagerCheck):
        group = next((g for g in self.tenant.groups.values() if (g["mail"] or "").lower() == Identity.lower()), None)
        if group is None:
            raise LookupError(Identity)
        user = self.tenant.user_by_upn(Member)
        if user["id"] in group["members"]:
            return cmdlet_error(400, f"|Microsoft.Exchange.Management.Tasks.MemberAlreadyExistsException|The recipient "
                                f"{Member} is already a member of the group {Identity}.")
        group["members"].add(user["id"])
        return []

    def cmd_remove_distributiongroupmember(self, Identity, Member, BypassSecurityGroupManagerCheck, Confirm):
        group = next((g for g in self.tenant.groups.values() if (g["mail"] or "").lower() == Identity.lower()), None)
        if group is None:
            raise LookupError(Identity)
        user = self.tenant.user_by_upn(Member)
        if user["id"] not in group["members"]:
            return cmdlet_error(400, f"|Microsoft.Exchange.Management.Tasks.MemberNotFoundException|The recipient "
                                f"{Member} isn't a member of the group {Identity}.")
        group["members"].discard(user["id"])
        return []
