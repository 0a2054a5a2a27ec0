"""RingCentral: the leaver's extension hands its calls, numbers and voicemail over, then stops being billed.

`preserve` runs before `reclaim` (DESIGN.md, "the number goes dead"): calls are forwarded
to the successor's extension, each direct number moves to that extension (v2
`assignPhoneNumberV2`), and every voicemail, metadata and audio, is copied under
`voicemail_archive`; only then does `reclaim` disable the extension, and it refuses to
while a direct number is still on it. `retain` deletes the extension once the engine says
its day has come, keeping any number left in the account's inventory. An extension is
never renamed: history and billing would carry the wrong name.

Accounts moved to RingCentral's new call handling (feature `NewCallHandlingAndForwarding`,
`isNewBackendAvailable`) refuse the v1.0 answering-rule API: there the forward-all-calls
state of the comm-handling API carries the forwarding. Both are read into one shape, so
the journal's before-state puts back whichever applied. Extensions are found by email
(`GET extension?email=`, several addresses to a read): RingCentral knows no employee id.

Admins are never touched (DESIGN.md): a matched extension's assigned roles are read, and
one whose name says admin (Super Admin, Users Admin, Office Administrator, ...) marks the
person an admin, which the engine turns into a hold in every system. A role read that
fails fails the match: not knowing is never taken for "not an admin".
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator

from ... import http
from ...config import HttpsUrl, PluginOptions, SecretRef
from ...errors import NotYet, PermanentError
from ...model import ActionContext, Match, PlannedAction, Result, Subject, Termination
from ..base import Provider
from .client import RingCentralClient

V1 = "/restapi/v1.0/account/~"
V2 = "/restapi/v2/accounts/~"
PAGE = 100
EMAILS_PER_READ = 50
MAX_PAGES = 1000
FEATURE = "NewCallHandlingAndForwarding"
FAC = "forward-all-calls"
TO_EXTENSION = "ExtensionTerminatingTarget"
STANDING_RULES = ("BusinessHours", "AfterHours")          # the v1 rules every call meets; custom rules are the user's
BEGINNING = "1970-01-01T00:00:00.000Z"                   # message-store lists only the last 24 hours without dateFrom
ADMIN_IN_ROLE_NAME = "admin"                             # in a role's name (any case): Super Admin, Users Admin, ...
AUDIO_SUFFIX = {"audio/mpeg": ".mp3", "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/ogg": ".ogg"}


def _successor(value: str) -> str:
    if value == "manager" or re.fullmatch(r"[^@\s]+@[^@\s]+", value):
        return value
    raise ValueError(f"must be manager or an email address; got {value!r}")


class RingCentralOptions(PluginOptions):
    server_url: HttpsUrl = "https://platform.ringcentral.com"
    client_id: str
    client_secret: SecretRef
    jwt: SecretRef                                   # JWT bearer grant (a JWT credential made for the app)
    successor: Annotated[str, AfterValidator(_successor)] = "manager"   # manager: the successor the engine resolves
    voicemail_archive: str                           # folder: one subfolder per extension, metadata and audio


def digits(value: Any, what: str) -> str:
    """An id RingCentral gave, as digits only: it names files and paths, so nothing else passes."""
    text = str(value)
    if not text.isdigit():
        raise PermanentError(f"RingCentral answered a {what} id that is not a number: {text[:40]!r}")
    return text


class RingCentralProvider(Provider):
    type = "ringcentral"
    options_model = RingCentralOptions
    actions = {
        "forward_calls": "preserve",
        "move_numbers": "preserve",
        "archive_voicemail": "preserve",
        "disable_extension": "reclaim",
        "delete_extension": "retain",
        "enable_extension": "restore",
        "restore_forwarding": "restore",
        "return_numbers": "restore",
    }
    #: action -> the action that puts its journaled before-state back (`offboard restore`)
    undo: ClassVar[dict[str, str]] = {"forward_calls": "restore_forwarding", "move_numbers": "return_numbers",
                                      "disable_extension": "enable_extension"}

    def __init__(self, name, options, tenant, where=""):
        super().__init__(name, options, tenant, where)
        self.client = RingCentralClient(options.server_url, options.client_id, options.client_secret, options.jwt,
                                        self.where)
        self.by_email: dict[str, list[dict]] = {}      # lowercased email -> the extensions RingCentral answered

    # -- reading -----------------------------------------------------------
    def check_online(self) -> None:
        self.client.request("GET", f"{V1}/extension", params={"perPage": 1})

    def pages(self, path: str, params: dict) -> list[dict]:
        """Every record of a paged v1 collection, page by page."""
        out: list[dict] = []
        for page in range(1, MAX_PAGES + 1):
            answer = self.client.request("GET", path, params={**params, "page": page, "perPage": PAGE})
            records = answer.get("records") if isinstance(answer, dict) else None
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise PermanentError(f"{path}: the answer has no list of records", self.where)
            out += records
            if len(records) < PAGE:
                return out
        raise PermanentError(f"{path}: more than {MAX_PAGES} pages: paging stopped", self.where)

    def prepare(self, terminations: list[Termination]) -> None:
        """Find every leaver's extension by email, 50 addresses to a read (the filter takes several)."""
        self.by_email = {}
        self.read_extensions(sorted({t.email.lower() for t in terminations if t.email}))

    def read_extensions(self, emails: list[str]) -> None:
        for start in range(0, len(emails), EMAILS_PER_READ):
            chunk = emails[start:start + EMAILS_PER_READ]
            for email in chunk:
                self.by_email[email] = []
            for ext in self.pages(f"{V1}/extension", {"email": chunk}):
                email = str((ext.get("contact") or {}).get("email") or "").lower()
                if email in self.by_email:              # the filter is the server's: only what was asked counts
                    ext["id"] = digits(ext.get("id"), "extension")
                    self.by_email[email].append(ext)

    def extensions_of(self, email: str) -> list[dict]:
        email = email.lower()
        if email not in self.by_email:
            self.read_extensions([email])
        return self.by_email[email]

    def match(self, termination: Termination) -> Match:
        found = self.extensions_of(termination.email) if termination.email else []
        if not found:
            return Match("not_found", reason=f"no extension with email {termination.email!r}")
        names = [f"{e.get('name')} (ext {e.get('extensionNumber')})" for e in found]
        if len(found) > 1:
            return Match("ambiguous", candidates=names, reason=f"{len(found)} extensions carry {termination.email}")
        ext = found[0]
        subject = Subject(self.name, ext["id"],
                          [termination.email, str(ext.get("name") or ""), str(ext.get("extensionNumber") or "")])
        self.mark_admin(subject)
        subject.state = self.observe(subject.native_id)
        return Match("matched", subject=subject, candidates=names)

    def mark_admin(self, subject: Subject) -> None:
        """Set `is_admin` from the extension's assigned roles; an answer that cannot be read raises."""
        answer = self.client.request("GET", f"{V1}/extension/{subject.native_id}/assigned-role")
        roles = answer.get("records") if isinstance(answer, dict) else None
        if not isinstance(roles, list) or not all(isinstance(r, dict) for r in roles):
            raise PermanentError("assigned-role: the answer has no list of records", self.where)
        names = [str(r.get("displayName") or "") for r in roles]
        admin = [name for name in names if ADMIN_IN_ROLE_NAME in name.lower()]
        if admin:
            subject.is_admin, subject.admin_reason = True, f"holds RingCentral role {', '.join(admin)}"

    def observe(self, ext_id: str) -> dict:
        ext = self.client.request("GET", f"{V1}/extension/{ext_id}")
        forwarding = self.read_forwarding(ext_id)
        forwarded_to = self.extension(forwarding["target"]) if forwarding.get("target") else {}
        return {"status": ext.get("status"), "numbers": self.direct_numbers(ext_id), "forwarding": forwarding,
                "forwarded_to": str((forwarded_to.get("contact") or {}).get("email") or "").lower(),
                "unarchived": [m["id"] for m in self.voicemail(ext_id) if not self.archived(ext_id, m)]}

    def extension(self, ext_id: str) -> dict:
        """One extension; {} when it is gone (a forwarding target deleted since)."""
        try:
            return self.client.request("GET", f"{V1}/extension/{digits(ext_id, 'extension')}")
        except http.NotFound:
            return {}

    def new_call_handling(self, ext_id: str) -> bool:
        answer = self.client.request("GET", f"{V1}/extension/{ext_id}/features", params={"featureId": FEATURE})
        for record in answer.get("records") or []:
            if isinstance(record, dict) and record.get("id") == FEATURE:
                return any(p.get("name") == "isNewBackendAvailable" and str(p.get("value")).lower() == "true"
                           for p in record.get("params") or [] if isinstance(p, dict))
        return False

    def anchors(self, subject: Subject, termination: Termination) -> list[str]:
        """Retain waits while the extension still holds direct numbers nobody took over: deleted with it they
        would sit in inventory, and callers of that number would reach no one."""
        numbers = [n["phoneNumber"] for n in self.direct_numbers(subject.native_id)]
        return [f"the RingCentral extension {subject.native_id} still holds direct number(s) {', '.join(numbers)} "
                "that were never moved to a successor"] if numbers else []

    def direct_numbers(self, ext_id: str) -> list[dict]:
        records = self.pages(f"{V1}/extension/{ext_id}/phone-number", {"usageType": "DirectNumber"})
        return sorted(({"id": digits(n.get("id"), "phone number"), "phoneNumber": str(n.get("phoneNumber")),
                        "extension": ext_id} for n in records), key=lambda n: n["phoneNumber"])

    # -- call forwarding, one shape for both APIs ---------------------------
    def read_forwarding(self, ext_id: str) -> dict:
        """{"mode": "comm-handling", "enabled", "target", "targetType"} or {"mode": "answering-rule", "rules"}."""
        if self.new_call_handling(ext_id):
            base = f"{V2}/extensions/{ext_id}/comm-handling"
            state = self.client.request("GET", f"{base}/states/{FAC}")
            action = self.terminating_action(self.client.request("GET", f"{base}/voice/state-rules/{FAC}"))
            target = next((t.get("extension", {}).get("id") for t in action.get("targets") or []
                           if isinstance(t, dict) and t.get("type") == TO_EXTENSION), None)
            return {"mode": "comm-handling", "enabled": state.get("enabled") is True,
                    "target": str(target) if target and action.get("terminatingTargetType") == TO_EXTENSION else None,
                    "targetType": action.get("terminatingTargetType")}
        rules = self.pages(f"{V1}/extension/{ext_id}/answering-rule", {"view": "Detailed"})
        return {"mode": "answering-rule", "rules": {
            str(r.get("id")): {"callHandlingAction": r.get("callHandlingAction"),
                               "transfer": str(((r.get("transfer") or {}).get("extension") or {}).get("id") or "")
                               or None}
            for r in rules if r.get("type") in STANDING_RULES},
            "target": next((str(r["transfer"]["extension"]["id"]) for r in rules if r.get("type") == "BusinessHours"
                            and r.get("callHandlingAction") == "TransferToExtension"), None)}

    @staticmethod
    def terminating_action(rule: dict) -> dict:
        actions = (rule.get("dispatching") or {}).get("actions") or []
        found = next((a for a in actions if isinstance(a, dict) and a.get("type") == "TerminatingAction"), None)
        if found is None:
            raise PermanentError("the forward-all-calls rule has no TerminatingAction")
        return found

    def forwarded(self, current: dict, target: str) -> dict:
        """`current` with every call going to extension `target`."""
        if current["mode"] == "comm-handling":
            return {"mode": "comm-handling", "enabled": True, "target": target, "targetType": TO_EXTENSION}
        rules = {rid: {"callHandlingAction": "TransferToExtension", "transfer": target} for rid in current["rules"]}
        return {"mode": "answering-rule", "rules": rules, "target": target if "business-hours-rule" in rules else None}

    def write_forwarding(self, ext_id: str, current: dict, wanted: dict) -> None:
        if wanted["mode"] == "comm-handling":
            base = f"{V2}/extensions/{ext_id}/comm-handling"
            rule = self.client.request("GET", f"{base}/voice/state-rules/{FAC}")
            action = self.terminating_action(rule)
            targets = [t for t in action.get("targets") or [] if t.get("type") != TO_EXTENSION]
            if wanted["target"]:
                targets.append({"type": TO_EXTENSION, "extension": {"id": wanted["target"]}})
            action.update(targets=targets, terminatingTargetType=wanted["targetType"])
            self.client.request("PATCH", f"{base}/voice/state-rules/{FAC}",
                                body={"dispatching": {"type": rule["dispatching"]["type"],
                                                      "actions": rule["dispatching"]["actions"]}})
            if current["enabled"] != wanted["enabled"]:
                self.client.request("PATCH", f"{base}/states/{FAC}", body={"enabled": wanted["enabled"]})
            return
        for rule_id, rule in wanted["rules"].items():
            if current["rules"].get(rule_id) == rule:
                continue
            body: dict[str, Any] = {"callHandlingAction": rule["callHandlingAction"]}
            if rule["transfer"]:
                body["transfer"] = {"extension": {"id": rule["transfer"]}}
            self.client.request("PUT", f"{V1}/extension/{ext_id}/answering-rule/{rule_id}", body=body)

    # -- voicemail -----------------------------------------------------------
    def voicemail(self, ext_id: str) -> list[dict]:
        messages = self.pages(f"{V1}/extension/{ext_id}/message-store",
                              {"messageType": "VoiceMail", "dateFrom": BEGINNING})
        for m in messages:
            m["id"] = digits(m.get("id"), "message")
        return messages

    def folder(self, ext_id: str) -> Path:
        return Path(self.options.voicemail_archive) / ext_id

    def archived(self, ext_id: str, message: dict) -> bool:
        return (self.folder(ext_id) / f"{message['id']}.json").is_file()

    def archive(self, ext_id: str, message: dict) -> None:
        """Audio first, metadata last (its file says the message is archived), each written whole or not at all."""
        folder = self.folder(ext_id)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for attachment in message.get("attachments") or []:
            if not isinstance(attachment, dict) or attachment.get("type") != "AudioRecording":
                continue
            attachment_id = digits(attachment.get("id"), "attachment")
            audio = self.client.request(
                "GET", f"{V1}/extension/{ext_id}/message-store/{message['id']}/content/{attachment_id}", raw=True)
            suffix = AUDIO_SUFFIX.get(str(attachment.get("contentType")), ".bin")
            write_whole(folder / f"{message['id']}-{attachment_id}{suffix}", audio)
        write_whole(folder / f"{message['id']}.json", json.dumps(message, indent=1, sort_keys=True).encode())

    # -- deciding ----------------------------------------------------------
    def successor_address(self, termination: Termination) -> str:
        return (termination.successor if self.options.successor == "manager" else self.options.successor).lower()

    def plan(self, subject: Subject, termination: Termination) -> list[PlannedAction]:
        state = subject.state
        wanted = []
        if state["forwarded_to"] != self.successor_address(termination) or not state["forwarded_to"]:
            wanted.append(("forward_calls", "forward calls to the successor's extension"))
        if state["numbers"]:
            wanted.append(("move_numbers", f"move {len(state['numbers'])} direct number(s) to the successor"))
        if state["unarchived"]:
            wanted.append(("archive_voicemail", f"archive {len(state['unarchived'])} voicemail message(s)"))
        if state["status"] == "Enabled":
            wanted.append(("disable_extension", "disable the extension (after its numbers moved)"))
        if self.tenant.policy.delete_after_days:
            wanted.append(("delete_extension", "delete the extension, keeping any number in inventory"))
        return [self.planned(name, description) for name, description in wanted]

    # -- acting ------------------------------------------------------------
    def successor_extension(self, ctx: ActionContext) -> str | Result:
        """The successor's enabled extension id, or the needs_human result saying why there is none."""
        address = self.successor_address(ctx.termination)
        if not address:
            return Result("needs_human", reason="no successor: the directories name no manager and the policy no "
                                                "successor; set [tenant.policy] successor or the provider's successor")
        found = self.extensions_of(address)
        if len(found) != 1:
            return Result("needs_human", reason=f"successor {address} has {len(found) or 'no'} RingCentral extensions")
        if found[0].get("status") != "Enabled":
            return Result("needs_human", reason=f"successor {address}'s extension is {found[0].get('status')}")
        if found[0]["id"] == ctx.subject.native_id:
            return Result("needs_human", reason="the successor is the leaver")
        return found[0]["id"]

    def forward_calls(self, action: PlannedAction, ctx: ActionContext) -> Result:
        target = self.successor_extension(ctx)
        if isinstance(target, Result):
            return target
        ext_id = ctx.subject.native_id
        current = self.read_forwarding(ext_id)
        wanted = self.forwarded(current, target)
        result = self.outcome(current, wanted, ctx.dry_run)
        if result.outcome == "changed":
            self.write_forwarding(ext_id, current, wanted)
        return result

    def restore_forwarding(self, action: PlannedAction, ctx: ActionContext) -> Result:
        wanted = dict(action.params)["before"]
        ext_id = ctx.subject.native_id
        current = self.read_forwarding(ext_id)
        if current["mode"] != wanted["mode"]:
            return Result("needs_human", current, wanted, f"the account moved from {wanted['mode']} to "
                          f"{current['mode']} call handling since: set the forwarding back by hand")
        result = self.outcome(current, wanted, ctx.dry_run)
        if result.outcome == "changed":
            self.write_forwarding(ext_id, current, wanted)
        return result

    def move_numbers(self, action: PlannedAction, ctx: ActionContext) -> Result:
        target = self.successor_extension(ctx)
        if isinstance(target, Result):
            return target
        numbers = self.direct_numbers(ctx.subject.native_id)
        return self.assign(numbers, [{**n, "extension": target} for n in numbers], ctx)

    def return_numbers(self, action: PlannedAction, ctx: ActionContext) -> Result:
        wanted = dict(action.params)["before"]["numbers"]
        current = []
        for number in wanted:
            found = self.client.request("GET", f"{V1}/phone-number/{number['id']}")
            current.append({**number, "extension": str((found.get("extension") or {}).get("id") or "") or None})
        return self.assign(current, wanted, ctx)

    def assign(self, current: list[dict], wanted: list[dict], ctx: ActionContext) -> Result:
        """`assignPhoneNumberV2` for each number whose extension differs."""
        result = self.outcome({"numbers": current}, {"numbers": wanted}, ctx.dry_run)
        if result.outcome == "changed":
            for now, number in zip(current, wanted):
                if now != number:
                    self.client.request("PATCH", f"{V2}/phone-numbers/{number['id']}",
                                        body={"usageType": "DirectNumber", "extension": {"id": number["extension"]}})
        return result

    def archive_voicemail(self, action: PlannedAction, ctx: ActionContext) -> Result:
        ext_id = ctx.subject.native_id
        messages = self.voicemail(ext_id)
        waiting = [m for m in messages if not self.archived(ext_id, m)]
        result = self.outcome({"unarchived": sorted(m["id"] for m in waiting)}, {"unarchived": []}, ctx.dry_run,
                              f"{len(messages)} message(s) under {self.folder(ext_id)}")
        if result.outcome == "changed":
            for message in waiting:
                self.archive(ext_id, message)
        return result

    def disable_extension(self, action: PlannedAction, ctx: ActionContext) -> Result:
        ext_id = ctx.subject.native_id
        ext = self.client.request("GET", f"{V1}/extension/{ext_id}")
        before, after = {"status": ext.get("status")}, {"status": "Disabled"}
        numbers = self.direct_numbers(ext_id)
        if numbers and before != after:
            return Result("needs_human", before, before, f"direct number(s) {', '.join(n['phoneNumber'] for n in numbers)} "
                          "are still on the extension: disabling it would leave them dead; move them first")
        result = self.outcome(before, after, ctx.dry_run)
        if result.outcome == "changed":
            when = ctx.local_date.isoformat() if ctx.local_date else "today"
            reason = "Involuntarily" if ctx.termination.kind == "immediate" else "Voluntarily"
            self.client.request("PUT", f"{V1}/extension/{ext_id}", body={
                "status": "Disabled", "statusInfo": {"reason": reason,
                                                     "comment": f"offboarded {when} ({ctx.termination.id})"}})
        return result

    def enable_extension(self, action: PlannedAction, ctx: ActionContext) -> Result:
        ext_id = ctx.subject.native_id
        ext = self.client.request("GET", f"{V1}/extension/{ext_id}")
        result = self.outcome({"status": ext.get("status")}, dict(action.params)["before"], ctx.dry_run)
        if result.outcome == "changed":
            self.client.request("PUT", f"{V1}/extension/{ext_id}", body={"status": result.after["status"]})
        return result

    def delete_extension(self, action: PlannedAction, ctx: ActionContext) -> Result:
        """Only once `delete_after_days` have passed since the termination date, whoever runs the retain phase."""
        ext_id = ctx.subject.native_id
        due = ctx.termination.termination_date
        if due is None:
            return Result("needs_human", reason="no termination date to count delete_after_days from")
        day = due + dt.timedelta(days=self.tenant.policy.delete_after_days)
        today = dt.datetime.now(dt.timezone.utc).date()
        if day > today:
            waiting = f"the extension is deleted on {day.isoformat()} (delete_after_days after {due.isoformat()})"
            if ctx.dry_run:
                return Result("planned", reason=waiting)
            raise NotYet(waiting, self.where, delay=(day - today).total_seconds())
        try:
            self.client.request("GET", f"{V1}/extension/{ext_id}")
        except http.NotFound:
            return Result("unchanged", {"exists": False}, {"exists": False})
        numbers = [n["phoneNumber"] for n in self.direct_numbers(ext_id)]
        result = self.outcome({"exists": True, "numbers": numbers}, {"exists": False, "numbers_in_inventory": numbers},
                              ctx.dry_run)
        if result.outcome == "changed":
            self.client.request("DELETE", f"{V1}/extension/{ext_id}", params={"savePhoneNumbers": "true"})
        return result


def write_whole(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a crash leaves the old file or the whole new one."""
    temporary = path.with_name(f".{path.name}.part")
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
        fh.write(data)
    os.replace(temporary, path)
