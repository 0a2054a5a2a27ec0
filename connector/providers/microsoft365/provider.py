"""What the Entra and Exchange Online providers share: config, clients, matching and the batching driver.

Actions are generators: they yield lists of calls (`GraphCall` or `Cmdlet`) and get back
one answer or typed error per call. The driver advances every leaver's chain of actions
one step at a time and sends each step's calls together, so the Graph calls of 500
leavers travel in `$batch` requests of 20 while each leaver's actions keep their order.
A single `apply` is the same driver with one item.

Admin detection reads every way of holding a directory role (DESIGN.md: admins are never
touched): active assignments of the user and of each role-assignable group it is in
(built-in and custom roles, at tenant or administrative-unit scope, with the definition
expanded), and PIM eligibility of both. A role read that fails fails the match, so the
person is held; only a tenant without the P2 licence PIM needs has, by Graph's own
answer, no eligibility to find.
"""
from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, ClassVar, Generator
from urllib.parse import quote

from pydantic import model_validator

from ... import http
from ...config import HttpsUrl, PluginOptions, SecretRef, invalid
from ...errors import ConfigError, NeedsHuman, OffboardError, PermanentError, RetryableError
from ...model import FRESH_READ, ActionContext, Match, PlannedAction, Result, Subject, Termination
from ..base import Provider
from .auth import Tokens
from .exchange_api import Cmdlet, ExchangeAdmin
from .graph import GraphCall, GraphClient, in_sequence

Call = GraphCall | Cmdlet
Step = Generator[list[Call], list[Any], Any]

class Microsoft365Options(PluginOptions):
    tenant_id: str                          # directory (tenant) id of the client's Microsoft 365
    client_id: str                          # application (client) id of the app registration
    client_secret: SecretRef | None = None  # or certificate_path and thumbprint
    certificate_path: str | None = None     # PEM file with the app's private key
    thumbprint: str | None = None           # SHA-1 thumbprint of the certificate uploaded to the app registration
    authority: HttpsUrl = "https://login.microsoftonline.com"
    graph_url: HttpsUrl = "https://graph.microsoft.com"
    exchange_url: HttpsUrl = "https://outlook.office365.com"

    @model_validator(mode="after")
    def _one_credential(self) -> Microsoft365Options:
        if (self.client_secret is None) == (self.certificate_path is None):
            raise ValueError("give client_secret, or certificate_path and thumbprint (one of them)")
        if self.certificate_path and not self.thumbprint:
            raise invalid("thumbprint", "certificate_path needs thumbprint")
        return self


#: every user property the actions compare; most are outside Graph's default set, so they are named
USER_FIELDS = ("id,displayName,givenName,surname,userPrincipalName,mail,proxyAddresses,employeeId,accountEnabled,"
               "onPremisesSyncEnabled,assignedLicenses,licenseAssignmentStates,signInSessionsValidFromDateTime,"
               "lastPasswordChangeDateTime,onPremisesImmutableId")


MAILBOX_READS = {"mailbox": "Get-Mailbox", "statistics": "Get-MailboxStatistics", "permissions": "Get-MailboxPermission",
                 "auto_reply": "Get-MailboxAutoReplyConfiguration"}
SINGLE_OBJECT = ("mailbox", "statistics", "auto_reply")
GROUP_FIELDS = "id,displayName,mail,groupTypes,mailEnabled,securityEnabled,onPremisesSyncEnabled,isAssignableToRole"
MANAGER_FIELDS = "id,mail,userPrincipalName,accountEnabled"
ROLE_READS = {"roleAssignments": "roleAssignments", "roleEligibility": "roleEligibilityScheduleInstances"}
NO_PIM = "AadPremiumLicenseRequired"      # Graph's answer where PIM is not licensed: nobody can be eligible
#: reads whose failure is kept as the value (the actions that need it report it): a tenant without Teams Phone
#: permission still offboards everything else
KEPT_ERRORS = {"teamsNumbers"}
TEAMS_NUMBERS = "/admin/teams/telephoneNumberManagement/numberAssignments"
NUMBER_FIELDS = "id,telephoneNumber,assignmentTargetId,numberType,assignmentCategory,assignmentStatus"
#: what else the leaver reaches, read below /users/{id}: the key a pass reads it as -> the rest of the path
USER_READS = {"owned": f"/ownedObjects/microsoft.graph.group?$select={GROUP_FIELDS}",
              "grants": "/oauth2PermissionGrants",
              "managedDevices": "/managedDevices?$select=id,deviceName,managedDeviceOwnerType,operatingSystem,"
                                "managementState",
              "drive": "/drive/root?$select=id,webUrl", "drivePermissions": "/drive/root/permissions",
              "rules": "/mailFolders/inbox/messageRules"}
MEETING_FIELDS = "id,subject,isOrganizer,isCancelled,attendees,start"
#: reads whose 404 is a fact (no mailbox, no manager, no OneDrive), not an error
ABSENT_OK = {*MAILBOX_READS, "devices", "manager", "drive", "drivePermissions", "rules", "meetings"}


def concurrently(*work: Callable[[], Any]) -> list[Any]:
    """Each on its own thread (they are calls to different services, or independent reads of one); their
    values in order, or the first error once all have finished."""
    with ThreadPoolExecutor(max_workers=len(work)) as pool:
        futures = [pool.submit(w) for w in work]
    return [f.result() for f in futures]


class GoneWhenWritten(PermanentError):
    """A write answered 404: its path or its object is gone (a write's 404 is not "the leaver is gone")."""


class NoSuccessor(NeedsHuman):
    """The policy hands something to the successor, and the directories name none (nor does policy.successor)."""


def recipient(setting: str, termination: Termination, what: str, where: str) -> str:
    """Policy `manager | none | address` -> an address, or '' for nobody. "manager" is the successor
    from the directories; when there is none the hand-over waits for a person (NoSuccessor)."""
    if setting == "none":
        return ""
    if setting != "manager":
        return setting.lower()
    if not termination.successor:
        raise NoSuccessor(f"{what}: the directories name no enabled manager who stays, and policy.successor is "
                          "empty: name a successor (policy.successor) or hand over by hand", where)
    return termination.successor


def role_call(kind: str, principal_id: str) -> GraphCall:
    """Role assignments or PIM eligibilities of one principal (a user or a role-assignable group)."""
    return GraphCall("GET", f"/roleManagement/directory/{ROLE_READS[kind]}?$filter="
                            f"{quote(f'principalId eq {odata_literal(principal_id)}')}&$expand=roleDefinition")


def role_holdings(kind: str, answer: Any, through: str = "") -> list[str]:
    """What one role read says the principal holds, in words that name each role; raise if the read failed."""
    if kind == "roleEligibility" and isinstance(answer, PermanentError) and NO_PIM in answer.message:
        return []
    if isinstance(answer, OffboardError):
        raise answer
    items = answer.get("value", []) if isinstance(answer, dict) else answer
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise PermanentError(f"the {kind} read answered something other than a list of objects")
    out = []
    for item in items:
        definition = item.get("roleDefinition") if isinstance(item.get("roleDefinition"), dict) else {}
        name = definition.get("displayName") or item.get("roleDefinitionId") or "?"
        scope = item.get("directoryScopeId") or "/"
        out.append(("eligible (PIM) for " if kind == "roleEligibility" else "holds ")
                   + ("" if definition.get("isBuiltIn", True) else "custom ") + f"directory role {name}"
                   + ("" if scope == "/" else f" scoped to {scope}") + (f" through group {through}" if through else ""))
    return out


def successor_facts(manager: dict | None) -> dict | None:
    """The directory manager as the engine judges a successor (`Subject.manager`); None when unset."""
    if not manager:
        return None
    return {"address": (manager.get("mail") or manager.get("userPrincipalName") or "").lower(),
            "enabled": manager.get("accountEnabled") is True, "id": manager.get("id"), "mail": manager.get("mail"),
            "userPrincipalName": manager.get("userPrincipalName")}


def odata_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def match_filter(termination: Termination) -> str:
    """One `$filter` finding every account that carries the id or the address, so ambiguity is visible."""
    clauses = []
    if termination.employee_id:
        clauses.append(f"employeeId eq {odata_literal(termination.employee_id)}")
    if termination.email:
        email = odata_literal(termination.email)
        clauses += [f"userPrincipalName eq {email}", f"mail eq {email}",
                    f"proxyAddresses/any(a:a eq {odata_literal('smtp:' + termination.email)})"]
    return " or ".join(clauses)


def addresses(user: dict) -> list[str]:
    """UPN, mail and every proxy address (without its `smtp:` prefix): the names `protected` globs see."""
    names = [user.get("userPrincipalName"), user.get("mail")]
    names += [p.split(":", 1)[-1] for p in user.get("proxyAddresses") or []]
    return list(dict.fromkeys(n for n in names if n))


def choose(termination: Termination, users: list[dict]) -> tuple[Match, dict | None]:
    """DESIGN.md "Matching": the employee id is authoritative; addresses count only when no account has the id."""
    by_id = [u for u in users if termination.employee_id and u.get("employeeId") == termination.employee_id]
    email = termination.email.lower()
    by_address = [u for u in users if email and email in (n.lower() for n in addresses(u))]
    candidates = sorted({u["userPrincipalName"] for u in by_id + by_address})
    if len(by_id) > 1:
        return Match("ambiguous", candidates=candidates, reason="several accounts carry this employee id"), None
    if by_id and any(u["id"] != by_id[0]["id"] for u in by_address):
        return Match("ambiguous", candidates=candidates,
                     reason="the employee id and the address point at different accounts"), None
    if not by_id and len(by_address) > 1:
        return Match("ambiguous", candidates=candidates, reason="several accounts carry this address"), None
    if by_id or by_address:
        return Match("matched", candidates=candidates), (by_id or by_address)[0]
    return Match("not_found", reason=f"no account with employeeId {termination.employee_id!r} "
                                     f"or address {termination.email!r}"), None


class Microsoft365Provider(Provider):
    options_model = Microsoft365Options
    #: action -> the reads ("user", "memberOf", "mailbox", ...) it compares; a pass reads them once, up front
    reads: ClassVar[dict[str, tuple[str, ...]]] = {}
    prepare_checks_online = True      # the match is a Graph read and the tenant's domains an Exchange one

    def __init__(self, name, options, tenant, where=""):
        super().__init__(name, options, tenant, where)
        tenant_id = options.tenant_id
        self.accepted_domains: dict[str, str] | None = None      # read once per pass (an instance lives one pass)
        self.graph = GraphClient(options.graph_url, tenant_id, Tokens(options, options.graph_url, self.where),
                                 self.where)
        self.exchange = ExchangeAdmin(options.exchange_url, tenant_id,
                                      Tokens(options, options.exchange_url, self.where), self.where)
        self.matches: dict[str, Match] = {}
        self.failures: dict[str, OffboardError] = {}      # termination id -> why its match could not be read
        self.observed: dict[str, tuple[float, dict]] = {}  # account id -> when prepare started reading it, what it read

    # -- reading -----------------------------------------------------------
    def check_online(self) -> None:
        """One read-only call to each service, side by side: both tokens, Graph's consent and the Exchange
        permission and role."""
        self.accepted_domains = None
        concurrently(*self.online_reads())

    def online_reads(self) -> list[Callable[[], Any]]:
        return [lambda: self.graph.request(GraphCall("GET", "/users?$top=1&$select=id")), self.tenant_domains]

    def tenant_domains(self) -> dict[str, str]:
        """The tenant's accepted domains (name -> Authoritative, InternalRelay, ...): where mail stays inside."""
        if self.accepted_domains is None:
            self.accepted_domains = {str(d.get("DomainName", "")).lower(): d.get("DomainType", "")
                                     for d in self.exchange.invoke(Cmdlet.of("Get-AcceptedDomain"))}
        return self.accepted_domains

    def prepare(self, terminations: list[Termination]) -> None:
        """Match everyone with one filtered read each, sent 20 to a `$batch`, then read their state in bulk.

        A read that fails after its retries fails that person's match (`match` raises it); a
        refused credential fails the whole pass of this provider, as the engine expects.
        """
        for termination in terminations:
            self.matches.pop(termination.id, None)
            self.failures.pop(termination.id, None)
        wanted = [t for t in terminations if t.employee_id or t.email]
        started = time.monotonic()
        calls = [GraphCall("GET", f"/users?$filter={quote(match_filter(t))}&$select={USER_FIELDS}") for t in wanted]
        observing: dict[str, Step] = {}
        for termination, answer in zip(wanted, self.graph.batch(calls)):
            if isinstance(answer, OffboardError):
                self.failures[termination.id] = answer
                continue
            match, user = choose(termination, answer.get("value", []))
            if user:
                match.subject = Subject(self.name, user["id"], addresses(user),
                                        anchor=user.get("onPremisesImmutableId") or "")
                seen = {"user": user, **self.read_with_the_match(termination, user)}
                self.observed[user["id"]] = (started, seen)
                observing[termination.id] = self.observe(match.subject, seen)
            self.matches[termination.id] = match
        for key, outcome in zip(observing, self.drive(list(observing.values()))):
            if isinstance(outcome, OffboardError):
                self.observed.pop(self.matches.pop(key).subject.native_id, None)
                self.failures[key] = outcome
            elif outcome is None:
                self.matches[key] = Match("not_found", reason=f"{self.type}: the account has nothing here")
        refused = next((e for e in self.failures.values() if isinstance(e, ConfigError)), None)
        if refused:
            raise refused

    def match(self, termination: Termination) -> Match:
        if termination.id not in self.matches and termination.id not in self.failures:
            self.prepare([termination])
        if termination.id in self.failures:
            raise self.failures[termination.id]
        return self.matches.get(termination.id) or Match("not_found", reason="no employee id and no address")

    def read_with_the_match(self, termination: Termination, user: dict) -> dict[str, Any]:
        """Reads of the matched account that went out beside the match (key -> answer): none here."""
        return {}

    def observe(self, subject: Subject, seen: dict) -> Step:
        """Fill `subject.state` (and `is_admin`) from reads; return None when this service has no such account."""
        raise NotImplementedError

    # -- the driver ----------------------------------------------------------
    def read_call(self, key: str, subject: Subject) -> Call:
        """The call that reads `key` ("user", "mailbox", ...) of a subject."""
        user_id = subject.native_id
        if key == "user":
            return GraphCall("GET", f"/users/{user_id}?$select={USER_FIELDS}")
        if key == "memberOf":
            return GraphCall("GET", f"/users/{user_id}/memberOf?$select={GROUP_FIELDS}")
        if key == "methods":
            return GraphCall("GET", f"/users/{user_id}/authentication/methods")
        if key == "manager":
            return GraphCall("GET", f"/users/{user_id}/manager?$select={MANAGER_FIELDS}")
        if key in ROLE_READS:
            return role_call(key, user_id)
        if key == "teamsNumbers":
            return GraphCall("GET", f"{TEAMS_NUMBERS}?$filter={quote(f'assignmentTargetId eq {odata_literal(user_id)}')}"
                                    f"&$select={NUMBER_FIELDS}")
        if key in USER_READS:
            return GraphCall("GET", f"/users/{user_id}{USER_READS[key]}")
        if key == "meetings":            # the window Remove-CalendarEvents cancels in
            start = dt.datetime.now(dt.timezone.utc)
            end = start + dt.timedelta(days=max(1, self.tenant.policy.cancel_meetings_days))
            window = f"startDateTime={start:%Y-%m-%dT%H:%M:%SZ}&endDateTime={end:%Y-%m-%dT%H:%M:%SZ}"
            return GraphCall("GET", f"/users/{user_id}/calendarView?{window}&$select={MEETING_FIELDS}")
        upn = self.upn(subject)        # every cmdlet takes the UPN as an identity
        if key == "devices":
            return Cmdlet.of("Get-MobileDeviceStatistics", anchor=upn, Mailbox=upn)
        return Cmdlet.of(MAILBOX_READS[key], anchor=upn, Identity=upn)

    @staticmethod
    def upn(subject: Subject) -> str:
        return subject.state.get("user", {}).get("userPrincipalName", "")

    def fetch(self, seen: dict, subject: Subject, *keys: str) -> Generator[list[Call], list[Any], list[Any]]:
        """Read what `seen` lacks, all in one step; collections come back as lists, a missing mailbox as None."""
        missing = [k for k in keys if k not in seen]
        if missing:
            answers = yield [self.read_call(k, subject) for k in missing]
            seen.update(zip(missing, answers))
        out = []
        for key in keys:
            value = seen[key]
            if isinstance(value, http.NotFound) and key in ABSENT_OK:
                value = None                  # no mailbox, no manager: not an error, a fact
            elif key in ROLE_READS:
                value = role_holdings(key, value)     # raises when the read failed
            elif isinstance(value, OffboardError) and key in KEPT_ERRORS:
                pass
            elif isinstance(value, OffboardError):
                raise value
            elif isinstance(value, dict) and "value" in value:
                value = value["value"]
            elif isinstance(value, list) and key in SINGLE_OBJECT:
                value = value[0] if value else None
            out.append(value)
        return out

    @staticmethod
    def send(*calls: Call, gone_ok: bool = False) -> Generator[list[Call], list[Any], list[Any]]:
        """Send writes together; raise the first error (with `gone_ok`, a 404 means already done)."""
        answers = yield list(calls)
        for answer in answers:
            if isinstance(answer, http.NotFound) and not gone_ok:
                raise GoneWhenWritten(answer.message, answer.where)
            if isinstance(answer, OffboardError) and not isinstance(answer, http.NotFound):
                raise answer
        return answers

    def settle(self, before: Any, after: Any, ctx: ActionContext, *writes: Call, reason: str = "",
               gone_ok: bool = False) -> Generator[list[Call], list[Any], Result]:
        """The end of every action: compare, write only on a difference and never in a dry run."""
        result = self.outcome(before, after, ctx.dry_run, reason)
        if result.outcome == "changed" and writes:
            yield from self.send(*writes, gone_ok=gone_ok)
        return result

    def mark_admin(self, subject: Subject, seen: dict) -> Step:
        """Set `is_admin` from every role the user holds or may activate, directly or through a group."""
        member_of, *own = yield from self.fetch(seen, subject, "memberOf", *ROLE_READS)
        holdings = [f"holds directory role {r.get('displayName') or r['id']}" for r in member_of
                    if r.get("@odata.type") == "#microsoft.graph.directoryRole"]
        holdings += [h for found in own for h in found]
        groups = [g for g in member_of if g.get("@odata.type") == "#microsoft.graph.group" and g.get("isAssignableToRole")]
        if groups:
            kinds = [(kind, g) for g in groups for kind in ROLE_READS]
            answers = yield [role_call(kind, g["id"]) for kind, g in kinds]
            for (kind, group), answer in zip(kinds, answers):
                holdings += role_holdings(kind, answer, through=group.get("displayName") or group["id"])
        if holdings:
            subject.is_admin, subject.admin_reason = True, "; ".join(dict.fromkeys(holdings))

    def drive(self, steps: list[Step]) -> list[Any]:
        """Run generators side by side; each round's Graph calls go out in `$batch`es and its cmdlets in
        parallel, the two services at once."""
        merged = side_by_side(steps)
        try:
            calls = next(merged)
            while True:
                graph = [c for c in calls if isinstance(c, GraphCall)]
                cmdlets = [c for c in calls if isinstance(c, Cmdlet)]
                if graph and cmdlets:
                    answered, ran = map(iter, concurrently(lambda: self.graph.batch(graph),
                                                           lambda: self.exchange.invoke_many(cmdlets)))
                else:          # one service this round: no thread to start
                    answered, ran = iter(self.graph.batch(graph) if graph else []), iter(self.exchange.invoke_many(cmdlets))
                calls = merged.send([next(answered) if isinstance(c, GraphCall) else next(ran) for c in calls])
        except StopIteration as stop:
            return stop.value

    # -- acting ------------------------------------------------------------
    def apply(self, action: PlannedAction, ctx: ActionContext) -> Result:
        [outcome] = self.apply_many([(action, ctx)])
        if isinstance(outcome, OffboardError):
            raise outcome
        return outcome

    def apply_many(self, items: list[tuple[PlannedAction, ActionContext]]) -> list[Result | OffboardError]:
        """Every leaver's actions run in order, one chain per leaver; the chains run side by side."""
        chains: dict[str, list[int]] = {}
        for index, (action, ctx) in enumerate(items):
            chains.setdefault(ctx.subject.native_id, []).append(index)
        outcomes = self.drive([self._chain([items[i] for i in indexes]) for indexes in chains.values()])
        out: list[Result | OffboardError] = [None] * len(items)
        for indexes, results in zip(chains.values(), outcomes):
            for index, result in zip(indexes, results):
                out[index] = result
        return out

    def _chain(self, items: list[tuple[PlannedAction, ActionContext]]) -> Step:
        """One leaver's actions of one phase, after one read round. Revoke's writes go out together, in
        order (one Graph sequence): from the instant to the last revoke is one round trip, not one per action."""
        seen = self.fresh_reads(items[0][1].subject, items[0][0].phase)   # one read per leaver and phase, shared
        fresh = bool(seen)
        keys = dict.fromkeys(k for action, _ in items for k in self.reads.get(action.action, ()))
        try:
            yield from self.fetch(seen, items[0][1].subject, *keys)      # every read in one round
        except OffboardError:
            pass                        # the action that needs the failed read reports it
        items[0][1].wait_until_due()    # a pass read ahead of its instant writes from the instant on
        steps = [self._action(action, ctx, seen) for action, ctx in items]
        if items[0][0].phase == "revoke":
            results = yield from side_by_side(steps, ordered=True)
            # compared on prepare's read, an account deleted since is found so by the next pass's read
            return [RetryableError(f"{r.message} (gone since it was read: read again next pass)", r.where)
                    if fresh and isinstance(r, GoneWhenWritten) else r for r in results]
        out = []
        for step in steps:
            out.append((yield from step))
        return out

    def fresh_reads(self, subject: Subject, phase: str) -> dict[str, Any]:
        """What prepare read of the account, for its revoke actions, once and while younger than FRESH_READ:
        they compare that instead of asking again, so an unannounced leaver's sign-in is cut a round trip
        sooner. Anything after a wait for the instant, after writes, or of a later phase (a converting
        mailbox, a hand-over moves on by itself) reads anew; a failed read is never kept."""
        read_at, seen = self.observed.pop(subject.native_id, (0.0, {}))
        if phase != "revoke" or time.monotonic() - read_at >= FRESH_READ:
            return {}
        return {k: v for k, v in seen.items() if isinstance(v, http.NotFound) or not isinstance(v, OffboardError)}

    def _action(self, action: PlannedAction, ctx: ActionContext, seen: dict) -> Step:
        handler: Callable | None = getattr(self, action.action, None)
        if handler is None or action.action not in self.actions:
            return ConfigError(f"{self.type} has no action {action.action}", self.where)
        try:
            return (yield from handler(action, ctx, seen))
        except http.NotFound as e:
            return Result("skipped", reason=f"not_found: {e.message}")
        except OffboardError as e:
            return e


def side_by_side(steps: list[Step], ordered: bool = False) -> Step:
    """Generators as one: each round yields every live step's calls together and hands each its answers; a step
    ends with its value, or its typed error. `ordered`: each round's Graph calls run in sequence (`dependsOn`)."""
    results: list[Any] = [None] * len(steps)
    waiting: dict[int, list[Call]] = {}

    def advance(index: int, answers: list[Any] | None) -> None:
        try:
            waiting[index] = steps[index].send(answers)
        except StopIteration as stop:
            results[index] = stop.value
        except OffboardError as e:
            results[index] = e

    for index in range(len(steps)):
        advance(index, None)
    while waiting:
        rounds = dict(waiting)
        waiting.clear()
        calls = [c for round_calls in rounds.values() for c in round_calls]
        answers = iter((yield in_sequence(calls) if ordered else calls))
        for index, round_calls in rounds.items():
            advance(index, [next(answers) for _ in round_calls])
    return results
