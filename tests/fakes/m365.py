"""A stateful Microsoft 365 tenant behind `responses`: Graph v1.0, the Exchange admin endpoint and login.

Writes really change its state, and it bites where Graph bites: properties outside the
default set come back only when named in `$select`; batch sub-requests with a body
need a Content-Type; more than 20 sub-requests is a 400; `$skip` on users is refused;
`$search` and `$count` need `ConsistencyLevel: eventual`; synced objects, dynamic
groups and mail-enabled groups refuse cloud writes; a member added twice is a 400; the default MFA method cannot be
deleted while others remain, nor a `mobile` phone while an `alternateMobile` exists;
PIM answers `AadPremiumLicenseRequired` in a tenant without P2; Exchange wants the
app-only anchor on tenant-level cmdlets and names a missing permission or role the way
the service does. Every Graph request, batch sub-requests included, is checked against
the v1.0 CSDL (`violations`).

Faults are injected per scope (`faults["batch_item"] = [424, 503]`: the next sub-requests
answer those), as are forged `@odata.nextLink`s (`next_link`) and raw bodies (`raw`).
msal is real: only its HTTP calls (discovery document, token endpoint) are answered here.
"""
from __future__ import annotations

import datetime as dt
import html
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import responses

from connector import config, plugins
from connector.model import Termination
from connector.providers.microsoft365 import auth
from connector.sandbox.contract import SchemaViolation, graph_schema

TENANT_ID = "7f3c2a9e-1111-4c2b-9d7e-0a1b2c3d4e5f"
CLIENT_ID = "5b8e1d2c-2222-4e3f-8a9b-1c2d3e4f5a6b"
AUTHORITY = "https://login.microsoftonline.com"
GRAPH = "https://graph.microsoft.com"
EXCHANGE = "https://outlook.office365.com"
DEFAULT_USER_SELECT = ("businessPhones", "displayName", "givenName", "id", "jobTitle", "mail", "mobilePhone",
                       "officeLocation", "preferredLanguage", "surname", "userPrincipalName")
GB = 1024 ** 3
PAGE = 100


def stamp(when: dt.datetime | None = None) -> str:
    return (when or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")


def graph_error(status: int, code: str, message: str, headers: dict | None = None):
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(
        {"error": {"code": code, "message": message}})


NO_GUID = "00000000-0000-0000-0000-000000000000"
#: what each injected status answers with
FAULTS = {424: ("FailedDependency", "The request failed because of a failed dependency."),
          429: ("TooManyRequests", "Too many requests"),
          503: ("ServiceUnavailable", "The service is temporarily unavailable.")}
DEFAULT_REFUSED = "Cannot delete default method with other methods configured. Please change default method before deletion."
MOBILE_REFUSED = ("A user can't have an alternateMobile number without a mobile number: delete the alternateMobile "
                  "number first.")
#: kinds that do not hold the default method in place (not MFA methods a default could fall back to)
NOT_BLOCKING_DEFAULT = {"password", "qrCodePin"}


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
    converting_to: str | None = None
    reads_until_converted: int = 0
    conversion_reads: int = 1          # Get-Mailbox reads that still show the old type after Set-Mailbox -Type

    def read_type(self) -> str:
        """The conversion to shared is asynchronous: it shows only on a later read."""
        if self.converting_to:
            if self.reads_until_converted == 0:
                self.kind, self.converting_to = self.converting_to, None
            else:
                self.reads_until_converted -= 1
        return self.kind


class FakeM365:
    def __init__(self, rsps: responses.RequestsMock, client_secret: str, *, authority: str = AUTHORITY,
                 graph: str = GRAPH, exchange: str = EXCHANGE, tenant_id: str = TENANT_ID):
        self.tenant_id, self.client_secret = tenant_id, client_secret
        self.authority, self.graph_url, self.exchange_url = authority, graph, exchange
        self.users: dict[str, dict] = {}
        self.groups: dict[str, dict] = {}
        self.roles: dict[str, dict] = {}                 # role definitions: id -> {id, displayName, isBuiltIn}
        self.assignments: list[dict] = []                # {id, principalId, roleDefinitionId, directoryScopeId, eligible}
        self.pim_licensed = True
        self.skus: dict[str, dict] = {}
        self.methods: dict[str, list[dict]] = {}
        self.default_method: dict[str, str] = {}          # user id -> id of the default MFA method
        self.batch_view: dict[str, list[dict]] | None = None     # the methods as the $batch being run found them
        self.mailboxes: dict[str, Mailbox] = {}
        self.accepted_domains = [{"DomainName": "contoso.com", "DomainType": "Authoritative", "Default": True},
                                 {"DomainName": "contoso.onmicrosoft.com", "DomainType": "Authoritative",
                                  "Default": False}]
        self.tokens: dict[str, str] = {}                 # token -> scope
        self.calls: list[tuple[str, str, str]] = []      # (service, method, path) of every HTTP request
        self.anchors: list[tuple[str, str]] = []         # (cmdlet, X-AnchorMailbox) of every Exchange call
        self.violations: list[str] = []
        self.throttles: dict[str, int] = {"graph": 0, "batch_item": 0, "exchange": 0}     # that many 429s
        self.faults: dict[str, list[int]] = {"graph": [], "batch": [], "batch_item": [], "exchange": []}
        self.retry_after = "0"
        self.denied: list[tuple[str, str, str]] = []     # (method, path regex, permission)
        self.exchange_denied = ""                         # "permission" (no Exchange.ManageAsApp) or "role"
        self.next_link: str | None = None                # forged on every collection page; "SELF": the page itself
        self.raw: dict[str, str] = {}                    # Graph path regex, or "exchange:CMDLET" -> a 200 body as it is
        self.failing: dict[str, int] = {}                # Graph path regex -> the status it answers, batched or not
        self.exchange_page = 1000
        self.rsps = rsps
        self.lock = threading.RLock()
        base = f"{authority}/{tenant_id}"
        rsps.add(responses.GET, f"{base}/v2.0/.well-known/openid-configuration", json={
            "token_endpoint": f"{base}/oauth2/v2.0/token", "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "issuer": f"{base}/v2.0", "jwks_uri": f"{authority}/{tenant_id}/discovery/v2.0/keys"})
        rsps.add_callback(responses.POST, f"{base}/oauth2/v2.0/token", callback=self._token)
        host = urlsplit(authority).hostname    # msal asks a host it knows for its aliases after a refused token
        rsps.add(responses.GET, re.compile(re.escape(f"{authority}/common/discovery/instance") + ".*"), json={
            "tenant_discovery_endpoint": f"{base}/v2.0/.well-known/openid-configuration", "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}]})
        for method in ("GET", "POST", "PATCH", "DELETE"):
            rsps.add_callback(method, re.compile(re.escape(graph) + r"/v1\.0/.*"), callback=self._graph)
        rsps.add_callback(responses.POST, re.compile(re.escape(f"{exchange}/adminapi/beta/{tenant_id}/InvokeCommand") + ".*"),
                          callback=self._exchange)

    # -- building the tenant -------------------------------------------------
    def _id(self) -> str:
        return str(uuid.uuid4())

    def add_sku(self, part: str, prepaid: int = 100) -> str:
        sku_id = self._id()
        self.skus[sku_id] = {"skuId": sku_id, "skuPartNumber": part, "prepaidUnits": {"enabled": prepaid}}
        return sku_id

    def sku(self, part: str) -> str:
        return next(s for s, v in self.skus.items() if v["skuPartNumber"] == part)

    def add_group(self, name: str, *, dynamic: bool = False, synced: bool = False, mail_enabled: bool = False,
                  unified: bool = False, licences: tuple[str, ...] = (), role_assignable: bool = False) -> str:
        group_id = self._id()
        types = (["Unified"] if unified else []) + (["DynamicMembership"] if dynamic else [])
        self.groups[group_id] = {"id": group_id, "displayName": name, "groupTypes": types,
                                 "mailEnabled": mail_enabled or unified, "securityEnabled": not unified,
                                 "onPremisesSyncEnabled": True if synced else None,
                                 "mail": f"{name.lower().replace(' ', '-')}@contoso.com" if mail_enabled or unified else None,
                                 "isAssignableToRole": role_assignable,
                                 "licences": [self.sku(p) for p in licences], "members": set()}
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
                 proxies: tuple[str, ...] = (), manager: str = "", immutable_id: str = "") -> str:
        """`methods` are kinds (`phone` is a mobile; `phone:alternateMobile` names the type); `default` is one of them.
        `immutable_id` is a synced user's onPremisesImmutableId: the base64 objectGUID of its AD account."""
        user_id = self._id()
        given, _, family = upn.split("@")[0].partition(".")
        old = stamp(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
        self.users[user_id] = {
            "id": user_id, "userPrincipalName": upn, "mail": upn, "displayName": f"{given} {family}".title(),
            "givenName": given.title(), "surname": family.title(), "employeeId": employee_id,
            "proxyAddresses": [f"SMTP:{upn}"] + [f"smtp:{p}" for p in proxies], "accountEnabled": enabled,
            "onPremisesSyncEnabled": True if synced else None, "signInSessionsValidFromDateTime": old,
            "onPremisesImmutableId": immutable_id or None,
            "lastPasswordChangeDateTime": old, "businessPhones": [], "jobTitle": None, "mobilePhone": None,
            "officeLocation": None, "preferredLanguage": None, "direct": [self.sku(p) for p in licences],
            "manager": self.user_by_upn(manager)["id"] if manager else None}
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
        return user_id

    def sync(self, upn: str) -> None:
        """The directory sync carries the AD disable of a synced user to Entra (at its next cycle)."""
        user = self.user_by_upn(upn)
        assert user["onPremisesSyncEnabled"], f"{upn} is not synced"
        user["accountEnabled"] = False

    def group_named(self, name: str) -> dict:
        return next(g for g in self.groups.values() if g["displayName"] == name)

    def user_by_upn(self, upn: str) -> dict:
        return next(u for u in self.users.values() if u["userPrincipalName"].lower() == upn.lower())

    # -- derived state, as Graph computes it --------------------------------
    def licence_states(self, user_id: str) -> list[dict]:
        user = self.users[user_id]
        states = [{"skuId": s, "assignedByGroup": None, "state": "Active", "disabledPlans": []} for s in user["direct"]]
        for group in self.groups.values():
            if user_id in group["members"]:
                states += [{"skuId": s, "assignedByGroup": group["id"], "state": "Active", "disabledPlans": []}
                           for s in group["licences"]]
        return states

    def render_user(self, user_id: str, select: list[str] | None) -> dict:
        user = dict(self.users[user_id])
        user["licenseAssignmentStates"] = self.licence_states(user_id)
        user["assignedLicenses"] = [{"skuId": s, "disabledPlans": []}
                                    for s in dict.fromkeys(x["skuId"] for x in user["licenseAssignmentStates"])]
        return {k: user.get(k) for k in (select or DEFAULT_USER_SELECT)} | {"id": user_id}

    def consumed(self, sku_id: str) -> int:
        return sum(1 for u in self.users if any(s["skuId"] == sku_id for s in self.licence_states(u)))

    def snapshot(self, upn: str) -> dict:
        """Everything a leaver's offboarding can change, read from the fake's state (not through a provider)."""
        user = self.user_by_upn(upn)
        user_id = user["id"]
        mailbox = self.mailboxes.get(upn.lower())
        return {
            "accountEnabled": user["accountEnabled"], "password": user["lastPasswordChangeDateTime"],
            "sessions": user["signInSessionsValidFromDateTime"],
            "licences": sorted((self.skus[s["skuId"]]["skuPartNumber"], s["assignedByGroup"] or "")
                               for s in self.licence_states(user_id)),
            "groups": sorted(g["displayName"] for g in self.groups.values() if user_id in g["members"]),
            "methods": sorted(m["@odata.type"] + (f":{m['phoneType']}" if "phoneType" in m else "")
                              for m in self.methods[user_id]),
            "mailbox": mailbox and {"type": mailbox.converting_to or mailbox.kind, "forwarding": mailbox.forwarding,
                                    "hidden": mailbox.hidden, "permissions": json.dumps(mailbox.permissions),
                                    "auto_reply": json.dumps(mailbox.auto_reply), "devices": json.dumps(mailbox.devices)},
        }

    def count(self, service: str, method: str | None = None) -> int:
        return sum(1 for s, m, _ in self.calls if s == service and (method is None or m == method))

    # -- login ---------------------------------------------------------------
    def _token(self, request):
        form = {k: v[0] for k, v in parse_qs(request.body if isinstance(request.body, str) else request.body.decode()).items()}
        self.calls.append(("login", "POST", "token"))
        if form.get("client_id") != CLIENT_ID or (form.get("client_secret") != self.client_secret
                                                  and "client_assertion" not in form):
            return 401, {"Content-Type": "application/json"}, json.dumps(
                {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided.\nTrace"})
        token = f"eyJ0eXAi.fake-{uuid.uuid4().hex}"
        self.tokens[token] = form["scope"]
        return 200, {"Content-Type": "application/json"}, json.dumps(
            {"token_type": "Bearer", "expires_in": 3599, "access_token": token})

    def _authorized(self, request, resource: str) -> bool:
        token = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
        return self.tokens.get(token) == f"{resource}/.default"

    def _fault(self, scope: str):
        """The injected answer due in `scope` (an entry of `faults`, else one of `throttles`' 429s), or None."""
        if self.faults[scope]:
            status = self.faults[scope].pop(0)
        elif self.throttles.get(scope, 0) > 0:
            self.throttles[scope] -= 1
            status = 429
        else:
            return None
        return graph_error(status, *FAULTS[status], {"Retry-After": self.retry_after})

    def _forge(self, page: dict, url: str) -> dict:
        if self.next_link:
            page["@odata.nextLink"] = url if self.next_link == "SELF" else self.next_link
        return page

    # -- Graph -----------------------------------------------------------------
    def _graph(self, request):
        with self.lock:
            path = urlsplit(request.url).path.split("/v1.0", 1)[1]
            self.calls.append(("graph", request.method, path))
            if not self._authorized(request, self.graph_url):
                return graph_error(401, "InvalidAuthenticationToken", "Access token is empty or invalid.")
            fault = self._fault("graph") or (self._fault("batch") if path == "/$batch" else None)
            if fault:
                return fault
            raw = next((text for pattern, text in self.raw.items() if re.fullmatch(pattern, path)), None)
            if raw is not None:
                return 200, {"Content-Type": "text/html" if raw.startswith("<") else "application/json"}, raw
            body = json.loads(request.body) if request.body else None
            status, headers, text = self.dispatch(request.method, request.url, body, request.headers)
            return status, headers, text

    def dispatch(self, method: str, url: str, body, headers) -> tuple[int, dict, str]:
        try:
            graph_schema().check(method, url, body)
        except SchemaViolation as e:
            self.violations.append(str(e))
            return graph_error(400, "BadRequest", f"Resource not found for the segment or property: {e}")
        parts = urlsplit(url)
        path = parts.path.split("/v1.0", 1)[-1]
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        for denied_method, pattern, permission in self.denied:
            if method == denied_method and re.fullmatch(pattern, path):
                return graph_error(403, "Authorization_RequestDenied",
                                   f"Missing scope permissions on the request. API requires one of '{permission}'. "
                                   "Scopes on the request 'User.Read.All'")
        for pattern, status in self.failing.items():
            if re.fullmatch(pattern, path):
                return graph_error(status, "InternalServerError" if status == 500 else "Failing", f"HTTP {status}",
                                   {"Retry-After": self.retry_after})
        for route, handler in self.routes():
            found = re.fullmatch(route, f"{method} {path}")
            if found:
                try:
                    answer = handler(*found.groups(), query=query, body=body, headers=headers, url=url)
                except KeyError:
                    return graph_error(404, "Request_ResourceNotFound",
                                       f"Resource '{path.split('/')[2]}' does not exist or one of its queried "
                                       "reference-property objects are not present.")
                if isinstance(answer, tuple):
                    return answer
                return (204, {}, "") if answer is None else (200, {"Content-Type": "application/json"}, json.dumps(answer))
        return graph_error(400, "BadRequest", f"fake has no route for {method} {path}")

    def routes(self):
        guid = r"([^/?]+)"
        return [
            (r"POST /\$batch", self.batch),
            (r"GET /users", self.list_users),
            (rf"GET /users/{guid}", self.get_user),
            (rf"PATCH /users/{guid}", self.patch_user),
            (rf"POST /users/{guid}/revokeSignInSessions", self.revoke_sessions),
            (rf"POST /users/{guid}/assignLicense", self.assign_license),
            (rf"GET /users/{guid}/memberOf", self.member_of),
            (rf"GET /users/{guid}/manager", self.manager_of),
            (r"GET /roleManagement/directory/(roleAssignments|roleEligibilityScheduleInstances)", self.role_reads),
            (rf"GET /users/{guid}/authentication/methods", self.list_methods),
            (rf"DELETE /users/{guid}/authentication/(\w+)/{guid}", self.delete_method),
            (r"GET /groups", self.list_groups),
            (rf"GET /groups/{guid}", self.get_group),
            (rf"POST /groups/{guid}/members/\$ref", self.add_member),
            (rf"DELETE /groups/{guid}/members/{guid}/\$ref", self.remove_member),
            (r"GET /subscribedSkus", self.subscribed_skus),
        ]

    def batch(self, query, body, headers, url):
        """Graph runs sub-requests side by side (no `dependsOn` here): where order matters (MFA methods), each one
        is judged on the tenant as the batch found it."""
        requests_ = body.get("requests", [])
        if len(requests_) > 20:
            return graph_error(400, "BadRequest", "The number of batch requests exceeds the limit of 20.")
        out = []
        self.batch_view = {user: list(methods) for user, methods in self.methods.items()}
        for sub in requests_:
            self.calls.append(("graph-sub", sub["method"], sub["url"].split("?")[0]))
            sub_headers = sub.get("headers") or {}
            if "body" in sub and not any(k.lower() == "content-type" for k in sub_headers):
                status, hdrs, text = graph_error(400, "BadRequest", "Content-Type header is required for a request "
                                                 "with a body.")
            elif fault := self._fault("batch_item"):
                status, hdrs, text = fault
            else:
                status, hdrs, text = self.dispatch(sub["method"], self.graph_url + "/v1.0" + sub["url"],
                                                   sub.get("body"), sub_headers)
            out.append({"id": sub["id"], "status": status, "headers": hdrs, "body": json.loads(text) if text else None})
        self.batch_view = None
        return {"responses": out}

    @staticmethod
    def _select(query) -> list[str] | None:
        return query["$select"].split(",") if "$select" in query else None

    def _page(self, items: list[dict], query, url: str) -> dict:
        start = int(query.get("$skiptoken", 0))
        size = int(query.get("$top", PAGE))
        page = {"value": items[start:start + size]}
        if start + size < len(items):
            parts = urlsplit(url)
            page["@odata.nextLink"] = parts._replace(query=urlencode({**query, "$skiptoken": start + size})).geturl()
        return self._forge(page, url)

    def list_users(self, query, body, headers, url):
        advanced = headers.get("ConsistencyLevel") == "eventual"
        if "$skip" in query:
            return graph_error(400, "Request_BadRequest", "'$skip' is not supported by the service.")
        if ("$search" in query or "$count" in query) and not advanced:
            return graph_error(400, "Request_BadRequest", "$search and $count need the ConsistencyLevel: eventual header.")
        users = list(self.users)
        if "$filter" in query:
            predicate = self.parse_filter(query["$filter"], advanced)
            if isinstance(predicate, tuple):
                return predicate
            users = [u for u in users if predicate(self.users[u])]
        return self._page([self.render_user(u, self._select(query)) for u in users], query, url)

    def parse_filter(self, text: str, advanced: bool,
                     fields: tuple[str, ...] = ("employeeId", "userPrincipalName", "mail", "id")):
        """`a eq 'x' or proxyAddresses/any(p:p eq 'y')`: what matching needs, compared case-insensitively."""
        tests = []
        for clause in re.split(r"\s+or\s+(?=(?:[^']*'[^']*')*[^']*$)", text):
            simple = re.fullmatch(r"(\w+) eq '((?:[^']|'')*)'", clause.strip())
            anyof = re.fullmatch(r"proxyAddresses/any\((\w+):\1 eq '((?:[^']|'')*)'\)", clause.strip())
            if simple and simple.group(1) in fields:
                prop, value = simple.group(1), simple.group(2).replace("''", "'").lower()
                tests.append(lambda u, p=prop, v=value: (u.get(p) or "").lower() == v)
            elif anyof:
                value = anyof.group(2).replace("''", "'").lower()
                tests.append(lambda u, v=value: v in (p.lower() for p in u["proxyAddresses"]))
            elif re.search(r"endsWith|\bne\b|\bnot\b", clause) and not advanced:
                return graph_error(400, "Request_UnsupportedQuery", "Unsupported or invalid query filter clause "
                                   "specified for property; needs ConsistencyLevel: eventual and $count=true.")
            else:
                return graph_error(400, "Request_UnsupportedQuery", f"fake does not understand filter {clause!r}")
        return lambda user: any(test(user) for test in tests)

    def get_user(self, user_id, query, **_):
        self.users[user_id]
        return self.render_user(user_id, self._select(query))

    def patch_user(self, user_id, body, **_):
        user = self.users[user_id]
        if user["onPremisesSyncEnabled"] and {"accountEnabled", "passwordProfile"} & set(body):
            return graph_error(400, "Request_BadRequest", "Unable to update the specified properties for on-premises "
                               "mastered Directory Sync objects or objects currently undergoing migration.")
        if "accountEnabled" in body:
            user["accountEnabled"] = body["accountEnabled"]
        if "passwordProfile" in body:
            if len(body["passwordProfile"].get("password", "")) < 8:
                return graph_error(400, "Request_BadRequest", "The specified password does not comply with password "
                                   "complexity requirements.")
            user["lastPasswordChangeDateTime"] = stamp()
        return None

    def revoke_sessions(self, user_id, **_):
        self.users[user_id]["signInSessionsValidFromDateTime"] = stamp()
        return {"value": True}

    def assign_license(self, user_id, body, **_):
        user = self.users[user_id]
        if set(body) != {"addLicenses", "removeLicenses"}:
            return graph_error(400, "Request_BadRequest", "addLicenses and removeLicenses are both required.")
        for sku in body["removeLicenses"]:
            if sku not in user["direct"]:
                inherited = any(s["skuId"] == sku for s in self.licence_states(user_id))
                return graph_error(400, "Request_BadRequest", "User license is inherited from a group membership and "
                                   "it cannot be removed directly from the user." if inherited else
                                   f"License {sku} does not correspond to a valid company License.")
        user["direct"] = [s for s in user["direct"] if s not in body["removeLicenses"]]
        user["direct"] += [a["skuId"] for a in body["addLicenses"] if a["skuId"] not in user["direct"]]
        return self.render_user(user_id, None)

    def member_of(self, user_id, query, url, **_):
        """Direct groups, and the directory roles held directly (active, built-in, tenant-wide), as Graph lists them."""
        self.users[user_id]
        select = self._select(query)
        out = []
        for group in self.groups.values():
            if user_id in group["members"]:
                out.append({"@odata.type": "#microsoft.graph.group",
                            **{k: group.get(k) for k in (select or ["id", "displayName", "mail"])}})
        for a in self.assignments:
            role = self.roles[a["roleDefinitionId"]]
            if a["principalId"] == user_id and not a["eligible"] and a["directoryScopeId"] == "/" and role["isBuiltIn"]:
                out.append({"@odata.type": "#microsoft.graph.directoryRole", "id": role["id"],
                            "displayName": role["displayName"]})
        return self._page(out, query, url)

    def manager_of(self, user_id, query, **_):
        manager = self.users[user_id]["manager"]
        if manager is None:
            raise KeyError(user_id)
        return {"@odata.type": "#microsoft.graph.user", **self.render_user(manager, self._select(query))}

    def role_reads(self, collection, query, url, **_):
        """Assignments or PIM eligibilities of one principal, `$filter=principalId eq '...'`, `$expand=roleDefinition`."""
        eligible = collection == "roleEligibilityScheduleInstances"
        if eligible and not self.pim_licensed:
            return graph_error(400, "AadPremiumLicenseRequired",
                               "The tenant needs to have Microsoft Entra ID P2 or Microsoft Entra ID Governance license.")
        found = re.fullmatch(r"principalId eq '([^']+)'", query.get("$filter", ""))
        if not found:
            return graph_error(400, "BadRequest", f"fake answers only $filter=principalId eq '...', not {query}")
        expand = query.get("$expand") == "roleDefinition"
        out = []
        for a in self.assignments:
            if a["principalId"] == found.group(1) and a["eligible"] == eligible:
                item = {k: v for k, v in a.items() if k != "eligible"}
                if eligible:
                    item.update(memberType="Direct", startDateTime=stamp(), endDateTime=None)
                if expand:
                    item["roleDefinition"] = dict(self.roles[a["roleDefinitionId"]])
                out.append(item)
        return self._page(out, query, url)

    def list_methods(self, user_id, query, url, **_):
        return self._page(list(self.methods[user_id]), query, url)

    def delete_method(self, user_id, collection, method_id, **_):
        methods = self.methods[user_id]
        method = next((m for m in methods if m["id"] == method_id), None)
        if method is None:
            raise KeyError(method_id)
        kind = method["@odata.type"].removeprefix("#microsoft.graph.").removesuffix("AuthenticationMethod")
        if kind == "password":
            return graph_error(400, "badRequest", "The password method cannot be deleted.")
        if collection != (f"{kind}Methods" if kind != "external" else "externalAuthenticationMethods"):
            return graph_error(404, "itemNotFound", f"No {collection} with id {method_id}.")
        found = (self.batch_view or {}).get(user_id, methods)
        others = [m for m in found if m is not method and m["@odata.type"].removeprefix("#microsoft.graph.")
                  .removesuffix("AuthenticationMethod") not in NOT_BLOCKING_DEFAULT]
        if self.default_method.get(user_id) == method_id and others:
            return graph_error(400, "badRequest", DEFAULT_REFUSED)
        if method.get("phoneType") == "mobile" and any(m.get("phoneType") == "alternateMobile" for m in found):
            return graph_error(400, "badRequest", MOBILE_REFUSED)
        methods.remove(method)
        return None

    GROUP_DEFAULT = ("id", "displayName", "description", "groupTypes", "mail", "mailEnabled", "securityEnabled")

    def render_group(self, group: dict, select: list[str] | None) -> dict:
        return {k: group.get(k) for k in (select or self.GROUP_DEFAULT)} | {"id": group["id"]}

    def list_groups(self, query, url, **_):
        groups = list(self.groups.values())
        if "$filter" in query:
            predicate = self.parse_filter(query["$filter"], False, fields=("displayName", "id"))
            if isinstance(predicate, tuple):
                return predicate
            groups = [g for g in groups if predicate(g)]
        return self._page([self.render_group(g, self._select(query)) for g in groups], query, url)

    def get_group(self, group_id, query, **_):
        return self.render_group(self.groups[group_id], self._select(query))

    @staticmethod
    def _membership_refusal(group: dict):
        """What Graph answers a cloud write to the members of a group the cloud does not own."""
        if "DynamicMembership" in group["groupTypes"]:
            return graph_error(400, "Request_BadRequest", "Insufficient privileges: members of a group with dynamic "
                               "membership cannot be changed.")
        if group["onPremisesSyncEnabled"]:
            return graph_error(400, "Request_BadRequest", "Unable to update the specified properties for on-premises "
                               "mastered Directory Sync objects or objects currently undergoing migration.")
        if group["mailEnabled"] and "Unified" not in group["groupTypes"]:
            return graph_error(400, "Request_BadRequest", "Cannot Update a mail-enabled security groups and or "
                               "distribution list.")
        return None

    def add_member(self, group_id, body, **_):
        group = self.groups[group_id]
        reference = re.fullmatch(re.escape(self.graph_url) + r"/v1\.0/(?:directoryObjects|users)/([^/]+)",
                                 str(body.get("@odata.id", "")))
        if not reference:
            return graph_error(400, "Request_BadRequest", "Invalid URL format specified in @odata.id.")
        if reference.group(1) not in self.users:
            return graph_error(404, "Request_ResourceNotFound", f"Resource '{reference.group(1)}' does not exist or "
                               "one of its queried reference-property objects are not present.")
        if refused := self._membership_refusal(group):
            return refused
        if reference.group(1) in group["members"]:
            return graph_error(400, "Request_BadRequest", "One or more added object references already exist for the "
                               "following modified properties: 'members'.")
        group["members"].add(reference.group(1))
        return None

    def remove_member(self, group_id, user_id, **_):
        group = self.groups[group_id]
        if refused := self._membership_refusal(group):
            return refused
        if user_id not in group["members"]:
            raise KeyError(user_id)
        group["members"].discard(user_id)
        return None

    def subscribed_skus(self, query, url, **_):
        return self._page([{**s, "consumedUnits": self.consumed(s["skuId"])} for s in self.skus.values()], query, url)

    # -- Exchange admin endpoint ------------------------------------------------
    CMDLETS = {
        "Get-Mailbox": {"Identity"},
        "Get-MailboxStatistics": {"Identity"},
        "Get-MailboxPermission": {"Identity"},
        "Get-MailboxAutoReplyConfiguration": {"Identity"},
        "Get-MobileDeviceStatistics": {"Mailbox"},
        "Set-Mailbox": {"Identity", "Type", "ForwardingSmtpAddress", "DeliverToMailboxAndForward",
                        "HiddenFromAddressListsEnabled"},
        "Add-MailboxPermission": {"Identity", "User", "AccessRights", "InheritanceType", "AutoMapping"},
        "Set-MailboxAutoReplyConfiguration": {"Identity", "AutoReplyState", "InternalMessage", "ExternalMessage",
                                              "ExternalAudience"},
        "Clear-MobileDevice": {"Identity", "AccountOnly", "Confirm"},
        "Remove-DistributionGroupMember": {"Identity", "Member", "BypassSecurityGroupManagerCheck", "Confirm"},
        "Get-AcceptedDomain": set(),
        "Get-OrganizationConfig": set(),
    }
    TENANT_LEVEL = {"Get-AcceptedDomain", "Get-OrganizationConfig"}

    @property
    def app_anchor(self) -> str:
        return f"APP:SystemMailbox{{bb558c35-97f1-4cb9-8ff7-d53741dc928c}}@{self.tenant_id}"

    def _anchor_refusal(self, name: str, anchor: str):
        """Tenant-level cmdlets need the app-only anchor; the others route by the mailbox's UPN."""
        if not anchor:
            return self._cmdlet_error(400, "X-AnchorMailbox header is required")
        if name in self.TENANT_LEVEL and anchor != self.app_anchor:
            return self._cmdlet_error(400, f"{name} is a tenant-level cmdlet: anchor it to {self.app_anchor}, "
                                           f"not {anchor}")
        if name not in self.TENANT_LEVEL and not (anchor.startswith("UPN:") and "@" in anchor):
            return self._cmdlet_error(400, f"{name} acts on a mailbox: anchor it to UPN:<mailbox>, not {anchor}")
        return None

    def _exchange_refusal(self, name: str):
        """What Exchange answers an app without Exchange.ManageAsApp, or whose service principal has no role."""
        if self.exchange_denied == "permission":
            return 401, {"x-ms-diagnostics": '2000008;reason="The token contains no permissions, or permissions can '
                                             'not be understood.";error_category="invalid_grant"'}, ""
        if self.exchange_denied == "role":
            return 401, {"Content-Type": "application/json"}, json.dumps({"error": {
                "code": "Unauthorized", "message": f"User is not allowed to call {name}",
                "innererror": {"message": f"User is not allowed to call {name}",
                               "type": "Microsoft.Exchange.Admin.OData.Core.ODataServiceException"}}})
        return None

    def _exchange(self, request):
        with self.lock:
            cmdlet = json.loads(request.body)["CmdletInput"]
            self.calls.append(("exchange", "POST", cmdlet["CmdletName"]))
            if not self._authorized(request, self.exchange_url):
                return 401, {}, ""
            name, params = cmdlet["CmdletName"], cmdlet.get("Parameters") or {}
            anchor = request.headers.get("X-AnchorMailbox", "")
            self.anchors.append((name, anchor))
            refused = self._exchange_refusal(name) or self._fault("exchange") or self._anchor_refusal(name, anchor)
            if refused:
                return refused
            if f"exchange:{name}" in self.raw:
                return 200, {"Content-Type": "text/html"}, self.raw[f"exchange:{name}"]
            if name not in self.CMDLETS:
                return self._cmdlet_error(400, f"The term '{name}' is not recognized as a name of a cmdlet")
            unknown = set(params) - self.CMDLETS[name]
            if unknown:
                return self._cmdlet_error(400, f"A parameter cannot be found that matches parameter name '{min(unknown)}'.")
            try:
                items = getattr(self, "cmd_" + name.replace("-", "_").lower())(**params)
            except LookupError as e:
                return self._cmdlet_error(404, f"|Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException|"
                                          f"The operation couldn't be performed because object '{e.args[0]}' couldn't be "
                                          "found on 'NAMPR01A001.prod.outlook.com'.")
            if isinstance(items, tuple):
                return items
            start = int(parse_qs(urlsplit(request.url).query).get("skip", ["0"])[0])
            page = {"@odata.context": "https://outlook.office365.com/adminapi/beta/$metadata#Collection",
                    "value": items[start:start + self.exchange_page]}
            if start + self.exchange_page < len(items):
                page["@odata.nextLink"] = (f"{self.exchange_url}/adminapi/beta/{self.tenant_id}/InvokeCommand"
                                           f"?skip={start + self.exchange_page}")
            return 200, {"Content-Type": "application/json"}, json.dumps(self._forge(page, request.url))

    @staticmethod
    def _cmdlet_error(status: int, message: str):
        return status, {"Content-Type": "application/json"}, json.dumps({"error": {
            "code": "InternalServerError" if status >= 500 else "BadRequest",
            "message": "Error executing cmdlet", "details": [{"code": "Context", "target": "", "message": message}]}})

    def mailbox(self, identity: str) -> Mailbox:
        found = self.mailboxes.get(identity.lower())
        if found is None:
            raise LookupError(identity)
        return found

    def cmd_get_mailbox(self, Identity):
        box = self.mailbox(Identity)
        user = self.user_by_upn(box.upn)
        return [{"UserPrincipalName": box.upn, "PrimarySmtpAddress": box.upn, "ExternalDirectoryObjectId": user["id"],
                 "RecipientTypeDetails": box.read_type(), "ForwardingSmtpAddress": box.forwarding,
                 "DeliverToMailboxAndForward": bool(box.forwarding), "HiddenFromAddressListsEnabled": box.hidden,
                 "LitigationHoldEnabled": box.litigation_hold, "InPlaceHolds": list(box.in_place_holds),
                 "ComplianceTagHoldApplied": box.compliance_tag_hold, "ArchiveStatus": "Active" if box.archive else "None",
                 "ArchiveGuid": str(uuid.uuid5(uuid.NAMESPACE_URL, box.upn)) if box.archive else NO_GUID,
                 "EmailAddresses": user["proxyAddresses"]}]

    def cmd_get_accepteddomain(self):
        return [dict(d) for d in self.accepted_domains]

    def cmd_get_organizationconfig(self):
        return [{"Name": "contoso.onmicrosoft.com", "IsDehydrated": False}]

    def cmd_get_mailboxstatistics(self, Identity):
        box = self.mailbox(Identity)
        return [{"DisplayName": box.upn, "ItemCount": 1234,
                 "TotalItemSize": f"{box.size / GB:.1f} GB ({box.size:,} bytes)"}]

    def cmd_get_mailboxpermission(self, Identity):
        box = self.mailbox(Identity)
        return [{"Identity": box.upn, "User": "NT AUTHORITY\\SELF", "AccessRights": ["FullAccess, ReadPermission"],
                 "IsInherited": False, "Deny": False}] + box.permissions

    def cmd_get_mailboxautoreplyconfiguration(self, Identity):
        return [dict(self.mailbox(Identity).auto_reply, Identity=Identity)]

    def cmd_get_mobiledevicestatistics(self, Mailbox):
        return list(self.mailbox(Mailbox).devices)

    def cmd_set_mailbox(self, Identity, **changes):
        box = self.mailbox(Identity)
        if changes.get("Type") == "Shared" and box.kind != "SharedMailbox":
            box.converting_to, box.reads_until_converted = "SharedMailbox", box.conversion_reads
        if "ForwardingSmtpAddress" in changes:
            box.forwarding = changes["ForwardingSmtpAddress"]
        if "HiddenFromAddressListsEnabled" in changes:
            box.hidden = changes["HiddenFromAddressListsEnabled"]
        return []

    def cmd_add_mailboxpermission(self, Identity, User, AccessRights, InheritanceType, AutoMapping):
        box = self.mailbox(Identity)
        if not any(u["userPrincipalName"].lower() == User.lower() for u in self.users.values()):
            return self._cmdlet_error(404, f"The operation couldn't be performed because object '{User}' couldn't be found.")
        if not any(p["User"].lower() == User.lower() for p in box.permissions):
            box.permissions.append({"Identity": box.upn, "User": User, "AccessRights": AccessRights,
                                    "IsInherited": False, "Deny": False, "AutoMapping": AutoMapping})
        return []

    def cmd_set_mailboxautoreplyconfiguration(self, Identity, **settings):
        box = self.mailbox(Identity)
        for key in ("InternalMessage", "ExternalMessage"):       # Exchange keeps them as HTML
            if key in settings:
                settings[key] = f"<html>\n<body>\n{html.escape(settings[key])}\n</body>\n</html>\n"
        box.auto_reply.update({k: v for k, v in settings.items() if k != "ExternalAudience"})
        return []

    def cmd_clear_mobiledevice(self, Identity, AccountOnly, Confirm):
        device = next(d for box in self.mailboxes.values() for d in box.devices if d["Identity"] == Identity)
        device.update(DeviceWipeRequestTime=stamp(), Status="DeviceWipePending", AccountOnly=AccountOnly)
        return []

    def cmd_remove_distributiongroupmember(self, Identity, Member, BypassSecurityGroupManagerCheck, Confirm):
        group = next((g for g in self.groups.values() if (g["mail"] or "").lower() == Identity.lower()), None)
        if group is None:
            raise LookupError(Identity)
        user = self.user_by_upn(Member)
        if user["id"] not in group["members"]:
            return self._cmdlet_error(400, f"|Microsoft.Exchange.Management.Tasks.MemberNotFoundException|The recipient "
                                      f"{Member} isn't a member of the group {Identity}.")
        group["members"].discard(user["id"])
        return []


# -- fixtures: import them into a test module or a conftest -------------------------------------
SECRET = "s3cr3t-Value~of.the.app"
SECRET_ENV = "M365_FAKE_CLIENT_SECRET"
MANAGER = "morgan.manager@contoso.com"
GROUPS = ("All Staff", "Project X", "Finance DL", "Dynamic Sales", "AD Staff", "E3 Licence")
BLOCK_GROUP = "Offboarding - blocked"       # a cloud-only security group a Conditional Access policy blocks


def seed(fake: FakeM365) -> None:
    """The tenant every test starts from: SKUs, one group of each kind (and an empty block group), an admin role,
    a manager."""
    for part in ("SPE_E3", "EMS", "O365_BUSINESS_PREMIUM"):
        fake.add_sku(part)
    fake.add_group("All Staff")
    fake.add_group("Project X", unified=True)
    fake.add_group("Finance DL", mail_enabled=True)
    fake.add_group("Dynamic Sales", dynamic=True)
    fake.add_group("AD Staff", synced=True)
    fake.add_group("E3 Licence", licences=("SPE_E3",))
    fake.add_group(BLOCK_GROUP)
    fake.add_role("Global Administrator")
    fake.add_user(MANAGER, employee_id="M1", licences=("SPE_E3",), mailbox=Mailbox(MANAGER))


def add_leaver(fake: FakeM365, n: int, *, synced: bool = False, mailbox_kind: str = "UserMailbox",
               size: int = 3 * GB, hold: bool = False, roles: tuple[str, ...] = (), mailbox: bool = True,
               immutable_id: str = "") -> Termination:
    """A fresh leaver with everything offboarding touches: licences direct and inherited, every kind of group,
    MFA methods, a mailbox with a phone on it."""
    upn = f"leaver{n}.person@contoso.com"
    box = Mailbox(upn, kind=mailbox_kind, size=size, litigation_hold=hold,
                  devices=[{"Identity": f"{upn}/ExchangeActiveSyncDevices/iPhone{n}", "DeviceModel": "iPhone",
                            "DeviceWipeRequestTime": None, "Status": "DeviceOk"}]) if mailbox else None
    fake.add_user(upn, employee_id=f"E{n}", synced=synced, licences=("EMS",), groups=GROUPS, roles=roles,
                  methods=("password", "phone", "microsoftAuthenticator"), default="phone", mailbox=box,
                  proxies=(f"l{n}@contoso.com",), manager=MANAGER, immutable_id=immutable_id)
    return Termination(tenant="contoso", employee_id=f"E{n}", email=upn, first_name="Leaver", last_name=f"Person{n}",
                       manager_email=MANAGER, termination_date=dt.date(2026, 9, 1),
                       successor=MANAGER)       # as the engine resolves it: the directory's manager


@pytest.fixture
def m365(monkeypatch):
    """A seeded fake tenant; fails the test if any Graph request broke the v1.0 schema."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    auth.applications.clear()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fake = FakeM365(rsps, SECRET)
        seed(fake)
        yield fake
    assert fake.violations == []


@pytest.fixture
def m365_policy() -> dict:
    """Override in a test module (or parametrize) to change `[tenant.policy]`."""
    return {"mailbox": "shared", "mailbox_delegate": "manager", "forward_to": "manager", "hide_from_gal": True,
            "auto_reply": "{first_name} {last_name} has left {company}. Please contact {manager_email}."}


@pytest.fixture
def m365_tenant(m365, m365_policy) -> config.Tenant:
    """A `Tenant` with an `entra` and an `exchange_online` provider pointed at the fake."""
    block = {"tenant_id": m365.tenant_id, "client_id": CLIENT_ID, "client_secret": f"env:{SECRET_ENV}",
             "authority": m365.authority, "graph_url": m365.graph_url, "exchange_url": m365.exchange_url}
    raw = {"tenant": [{"id": "contoso", "name": "Contoso Ltd", "policy": m365_policy,
                       "provider": [{"type": "entra", **block}, {"type": "exchange_online", **block}]}]}
    return config.parse(raw).tenants[0]


def build(tenant: config.Tenant, kind: str):
    block = next(p for p in tenant.providers if p.type == kind)
    return plugins.load("providers", kind)(block.name, block.options, tenant, block.where)


@pytest.fixture
def entra(m365_tenant):
    return build(m365_tenant, "entra")


@pytest.fixture
def exchange_online(m365_tenant):
    return build(m365_tenant, "exchange_online")
