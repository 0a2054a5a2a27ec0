"""RingCentral: one account's extensions, numbers, call handling and voicemail, behind the calls the provider makes.

Every request is first checked against RingCentral's published description (the 1.0.48
copy, the v2 phone-numbers excerpt or the comm-handling excerpt in `specs/`, at the
vendor's own URL whichever way it arrived); a request they do not allow is recorded in
`violations` and answered 400. It bites where RingCentral bites: the JWT grant is
rate-limited (Auth group, 5 a minute) and every answer carries the `X-Rate-Limit-*`
headers of its group, a spent group answers 429 with Retry-After; an account on the new
call handling refuses the v1.0 answering-rule API and an old account the comm-handling
API; `message-store` lists the last 24 hours unless `dateFrom` says otherwise; a number
cannot go to a disabled or deleted extension; deleting an extension releases its numbers
unless `savePhoneNumbers=true` keeps them in inventory. `reaches(number)` says where a
call to a number ends now, so a test can see a number go dead. Each extension holds its
assigned roles (Standard unless a test gives others), so an admin can be told apart; a path
in `failing` answers the status it names there, as an outage of that one route.
"""
from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from http import HTTPStatus

from .contract import SpecViolation, check_openapi, openapi_dict
from .web import Request, Response, System, json_response, retry_after_header, text_response

VENDOR_URL = "https://platform.ringcentral.com"
ACCOUNT_ID = "37439510"
TOKEN_SECONDS = 3600
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FEATURE = "NewCallHandlingAndForwarding"
#: requests per 60 s window, per group (RingCentral's defaults for a production app)
LIMITS = {"Auth": 5, "Light": 50, "Medium": 40, "Heavy": 10}
WINDOW = 60
SPECS = ((r"/restapi/v2/accounts/[^/]+/phone-numbers", "ringcentral-v2-phone-numbers.yaml"),
         (r"/restapi/v2/accounts/[^/]+/extensions/[^/]+/comm-handling/", "ringcentral-comm-handling.yaml"),
         (r"/restapi/", "ringcentral-openapi.yaml"))
V1 = r"/restapi/v1\.0/account/(?:~|\d+)"
V2 = r"/restapi/v2/accounts/(?:~|\d+)"
STANDARD_ROLE = {"id": "3", "displayName": "Standard"}     # the role every new user extension gets


@functools.cache
def throttling_groups() -> list[tuple[re.Pattern, dict[str, str]]]:
    paths = openapi_dict(SPECS[-1][1])["paths"]
    return [(re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path))),
             {method: op["x-throttling-group"] for method, op in ops.items()
              if isinstance(op, dict) and "x-throttling-group" in op}) for path, ops in paths.items()]


def rc_error(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    return json_response(status, {"errorCode": code, "message": message,
                                  "errors": [{"errorCode": code, "message": message}]}, headers)


@dataclass
class Voicemail:
    id: str
    created: dt.datetime
    caller: str
    audio: bytes
    duration: int = 20


@dataclass
class Extension:
    id: str
    number: str                                # the short extension number
    email: str
    first: str
    last: str
    status: str = "Enabled"
    status_info: dict = field(default_factory=dict)
    rules: dict[str, dict] = field(default_factory=dict)    # v1 answering rules: id -> rule
    forward_all_calls: dict = field(default_factory=dict)   # new call handling: the state and its rule
    voicemail: list[Voicemail] = field(default_factory=list)
    roles: list[dict] = field(default_factory=list)          # assigned roles: {"id", "displayName"}

    def render(self) -> dict:
        out = {"id": int(self.id), "uri": f"{VENDOR_URL}{V1.split('(')[0]}~/extension/{self.id}",
               "extensionNumber": self.number, "name": f"{self.first} {self.last}", "type": "User",
               "status": self.status, "contact": {"email": self.email, "firstName": self.first, "lastName": self.last}}
        if self.status_info:
            out["statusInfo"] = dict(self.status_info)
        return out


def _default_rules() -> dict[str, dict]:
    return {"business-hours-rule": {"id": "business-hours-rule", "type": "BusinessHours", "enabled": True,
                                    "callHandlingAction": "ForwardCalls",
                                    "forwarding": {"ringingMode": "Sequentially", "rules": []}}}


def _default_fac() -> dict:
    return {"enabled": False, "dispatching": {"type": "Terminate", "actions": [{
        "type": "TerminatingAction", "terminatingTargetType": "VoiceMailTerminatingTarget",
        "targets": [{"type": "VoiceMailTerminatingTarget", "name": "Voicemail"},
                    {"type": "PlayAnnouncementTerminatingTarget", "name": "PlayAnnouncement"}]}]}}


class RingCentral(System):
    name = "ringcentral"

    def __init__(self, *, client_id: str = "rc-sandbox-client", client_secret: str | None = None,
                 jwt: str | None = None, new_call_handling: bool = False, limits: dict[str, int] | None = None,
                 now=None):
        super().__init__()
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(18)
        self.jwt = jwt or "eyJhbGciOiJSUzI1NiJ9." + secrets.token_urlsafe(48)
        self.new_call_handling = new_call_handling
        self.limits = dict(limits or LIMITS)
        self.now = now or (lambda: dt.datetime.now(dt.timezone.utc))
        self.extensions: dict[str, Extension] = {}
        self.numbers: dict[str, dict] = {}                 # id -> {id, phoneNumber, usageType, extension id or None}
        self.tokens: dict[str, float] = {}                 # access token -> expiry (monotonic)
        self.token_calls = 0
        self.spent: dict[str, list[float]] = {}            # group -> request times in the window
        self.role_ids = {STANDARD_ROLE["displayName"]: STANDARD_ROLE["id"]}    # the account's roles: name -> id
        self.url = VENDOR_URL                              # where a client reaches it

    # -- building the account ------------------------------------------------------------
    def add_extension(self, email: str, first: str = "", last: str = "", *, numbers: tuple[str, ...] = (),
                      voicemail_ages: tuple[float, ...] = (),
                      roles: tuple[str, ...] = (STANDARD_ROLE["displayName"],)) -> Extension:
        """A user extension with direct numbers, voicemail messages `voicemail_ages` hours old and the roles
        named."""
        with self.lock:
            ext_id = str(62000000000 + len(self.extensions) * 7 + 11)
            ext = Extension(ext_id, str(101 + len(self.extensions)), email, first or email.split("@")[0], last,
                            rules=_default_rules(), forward_all_calls=_default_fac())
            self.assign_roles(ext, *roles)
            self.extensions[ext_id] = ext
            for phone in numbers:
                number_id = str(88000000 + len(self.numbers) * 3 + 1)
                self.numbers[number_id] = {"id": number_id, "phoneNumber": phone, "usageType": "DirectNumber",
                                           "extension": ext_id}
            for n, hours in enumerate(voicemail_ages):
                ext.voicemail.append(Voicemail(f"{ext_id}{n:03d}", self.now() - dt.timedelta(hours=hours),
                                               f"+1555010{n:04d}", f"ID3-audio-{ext_id}-{n}".encode() * 8))
            return ext

    def assign_roles(self, ext: Extension, *names: str) -> None:
        """Replace the extension's assigned roles with the account's roles of these names (a new name: a new role)."""
        with self.lock:
            ext.roles = [{"id": self.role_ids.setdefault(name, str(100 + len(self.role_ids))), "displayName": name}
                         for name in names]

    def state(self, emails: list[str]) -> dict:
        """Each person's extension status and the numbers still assigned to it."""
        wanted = {e.lower() for e in emails}
        with self.lock:
            return {e.email.lower(): {"status": e.status, "numbers": self.numbers_of(e.id)}
                    for e in self.extensions.values() if e.email.lower() in wanted}

    def by_email(self, email: str) -> Extension:
        return next(e for e in self.extensions.values() if e.email.lower() == email.lower())

    def numbers_of(self, ext_id: str) -> list[str]:
        return sorted(n["phoneNumber"] for n in self.numbers.values() if n["extension"] == ext_id)

    def forward_target(self, ext: Extension) -> str | None:
        """The extension this one's calls are forwarded to, in the call handling the account runs."""
        if self.new_call_handling:
            fac = ext.forward_all_calls
            action = fac["dispatching"]["actions"][0]
            if fac["enabled"] and action.get("terminatingTargetType") == "ExtensionTerminatingTarget":
                return next((t["extension"]["id"] for t in action["targets"]
                             if t["type"] == "ExtensionTerminatingTarget" and t.get("extension")), None)
            return None
        rule = ext.rules["business-hours-rule"]
        if rule.get("callHandlingAction") == "TransferToExtension":
            return str(rule["transfer"]["extension"]["id"])
        return None

    def reaches(self, phone: str) -> str | None:
        """The enabled extension a call to `phone` ends at now, or None: the number is dead."""
        number = next((n for n in self.numbers.values() if n["phoneNumber"] == phone), None)
        ext = self.extensions.get(number["extension"] or "") if number else None
        for _ in range(5):
            if ext is None or ext.status != "Enabled":
                return None
            target = self.forward_target(ext)
            if target is None:
                return ext.id
            ext = self.extensions.get(target)
        return None

    # -- HTTP ----------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        with self.lock:
            self.calls.append((self.name, request.method, request.path))
            vendor = VENDOR_URL + request.path + (f"?{request.query}" if request.query else "")
            spec = next(name for pattern, name in SPECS if re.match(pattern, request.path))
            try:
                check_openapi(spec, request.method, vendor, request.headers, request.body)
            except SpecViolation as e:
                self.violations.append(str(e))
                return text_response(400, str(e))
            group = self.group(request)
            wait = self.knobs.throttled(self.client_id) if group != "Auth" else None
            spent = self.take(group)
            headers = {"X-Rate-Limit-Group": group, "X-Rate-Limit-Limit": str(self.limits[group]),
                       "X-Rate-Limit-Remaining": str(max(0, self.limits[group] - len(self.spent[group]))),
                       "X-Rate-Limit-Window": str(WINDOW)}
            if wait is not None or spent is not None:
                return rc_error(429, "CMN-301", f"Request rate exceeded ({group} group)",
                                {**headers, **retry_after_header(wait if wait is not None else spent)})
            if request.path == "/restapi/oauth/token":
                response = self.token(request)
            elif not self.authorized(request):
                response = rc_error(401, "TokenInvalid", "Access token is invalid or expired")
            elif failing := self.failing_status(request.path):
                response = rc_error(failing, "CMN-201", HTTPStatus(failing).phrase,
                                    retry_after_header(self.knobs.retry_after))
            else:
                response = self.dispatch(request)
            response.headers.update(headers)
            return response

    @staticmethod
    def group(request: Request) -> str:
        """The operation's `x-throttling-group` in the vendor's spec (the v2 excerpts have none: reads are Light)."""
        for pattern, groups in throttling_groups():
            if pattern.fullmatch(request.path) and request.method.lower() in groups:
                return groups[request.method.lower()]
        return "Light" if request.method == "GET" else "Medium"

    def take(self, group: str) -> float | None:
        """Spend one request of `group`'s window; the seconds until it refills when it is spent."""
        now = time.monotonic()
        window = [t for t in self.spent.get(group, []) if now - t < WINDOW]
        if len(window) >= self.limits[group]:
            self.spent[group] = window
            return WINDOW - (now - window[0])
        self.spent[group] = window + [now]
        return None

    def token(self, request: Request) -> Response:
        self.token_calls += 1
        form = request.form()
        expected = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return json_response(401, {"error": "invalid_client", "errorCode": "OAU-123",
                                       "error_description": "Invalid client: client_id or client_secret"})
        if form.get("grant_type") != JWT_GRANT or form.get("assertion") != self.jwt:
            return json_response(400, {"error": "invalid_grant", "errorCode": "OAU-213",
                                       "error_description": "Token not found or JWT is invalid"})
        access = secrets.token_urlsafe(32)
        self.tokens[access] = time.monotonic() + TOKEN_SECONDS
        return json_response(200, {"access_token": access, "token_type": "bearer", "expires_in": TOKEN_SECONDS,
                                   "scope": "ReadAccounts EditExtensions ReadMessages EditAccounts",
                                   "owner_id": ACCOUNT_ID, "endpoint_id": "sandbox"})

    def authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.tokens.get(token, 0) > time.monotonic()

    def routes(self):
        """(method and path pattern, handler, what a write is called in the write log or None for a read)."""
        ext = rf"{V1}/extension/(\d+)"
        return [
            (rf"GET {V1}/extension", self.list_extensions, None),
            (rf"GET {ext}", self.get_extension, None),
            (rf"PUT {ext}", self.put_extension, "PUT extension"),
            (rf"DELETE {ext}", self.delete_extension, "DELETE extension"),
            (rf"GET {ext}/features", self.features, None),
            (rf"GET {ext}/assigned-role", self.assigned_roles, None),
            (rf"GET {ext}/phone-number", self.extension_numbers, None),
            (rf"GET {ext}/answering-rule", self.list_rules, None),
            (rf"GET {ext}/answering-rule/([\w-]+)", self.get_rule, None),
            (rf"PUT {ext}/answering-rule/([\w-]+)", self.put_rule, "PUT answering-rule"),
            (rf"GET {ext}/message-store", self.message_store, None),
            (rf"GET {ext}/message-store/(\d+)/content/(\d+)", self.message_content, None),
            (rf"GET {V1}/phone-number/(\d+)", self.get_number, None),
            (rf"PATCH {V2}/phone-numbers/(\d+)", self.assign_number, "PATCH phone-numbers"),
            (rf"GET {V2}/extensions/(\d+)/comm-handling/states/forward-all-calls", self.get_fac_state, None),
            (rf"PATCH {V2}/extensions/(\d+)/comm-handling/states/forward-all-calls", self.patch_fac_state,
             "PATCH comm-handling/states"),
            (rf"GET {V2}/extensions/(\d+)/comm-handling/voice/state-rules/forward-all-calls", self.get_fac_rule, None),
            (rf"PATCH {V2}/extensions/(\d+)/comm-handling/voice/state-rules/forward-all-calls", self.patch_fac_rule,
             "PATCH comm-handling/state-rules"),
        ]

    def dispatch(self, request: Request) -> Response:
        for route, handler, write in self.routes():
            found = re.fullmatch(route, f"{request.method} {request.path}")
            if not found:
                continue
            try:
                response = handler(request, *found.groups())
            except KeyError:
                response = rc_error(404, "CMN-102", "Resource for parameter [extensionId] is not found")
            if write:
                body = request.json() if request.method in ("PUT", "PATCH") else None
                keys = f" {','.join(sorted(body))}" if isinstance(body, dict) else ""
                self.wrote(write + keys, found.group(1), f"{self.client_id}@{request.peer}", response.status)
            return response
        self.violations.append(f"the sandbox does not implement {request.method} {request.path}")
        return text_response(400, self.violations[-1])

    # -- extensions ----------------------------------------------------------------------
    def list_extensions(self, request: Request):
        emails = {e.lower() for e in request.params().get("email", [])}
        found = [e.render() for e in self.extensions.values() if not emails or e.email.lower() in emails]
        page, per_page = int(request.arg("page", "1")), int(request.arg("perPage", "100"))
        records = found[(page - 1) * per_page:page * per_page]
        return json_response(200, {"records": records, "paging": {"page": page, "perPage": per_page,
                                                                  "totalElements": len(found)}})

    def get_extension(self, request: Request, ext_id):
        return json_response(200, self.extensions[ext_id].render())

    def put_extension(self, request: Request, ext_id):
        ext, body = self.extensions[ext_id], request.json()
        if "status" in body:
            ext.status = body["status"]
            ext.status_info = dict(body.get("statusInfo") or {}) if body["status"] == "Disabled" else {}
        contact = body.get("contact") or {}
        ext.first, ext.last = contact.get("firstName", ext.first), contact.get("lastName", ext.last)
        ext.email = contact.get("email", ext.email)
        return json_response(200, ext.render())

    def delete_extension(self, request: Request, ext_id):
        self.extensions.pop(ext_id)
        keep = request.arg("savePhoneNumbers") == "true"
        for number_id, number in list(self.numbers.items()):
            if number["extension"] == ext_id:
                if keep:
                    number.update(extension=None, usageType="Inventory")
                else:
                    del self.numbers[number_id]
        return Response(204)

    def features(self, request: Request, ext_id):
        self.extensions[ext_id]
        wanted = request.params().get("featureId") or [FEATURE]
        records = [{"id": FEATURE, "available": True,
                    "params": [{"name": "isNewBackendAvailable", "value": str(self.new_call_handling).lower()}]}]
        return json_response(200, {"records": [r for r in records if r["id"] in wanted]})

    def assigned_roles(self, request: Request, ext_id):
        ext = self.extensions[ext_id]
        return json_response(200, {"uri": f"{VENDOR_URL}/restapi/v1.0/account/{ACCOUNT_ID}/extension/{ext_id}"
                                          "/assigned-role", "records": [dict(r) for r in ext.roles]})

    def extension_numbers(self, request: Request, ext_id):
        self.extensions[ext_id]
        usage = request.params().get("usageType")
        records = [{"id": int(n["id"]), "phoneNumber": n["phoneNumber"], "usageType": n["usageType"],
                    "type": "VoiceFax", "paymentType": "Local", "status": "Normal"}
                   for n in self.numbers.values() if n["extension"] == ext_id and (not usage or n["usageType"] in usage)]
        return json_response(200, {"records": records, "paging": {"page": 1, "perPage": 100,
                                                                  "totalElements": len(records)}})

    # -- v1 answering rules --------------------------------------------------------------
    def _old_handling(self) -> Response | None:
        if self.new_call_handling:
            return rc_error(400, "CHR-101", "The account uses the new call handling: use the comm-handling API")
        return None

    def list_rules(self, request: Request, ext_id):
        ext = self.extensions[ext_id]
        if refused := self._old_handling():
            return refused
        return json_response(200, {"records": [dict(r) for r in ext.rules.values()]})

    def get_rule(self, request: Request, ext_id, rule_id):
        ext = self.extensions[ext_id]
        if refused := self._old_handling():
            return refused
        return json_response(200, dict(ext.rules[rule_id]))

    def put_rule(self, request: Request, ext_id, rule_id):
        ext, body = self.extensions[ext_id], request.json()
        if refused := self._old_handling():
            return refused
        rule = ext.rules[rule_id]
        if body.get("callHandlingAction") == "TransferToExtension":
            target = self.extensions.get(str((body.get("transfer") or {}).get("extension", {}).get("id")))
            if target is None or target.status != "Enabled":
                return rc_error(400, "CMN-101", "Parameter [transfer.extension.id] value is invalid")
        rule.update({k: v for k, v in body.items() if k != "id"})
        if rule.get("callHandlingAction") != "TransferToExtension":
            rule.pop("transfer", None)
        return json_response(200, dict(rule))

    # -- voicemail -----------------------------------------------------------------------
    def message_store(self, request: Request, ext_id):
        ext = self.extensions[ext_id]
        date_from = request.arg("dateFrom")
        since = dt.datetime.fromisoformat(date_from.replace("Z", "+00:00")) if date_from else \
            self.now() - dt.timedelta(hours=24)
        kinds = request.params().get("messageType")
        found = [m for m in sorted(ext.voicemail, key=lambda m: m.created, reverse=True) if m.created >= since
                 and (not kinds or "VoiceMail" in kinds)]
        page, per_page = int(request.arg("page", "1")), int(request.arg("perPage", "100"))
        base = f"{request.base}{request.path}"
        records = [self.render_message(request.base, ext, m) for m in found[(page - 1) * per_page:page * per_page]]
        navigation = {}
        if page * per_page < len(found):
            query = "&".join(f"{k}={v[0]}" for k, v in request.params().items() if k != "page")
            navigation["nextPage"] = {"uri": f"{base}?{query}&page={page + 1}".replace("?&", "?")}
        return json_response(200, {"records": records, "navigation": navigation,
                                   "paging": {"page": page, "perPage": per_page, "totalElements": len(found)}})

    @staticmethod
    def render_message(base: str, ext: Extension, m: Voicemail) -> dict:
        content = f"{base}/restapi/v1.0/account/{ACCOUNT_ID}/extension/{ext.id}/message-store/{m.id}/content/{m.id}1"
        return {"id": int(m.id), "type": "VoiceMail", "direction": "Inbound", "availability": "Alive",
                "creationTime": m.created.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "readStatus": "Unread",
                "from": {"phoneNumber": m.caller}, "to": [{"extensionNumber": ext.number}],
                "attachments": [{"id": int(f"{m.id}1"), "uri": content, "type": "AudioRecording",
                                 "contentType": "audio/mpeg", "vmDuration": m.duration, "size": len(m.audio)}]}

    def message_content(self, request: Request, ext_id, message_id, attachment_id):
        ext = self.extensions[ext_id]
        message = next(m for m in ext.voicemail if m.id == message_id and attachment_id == f"{m.id}1")
        return Response(200, {"Content-Type": "audio/mpeg"}, message.audio)

    # -- numbers (v2) ----------------------------------------------------------------------
    def get_number(self, request: Request, number_id):
        number = self.numbers[number_id]
        out = {"id": int(number_id), "phoneNumber": number["phoneNumber"], "usageType": number["usageType"],
               "type": "VoiceFax", "paymentType": "Local", "status": "Normal"}
        if number["extension"]:
            out["extension"] = {"id": int(number["extension"]), "extensionNumber": self.extensions[number["extension"]].number}
        return json_response(200, out)

    def assign_number(self, request: Request, number_id):
        number, body = self.numbers[number_id], request.json()
        target = self.extensions.get(str((body.get("extension") or {}).get("id")))
        if target is None:
            return rc_error(404, "CMN-102", "Resource for parameter [extension.id] is not found")
        if target.status != "Enabled":
            return rc_error(400, "PHN-110", "A number cannot be assigned to a disabled extension")
        number.update(extension=target.id, usageType=body["usageType"])
        return json_response(200, {"id": number_id, "phoneNumber": number["phoneNumber"], "tollType": "Toll",
                                   "usageType": number["usageType"], "status": "Normal",
                                   "extension": {"id": target.id, "extensionNumber": target.number}})

    # -- new call handling (v2 comm-handling) ---------------------------------------------
    def _new_handling(self) -> Response | None:
        if not self.new_call_handling:
            return rc_error(400, "CHR-102", "The account uses the old call handling: use the answering-rule API")
        return None

    def get_fac_state(self, request: Request, ext_id):
        fac = self.extensions[ext_id].forward_all_calls
        return self._new_handling() or json_response(200, {"id": "forward-all-calls", "enabled": fac["enabled"],
                                                           "displayName": "Forward all calls"})

    def patch_fac_state(self, request: Request, ext_id):
        fac = self.extensions[ext_id].forward_all_calls
        if refused := self._new_handling():
            return refused
        fac["enabled"] = bool(request.json().get("enabled", fac["enabled"]))
        return self.get_fac_state(request, ext_id)

    def get_fac_rule(self, request: Request, ext_id):
        fac = self.extensions[ext_id].forward_all_calls
        return self._new_handling() or json_response(200, {
            "id": "forward-all-calls", "displayName": "Forward all calls",
            "dispatching": json.loads(json.dumps(fac["dispatching"])),
            "state": {"id": "forward-all-calls", "enabled": fac["enabled"]}})

    def patch_fac_rule(self, request: Request, ext_id):
        fac = self.extensions[ext_id].forward_all_calls
        if refused := self._new_handling():
            return refused
        dispatching = request.json()["dispatching"]
        for action in dispatching["actions"]:
            for target in action.get("targets", []):
                if target["type"] == "ExtensionTerminatingTarget":
                    found = self.extensions.get(str((target.get("extension") or {}).get("id")))
                    if found is None or found.status != "Enabled":
                        return rc_error(400, "CMN-101", "Parameter [extension.id] value is invalid")
        fac["dispatching"] = dispatching
        return self.get_fac_rule(request, ext_id)
