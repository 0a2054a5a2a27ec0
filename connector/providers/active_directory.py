"""On-prem Active Directory over LDAPS (or StartTLS): revoke a leaver's access, then park the account.

Matching reads every user once per pass (one paged search into in-memory indexes),
so 100,000 leavers cost no extra round trips; the managers come from the same read.
Admins are found first from that read: membership (in-chain, and through the primary
group) of the privileged groups, looked up by well-known SID because Samba never sets
adminCount and localised DCs rename the groups. What that cannot see (memberships the
bind account may not read, other domains, SID history) the DC's own `tokenGroups`
does: it is read for each matched account the cheap checks call ordinary, one BASE
search each (AD computes it for no other scope), and empty tokenGroups mean they were
hidden from us, so the match fails rather than call the account ordinary. Every
action re-reads its account by objectGUID (it may have moved since the pass began),
writes only on a difference, and turns LDAP result codes into the engine's typed errors.

The notice period (`restrict`) leaves the groups the policy's globs name and joins the
ones it adds. Retention deletes the account, or moves it to `deleted_ou` where a client
keeps objects, and says whether the AD Recycle Bin could bring a deleted one back. Restore
puts each journaled before-state back; a password never comes back: the operator is shown
a new one, once.
"""
from __future__ import annotations

import base64
import datetime as dt
import functools
import logging
import re
import secrets
import ssl
import string
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Iterator
from urllib.parse import urlsplit

import ldap3
from ldap3.core import exceptions as lx
from ldap3.protocol.formatters.formatters import format_ad_timestamp, format_sid
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn, safe_dn, to_dn
from pydantic import AfterValidator, model_validator

from ..config import PluginOptions, Positive, SecretRef, invalid, remember_secret
from ..errors import ConfigError, NeedsHuman, OffboardError, PermanentError, RetryableError
from ..model import ActionContext, Match, PlannedAction, Result, Subject, Termination
from .base import Provider

log = logging.getLogger(__name__)

USER_FILTER = "(&(objectCategory=person)(objectClass=user))"
USER_ATTRIBUTES = ["objectGUID", "sAMAccountName", "userPrincipalName", "mail", "proxyAddresses", "employeeID",
                   "userAccountControl", "memberOf", "distinguishedName", "description", "pwdLastSet",
                   "adminCount", "primaryGroupID", "displayName", "manager"]
IN_CHAIN = "1.2.840.113556.1.4.1941"
# groups whose members, however deeply nested, hold admin rights (English names for reasons,
# where the DC does not know the group: the forest-root ones seen from a child domain)
PRIVILEGED_RIDS = {512: "Domain Admins", 518: "Schema Admins", 519: "Enterprise Admins",
                   520: "Group Policy Creator Owners", 526: "Key Admins", 527: "Enterprise Key Admins"}
PRIVILEGED_BUILTIN = {"S-1-5-32-544": "Administrators", "S-1-5-32-548": "Account Operators",
                      "S-1-5-32-549": "Server Operators", "S-1-5-32-550": "Print Operators",
                      "S-1-5-32-551": "Backup Operators"}
DNS_ADMINS = "DnsAdmins"       # domain-local, made with the DNS role, with no fixed RID: found by name
ACCOUNTDISABLE = 0x2
STAMP = "Offboarded"
PASSWORD_LENGTH = 32
PASSWORD_SYMBOLS = "-_.!#%+=@"

# LDAP result codes: what the engine should do about them
CODE_REFUSED_BIND = 49
CODE_NO_RIGHTS = 50
CODE_WANTS_TLS = (8, 13)                            # strongerAuthRequired, confidentialityRequired
CODE_TRANSIENT = (3, 51, 52)                        # timeLimitExceeded, busy, unavailable


def _ldap_url(value: str) -> str:
    url = urlsplit(value)
    if url.scheme not in ("ldap", "ldaps") or not url.hostname:
        raise ValueError(f"expected ldaps://HOST[:PORT] or ldap://HOST[:PORT]; got {value!r}")
    return value


class ActiveDirectoryOptions(PluginOptions):
    url: Annotated[str, AfterValidator(_ldap_url)]     # ldaps://dc1.example.com, or ldap:// with start_tls
    bind_user: str                                     # UPN, DOMAIN\\user or DN of the service account
    bind_password: SecretRef
    disabled_ou: str                                   # DN of the OU leavers are moved into
    deleted_ou: str | None = None                      # retain moves accounts here instead of deleting them
    ca_file: str | None = None                         # PEM of the CA that signed the DC's certificate (default: system CAs)
    base_dn: str | None = None                         # where users are searched (default: the domain, from rootDSE)
    start_tls: bool = False
    page_size: Positive = 500
    timeout: Positive = 30                             # seconds per connect and per LDAP answer

    @model_validator(mode="after")
    def _tls(self) -> ActiveDirectoryOptions:
        if urlsplit(self.url).scheme == "ldap" and not self.start_tls:
            raise invalid("url", "ldap:// without start_tls = true would send the bind password in clear")
        return self


def new_password(avoid: list[str]) -> str:
    """A random password with all four character classes and none of `avoid` in it (AD refuses those)."""
    alphabet = string.ascii_letters + string.digits + PASSWORD_SYMBOLS
    banned = [word.lower() for word in avoid if len(word) >= 3]
    while True:
        password = "".join(secrets.choice(alphabet) for _ in range(PASSWORD_LENGTH))
        classes = (string.ascii_lowercase, string.ascii_uppercase, string.digits, PASSWORD_SYMBOLS)
        if all(any(c in cls for c in password) for cls in classes) and not any(w in password.lower() for w in banned):
            return password


def unicode_pwd(password: str) -> bytes:
    """AD's `unicodePwd` value: the password in double quotes, UTF-16-LE."""
    return f'"{password}"'.encode("utf-16-le")


@functools.lru_cache(maxsize=4096)
def normal_dn(dn: str) -> str:
    """A DN as AD compares them, parsed once: a pass compares every leaver's OU with the same few OUs."""
    return safe_dn(dn).lower()


def same_dn(a: str, b: str) -> bool:
    return normal_dn(a) == normal_dn(b)


def parent_dn(dn: str) -> str:
    return ",".join(to_dn(dn)[1:])


@dataclass(slots=True)
class Account:
    """One user object, decoded from its raw attributes."""

    guid: str
    dn: str
    sam: str
    upn: str
    mail: str
    smtp: list[str]                    # proxyAddresses of type smtp, without the prefix
    proxies: list[str]                 # every proxyAddresses entry, without its type prefix
    employee_id: str
    uac: int
    groups: list[str]
    description: str
    display_name: str
    pwd_last_set: dt.datetime | None
    admin_count: int
    primary_group: int
    manager: str                       # DN
    immutable_id: str                  # base64 of the objectGUID bytes: what Entra's onPremisesImmutableId holds

    @classmethod
    def from_entry(cls, entry: dict) -> Account:
        raw = entry["raw_attributes"]

        def text(name: str) -> str:
            values = raw.get(name)
            return values[0].decode() if values else ""

        def texts(name: str) -> list[str]:
            return [v.decode() for v in raw.get(name) or []]

        pwd = raw.get("pwdLastSet")
        proxies = texts("proxyAddresses")
        return cls(
            guid=str(uuid.UUID(bytes_le=raw["objectGUID"][0])),
            dn=entry["dn"],
            sam=text("sAMAccountName"),
            upn=text("userPrincipalName"),
            mail=text("mail"),
            smtp=[p[5:] for p in proxies if p[:5].lower() == "smtp:"],
            proxies=[p.split(":", 1)[-1] for p in proxies],
            employee_id=text("employeeID"),
            uac=int(text("userAccountControl") or 0),
            groups=texts("memberOf"),
            description=text("description"),
            display_name=text("displayName"),
            pwd_last_set=format_ad_timestamp(pwd[0]) if pwd and pwd[0] != b"0" else None,
            admin_count=int(text("adminCount") or 0),
            primary_group=int(text("primaryGroupID") or 0),
            manager=text("manager"),
            immutable_id=base64.b64encode(raw["objectGUID"][0]).decode(),
        )

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(n for n in (self.sam, self.upn, self.mail, *self.proxies) if n))

    @property
    def addresses(self) -> set[str]:
        return {n.lower() for n in (self.upn, self.mail, *self.smtp) if n}

    @property
    def enabled(self) -> bool:
        """An account that can sign in (a contact, which has no userAccountControl, cannot)."""
        return bool(self.uac) and not self.uac & ACCOUNTDISABLE

    def state(self) -> dict[str, Any]:
        return {"dn": self.dn, "sam": self.sam, "employee_id": self.employee_id, "uac": self.uac,
                "groups": list(self.groups), "description": self.description,
                "pwd_last_set": self.pwd_last_set.isoformat() if self.pwd_last_set else None}

    def successor_facts(self) -> dict[str, Any]:
        """What the engine needs to judge this account as someone's successor (it knows who is leaving)."""
        return {"address": self.mail or self.upn, "enabled": self.enabled, "dn": self.dn, "mail": self.mail,
                "userPrincipalName": self.upn, "sAMAccountName": self.sam}


@dataclass(frozen=True, slots=True)
class PrivilegedGroup:
    """A group whose members are admins: a privileged group itself, or one nested in it (`via`)."""

    dn: str
    sid: str
    name: str                          # the privileged group it makes its members part of
    via: str = ""                      # the nested group's name

    def reason(self, primary: bool = False) -> str:
        if not self.via:
            return f"member of {self.name}" + (" (its primary group)" if primary else "")
        return f"member of {self.name} through {'its primary group ' if primary else ''}{self.via}"


class ActiveDirectoryProvider(Provider):
    type = "active_directory"
    options_model = ActiveDirectoryOptions
    actions = {
        "restrict_groups": "restrict",
        "disable_account": "revoke",
        "reset_password": "revoke",
        "remove_groups": "reclaim",
        "stamp_description": "reclaim",
        "move_to_disabled_ou": "reclaim",
        "delete_account": "retain",
        "undelete_account": "restore",
        "move_back": "restore",
        "restore_description": "restore",
        "restore_groups": "restore",
        "issue_password": "restore",
        "enable_account": "restore",
    }
    undo = {"restrict_groups": "restore_groups", "disable_account": "enable_account",
            "reset_password": "issue_password", "remove_groups": "restore_groups",
            "stamp_description": "restore_description", "move_to_disabled_ou": "move_back",
            "delete_account": "undelete_account"}
    manager_authority = 2          # synced users come from here: its `manager` names the successor

    def __init__(self, name: str, options: ActiveDirectoryOptions, tenant, where: str = ""):
        super().__init__(name, options, tenant, where)
        self.url = urlsplit(options.url)
        self.host_where = f"{self.where} ({options.url})"
        self.domain_dn = self.base_dn = ""          # known once bound (rootDSE)
        self._lock = threading.RLock()
        self._conn: ldap3.Connection | None = None
        self._bound_once = False
        self._by_id: dict[str, list[Account]] = {}
        self._by_address: dict[str, list[Account]] = {}
        self._by_dn: dict[str, Account] = {}                  # lowercased DN -> account
        self._outside: dict[str, Account | None] = {}         # lowercased DN -> a manager the paged read missed
        self._admins: dict[str, str] = {}                     # guid -> why, from the paged read
        self._token_reasons: dict[str, str] = {}              # guid -> why, from its tokenGroups
        self._privileged_names: dict[str, str] = {}           # SID of a privileged group -> its name here
        self._restrict_add: list[str] | None = None           # DNs of policy.restrict_add_groups, read once

    # -- connection ----------------------------------------------------------
    def _connection(self) -> ldap3.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        o = self.options
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=o.ca_file)
        ldaps = self.url.scheme == "ldaps"
        server = ldap3.Server(self.url.hostname, port=self.url.port or (636 if ldaps else 389), use_ssl=ldaps,
                              tls=tls, get_info=ldap3.NONE, connect_timeout=o.timeout)
        conn = ldap3.Connection(server, o.bind_user, o.bind_password.reveal(), receive_timeout=o.timeout,
                                raise_exceptions=True, auto_referrals=False)
        try:
            conn.open()
            if o.start_tls:
                conn.start_tls()
            conn.bind()
            conn.search("", "(objectClass=*)", ldap3.BASE, attributes=["defaultNamingContext"])
            self.domain_dn = conn.response[0]["raw_attributes"]["defaultNamingContext"][0].decode()
            self.base_dn = o.base_dn or self.domain_dn
        except lx.LDAPException:
            _unbind_quietly(conn)
            raise
        self._conn, self._bound_once = conn, True
        return conn

    @contextmanager
    def _ldap(self, doing: str) -> Iterator[ldap3.Connection]:
        """The bound connection, under the lock; LDAP failures leave as typed errors saying what failed."""
        with self._lock:
            try:
                yield self._connection()
            except lx.LDAPException as e:
                raise self._typed(e, doing) from None

    def _typed(self, e: lx.LDAPException, doing: str) -> OffboardError:
        where = self.host_where
        if isinstance(e, lx.LDAPOperationResult):
            detail = " ".join(f"{e.description}: {e.message or ''}".split()).rstrip(":")
            if e.result == CODE_REFUSED_BIND:
                return ConfigError(f"bind as {self.options.bind_user} refused: invalid credentials", where)
            if e.result == CODE_NO_RIGHTS:
                return ConfigError(f"missing right to {doing} ({detail})", where)
            if e.result in CODE_WANTS_TLS:
                return ConfigError(f"the DC demands a secure bind: {detail}", where)
            if e.result in CODE_TRANSIENT:
                return RetryableError(f"cannot {doing} now: {detail}", where, delay=60)
            return PermanentError(f"cannot {doing}: {detail}", where)
        self.close()                  # no answer at all: the connection is unusable
        reason = _socket_reason(e)
        if "certificate" in reason or isinstance(e, lx.LDAPStartTLSError):
            return ConfigError(f"TLS failed: {reason} (is ca_file the CA that signed the DC's certificate, "
                               f"and does the certificate name {self.url.hostname}?)", where)
        if not self._bound_once:      # an outage or a wrong host: retried, and `check --online` names it
            return RetryableError(f"cannot reach the DC: {reason}", where, delay=60)
        return RetryableError(f"connection lost while trying to {doing}: {reason}", where, delay=30)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                _unbind_quietly(self._conn)
                self._conn = None

    def _paged(self, conn: ldap3.Connection, base: str, search_filter: str, attributes: list[str]) -> Iterator[dict]:
        entries = conn.extend.standard.paged_search(base, search_filter, ldap3.SUBTREE, attributes=attributes,
                                                    paged_size=self.options.page_size, generator=True)
        return (e for e in entries if e["type"] == "searchResEntry")

    # -- reading -------------------------------------------------------------
    def check_online(self) -> None:
        ou = self.options.disabled_ou
        with self._ldap(f"read disabled_ou {ou}") as conn:
            try:
                conn.search(ou, "(objectClass=*)", ldap3.BASE, attributes=["objectClass"])
            except lx.LDAPNoSuchObjectResult:
                raise ConfigError(f"disabled_ou {ou} does not exist", self.host_where) from None

    def prepare(self, terminations: list[Termination]) -> None:
        with self._ldap("read the user accounts") as conn:
            accounts = [Account.from_entry(e) for e in self._paged(conn, self.base_dn, USER_FILTER, USER_ATTRIBUTES)]
            domain_sid, privileged = self._privileged_groups(conn)
        self.restrict_add_groups()
        by_dn: dict[str, PrivilegedGroup] = {}
        by_sid: dict[str, PrivilegedGroup] = {}
        for group in privileged:                   # the first (most privileged) chain names a group
            by_dn.setdefault(group.dn.lower(), group)
            by_sid.setdefault(group.sid, group)
        self._privileged_names = {g.sid: g.name for g in privileged if not g.via}
        self._by_id, self._by_address, self._by_dn, self._admins = {}, {}, {}, {}
        self._token_reasons, self._outside = {}, {}
        for account in accounts:
            if account.employee_id:
                self._by_id.setdefault(account.employee_id, []).append(account)
            for address in account.addresses:
                self._by_address.setdefault(address, []).append(account)
            self._by_dn[account.dn.lower()] = account
            reasons = [by_dn[g.lower()].reason() for g in account.groups if g.lower() in by_dn]
            primary = by_sid.get(f"{domain_sid}-{account.primary_group}")
            if primary:
                reasons.append(primary.reason(primary=True))
            if account.admin_count == 1:
                reasons.append("adminCount is 1")
            if reasons:
                self._admins[account.guid] = "; ".join(reasons)
        log.debug("%s: read %d accounts, %d with admin rights", self.where, len(accounts), len(self._admins))

    def _privileged_groups(self, conn: ldap3.Connection) -> tuple[str, list[PrivilegedGroup]]:
        """The domain SID, and every group whose members are admins: the privileged groups (by well-known
        SID, DnsAdmins by name), most privileged first, then the groups nested in each (one in-chain
        search per privileged group). Searching groups, not users, keeps this cheap however many users."""
        conn.search(self.domain_dn, "(objectClass=*)", ldap3.BASE, attributes=["objectSid"])
        domain_sid = format_sid(conn.response[0]["raw_attributes"]["objectSid"][0])
        sids = [f"{domain_sid}-{rid}" for rid in PRIVILEGED_RIDS] + list(PRIVILEGED_BUILTIN)
        wanted = "".join(f"(objectSid={sid})" for sid in sids) + f"(sAMAccountName={DNS_ADMINS})"
        found = [PrivilegedGroup(e["dn"], _sid(e), _cn(e))
                 for e in self._paged(conn, self.domain_dn, f"(&(objectClass=group)(|{wanted}))", ["objectSid", "cn"])]
        found.sort(key=lambda g: sids.index(g.sid) if g.sid in sids else len(sids))
        groups = list(found)
        for top in found:
            chain = f"(&(objectClass=group)(memberOf:{IN_CHAIN}:={escape_filter_chars(top.dn)}))"
            groups += [PrivilegedGroup(e["dn"], _sid(e), top.name, _cn(e))
                       for e in self._paged(conn, self.domain_dn, chain, ["objectSid", "cn"])]
        return domain_sid, groups

    def restrict_add_groups(self) -> list[str]:
        """The DNs of `policy.restrict_add_groups` (each a DN, a cn or a sAMAccountName), read once."""
        if self._restrict_add is None:
            found = []
            for name in self.tenant.policy.restrict_add_groups:
                if "=" in name:
                    found.append(name)
                    continue
                escaped = escape_filter_chars(name)
                with self._ldap(f"find group {name}") as conn:
                    dns = [e["dn"] for e in self._paged(conn, self.domain_dn, f"(&(objectClass=group)(|(cn={escaped})"
                                                        f"(sAMAccountName={escaped})))", ["cn"])]
                if len(dns) != 1:
                    raise ConfigError(f"{'no' if not dns else len(dns)} AD group(s) named {name!r}: give its DN",
                                      f"{self.where.partition('.provider')[0]}.policy.restrict_add_groups")
                found += dns
            self._restrict_add = found
        return self._restrict_add

    def restricted_groups(self, groups: list[str]) -> tuple[list[str], list[str]]:
        """-> (memberships the notice period removes, groups it adds) for a member of `groups`."""
        policy = self.tenant.policy
        leave = [g for g in groups if policy.restricts_group(_rdn_value(g), g)]
        join = [g for g in self.restrict_add_groups() if not any(same_dn(g, m) for m in groups)]
        return leave, join

    def match(self, termination: Termination) -> Match:
        employee_id, email = termination.employee_id, termination.email.lower()
        by_id = self._by_id.get(employee_id, []) if employee_id else []
        by_address = self._by_address.get(email, []) if email else []
        if len(by_id) > 1:
            return _ambiguous(by_id, f"{len(by_id)} accounts carry employeeID {employee_id}")
        if by_id:
            others = [a for a in by_address if a.guid != by_id[0].guid]
            if others:
                return _ambiguous(by_id + others, f"employeeID {employee_id} is on {by_id[0].sam} "
                                                  f"but {email} belongs to {', '.join(a.sam for a in others)}")
            return self._matched(by_id[0], f"employeeID {employee_id}")
        if len(by_address) > 1:
            return _ambiguous(by_address, f"{len(by_address)} accounts use the address {email}")
        if by_address:
            return self._matched(by_address[0], f"address {email} (no account carries employeeID {employee_id})")
        return Match("not_found", reason=f"no account with employeeID {employee_id} or address {email}")

    def _matched(self, account: Account, how: str) -> Match:
        reason = self._admins.get(account.guid) or self._token_groups_reason(account)
        subject = Subject(self.name, account.guid, account.names, account.state(), bool(reason), reason,
                          anchor=account.immutable_id, manager=self._manager(account))
        return Match("matched", subject, reason=f"matched by {how}")

    def _token_groups_reason(self, account: Account) -> str:
        """Why the DC's own expansion of the account's groups makes it an admin, or ''; read once a pass."""
        if account.guid not in self._token_reasons:
            entry = self._entry(account.guid, ["tokenGroups"], f"read tokenGroups of {account.dn}")
            sids = [format_sid(v) for v in entry["raw_attributes"].get("tokenGroups") or []]
            if not sids:                          # it always holds the primary group: empty means hidden from us
                raise ConfigError(f"missing right to read tokenGroups of {account.dn} (grant it to the bind "
                                  "account, e.g. through the Windows Authorization Access Group): cannot tell "
                                  "whether it holds admin rights", self.host_where)
            names = dict.fromkeys(filter(None, map(self._privileged_name, sids)))
            self._token_reasons[account.guid] = "; ".join(f"member of {name} (tokenGroups)" for name in names)
        return self._token_reasons[account.guid]

    def _privileged_name(self, sid: str) -> str:
        """The privileged group a SID stands for, or ''. A well-known RID counts in any domain: the
        forest-root groups carry the root domain's SID, which a child domain's DC cannot look up."""
        domain, _, rid = sid.rpartition("-")
        if sid in self._privileged_names or sid in PRIVILEGED_BUILTIN:
            return self._privileged_names.get(sid) or PRIVILEGED_BUILTIN[sid]
        if domain.startswith("S-1-5-21-") and domain.count("-") == 6 and rid.isdigit():
            return PRIVILEGED_RIDS.get(int(rid), "")
        return ""

    def _manager(self, account: Account) -> dict[str, Any] | None:
        """The account's manager, as the engine judges a successor; None when unset or gone. From the
        pass's read, else (outside base_dn, or a contact) one read per manager per pass."""
        if not account.manager:
            return None
        key = account.manager.lower()
        manager = self._by_dn.get(key)
        if manager is None:
            if key not in self._outside:
                self._outside[key] = self._read_dn(account.manager)
            manager = self._outside[key]
        return manager.successor_facts() if manager else None

    def _read_dn(self, dn: str) -> Account | None:
        with self._ldap(f"read {dn}") as conn:
            try:
                conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=USER_ATTRIBUTES)
            except lx.LDAPNoSuchObjectResult:
                return None
            return Account.from_entry(conn.response[0])

    # -- deciding ------------------------------------------------------------
    def plan(self, subject: Subject, termination: Termination) -> list[PlannedAction]:
        state, policy = subject.state, self.tenant.policy
        wanted = []
        if policy.restrict_days_before and any(self.restricted_groups(state["groups"])):
            wanted.append(self.planned("restrict_groups", "notice period: leave and join the policy's groups"))
        if not state["uac"] & ACCOUNTDISABLE:
            wanted.append(self.planned("disable_account", "disable the account"))
        wanted.append(self.planned("reset_password", "reset the password to a random one nobody knows"))
        if self.tenant.policy.remove_groups and state["groups"]:
            wanted.append(self.planned("remove_groups", f"remove from {len(state['groups'])} groups"))
        if not state["description"].startswith(STAMP):
            wanted.append(self.planned("stamp_description", f"stamp the description '{STAMP} <date>'"))
        if not same_dn(parent_dn(state["dn"]), self.options.disabled_ou):
            wanted.append(self.planned("move_to_disabled_ou", f"move to {self.options.disabled_ou}"))
        deleted_ou = self.options.deleted_ou
        if policy.delete_after_days and not (deleted_ou and same_dn(parent_dn(state["dn"]), deleted_ou)):
            wanted.append(self.planned("delete_account", f"move to {deleted_ou}" if deleted_ou else "delete the account"))
        return wanted

    # -- acting --------------------------------------------------------------
    def _read(self, guid: str) -> Account:
        return Account.from_entry(self._entry(guid, USER_ATTRIBUTES, f"read account {guid}"))

    def _entry(self, guid: str, attributes: list[str], doing: str) -> dict:
        with self._ldap(doing) as conn:
            try:
                conn.search(f"<GUID={guid}>", "(objectClass=user)", ldap3.BASE, attributes=attributes)
            except lx.LDAPNoSuchObjectResult:
                raise PermanentError(f"account {guid} no longer exists", self.host_where) from None
            return conn.response[0]

    def _converge(self, ctx: ActionContext, before: Any, after: Any, writes: list[tuple[str, dict, str]]) -> Result:
        """Compare; on a difference (and not a dry run) send each `(dn, changes, what it does)` modify."""
        result = self.outcome(before, after, ctx.dry_run)
        if result.outcome == "changed":
            for dn, changes, doing in writes:
                with self._ldap(doing) as conn:
                    conn.modify(dn, changes)
        return result

    def disable_account(self, action: PlannedAction, ctx: ActionContext) -> Result:
        account = self._read(ctx.subject.native_id)
        wanted = account.uac | ACCOUNTDISABLE
        write = (account.dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [wanted])]},
                 f"write userAccountControl of {account.dn}")
        return self._converge(ctx, {"userAccountControl": account.uac}, {"userAccountControl": wanted}, [write])

    def reset_password(self, action: PlannedAction, ctx: ActionContext) -> Result:
        """Journal-only: AD cannot say whether *we* reset it, so a resumed run compares pwdLastSet with ctx.since."""
        account = self._read(ctx.subject.native_id)
        before = {"pwdLastSet": account.state()["pwd_last_set"]}
        since = ctx.since and (ctx.since if ctx.since.tzinfo else ctx.since.replace(tzinfo=dt.timezone.utc))
        if since and account.pwd_last_set and account.pwd_last_set >= since:
            return Result("unchanged", before, before, reason="password already reset since this action began")
        if ctx.dry_run:
            return Result("planned", before, {"pwdLastSet": "now"})
        self._set_new_password(account, "reset the password of")
        return Result("changed", before, {"pwdLastSet": self._read(account.guid).state()["pwd_last_set"]})

    def _set_new_password(self, account: Account, doing: str) -> str:
        """A random password nobody has seen, written with the Reset Password right; returned, never logged."""
        password = new_password([account.sam, *re.split(r"[\s,.\-_#]+", account.display_name)])
        remember_secret(password)                  # masked wherever it might surface, like a resolved secret
        with self._ldap(f"{doing} {account.dn} (Reset Password right)") as conn:
            conn.modify(account.dn, {"unicodePwd": [(ldap3.MODIFY_REPLACE, [unicode_pwd(password)])]})
        return password

    def remove_groups(self, action: PlannedAction, ctx: ActionContext) -> Result:
        if not self.tenant.policy.remove_groups:
            return Result("skipped", reason="the tenant policy keeps group memberships (remove_groups = false)")
        account = self._read(ctx.subject.native_id)
        writes = [(group, {"member": [(ldap3.MODIFY_DELETE, [account.dn])]},
                   f"remove {account.sam} from {group} (write member)") for group in account.groups]
        return self._converge(ctx, {"groups": sorted(account.groups)}, {"groups": []}, writes)

    def stamp_description(self, action: PlannedAction, ctx: ActionContext) -> Result:
        account = self._read(ctx.subject.native_id)
        before = {"description": account.description}
        if account.description.startswith(STAMP):
            return Result("unchanged", before, before)
        stamp = f"{STAMP} {(ctx.local_date or dt.date.today()).isoformat()}"
        if ctx.ticket:
            stamp += f" ticket #{ctx.ticket.lstrip('#')}"
        if account.description:
            stamp = f"{stamp} (was: {account.description})"[:1024]
        write = (account.dn, {"description": [(ldap3.MODIFY_REPLACE, [stamp])]}, f"write description of {account.dn}")
        return self._converge(ctx, before, {"description": stamp}, [write])

    def move_to_disabled_ou(self, action: PlannedAction, ctx: ActionContext) -> Result:
        return self._move(self._read(ctx.subject.native_id), self.options.disabled_ou, ctx)

    def _move(self, account: Account, ou: str, ctx: ActionContext) -> Result:
        """Into `ou`, keeping the name; a namesake already there: both kept, told apart by login."""
        if same_dn(parent_dn(account.dn), ou):
            return Result("unchanged", {"dn": account.dn}, {"dn": account.dn})
        rdn = to_dn(account.dn)[0]
        if ctx.dry_run:
            return Result("planned", {"dn": account.dn}, {"dn": f"{rdn},{ou}"})
        with self._ldap(f"move {account.dn} into {ou} (delete child here, create child there)") as conn:
            try:
                conn.modify_dn(account.dn, rdn, new_superior=ou)
            except lx.LDAPEntryAlreadyExistsResult:   # a namesake left before: keep both, told apart by login
                conn.modify_dn(account.dn, f"{rdn} ({escape_rdn(account.sam)})", new_superior=ou)
        return Result("changed", {"dn": account.dn}, {"dn": self._read(account.guid).dn})


    # -- the notice period and retention -----------------------------------------
    def restrict_groups(self, action: PlannedAction, ctx: ActionContext) -> Result:
        account = self._read(ctx.subject.native_id)
        leave, join = self.restricted_groups(account.groups)
        writes = [(g, {"member": [(ldap3.MODIFY_DELETE, [account.dn])]}, f"remove {account.sam} from {g} (write member)")
                  for g in leave]
        writes += [(g, {"member": [(ldap3.MODIFY_ADD, [account.dn])]}, f"add {account.sam} to {g} (write member)")
                   for g in join]
        after = sorted({*account.groups, *join} - set(leave))
        return self._converge(ctx, {"groups": sorted(account.groups)}, {"groups": after}, writes)

    def recycle_bin(self) -> bool:
        """Is the AD Recycle Bin on (msDS-EnabledFeature of the Partitions container names it)?"""
        with self._ldap("read whether the AD Recycle Bin is on") as conn:
            conn.search("", "(objectClass=*)", ldap3.BASE, attributes=["configurationNamingContext"])
            configuration = conn.response[0]["raw_attributes"]["configurationNamingContext"][0].decode()
            conn.search(f"CN=Partitions,{configuration}", "(objectClass=*)", ldap3.BASE,
                        attributes=["msDS-EnabledFeature"])
            features = conn.response[0]["raw_attributes"].get("msDS-EnabledFeature") or []
        return any(f.decode().lower().startswith("cn=recycle bin feature,") for f in features)

    def delete_account(self, action: PlannedAction, ctx: ActionContext) -> Result:
        """Retention: into `deleted_ou` when set, else deleted (the Recycle Bin, when on, can bring it back)."""
        account = self._read(ctx.subject.native_id)
        before = {"dn": account.dn, "deleted": False}
        deleted_ou = self.options.deleted_ou
        if deleted_ou:
            if same_dn(parent_dn(account.dn), deleted_ou):
                return Result("unchanged", before, before)
            result = self._move(account, deleted_ou, ctx)
            return Result(result.outcome, before, {**result.after, "deleted": False})
        reason = ("the AD Recycle Bin is on: the object can be restored with all its attributes until its "
                  "deleted-object lifetime ends" if self.recycle_bin() else "the AD Recycle Bin is off: only a "
                  "tombstone stays (a restore needs a backup)")
        if ctx.dry_run:
            return Result("planned", before, {"deleted": True}, reason)
        with self._ldap(f"delete {account.dn} (delete right)") as conn:
            conn.delete(account.dn)
        return Result("changed", before, {"deleted": True}, reason)

    # -- restore -----------------------------------------------------------------
    def undelete_account(self, action: PlannedAction, ctx: ActionContext) -> Result:
        """Back from `deleted_ou`; a deleted object comes back only through the Recycle Bin, which is a person's job."""
        _, before = self.undone(action)
        try:
            account = self._read(ctx.subject.native_id)
        except PermanentError:
            raise NeedsHuman(f"{before['dn']} was deleted from AD: restore it from the AD Recycle Bin "
                             "(Restore-ADObject) or a backup, then run restore again", self.host_where) from None
        return self._move_to(account, before["dn"], self.options.deleted_ou, ctx)

    def move_back(self, action: PlannedAction, ctx: ActionContext) -> Result:
        _, before = self.undone(action)
        return self._move_to(self._read(ctx.subject.native_id), before["dn"], self.options.disabled_ou, ctx)

    def _move_to(self, account: Account, dn: str, left_in: str | None, ctx: ActionContext) -> Result:
        """Back to `dn`, only from `left_in`, where the undone move left it: anywhere else it was moved since
        (or an earlier undo of this restore already put it on its way back)."""
        if same_dn(account.dn, dn) or not (left_in and same_dn(parent_dn(account.dn), left_in)):
            return Result("unchanged", {"dn": account.dn}, {"dn": account.dn})
        if ctx.dry_run:
            return Result("planned", {"dn": account.dn}, {"dn": dn})
        with self._ldap(f"move {account.dn} back to {dn} (delete child here, create child there)") as conn:
            conn.modify_dn(account.dn, to_dn(dn)[0], new_superior=parent_dn(dn))
        return Result("changed", {"dn": account.dn}, {"dn": self._read(account.guid).dn})

    def restore_description(self, action: PlannedAction, ctx: ActionContext) -> Result:
        _, before = self.undone(action)
        account = self._read(ctx.subject.native_id)
        wanted = before["description"]
        write = (account.dn, {"description": [(ldap3.MODIFY_REPLACE, [wanted] if wanted else [])]},
                 f"write description of {account.dn}")
        return self._converge(ctx, {"description": account.description}, {"description": wanted}, [write])

    def restore_groups(self, action: PlannedAction, ctx: ActionContext) -> Result:
        """The journaled groups back; the groups the notice period joined (and the account was not in) left.
        Those are the notice period's own undo's: the undo of a later removal leaves them out."""
        original, before = self.undone(action)
        account = self._read(ctx.subject.native_id)
        had = [g for g in before["groups"] if original == "restrict_groups"
               or not any(same_dn(g, a) for a in self.restrict_add_groups())]
        back = [g for g in had if not any(same_dn(g, m) for m in account.groups)]
        joined = [g for g in account.groups if any(same_dn(g, a) for a in self.restrict_add_groups())
                  and not any(same_dn(g, h) for h in had)]
        writes = [(g, {"member": [(ldap3.MODIFY_ADD, [account.dn])]}, f"add {account.sam} to {g} (write member)")
                  for g in back]
        writes += [(g, {"member": [(ldap3.MODIFY_DELETE, [account.dn])]}, f"remove {account.sam} from {g} "
                    "(write member)") for g in joined]
        after = sorted({*account.groups, *back} - set(joined))
        return self._converge(ctx, {"groups": sorted(account.groups)}, {"groups": after}, writes)

    def enable_account(self, action: PlannedAction, ctx: ActionContext) -> Result:
        _, before = self.undone(action)
        account = self._read(ctx.subject.native_id)
        wanted = account.uac & ~ACCOUNTDISABLE | before["userAccountControl"] & ACCOUNTDISABLE
        write = (account.dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [wanted])]},
                 f"write userAccountControl of {account.dn}")
        return self._converge(ctx, {"userAccountControl": account.uac}, {"userAccountControl": wanted}, [write])

    def issue_password(self, action: PlannedAction, ctx: ActionContext) -> Result:
        """Passwords never come back: a new one, shown to the operator once (never journaled or logged)."""
        account = self._read(ctx.subject.native_id)
        before = {"pwdLastSet": account.state()["pwd_last_set"]}
        since = ctx.since and (ctx.since if ctx.since.tzinfo else ctx.since.replace(tzinfo=dt.timezone.utc))
        if since and account.pwd_last_set and account.pwd_last_set >= since:
            return Result("unchanged", before, before, reason="a new password was issued since this restore began")
        if ctx.dry_run:
            return Result("planned", before, {"pwdLastSet": "now"}, "a new password is shown once")
        password = self._set_new_password(account, "set a new password for")
        ctx.show_once(f"{account.upn or account.sam}: new AD password {password}")
        return Result("changed", before, {"pwdLastSet": self._read(account.guid).state()["pwd_last_set"]},
                      "a new password was shown to the operator once")


def _rdn_value(dn: str) -> str:
    """`CN=Finance,OU=Groups,...` -> `Finance`: the name a group glob is matched against (besides the DN)."""
    return to_dn(dn)[0].split("=", 1)[-1]


def _ambiguous(accounts: list[Account], reason: str) -> Match:
    return Match("ambiguous", candidates=[a.dn for a in accounts], reason=reason)


def _cn(entry: dict) -> str:
    return entry["raw_attributes"]["cn"][0].decode()


def _sid(entry: dict) -> str:
    return format_sid(entry["raw_attributes"]["objectSid"][0])


def _unbind_quietly(conn: ldap3.Connection) -> None:
    try:
        conn.unbind()
    except lx.LDAPException:
        pass


def _socket_reason(e: Exception) -> str:
    """The innermost OS or TLS message of an ldap3 socket error (they nest as tuples of reprs)."""
    if isinstance(e, lx.LDAPCertificateError):
        return "the certificate does not name this host"
    text = " ".join(str(e).split())
    found = re.search(r"certificate verify failed: [^(\"']+|\[Errno -?\d+\] [^\"')]+|timed out", text)
    return found.group(0).strip() if found else text[:200]
