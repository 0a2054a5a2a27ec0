"""Microsoft Graph v1.0: the subset the `entra` provider uses, over the tenants of `tenant.py`.

Writes really change the tenant, and it bites where Graph bites: properties outside the
default set come back only when named in `$select`; batch sub-requests with a body need a
Content-Type; more than 20 sub-requests is a 400; `$skip` on users is refused; `$search`
and `$count` need `ConsistencyLevel: eventual`; synced objects, dynamic groups and
mail-enabled groups refuse cloud writes; a member added twice is a 400; a deleted user waits
in directory/deletedItems (restorable, or purged there); a Temporary Access Pass is shown
only in the answer that creates it; a licence inherited from a group cannot be removed
from the user; the default MFA method cannot be deleted while others remain, nor a
`mobile` phone while an `alternateMobile` exists; PIM answers `AadPremiumLicenseRequired`
in a tenant without P2. Throttling is per tenant and, as in Graph, judged per request
inside a `$batch` (the batch answers 200 with 429 sub-responses). Every request, batch
sub-requests included, is checked against the v1.0 CSDL first.

Faults are injected per scope (`faults["batch_item"] = [424, 503]`: the next sub-requests
answer those), as are forged `@odata.nextLink`s (`next_link`), raw bodies (`raw`), paths
that keep failing (`failing`) and permissions the app lacks (`denied`).
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from requests.structures import CaseInsensitiveDict

from .contract import SchemaViolation, graph_schema
from .tenant import NOT_BLOCKING_DEFAULT, method_kind, stamp
from .web import Request, Response, System, json_response, retry_after_header

if TYPE_CHECKING:
    from .identity import Grant, Identity
    from .tenant import Tenant

DEFAULT_USER_SELECT = ("businessPhones", "displayName", "givenName", "id", "jobTitle", "mail", "mobilePhone",
                       "officeLocation", "preferredLanguage", "surname", "userPrincipalName")
PAGE = 100
BATCH_LIMIT = 20
#: what each injected status answers with
FAULTS = {424: ("FailedDependency", "The request failed because of a failed dependency."),
          429: ("TooManyRequests", "Too many requests"),
          503: ("ServiceUnavailable", "The service is temporarily unavailable.")}
DEFAULT_REFUSED = "Cannot delete default method with other methods configured. Please change default method before deletion."
MOBILE_REFUSED = ("A user can't have an alternateMobile number without a mobile number: delete the alternateMobile "
                  "number first.")
SYNCED_REFUSED = ("Unable to update the specified properties for on-premises mastered Directory Sync objects or "
                  "objects currently undergoing migration.")
LAST_OWNER_REFUSED = "The group must have at least one owner: the last owner cannot be removed."
GUID = r"([^/?]+)"
USER_FILTER = ("employeeId", "userPrincipalName", "mail", "id")
NUMBERS = "/admin/teams/telephoneNumberManagement"
GROUP_DEFAULT_SELECT = ("id", "displayName", "description", "groupTypes", "mail", "mailEnabled", "securityEnabled")


def dependency_flaw(subs: list[dict]) -> str:
    """Why Graph would refuse this batch's `dependsOn` ('' when it would not): a dependency must name one
    earlier sub-request, and a batch is all independent, each on the one before, or all on the same one."""
    ids = [sub.get("id") for sub in subs]
    if len(set(ids)) != len(ids):
        return "Batch request ids must be unique."
    needs = [sub.get("dependsOn") or [] for sub in subs]
    for n, need in enumerate(needs):
        if len(need) > 1 or any(d not in ids[:n] for d in need):
            return f"Request {ids[n]!r}: dependsOn must name one request earlier in the batch."
    if not any(needs):
        return ""
    serial = all(need == [ids[n - 1]] for n, need in enumerate(needs) if n)
    same = len({tuple(need) for need in needs if need}) == 1 and all(need or n == 0 for n, need in enumerate(needs))
    return "" if serial or same else "Batch requests must be all parallel, all sequential or all on the same request."


def graph_error(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    return json_response(status, {"error": {"code": code, "message": message}}, headers)


@dataclass
class Call:
    """One Graph request (or batch sub-request) as a handler sees it."""

    tenant: Tenant
    grant: Grant
    caller: str
    method: str
    url: str
    query: dict[str, str]
    body: Any
    headers: CaseInsensitiveDict


class Graph(System):
    name = "graph"

    def __init__(self, identity: Identity, tenants: dict[str, Tenant]):
        super().__init__()
        self.identity, self.tenants = identity, tenants
        self.faults: dict[str, list[int]] = {"graph": [], "batch": [], "batch_item": []}
        self.denied: list[tuple[str, str, str]] = []     # (method, path regex, permission) the app lacks
        self.next_link: str | None = None                # forged on every collection page; "SELF": the page itself
        self.raw: dict[str, str] = {}                    # path regex -> a 200 body as it is
        self.batch_view: dict[str, list[dict]] | None = None     # the methods as the $batch being run found them

    def state(self, emails: list[str]) -> dict:
        """Each person's account, sessions, licences and mailbox type, in whichever tenant holds them."""
        found = {}
        with self.lock:
            for tenant in self.tenants.values():
                for email in emails:
                    if not tenant.named(email):
                        continue
                    snap = tenant.snapshot(email)
                    synced = any(tenant.users[u].get("onPremisesSyncEnabled") for u in tenant.named(email))
                    found[email.lower()] = {"accountEnabled": snap["accountEnabled"], "synced": synced,
                                            "sessions": snap["sessions"],
                                            "licences": [sku for sku, _ in snap["licences"]],
                                            "mailbox": snap["mailbox"] and snap["mailbox"]["type"]}
        return found

    def routes(self):
        """(method and path pattern, handler, what a write is called in the write log or None for a read)."""
        return [
            (r"POST /\$batch", self.batch, None),
            (r"GET /users", self.list_users, None),
            (rf"GET /users/{GUID}", self.get_user, None),
            (rf"PATCH /users/{GUID}", self.patch_user, "PATCH users/{id}"),
            (rf"DELETE /users/{GUID}", self.delete_user, "DELETE users/{id}"),
            (rf"GET /directory/deletedItems/{GUID}", self.get_deleted, None),
            (rf"DELETE /directory/deletedItems/{GUID}", self.purge_deleted, "DELETE directory/deletedItems/{id}"),
            (rf"POST /directory/deletedItems/{GUID}/restore", self.restore_deleted,
             "POST directory/deletedItems/{id}/restore"),
            (rf"POST /users/{GUID}/authentication/temporaryAccessPassMethods", self.add_temporary_access_pass,
             "POST users/{id}/authentication/temporaryAccessPassMethods"),
            (rf"POST /users/{GUID}/revokeSignInSessions", self.revoke_sessions, "POST users/{id}/revokeSignInSessions"),
            (rf"POST /users/{GUID}/assignLicense", self.assign_license, "POST users/{id}/assignLicense"),
            (rf"GET /users/{GUID}/memberOf", self.member_of, None),
            (rf"GET /users/{GUID}/manager", self.manager_of, None),
            (r"GET /roleManagement/directory/(roleAssignments|roleEligibilityScheduleInstances)", self.role_reads, None),
            (rf"GET /users/{GUID}/authentication/methods", self.list_methods, None),
            (rf"DELETE /users/{GUID}/authentication/(\w+)/{GUID}", self.delete_method,
             "DELETE users/{id}/authentication/{kind}/{id}"),
            (r"GET /groups", self.list_groups, None),
            (rf"GET /groups/{GUID}", self.get_group, None),
            (rf"POST /groups/{GUID}/members/\$ref", self.add_member, "POST groups/{id}/members/$ref"),
            (rf"DELETE /groups/{GUID}/members/{GUID}/\$ref", self.remove_member, "DELETE groups/{id}/members/{id}/$ref"),
            (r"GET /subscribedSkus", self.subscribed_skus, None),
            (rf"GET {NUMBERS}/numberAssignments", self.number_assignments, None),
            (rf"POST {NUMBERS}/numberAssignments/(unassignNumber|assignNumber)", self.order_number,
             "POST numberAssignments/{action}"),
            (rf"GET {NUMBERS}/operations/{GUID}", self.number_operation, None),
            (rf"GET /users/{GUID}/ownedObjects/microsoft\.graph\.group", self.owned_groups, None),
            (rf"GET /groups/{GUID}/owners", self.list_owners, None),
            (rf"POST /groups/{GUID}/owners/\$ref", self.add_owner, "POST groups/{id}/owners/$ref"),
            (rf"DELETE /groups/{GUID}/owners/{GUID}/\$ref", self.remove_owner, "DELETE groups/{id}/owners/{id}/$ref"),
            (rf"GET /users/{GUID}/oauth2PermissionGrants", self.list_grants, None),
            (r"POST /oauth2PermissionGrants", self.create_grant, "POST oauth2PermissionGrants"),
            (rf"DELETE /oauth2PermissionGrants/{GUID}", self.delete_grant, "DELETE oauth2PermissionGrants/{id}"),
            (rf"GET /users/{GUID}/managedDevices", self.list_devices, None),
            (rf"POST /deviceManagement/managedDevices/{GUID}/(retire|wipe)", self.device_action,
             "POST deviceManagement/managedDevices/{id}/{action}"),
            (rf"GET /users/{GUID}/drive/root", self.drive_root, None),
            (rf"GET /users/{GUID}/drive/root/permissions", self.drive_permissions, None),
            (rf"POST /users/{GUID}/drive/root/invite", self.drive_invite, "POST users/{id}/drive/root/invite"),
            (rf"DELETE /users/{GUID}/drive/root/permissions/{GUID}", self.drive_unshare,
             "DELETE users/{id}/drive/root/permissions/{id}"),
            (rf"GET /users/{GUID}/drive/items/{GUID}/children", self.drive_children, None),
            (rf"GET /users/{GUID}/drive/items/{GUID}/permissions", self.item_permissions, None),
            (rf"DELETE /users/{GUID}/drive/items/{GUID}/permissions/{GUID}", self.delete_item_permission,
             "DELETE users/{id}/drive/items/{id}/permissions/{id}"),
            (rf"GET /users/{GUID}/mailFolders/inbox/messageRules", self.list_rules, None),
            (rf"PATCH /users/{GUID}/mailFolders/inbox/messageRules/{GUID}", self.patch_rule,
             "PATCH users/{id}/mailFolders/inbox/messageRules/{id}"),
            (rf"GET /users/{GUID}/calendarView", self.calendar_view, None),
        ]

    # -- HTTP ----------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        with self.lock:
            path = request.path.split("/v1.0", 1)[-1]
            self.calls.append(("graph", request.method, path))
            grant = self.identity.grant(request)
            if grant is None or not request.path.startswith("/v1.0/"):
                return graph_error(401, "InvalidAuthenticationToken", "Access token is empty or invalid.")
            tenant = self.tenants[grant.tenant_id]
            batch = path == "/$batch"
            fault = self._fault("graph", tenant, budget=not batch) or (self._fault("batch", tenant) if batch else None)
            if fault:
                return fault
            raw = next((text for pattern, text in self.raw.items() if re.fullmatch(pattern, path)), None)
            if raw is not None:
                return Response(200, {"Content-Type": "text/html" if raw.startswith("<") else "application/json"},
                                raw.encode())
            with tenant.lock:
                return self.dispatch(Call(tenant, grant, f"{grant.client_id}@{request.peer}", request.method,
                                          request.url, {}, request.json(), request.headers))

    def _fault(self, scope: str, tenant: Tenant, budget: bool = True) -> Response | None:
        """The injected answer due in `scope` (an entry of `faults`), else a throttled one, or None."""
        if self.faults[scope]:
            status = self.faults[scope].pop(0)
            return graph_error(status, *FAULTS[status], retry_after_header(self.knobs.retry_after))
        if scope == "batch":
            return None
        wait = self.knobs.throttled(tenant.tenant_id, item=scope == "batch_item", budget=budget)
        if wait is None:
            return None
        return graph_error(429, *FAULTS[429], retry_after_header(wait))

    def dispatch(self, call: Call) -> Response:
        try:
            graph_schema().check(call.method, call.url, call.body)
        except SchemaViolation as e:
            self.violations.append(str(e))
            return graph_error(400, "BadRequest", f"Resource not found for the segment or property: {e}")
        parts = urlsplit(call.url)
        path = parts.path.split("/v1.0", 1)[-1]
        call.query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        for denied_method, pattern, permission in self.denied:
            if call.method == denied_method and re.fullmatch(pattern, path):
                return graph_error(403, "Authorization_RequestDenied",
                                   f"Missing scope permissions on the request. API requires one of '{permission}'. "
                                   "Scopes on the request 'User.Read.All'")
        if status := self.failing_status(path):         # batched or not
            return graph_error(status, "InternalServerError" if status == 500 else "Failing", f"HTTP {status}",
                               retry_after_header(self.knobs.retry_after))
        for route, handler, write in self.routes():
            found = re.fullmatch(route, f"{call.method} {path}")
            if not found:
                continue
            try:
                answer = handler(call, *found.groups())
            except KeyError:
                answer = graph_error(404, "Request_ResourceNotFound",
                                     f"Resource '{path.split('/')[2]}' does not exist or one of its queried "
                                     "reference-property objects are not present.")
            response = answer if isinstance(answer, Response) else \
                Response(204) if answer is None else json_response(200, answer)
            if write:
                keys = f" {','.join(sorted(call.body))}" if call.method == "PATCH" and isinstance(call.body, dict) else ""
                self.wrote(write + keys, "/".join(found.groups()), call.caller, response.status)
            return response
        return graph_error(400, "BadRequest", f"the sandbox has no route for {call.method} {path}")

    # -- $batch ----------------------------------------------------------------------------------
    def batch(self, call: Call):
        """Sub-requests without `dependsOn` run side by side: where order matters (MFA methods), each one is
        judged on the tenant as the batch found it. With `dependsOn` a sub-request runs after the one it names,
        on the tenant as that one left it, and answers 424 when that one failed; as in Graph, a batch is all
        side by side, all in sequence (each on the one before) or all on the same one, else a 400."""
        subs = call.body.get("requests", [])
        if len(subs) > BATCH_LIMIT:
            return graph_error(400, "BadRequest", f"The number of batch requests exceeds the limit of {BATCH_LIMIT}.")
        if refused := dependency_flaw(subs):
            return graph_error(400, "BadRequest", refused)
        base = call.url.split("/v1.0", 1)[0]
        out, failed = [], set()
        in_sequence = any(sub.get("dependsOn") for sub in subs)
        self.batch_view = None if in_sequence else {user: list(methods) for user, methods in call.tenant.methods.items()}
        try:
            for sub in subs:
                self.calls.append(("graph-sub", sub["method"], sub["url"].split("?")[0]))
                sub_headers = CaseInsensitiveDict(sub.get("headers") or {})
                if failed.intersection(sub.get("dependsOn") or ()):
                    answer = graph_error(424, *FAULTS[424])
                elif "body" in sub and "Content-Type" not in sub_headers:
                    answer = graph_error(400, "BadRequest", "Content-Type header is required for a request with a body.")
                else:
                    answer = self._fault("batch_item", call.tenant) or self.dispatch(Call(
                        call.tenant, call.grant, call.caller, sub["method"], base + "/v1.0" + sub["url"], {},
                        sub.get("body"), sub_headers))
                if answer.status >= 400:
                    failed.add(sub["id"])
                out.append({"id": sub["id"], "status": answer.status, "headers": answer.headers,
                            "body": answer.json()})
        finally:
            self.batch_view = None
        return {"responses": out}

    # -- collections --------------------------------------------------------------------------------
    @staticmethod
    def _select(call: Call) -> list[str] | None:
        return call.query["$select"].split(",") if "$select" in call.query else None

    def _page(self, items: list[dict], call: Call) -> dict:
        start = int(call.query.get("$skiptoken", 0))
        size = int(call.query.get("$top", PAGE))
        page = {"value": items[start:start + size]}
        if start + size < len(items):
            parts = urlsplit(call.url)
            page["@odata.nextLink"] = parts._replace(
                query=urlencode({**call.query, "$skiptoken": start + size})).geturl()
        if self.next_link:
            page["@odata.nextLink"] = call.url if self.next_link == "SELF" else self.next_link
        return page

    @staticmethod
    def render_user(tenant: Tenant, user_id: str, select: list[str] | None) -> dict:
        user = dict(tenant.users[user_id])
        user["licenseAssignmentStates"] = tenant.licence_states(user_id)
        user["assignedLicenses"] = [{"skuId": s, "disabledPlans": []}
                                    for s in dict.fromkeys(x["skuId"] for x in user["licenseAssignmentStates"])]
        return {k: user.get(k) for k in (select or DEFAULT_USER_SELECT)} | {"id": user_id}

    def list_users(self, call: Call):
        advanced = call.headers.get("ConsistencyLevel") == "eventual"
        if "$skip" in call.query:
            return graph_error(400, "Request_BadRequest", "'$skip' is not supported by the service.")
        if ("$search" in call.query or "$count" in call.query) and not advanced:
            return graph_error(400, "Request_BadRequest", "$search and $count need the ConsistencyLevel: eventual header.")
        tenant = call.tenant
        users = list(tenant.users)
        if "$filter" in call.query:
            found = self.parse_filter(call.query["$filter"], advanced)
            if isinstance(found, Response):
                return found
            predicate, values = found
            candidates = set()                       # the index narrows, the predicate decides
            for prop, value in values:
                candidates.update([value] if prop == "id" else tenant.named(value.split(":", 1)[-1]))
            users = [u for u in users if u in candidates and predicate(tenant.users[u])]
        return self._page([self.render_user(tenant, u, self._select(call)) for u in users], call)

    @staticmethod
    def parse_filter(text: str, advanced: bool, fields: tuple[str, ...] = USER_FILTER):
        """`a eq 'x' or proxyAddresses/any(p:p eq 'y')`: what matching needs, compared case-insensitively.
        -> (the predicate, the (property, value) pairs it compares), or the refusal."""
        tests, values = [], []
        for clause in re.split(r"\s+or\s+(?=(?:[^']*'[^']*')*[^']*$)", text):
            simple = re.fullmatch(r"(\w+) eq '((?:[^']|'')*)'", clause.strip())
            anyof = re.fullmatch(r"proxyAddresses/any\((\w+):\1 eq '((?:[^']|'')*)'\)", clause.strip())
            if simple and simple.group(1) in fields:
                prop, value = simple.group(1), simple.group(2).replace("''", "'").lower()
                tests.append(lambda u, p=prop, v=value: (u.get(p) or "").lower() == v)
                values.append((prop, value))
            elif anyof:
                value = anyof.group(2).replace("''", "'").lower()
                tests.append(lambda u, v=value: v in (p.lower() for p in u["proxyAddresses"]))
                values.append(("proxyAddresses", value))
            elif re.search(r"endsWith|\bne\b|\bnot\b", clause) and not advanced:
                return graph_error(400, "Request_UnsupportedQuery", "Unsupported or invalid query filter clause "
                                   "specified for property; needs ConsistencyLevel: eventual and $count=true.")
            else:
                return graph_error(400, "Request_UnsupportedQuery", f"the sandbox does not understand filter {clause!r}")
        return (lambda item: any(test(item) for test in tests)), values

    # -- users --------------------------------------------------------------------------------------
    def get_user(self, call: Call, user_id):
        if user_id not in call.tenant.users:                # /users/{userPrincipalName}
            upn = unquote(user_id).lower()
            user_id = next((u for u in call.tenant.named(upn)
                            if call.tenant.users[u]["userPrincipalName"].lower() == upn), user_id)
        call.tenant.users[user_id]
        return self.render_user(call.tenant, user_id, self._select(call))

    def patch_user(self, call: Call, user_id):
        user, body = call.tenant.users[user_id], call.body
        if user["onPremisesSyncEnabled"] and {"accountEnabled", "passwordProfile"} & set(body):
            return graph_error(400, "Request_BadRequest", SYNCED_REFUSED)
        if "accountEnabled" in body:
            user["accountEnabled"] = body["accountEnabled"]
        if "passwordProfile" in body:
            if len(body["passwordProfile"].get("password", "")) < 8:
                return graph_error(400, "Request_BadRequest", "The specified password does not comply with password "
                                   "complexity requirements.")
            user["lastPasswordChangeDateTime"] = stamp()
            call.tenant.passwords[user_id] = body["passwordProfile"]["password"]
        return None

    def delete_user(self, call: Call, user_id):
        user = call.tenant.users[user_id]
        if user["onPremisesSyncEnabled"]:
            return graph_error(400, "Request_BadRequest", SYNCED_REFUSED)
        call.tenant.delete_user(user_id)
        return None

    def get_deleted(self, call: Call, user_id):
        call.tenant.deleted[user_id]
        return {"@odata.type": "#microsoft.graph.user", "id": user_id,
                "userPrincipalName": call.tenant.deleted[user_id]["userPrincipalName"]}

    def purge_deleted(self, call: Call, user_id):
        del call.tenant.deleted[user_id]
        return None

    def restore_deleted(self, call: Call, user_id):
        user = call.tenant.restore_user(user_id)
        return {"@odata.type": "#microsoft.graph.user", "id": user_id, "userPrincipalName": user["userPrincipalName"]}

    def add_temporary_access_pass(self, call: Call, user_id):
        call.tenant.users[user_id]
        lifetime = call.body.get("lifetimeInMinutes", 60)
        if not 10 <= lifetime <= 43200:
            return graph_error(400, "badRequest", "lifetimeInMinutes must be between 10 and 43200.")
        method = {"@odata.type": "#microsoft.graph.temporaryAccessPassAuthenticationMethod", "id": call.tenant._id(),
                  "createdDateTime": stamp(), "lifetimeInMinutes": lifetime,
                  "isUsableOnce": bool(call.body.get("isUsableOnce")), "isUsable": True, "methodUsabilityReason": "Enabled"}
        methods = call.tenant.methods[user_id]          # one pass at a time: a new one replaces the old
        methods[:] = [m for m in methods if method_kind(m) != "temporaryAccessPass"] + [method]
        return json_response(201, {**method, "temporaryAccessPass": secrets.token_urlsafe(12)})

    def revoke_sessions(self, call: Call, user_id):
        call.tenant.users[user_id]["signInSessionsValidFromDateTime"] = stamp()
        return {"value": True}

    def assign_license(self, call: Call, user_id):
        tenant, body = call.tenant, call.body
        user = tenant.users[user_id]
        if set(body) != {"addLicenses", "removeLicenses"}:
            return graph_error(400, "Request_BadRequest", "addLicenses and removeLicenses are both required.")
        for sku in body["removeLicenses"]:
            if sku not in user["direct"]:
                inherited = any(s["skuId"] == sku for s in tenant.licence_states(user_id))
                return graph_error(400, "Request_BadRequest", "User license is inherited from a group membership and "
                                   "it cannot be removed directly from the user." if inherited else
                                   f"License {sku} does not correspond to a valid company License.")
        user["direct"] = [s for s in user["direct"] if s not in body["removeLicenses"]]
        user["direct"] += [a["skuId"] for a in body["addLicenses"] if a["skuId"] not in user["direct"]]
        return self.render_user(tenant, user_id, None)

    def member_of(self, call: Call, user_id):
        """Direct groups, and the directory roles held directly (active, built-in, tenant-wide), as Graph lists them."""
        tenant = call.tenant
        tenant.users[user_id]
        select = self._select(call)
        out = []
        for group in tenant.groups.values():
            if user_id in group["members"]:
                out.append({"@odata.type": "#microsoft.graph.group",
                            **{k: group.get(k) for k in (select or ["id", "displayName", "mail"])}})
        for a in tenant.assignments:
            role = tenant.roles[a["roleDefinitionId"]]
            if a["principalId"] == user_id and not a["eligible"] and a["directoryScopeId"] == "/" and role["isBuiltIn"]:
                out.append({"@odata.type": "#microsoft.graph.directoryRole", "id": role["id"],
                            "displayName": role["displayName"]})
        return self._page(out, call)

    def manager_of(self, call: Call, user_id):
        manager = call.tenant.users[user_id]["manager"]
        if manager is None:
            raise KeyError(user_id)
        return {"@odata.type": "#microsoft.graph.user", **self.render_user(call.tenant, manager, self._select(call))}

    def role_reads(self, call: Call, collection):
        """Assignments or PIM eligibilities of one principal, `$filter=principalId eq '...'`, `$expand=roleDefinition`."""
        tenant = call.tenant
        eligible = collection == "roleEligibilityScheduleInstances"
        if eligible and not tenant.pim_licensed:
            return graph_error(400, "AadPremiumLicenseRequired",
                               "The tenant needs to have Microsoft Entra ID P2 or Microsoft Entra ID Governance license.")
        found = re.fullmatch(r"principalId eq '([^']+)'", call.query.get("$filter", ""))
        if not found:
            return graph_error(400, "BadRequest", f"the sandbox answers only $filter=principalId eq '...', not {call.query}")
        expand = call.query.get("$expand") == "roleDefinition"
        out = []
        for a in tenant.assignments:
            if a["principalId"] == found.group(1) and a["eligible"] == eligible:
                item = {k: v for k, v in a.items() if k != "eligible"}
                if eligible:
                    item.update(memberType="Direct", startDateTime=stamp(), endDateTime=None)
                if expand:
                    item["roleDefinition"] = dict(tenant.roles[a["roleDefinitionId"]])
                out.append(item)
        return self._page(out, call)

    def list_methods(self, call: Call, user_id):
        return self._page(list(call.tenant.methods[user_id]), call)

    def delete_method(self, call: Call, user_id, collection, method_id):
        tenant = call.tenant
        methods = tenant.methods[user_id]
        method = next((m for m in methods if m["id"] == method_id), None)
        if method is None:
            raise KeyError(method_id)
        kind = method_kind(method)
        if kind == "password":
            return graph_error(400, "badRequest", "The password method cannot be deleted.")
        if collection != (f"{kind}Methods" if kind != "external" else "externalAuthenticationMethods"):
            return graph_error(404, "itemNotFound", f"No {collection} with id {method_id}.")
        found = (self.batch_view or {}).get(user_id, methods)
        others = [m for m in found if m is not method and method_kind(m) not in NOT_BLOCKING_DEFAULT]
        if tenant.default_method.get(user_id) == method_id and others:
            return graph_error(400, "badRequest", DEFAULT_REFUSED)
        if method.get("phoneType") == "mobile" and any(m.get("phoneType") == "alternateMobile" for m in found):
            return graph_error(400, "badRequest", MOBILE_REFUSED)
        methods.remove(method)
        return None

    # -- groups -------------------------------------------------------------------------------------
    @staticmethod
    def render_group(group: dict, select: list[str] | None) -> dict:
        return {k: group.get(k) for k in (select or GROUP_DEFAULT_SELECT)} | {"id": group["id"]}

    def list_groups(self, call: Call):
        groups = list(call.tenant.groups.values())
        if "$filter" in call.query:
            found = self.parse_filter(call.query["$filter"], False, fields=("displayName", "id"))
            if isinstance(found, Response):
                return found
            groups = [g for g in groups if found[0](g)]
        return self._page([self.render_group(g, self._select(call)) for g in groups], call)

    def get_group(self, call: Call, group_id):
        return self.render_group(call.tenant.groups[group_id], self._select(call))

    @staticmethod
    def _mastered_elsewhere(group: dict) -> Response | None:
        """What Graph answers a cloud write to a synced group, a mail-enabled security group or a distribution list
        (members and owners alike: AD or Exchange holds them)."""
        if group["onPremisesSyncEnabled"]:
            return graph_error(400, "Request_BadRequest", SYNCED_REFUSED)
        if group["mailEnabled"] and "Unified" not in group["groupTypes"]:
            return graph_error(400, "Request_BadRequest", "Cannot Update a mail-enabled security groups and or "
                               "distribution list.")
        return None

    @classmethod
    def _membership_refusal(cls, group: dict) -> Response | None:
        """What Graph answers a cloud write to the members of a group the cloud does not own."""
        if "DynamicMembership" in group["groupTypes"]:
            return graph_error(400, "Request_BadRequest", "Insufficient privileges: members of a group with dynamic "
                               "membership cannot be changed.")
        return cls._mastered_elsewhere(group)

    def _add_reference(self, call: Call, group_id: str, collection: str, refusal) -> Response | None:
        """POST groups/{id}/members/$ref or owners/$ref: a user by its @odata.id, once."""
        tenant, group = call.tenant, call.tenant.groups[group_id]
        base = call.url.split("/v1.0", 1)[0]
        reference = re.fullmatch(re.escape(base) + r"/v1\.0/(?:directoryObjects|users)/([^/]+)",
                                 str(call.body.get("@odata.id", "")))
        if not reference:
            return graph_error(400, "Request_BadRequest", "Invalid URL format specified in @odata.id.")
        if reference.group(1) not in tenant.users:
            return graph_error(404, "Request_ResourceNotFound", f"Resource '{reference.group(1)}' does not exist or "
                               "one of its queried reference-property objects are not present.")
        if refused := refusal(group):
            return refused
        if reference.group(1) in group[collection]:
            return graph_error(400, "Request_BadRequest", "One or more added object references already exist for the "
                               f"following modified properties: '{collection}'.")
        group[collection].add(reference.group(1))
        return None

    def add_member(self, call: Call, group_id):
        return self._add_reference(call, group_id, "members", self._membership_refusal)

    def remove_member(self, call: Call, group_id, user_id):
        group = call.tenant.groups[group_id]
        if refused := self._membership_refusal(group):
            return refused
        if user_id not in group["members"]:
            raise KeyError(user_id)
        group["members"].discard(user_id)
        return None

    def subscribed_skus(self, call: Call):
        consumed = call.tenant.consumed()
        return self._page([{**s, "consumedUnits": consumed[s["skuId"]]} for s in call.tenant.skus.values()], call)


    # -- Teams Phone numbers ---------------------------------------------------------------------
    def number_assignments(self, call: Call):
        found = re.fullmatch(r"(assignmentTargetId|telephoneNumber) eq '([^']+)'", call.query.get("$filter", ""))
        if "$filter" in call.query and not found:
            return graph_error(400, "BadRequest", "the sandbox answers only $filter=assignmentTargetId (or "
                                                  "telephoneNumber) eq '...'")
        items = [dict(a) for a in call.tenant.phone_numbers.values() if not found or a[found.group(1)] == found.group(2)]
        return self._page(items, call)

    def order_number(self, call: Call, action):
        """An asynchronous order, as Teams takes it: 202 and the Location of an operation; the change lands when
        the operation reads back `succeeded`, after `operation_polls` reads that say `running`."""
        tenant, body = call.tenant, call.body
        assignment = tenant.phone_numbers.get(body.get("telephoneNumber", ""))
        if assignment is None:
            return graph_error(404, "NotFound", f"Telephone number {body.get('telephoneNumber')} is not in the tenant.")
        if action == "assignNumber" and body.get("assignmentTargetId") not in tenant.users:
            return graph_error(400, "BadRequest", "The assignment target does not exist.")
        op_id = tenant._id()
        tenant.operations[op_id] = {"action": action, "number": body["telephoneNumber"], "body": dict(body),
                                    "reads": 0, "status": "running", "created": stamp()}
        base = call.url.split("/v1.0", 1)[0]
        return Response(202, {"Location": f"{base}/v1.0{NUMBERS}/operations/{op_id}"})

    def number_operation(self, call: Call, op_id):
        tenant = call.tenant
        op = tenant.operations[op_id]
        if op["status"] == "running" and op["reads"] >= tenant.operation_polls:
            refusal = tenant.number_refusals.pop(op["number"], None)
            op["status"], op["detail"] = ("failed", refusal) if refusal else ("succeeded", "")
            if not refusal:
                assignment = tenant.phone_numbers[op["number"]]
                if op["action"] == "unassignNumber":
                    assignment.update(assignmentTargetId=None, assignmentStatus="unassigned")
                else:
                    assignment.update(assignmentTargetId=op["body"]["assignmentTargetId"],
                                      assignmentStatus="userAssigned",
                                      assignmentCategory=op["body"].get("assignmentCategory", "primary"))
        op["reads"] += 1
        return {"id": op_id, "createdDateTime": op["created"], "status": op["status"],
                "numbers": [{"status": op["status"], "statusDetail": op.get("detail", ""),
                             "resourceLocation": op["number"]}]}
    # -- ownership ----------------------------------------------------------------------------------
    def owned_groups(self, call: Call, user_id):
        call.tenant.users[user_id]
        owned = [g for g in call.tenant.groups.values() if user_id in g["owners"]]
        return self._page([{"@odata.type": "#microsoft.graph.group", **self.render_group(g, self._select(call))}
                           for g in owned], call)

    def list_owners(self, call: Call, group_id):
        tenant = call.tenant
        return self._page([{"@odata.type": "#microsoft.graph.user", **self.render_user(tenant, u, self._select(call))}
                           for u in sorted(tenant.groups[group_id]["owners"])], call)

    def add_owner(self, call: Call, group_id):
        return self._add_reference(call, group_id, "owners", self._mastered_elsewhere)

    def remove_owner(self, call: Call, group_id, user_id):
        group = call.tenant.groups[group_id]
        if refused := self._mastered_elsewhere(group):
            return refused
        if user_id not in group["owners"]:
            raise KeyError(user_id)
        if group["owners"] == {user_id}:
            return graph_error(400, "Request_BadRequest", LAST_OWNER_REFUSED)
        group["owners"].discard(user_id)
        return None

    # -- delegated consents -------------------------------------------------------------------------
    def list_grants(self, call: Call, user_id):
        call.tenant.users[user_id]
        return self._page([dict(g) for g in call.tenant.grants if g["principalId"] == user_id], call)

    def create_grant(self, call: Call):
        body, tenant = call.body, call.tenant
        if body.get("consentType") not in ("Principal", "AllPrincipals") or not body.get("clientId") \
                or not body.get("resourceId") or (body["consentType"] == "Principal") != bool(body.get("principalId")):
            return graph_error(400, "Request_BadRequest", "clientId, consentType, resourceId (and principalId for "
                               "consentType Principal) are required.")
        if body.get("principalId") and body["principalId"] not in tenant.users:
            return graph_error(404, "Request_ResourceNotFound", f"Resource '{body['principalId']}' does not exist.")
        key = lambda g: (g["clientId"], g["consentType"], g.get("principalId"), g["resourceId"])   # noqa: E731
        if any(key(g) == key(body) for g in tenant.grants):
            return graph_error(409, "Request_MultipleObjectsWithSameKeyValue", "Permission entry already exists.")
        grant = {"id": tenant._id(), "scope": "", **{k: body.get(k) for k in ("clientId", "consentType", "principalId",
                                                                            "resourceId", "scope")}}
        tenant.grants.append(grant)
        return json_response(201, grant)

    def delete_grant(self, call: Call, grant_id):
        grant = next((g for g in call.tenant.grants if g["id"] == grant_id), None)
        if grant is None:
            raise KeyError(grant_id)
        call.tenant.grants.remove(grant)
        return None

    # -- Intune -------------------------------------------------------------------------------------
    def list_devices(self, call: Call, user_id):
        call.tenant.users[user_id]
        select = self._select(call)
        devices = [d for d in call.tenant.devices.values() if d["userId"] == user_id]
        return self._page([{k: d.get(k) for k in (select or d)} | {"id": d["id"]} for d in devices], call)

    def device_action(self, call: Call, device_id, verb):
        device = call.tenant.devices[device_id]
        if verb == "wipe" and device["managedDeviceOwnerType"] == "personal":
            return graph_error(400, "BadRequest", "Wipe is not supported on a personally owned device: retire it.")
        if device["managementState"] != "managed":
            return graph_error(400, "BadRequest", f"The device is {device['managementState']}: no other action "
                               "can be issued until it completes.")
        device["managementState"] = f"{verb}Pending"
        return None

    # -- OneDrive -----------------------------------------------------------------------------------
    def _drive(self, call: Call, user_id) -> dict:
        call.tenant.users[user_id]
        if user_id not in call.tenant.drives:
            raise KeyError("drive")           # no OneDrive provisioned: Graph answers 404
        return call.tenant.drives[user_id]

    def drive_root(self, call: Call, user_id):
        drive = self._drive(call, user_id)
        root = {"id": drive["id"], "name": "root", "webUrl": drive["webUrl"], "root": {}}
        return {k: root.get(k) for k in (self._select(call) or root)} | {"id": drive["id"]}

    def drive_permissions(self, call: Call, user_id):
        return self._page([dict(p) for p in self._drive(call, user_id)["permissions"]], call)

    def drive_invite(self, call: Call, user_id):
        drive, body, tenant = self._drive(call, user_id), call.body, call.tenant
        if not body.get("recipients") or not body.get("roles") or set(body["roles"]) - {"read", "write"}:
            return graph_error(400, "invalidRequest", "recipients and roles (read or write) are required.")
        granted = []
        for recipient in body["recipients"]:
            users = tenant.named(recipient.get("email", ""))
            if not users:
                return graph_error(400, "invalidRequest", "New guests can't be invited using app-only access.")
            user = tenant.users[users[0]]
            permission = next((p for p in drive["permissions"] if p["grantedToV2"]["user"]["id"] == user["id"]), None)
            if permission is None:
                permission = {"id": tenant._id(), "roles": [],
                              "grantedToV2": {"user": {"id": user["id"], "email": user["userPrincipalName"]}}}
                drive["permissions"].append(permission)
            permission["roles"] = sorted({*permission["roles"], *body["roles"]})
            granted.append(dict(permission))
        return {"value": granted}

    def drive_unshare(self, call: Call, user_id, permission_id):
        drive = self._drive(call, user_id)
        permission = next((p for p in drive["permissions"] if p["id"] == permission_id), None)
        if permission is None:
            raise KeyError(permission_id)
        if "owner" in permission["roles"]:
            return graph_error(403, "accessDenied", "The owner's permission cannot be removed.")
        drive["permissions"].remove(permission)
        return None

    def _item(self, call: Call, user_id, item_id) -> dict:
        drive = self._drive(call, user_id)
        if item_id == drive["id"]:
            return {"id": drive["id"], "name": "root", "folder": True, "permissions": drive["permissions"]}
        return drive.setdefault("items", {})[item_id]

    def drive_children(self, call: Call, user_id, item_id):
        """Files and folders below one folder; `shared` only on items someone besides the owner can reach."""
        self._item(call, user_id, item_id)
        items = [i for i in self._drive(call, user_id).get("items", {}).values() if i["parent"] == item_id]
        out = []
        for item in items:
            facets = {"id": item["id"], "name": item["name"]}
            if item["folder"]:
                facets["folder"] = {"childCount": sum(1 for i in items if i["parent"] == item["id"])}
            if any("owner" not in p.get("roles", []) for p in item["permissions"]):
                facets["shared"] = {"scope": "users"}
            out.append({k: v for k, v in facets.items() if k in (self._select(call) or facets) or k == "id"})
        return self._page(out, call)

    def item_permissions(self, call: Call, user_id, item_id):
        return self._page([dict(p) for p in self._item(call, user_id, item_id)["permissions"]], call)

    def delete_item_permission(self, call: Call, user_id, item_id, permission_id):
        permissions = self._item(call, user_id, item_id)["permissions"]
        permission = next((p for p in permissions if p["id"] == permission_id), None)
        if permission is None:
            raise KeyError(permission_id)
        if permission.get("inheritedFrom"):
            return graph_error(400, "invalidRequest", "Only sharing permissions that are not inherited can be deleted.")
        if "owner" in permission.get("roles", []):
            return graph_error(403, "accessDenied", "The owner's permission cannot be removed.")
        permissions.remove(permission)
        return None

    # -- mail and calendar --------------------------------------------------------------------------
    def list_rules(self, call: Call, user_id):
        return self._page([dict(r) for r in call.tenant.rules[user_id]], call)

    def patch_rule(self, call: Call, user_id, rule_id):
        rule = next((r for r in call.tenant.rules[user_id] if r["id"] == rule_id), None)
        if rule is None:
            raise KeyError(rule_id)
        if rule["isReadOnly"]:
            return graph_error(403, "ErrorAccessDenied", "The rule is read-only.")
        rule.update({k: v for k, v in call.body.items() if k in ("isEnabled", "displayName", "sequence")})
        return dict(rule)

    def calendar_view(self, call: Call, user_id):
        """Events overlapping startDateTime..endDateTime (both required, as in Graph)."""
        start, end = call.query.get("startDateTime"), call.query.get("endDateTime")
        if not start or not end:
            return graph_error(400, "ErrorInvalidParameter", "This request requires a time window specified by the "
                               "query string parameters StartDateTime and EndDateTime.")
        inside = [e for e in call.tenant.events[user_id] if not e["isCancelled"]
                  and start[:19] <= e["start"]["dateTime"][:19] < end[:19]]
        select = self._select(call)
        return self._page([{k: e.get(k) for k in (select or e)} | {"id": e["id"]} for e in inside], call)
