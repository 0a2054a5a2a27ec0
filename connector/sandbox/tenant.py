"""A Microsoft 365 tenant's objects, as Graph and Exchange Online both see them.

One state behind two APIs: a group that Exchange edits is the group Graph lists, a
licence Graph removes is the one `subscribedSkus` stops counting, and a mailbox belongs
to a user. Derived values are computed the way Graph computes them (licence assignment
states from direct and group licences, consumed units); `snapshot` reads a person's
offboarding-relevant state straight from here, not through a provider, so a test can
compare before and after.
"""
from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from dataclasses import dataclass, field

GB = 1024 ** 3
#: kinds that do not hold the default method in place (not MFA methods a default could fall back to)
NOT_BLOCKING_DEFAULT = {"password", "qrCodePin"}
GRAPH_PRINCIPAL = "5c1e0b1f-3333-4d2c-8e7f-2b3c4d5e6f70"    # the object id of Microsoft Graph's service principal


def stamp(when: dt.datetime | None = None) -> str:
    return (when or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")


def method_kind(method: dict) -> str:
    return method["@odata.type"].removeprefix("#microsoft.graph.").removesuffix("AuthenticationMethod")


@dataclass
class Mailbox:
    upn: str
    kind: str = "UserMailbox"
    size: int = 2 * GB
    litigation_hold: bool = False
    in_place_holds: list[str] = field(default_factory=list)
    compliance_tag_hold: bool = False
    archive: bool = False
    forwarding: str | None = None
    hidden: bool = False
    permissions: list[dict] = field(default_factory=list)
    auto_reply: dict = field(default_factory=lambda: {"AutoReplyState": "Disabled", "InternalMessage": "",
                                                      "ExternalMessage": ""})
    devices: list[dict] = field(default_factory=list)
    send_as: list[str] = field(default_factory=list)            # trustees (UPNs) with SendAs on this mailbox
    send_on_behalf: list[str] = field(default_factory=list)     # GrantSendOnBehalfTo: recipients by alias
    converting_to: str | None = None
    reads_until_converted: int = 0
    conversion_reads: int = 1          # Get-Mailbox reads that still show the old type after Set-Mailbox -Type
    conversion_seconds: float | None = None     # instead, the conversion takes this long, however often read
    converted_at: float = 0.0                   # with conversion_seconds: when the new type shows

    def convert(self, kind: str) -> None:
        self.converting_to, self.reads_until_converted = kind, self.conversion_reads
        self.converted_at = time.time() + (self.conversion_seconds or 0.0)

    def read_type(self) -> str:
        """The conversion to shared is asynchronous: it shows only on a later read, or once its time has passed."""
        if self.converting_to:
            if self.conversion_seconds is not None:
                if time.time() >= self.converted_at:
                    self.kind, self.converting_to = self.converting_to, None
            elif self.reads_until_converted == 0:
                self.kind, self.converting_to = self.converting_to, None
            else:
                self.reads_until_converted -= 1
        return self.kind


class Tenant:
    def __init__(self, tenant_id: str, domain: str = "contoso.com"):
        self.tenant_id, self.domain = tenant_id, domain
        self.users: dict[str, dict] = {}
        self.deleted: dict[str, dict] = {}               # soft-deleted users (directory/deletedItems), by id
        self.groups: dict[str, dict] = {}
        self.roles: dict[str, dict] = {}                 # role definitions: id -> {id, displayName, isBuiltIn}
        self.assignments: list[dict] = []                # {id, principalId, roleDefinitionId, directoryScopeId, eligible}
        self.pim_licensed = True                         # Entra ID P2: PIM eligibilities can be read
        self.skus: dict[str, dict] = {}
        self.methods: dict[str, list[dict]] = {}
        self.default_method: dict[str, str] = {}          # user id -> id of the default MFA method
        self.mailboxes: dict[str, Mailbox] = {}
        self.passwords: dict[str, str] = {}               # user id -> the last password an admin set (secret-leak tests)
        self.grants: list[dict] = []                     # oauth2PermissionGrants (delegated consents)
        self.devices: dict[str, dict] = {}               # Intune managed devices: id -> device (userId names the user)
        self.rules: dict[str, list[dict]] = {}           # user id -> inbox messageRules
        self.events: dict[str, list[dict]] = {}          # user id -> calendar events
        self.drives: dict[str, dict] = {}                # user id -> OneDrive: {id, webUrl, permissions}
        self.accepted_domains = [{"DomainName": domain, "DomainType": "Authoritative", "Default": True},
                                 {"DomainName": f"{domain.split('.')[0]}.onmicrosoft.com",
                                  "DomainType": "Authoritative", "Default": False}]
        self.phone_numbers: dict[str, dict] = {}          # Teams Phone: telephone number -> its numberAssignment
        self.operations: dict[str, dict] = {}             # long-running number operations, by id
        self.operation_polls = 1                          # reads of an operation that still answer `running`
        self.number_refusals: dict[str, str] = {}         # telephone number -> why its next operation fails
        self.lock = threading.RLock()
        self._by_name: dict[str, set[str]] = {}          # lowercased employeeId/UPN/mail/proxy -> user ids

    # -- building the tenant -------------------------------------------------
    @staticmethod
    def _id() -> str:
        return str(uuid.uuid4())

    def add_sku(self, part: str, prepaid: int = 100) -> str:
        sku_id = self._id()
        self.skus[sku_id] = {"skuId": sku_id, "skuPartNumber": part, "prepaidUnits": {"enabled": prepaid}}
        return sku_id

    def sku(self, part: str) -> str:
        return next(s for s, v in self.skus.items() if v["skuPartNumber"] == part)

    def add_group(self, name: str, *, dynamic: bool = False, synced: bool = False, mail_enabled: bool = False,
                  unified: bool = False, licences: tuple[str, ...] = (), role_assignable: bool = False,
                  owners: tuple[str, ...] = ()) -> str:
        """`owners` are UPNs of users already added."""
        group_id = self._id()
        types = (["Unified"] if unified else []) + (["DynamicMembership"] if dynamic else [])
        mail = f"{name.lower().replace(' ', '-')}@{self.domain}" if mail_enabled or unified else None
        self.groups[group_id] = {"id": group_id, "displayName": name, "groupTypes": types,
                                 "mailEnabled": mail_enabled or unified, "securityEnabled": not unified,
                                 "onPremisesSyncEnabled": True if synced else None, "mail": mail,
                                 "isAssignableToRole": role_assignable,
                                 "licences": [self.sku(p) for p in licences], "members": set(),
                                 "owners": {self.user_by_upn(o)["id"] for o in owners}}
        return group_id

    def add_role(self, name: str, *, custom: bool = False) -> str:
        role_id = self._id()
        self.roles[role_id] = {"id": role_id, "displayName": name, "isBuiltIn": not custom}
        return role_id

    def assign_role(self, principal_id: str, name: str, *, scope: str = "/", eligible: bool = False) -> None:
        """An active (or, with `eligible`, a PIM-eligible) assignment of a role to a user or a role-assignable group."""
        group = self.groups.get(principal_id)
        if group is not None and not group["isAssignableToRole"]:
            raise ValueError(f"{group['displayName']} is not role-assignable: Entra refuses the assignment")
        role = next(r for r in self.roles.values() if r["displayName"] == name)
        self.assignments.append({"id": self._id(), "principalId": principal_id, "roleDefinitionId": role["id"],
                                 "directoryScopeId": scope, "eligible": eligible})

    def add_user(self, upn: str, *, employee_id: str | None = None, synced: bool = False, enabled: bool = True,
                 licences: tuple[str, ...] = (), groups: tuple[str, ...] = (), roles: tuple[str, ...] = (),
                 methods: tuple[str, ...] = ("password",), default: str = "", mailbox: Mailbox | None = None,
                 proxies: tuple[str, ...] = (), manager: str = "", immutable_id: str = "",
                 given: str = "", surname: str = "", drive: bool = False) -> str:
        """`methods` are kinds (`phone` is a mobile; `phone:alternateMobile` names the type); `default` is one of them.
        `immutable_id` is a synced user's onPremisesImmutableId: the base64 objectGUID of its AD account."""
        user_id = self._id()
        local_given, _, local_family = upn.split("@")[0].partition(".")
        given, surname = given or local_given.title(), surname or local_family.title()
        old = stamp(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
        self.users[user_id] = {
            "id": user_id, "userPrincipalName": upn, "mail": upn, "displayName": f"{given} {surname}".strip(),
            "givenName": given, "surname": surname, "employeeId": employee_id,
            "proxyAddresses": [f"SMTP:{upn}"] + [f"smtp:{p}" for p in proxies], "accountEnabled": enabled,
            "onPremisesSyncEnabled": True if synced else None, "signInSessionsValidFromDateTime": old,
            "onPremisesImmutableId": immutable_id or None,
            "lastPasswordChangeDateTime": old, "businessPhones": [], "jobTitle": None, "mobilePhone": None,
            "officeLocation": None, "preferredLanguage": None, "direct": [self.sku(p) for p in licences],
            "manager": self.user_by_upn(manager)["id"] if manager else None}
        user = self.users[user_id]
        for name in (employee_id, upn, *(p.split(":", 1)[1] for p in user["proxyAddresses"])):
            if name:
                self._by_name.setdefault(name.lower(), set()).add(user_id)
        for name in groups:
            self.group_named(name)["members"].add(user_id)
        for name in roles:
            self.assign_role(user_id, name)
        self.methods[user_id] = []
        for spec in methods:
            kind, _, phone_type = spec.partition(":")
            method = {"@odata.type": f"#microsoft.graph.{kind}AuthenticationMethod", "id": self._id()}
            if kind == "phone":
                method.update(phoneType=phone_type or "mobile", phoneNumber="+1 4255550100", smsSignInState="notSupported")
            self.methods[user_id].append(method)
            if spec == default:
                self.default_method[user_id] = method["id"]
        if mailbox:
            mailbox.upn = upn
            self.mailboxes[upn.lower()] = mailbox
        self.rules[user_id], self.events[user_id] = [], []
        if drive:
            self.drives[user_id] = {"id": self._id(), "webUrl": f"https://{self.domain.split('.')[0]}-my.sharepoint.com"
                                    f"/personal/{upn.replace('@', '_').replace('.', '_')}/Documents",
                                    "permissions": [{"id": "owner", "roles": ["owner"],
                                                     "grantedToV2": {"user": {"id": user_id, "email": upn}}}]}
        return user_id

    def add_phone_number(self, upn: str, number: str, number_type: str = "callingPlan") -> None:
        """A Teams Phone number assigned to the user (its primary line)."""
        self.phone_numbers[number] = {
            "id": self._id(), "telephoneNumber": number, "assignmentTargetId": self.user_by_upn(upn)["id"],
            "assignmentStatus": "userAssigned", "assignmentCategory": "primary", "numberType": number_type,
            "activationState": "activated", "capabilities": ["userAssignment"], "isoCountryCode": "US",
            "operatorId": "", "reverseNumberLookupOptions": [], "supportedCustomerActions": []}

    def teams_numbers(self, user_id: str) -> list[str]:
        return sorted(n for n, a in self.phone_numbers.items() if a["assignmentTargetId"] == user_id)

    # -- what a leaver reaches besides their own account -------------------------
    def add_grant(self, upn: str, client_id: str, scope: str = "Mail.Read offline_access") -> str:
        """A delegated consent the user gave an app (clientId: the app's service principal)."""
        grant_id = self._id()
        self.grants.append({"id": grant_id, "clientId": client_id, "consentType": "Principal",
                            "principalId": self.user_by_upn(upn)["id"], "resourceId": GRAPH_PRINCIPAL,
                            "scope": scope})
        return grant_id

    def add_device(self, upn: str, name: str, owner_type: str = "personal", os: str = "iOS") -> str:
        device_id = self._id()
        self.devices[device_id] = {"id": device_id, "userId": self.user_by_upn(upn)["id"], "deviceName": name,
                                   "managedDeviceOwnerType": owner_type, "operatingSystem": os,
                                   "managementState": "managed", "userPrincipalName": upn}
        return device_id

    def add_rule(self, upn: str, name: str, *, forward_to: str = "", redirect_to: str = "", enabled: bool = True,
                 delete: bool = False) -> str:
        recipients = lambda a: [{"emailAddress": {"address": a, "name": a}}] if a else []   # noqa: E731
        rule_id = self._id()
        actions = {"forwardTo": recipients(forward_to), "redirectTo": recipients(redirect_to),
                   "forwardAsAttachmentTo": [], "delete": delete, "stopProcessingRules": False}
        self.rules[self.user_by_upn(upn)["id"]].append(
            {"id": rule_id, "displayName": name, "sequence": 1 + len(self.rules[self.user_by_upn(upn)["id"]]),
             "isEnabled": enabled, "conditions": {}, "actions": actions, "hasError": False, "isReadOnly": False})
        return rule_id

    def add_file(self, upn: str, name: str, *, folder: str = "", link: str = "", shared_with: str = "") -> str:
        """A file (or, with a trailing '/', a folder) in the user's OneDrive below `folder` (a name; '' = root);
        `link` (anonymous | organization | users) adds a sharing link, `shared_with` a direct grant to a user."""
        drive = self.drives[self.user_by_upn(upn)["id"]]
        items = drive.setdefault("items", {})
        parent = next(i["id"] for i in items.values() if i["name"] == folder) if folder else drive["id"]
        item_id = self._id()
        permissions = [{"id": self._id(), "roles": ["read"], "link": {"scope": link, "type": "view",
                                                                       "webUrl": f"https://contoso-my.sharepoint.com/:x:/s/{item_id}"}}] if link else []
        if shared_with:
            permissions.append({"id": self._id(), "roles": ["write"],
                                "grantedToV2": {"user": {"id": self.user_by_upn(shared_with)["id"], "email": shared_with}}})
        items[item_id] = {"id": item_id, "name": name.rstrip("/"), "parent": parent, "folder": name.endswith("/"),
                          "permissions": permissions}
        return item_id

    def add_meeting(self, upn: str, subject: str, start: dt.datetime, *, attendees: tuple[str, ...] = (),
                    organizer: bool = True) -> str:
        event_id = self._id()
        self.events[self.user_by_upn(upn)["id"]].append(
            {"id": event_id, "subject": subject, "isOrganizer": organizer, "isCancelled": False,
             "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": "UTC"},
             "attendees": [{"emailAddress": {"address": a}, "type": "required"} for a in attendees]})
        return event_id

    def sync(self, upn: str) -> None:
        """The directory sync carries the AD disable of a synced user to Entra (at its next cycle)."""
        user = self.user_by_upn(upn)
        assert user["onPremisesSyncEnabled"], f"{upn} is not synced"
        user["accountEnabled"] = False

    def delete_user(self, user_id: str) -> None:
        """Soft delete, as Entra does: gone from /users and from matching, restorable for 30 days with its
        memberships, licences and mailbox."""
        self.deleted[user_id] = self.users.pop(user_id)

    def restore_user(self, user_id: str) -> dict:
        self.users[user_id] = self.deleted.pop(user_id)
        return self.users[user_id]

    def group_named(self, name: str) -> dict:
        return next(g for g in self.groups.values() if g["displayName"] == name)

    def user_by_upn(self, upn: str) -> dict:
        return next(self.users[u] for u in self.named(upn) if self.users[u]["userPrincipalName"].lower() == upn.lower())

    def named(self, name: str) -> list[str]:
        """Ids of the users that may carry `name` as employee id, UPN, mail or proxy address (a superset: check)."""
        return [u for u in self._by_name.get(name.lower(), ()) if u in self.users]

    # -- derived state, as Graph computes it --------------------------------
    def licence_states(self, user_id: str) -> list[dict]:
        user = self.users.get(user_id) or self.deleted[user_id]
        states = [{"skuId": s, "assignedByGroup": None, "state": "Active", "disabledPlans": []} for s in user["direct"]]
        for group in self.groups.values():
            if group["licences"] and user_id in group["members"]:
                states += [{"skuId": s, "assignedByGroup": group["id"], "state": "Active", "disabledPlans": []}
                           for s in group["licences"]]
        return states

    def consumed(self) -> dict[str, int]:
        counts = dict.fromkeys(self.skus, 0)
        for user_id in self.users:
            for sku in {s["skuId"] for s in self.licence_states(user_id)}:
                counts[sku] += 1
        return counts

    @staticmethod
    def rights_of(user: dict, box: Mailbox) -> list[str]:
        """FullAccess, SendAs and SendOnBehalf `user` holds on `box`."""
        upn = user["userPrincipalName"].lower()
        rights = [r for p in box.permissions if p["User"].lower() == upn for r in p["AccessRights"]]
        rights += ["SendAs"] * any(t.lower() == upn for t in box.send_as)
        rights += ["SendOnBehalf"] * any(a.lower() == upn.split("@")[0] for a in box.send_on_behalf)
        return rights

    def snapshot(self, upn: str) -> dict:
        """Everything a leaver's offboarding can change, read from the state (not through a provider)."""
        gone = next((u for u in self.deleted.values() if u["userPrincipalName"].lower() == upn.lower()), None)
        user = gone or self.user_by_upn(upn)
        user_id = user["id"]
        mailbox = self.mailboxes.get(upn.lower())
        return {
            "deleted": gone is not None, "accountEnabled": user["accountEnabled"], "password": user["lastPasswordChangeDateTime"],
            "sessions": user["signInSessionsValidFromDateTime"],
            "licences": sorted((self.skus[s["skuId"]]["skuPartNumber"], s["assignedByGroup"] or "")
                               for s in self.licence_states(user_id)),
            "groups": sorted(g["displayName"] for g in self.groups.values() if user_id in g["members"]),
            "methods": sorted(m["@odata.type"] + (f":{m['phoneType']}" if "phoneType" in m else "")
                              for m in self.methods[user_id]),
            "teams_numbers": self.teams_numbers(user_id),
            "owner_of": sorted(g["displayName"] for g in self.groups.values() if user_id in g["owners"]),
            "grants": sorted(g["clientId"] for g in self.grants if g["principalId"] == user_id),
            "devices": sorted((d["deviceName"], d["managementState"]) for d in self.devices.values()
                              if d["userId"] == user_id),
            "rules": sorted((r["displayName"], r["isEnabled"]) for r in self.rules[user_id]),
            "meetings": sorted(e["subject"] for e in self.events[user_id] if not e["isCancelled"]),
            "drive_links": sorted(f"{i['name']}:{p['link']['scope']}" for i in self.drives.get(user_id, {}).get(
                "items", {}).values() for p in i["permissions"] if p.get("link")),
            "drive_access": sorted(p["grantedToV2"]["user"]["email"] + ":" + ",".join(p["roles"])
                                   for p in self.drives.get(user_id, {}).get("permissions", [])),
            "access_elsewhere": sorted(f"{box.upn}:{right}" for box in self.mailboxes.values() if box.upn != upn
                                       for right in self.rights_of(user, box)),
            "mailbox": mailbox and {"type": mailbox.converting_to or mailbox.kind, "forwarding": mailbox.forwarding,
                                    "hidden": mailbox.hidden, "permissions": json.dumps(mailbox.permissions),
                                    "auto_reply": json.dumps(mailbox.auto_reply), "devices": json.dumps(mailbox.devices)},
        }
