"""Load and validate the TOML config before anything touches a real system.

The schema is a set of pydantic models: one per plugin (declared by the plugin as
`options_model`, so a third-party plugin gets the same validation for free), plus
the tenant, its policy, `[connector]`, `[webhook]` and `[psa]`. A well-kept library
does the type checking; this module keeps only what is ours: secret references that
stay lazy and masked, and errors that name the file and the key path
(`tenant[0].provider[1].disabled_ou`), because the person reading them is a
technician with the file open in an editor. Values reach plugins typed, as
attributes (`tenant.policy.remove_groups`), so no reader can guess a default.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import ipaddress
import os
import re
import threading
import tomllib
import zoneinfo
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, ValidationError, \
    model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from .errors import ConfigError

DEFAULT_PATH = "/etc/offboard-connector/config.toml"
SECRET_RE = re.compile(r"^(env|file|credential):(.+)$")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


class Secret:
    """A reference to a secret (`env:NAME`, `file:/path`, `credential:NAME`), resolved only on use.

    `str()` and `repr()` never show the value, so a secret that leaks into a log
    line or a JSON dump shows its reference instead.
    """

    #: values resolved lately, newest last: the log filter masks them. Bounded, so a daemon that lives
    #: for months through rotations and reloads does not grow; a value in use is refreshed on each use
    #: (every pass resolves every secret of every tenant), and the bound is far above any config's count.
    _revealed: OrderedDict[str, None] = OrderedDict()
    _revealed_lock = threading.Lock()
    REMEMBERED = 4096

    def __init__(self, ref: str, where: str = ""):
        self.ref = ref
        self.where = where

    def __repr__(self) -> str:
        return f"Secret({self.ref!r})"

    __str__ = __repr__

    def reveal(self) -> str:
        scheme, name = SECRET_RE.match(self.ref).groups()
        if scheme == "env":
            value = os.environ.get(name)
            if value is None:
                raise ConfigError(f"environment variable {name} is not set", self.where)
        else:
            if scheme == "credential":
                directory = os.environ.get("CREDENTIALS_DIRECTORY")
                if not directory:
                    raise ConfigError(f"credential {name}: $CREDENTIALS_DIRECTORY is not set (systemd LoadCredential=)", self.where)
                path = Path(directory) / name
            else:
                path = Path(name)
            try:
                value = path.read_text().rstrip("\r\n")
            except OSError as e:
                raise ConfigError(f"cannot read secret file {path}: {e.strerror}", self.where) from None
        remember_secret(value)
        return value


def remember_secret(value: str) -> None:
    """Mask `value` in logs and in the store from now on (it is resolved again on every use, so a
    rotated `file:` or `credential:` secret is read afresh; only the mask list is kept)."""
    if not value:
        return
    with Secret._revealed_lock:
        Secret._revealed[value] = None
        Secret._revealed.move_to_end(value)
        while len(Secret._revealed) > Secret.REMEMBERED:
            Secret._revealed.popitem(last=False)


def mask_secrets(text: str) -> str:
    """Replace every secret value resolved lately in this process by `***`."""
    with Secret._revealed_lock:
        values = list(Secret._revealed)
    for value in values:
        if len(value) >= 4 and value in text:
            text = text.replace(value, "***")
    return text


def parse_duration(text: str) -> float:
    """`30s`, `5m`, `2h`, `1d` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not m:
        raise ValueError(f"not a duration like '5m': {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_hhmm(text: str) -> dt.time:
    m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", str(text).strip())
    if not m:
        raise ValueError(f"not a local time HH:MM: {text!r}")
    return dt.time(int(m.group(1)), int(m.group(2)))


def invalid(loc: str | tuple, message: str) -> ValidationError:
    """An error at `loc` (a key, or a path of keys and indexes) below the model being validated."""
    detail = InitErrorDetails(type=PydanticCustomError("config", "{message}", {"message": message}),
                              loc=(loc,) if isinstance(loc, str) else loc, input=None)
    return ValidationError.from_exception_data("config", [detail])


# -- value types ------------------------------------------------------------------
def _secret_ref(value: Any) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str) or not SECRET_RE.match(value):
        raise PydanticCustomError("secret_ref", "expected a secret reference: env:NAME, file:/path or "
                                                "credential:NAME (never the secret itself)")
    return Secret(value)


def _https_url(value: str) -> str:
    parts = urlsplit(value)
    if not re.match(r"^[a-z][a-z0-9+.-]*://[^/\s]+", value) or not parts.hostname:
        raise ValueError("not a URL")
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname)):
        return value
    raise ValueError(f"must be https:// (http:// only for a loopback host), got {parts.scheme}://{parts.hostname}")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _local_time(value: Any) -> dt.time:
    if not isinstance(value, str):
        raise ValueError(f"expected a local time HH:MM, got {type(value).__name__}")
    return parse_hhmm(value)


def _duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"not a duration like '5m': {value!r}")
    return parse_duration(value)


def _timezone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as America/Chicago)") from None
    return name


def _address(value: str) -> str:
    if value and not re.fullmatch(r"[^@\s]+@[^@\s]+", value):
        raise ValueError(f"must be an email address; got {value!r}")
    return value


def _recipient(value: str) -> str:
    if value in ("manager", "none") or re.fullmatch(r"[^@\s]+@[^@\s]+", value):
        return value
    raise ValueError(f"must be manager, none or an email address; got {value!r}")


def _domain(value: str) -> str:
    if not re.fullmatch(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}", value.lower()):
        raise ValueError(f"not a mail domain: {value!r}")
    return value.lower()


def _listen(value: str) -> str:
    if not re.fullmatch(r"[\w.:\[\]-]+:\d{1,5}", value):
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


def _network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f"expected an IP address or CIDR as a string, got {type(value).__name__}")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or CIDR: {value!r}") from None


def _url_or_secret(value: Any) -> str | Secret:
    if isinstance(value, str) and SECRET_RE.match(value):
        return Secret(value)
    if not isinstance(value, str):
        raise ValueError(f"expected an https:// URL or a secret reference, got {type(value).__name__}")
    return _https_url(value)


def _tenant_id(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        raise ValueError(f"tenant id must be letters, digits, '.', '_' or '-'; got {value!r}")
    return value


#: `env:NAME`, `file:/path` or `credential:NAME` -> a `Secret` (its `where` is the key path, once loaded)
SecretRef = Annotated[Secret, PlainValidator(_secret_ref)]
#: `https://host...`; `http://` only for loopback (tests, the sandbox): tokens and keys never travel in clear
HttpsUrl = Annotated[str, AfterValidator(_https_url)]
LocalTime = Annotated[dt.time, BeforeValidator(_local_time)]
Duration = Annotated[float, BeforeValidator(_duration)]
Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Recipient = Annotated[str, AfterValidator(_recipient)]
#: `10.0.0.5` or `10.0.0.0/8` (host bits allowed) -> an ip_network
Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, PlainValidator(_network)]


# -- models -----------------------------------------------------------------------
class Section(BaseModel):
    """One TOML table: typed, strict (TOML has types, so `"5"` is not 5), and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, arbitrary_types_allowed=True)
    #: keys of the table that the loader reads itself (a plugin block's `type` and `name`)
    loader_keys: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        known = {f.alias or name for name, f in cls.model_fields.items() if not f.exclude} | set(cls.loader_keys)
        for key in raw:
            if key not in known:
                raise invalid(key, f"unknown key (known keys: {', '.join(sorted(known)) or 'none'})")
        return {k: v for k, v in raw.items() if k not in cls.loader_keys}


class PluginOptions(Section):
    """The keys of one `[[tenant.source]]` or `[[tenant.provider]]` block; each plugin subclasses it.

    Rules across keys (one credential or the other) are `model_validator`s, so `check` finds them offline.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    loader_keys = ("type", "name")

    def secrets(self) -> list[Secret]:
        return [v for v in (getattr(self, name) for name in type(self).model_fields) if isinstance(v, Secret)]


class PluginConfig(BaseModel):
    """One plugin block: its type, its name (default: the type), its validated options, its key path."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    type: str
    name: str
    options: PluginOptions
    where: str = ""


def _plugin_block(group: str) -> BeforeValidator:
    def build(raw: Any) -> Any:
        from . import plugins

        if not isinstance(raw, dict):
            raise invalid((), "expected a table")
        kind = raw.get("type")
        if not isinstance(kind, str):
            raise invalid("type", "required key is missing" if kind is None else "expected a string")
        try:
            cls = plugins.load(group, kind)
        except ConfigError as e:
            raise invalid("type", e.message) from None
        name = raw.get("name", kind)
        if not isinstance(name, str):
            raise invalid("name", f"expected a string, got {type(name).__name__}")
        return PluginConfig(type=kind, name=name, options=cls.options_model.model_validate(raw))
    return BeforeValidator(build)


class Policy(Section):
    """`[tenant.policy]`: what offboarding does to a leaver's accounts (DESIGN.md, "Config")."""

    revoke_at: LocalTime = dt.time(17, 0)              # local time on the termination date
    mailbox: Literal["shared", "keep"] = "shared"
    mailbox_delegate: Recipient = "manager"
    successor: Annotated[str, AfterValidator(_address)] = ""   # when the directory names no manager
    forward_to: Recipient = "none"
    forward_domains: list[Annotated[str, AfterValidator(_domain)]] = []   # outside domains forwarding may reach
    hide_from_gal: bool = True
    auto_reply: str = ""
    remove_licenses: bool = True
    remove_groups: bool = True
    delete_after_days: NonNegative = 0                  # 0: never delete
    hard_delete: bool = False                           # Entra: purge from deleted items too
    block_group: str = ""   # cloud-only group a Conditional Access policy blocks: synced users join it on revoke
    teams_numbers: Literal["unassign", "successor"] = "unassign"   # Teams Phone: release, or hand to the successor
    hand_over_groups: Literal["owned", "sole", "none"] = "owned"   # successor co-owns the leaver's groups and Teams
    onedrive_access: Recipient = "none"                 # who is invited to write on the leaver's OneDrive root
    onedrive_links: Literal["keep", "remove"] = "keep"  # the sharing links on the leaver's OneDrive items
    cancel_meetings_days: Annotated[int, Field(ge=0, le=1825)] = 0   # cancel the leaver's organised meetings this far ahead; 0: keep
    forwarding_rules: Literal["outside", "all", "none"] = "outside"   # inbox rules forwarding mail that are disabled
    remove_mailbox_access: bool = True                  # the leaver's FullAccess / SendAs / SendOnBehalf on shared mailboxes
    remove_consents: bool = True                        # the leaver's delegated consents (oauth2PermissionGrants)
    devices: Literal["none", "retire", "wipe"] = "none"  # Intune: retire all, or retire personal and wipe corporate
    restrict_days_before: NonNegative = 0               # notice period: restrict this many days before due (0: off)
    restrict_remove_groups: list[str] = []              # globs of the groups a restricted leaver leaves
    restrict_add_groups: list[str] = []                 # groups a restricted leaver joins (names or ids/DNs)

    def restricts_group(self, *names: str) -> str:
        """The first `restrict_remove_groups` glob matching any of `names` (case-insensitive), or ''."""
        for pattern in self.restrict_remove_groups:
            if any(n and fnmatch.fnmatchcase(n.lower(), pattern.lower()) for n in names):
                return pattern
        return ""


class LicenceTerm(Section):
    """`[tenant.licences] SKU = { term = "annual", renews = "2027-03-01", price = 12.50 }`: a licence's terms declared
    by hand, for a distributor the connector does not speak to (and a price, for any): what `paid until` and the
    cost avoided are computed from when no distributor says."""

    term: Literal["monthly", "annual", "triennial"]
    renews: dt.date | None = None           # the commitment's end (annual, triennial); none for monthly
    price: Annotated[float, Field(ge=0)] | None = None   # per seat and month, in the invoice's currency

    @model_validator(mode="before")
    @classmethod
    def _dates(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("renews"), str):
            try:
                raw = {**raw, "renews": dt.date.fromisoformat(raw["renews"])}
            except ValueError:
                raise invalid("renews", f"not a date YYYY-MM-DD: {raw['renews']!r}") from None
        if isinstance(raw, dict) and isinstance(raw.get("price"), int) and not isinstance(raw.get("price"), bool):
            raw = {**raw, "price": float(raw["price"])}
        return raw

    @model_validator(mode="after")
    def _renewal(self) -> LicenceTerm:
        if self.term != "monthly" and self.renews is None:
            raise invalid("renews", f"the {self.term} term needs the date it renews (renews = \"YYYY-MM-DD\")")
        if self.term == "monthly" and self.renews is not None:
            raise invalid("renews", "a monthly term renews every month: give no date")
        return self


class Tenant(Section):
    model_config = ConfigDict(frozen=False)
    id: Annotated[str, AfterValidator(_tenant_id)]
    name: str = ""
    timezone: Annotated[str, AfterValidator(_timezone)] = "UTC"
    protected: list[str] = []
    max_terminations_per_run: Positive = 10
    max_terminations_per_day: Positive = 25
    lookback_days: NonNegative = 30
    psa_company_id: int | None = None
    psa_agreement_id: int | None = None
    billing: dict[str, int] = {}
    billing_basis: Literal["assigned", "subscribed"] = "assigned"
    pax8_company_id: str | None = None           # the client's company at the distributor (a UUID)
    pax8_subscriptions: dict[str, str] = {}      # licence SKU part number -> the Pax8 subscription id that sells it
    licences: dict[str, LicenceTerm] = {}        # terms and prices declared by hand (see LicenceTerm)
    webhook_secret: SecretRef | None = None
    policy: Policy = Field(default_factory=Policy)
    sources: list[Annotated[PluginConfig, _plugin_block("sources")]] = Field([], alias="source")
    providers: list[Annotated[PluginConfig, _plugin_block("providers")]] = Field([], alias="provider")

    @model_validator(mode="after")
    def _whole(self) -> Tenant:
        self.name = self.name or self.id
        for key, blocks in (("source", self.sources), ("provider", self.providers)):
            names: set[str] = set()
            for i, pc in enumerate(blocks):
                if pc.name in names:
                    raise invalid((key, i, "name"), f"two {key}s are named {pc.name!r}; give one a distinct `name`")
                names.add(pc.name)
        if not self.providers:
            raise invalid("provider", "a tenant needs at least one [[tenant.provider]]")
        if self.billing and self.psa_agreement_id is None:
            raise invalid("psa_agreement_id", "[tenant.billing] needs psa_agreement_id")
        if self.pax8_subscriptions and self.pax8_company_id is None:
            raise invalid("pax8_company_id", "[tenant.pax8_subscriptions] needs pax8_company_id")
        if self.billing_basis == "subscribed" and not self.pax8_subscriptions:
            raise invalid("billing_basis", "subscribed bills the distributor's quantity: it needs "
                                           "[tenant.pax8_subscriptions] (else use assigned)")
        if self.pax8_company_id is not None and not UUID_RE.fullmatch(self.pax8_company_id):
            raise invalid("pax8_company_id", f"not a Pax8 company id (a UUID): {self.pax8_company_id!r}")
        for sku, sub in self.pax8_subscriptions.items():
            if not UUID_RE.fullmatch(sub):
                raise invalid(("pax8_subscriptions", sku), f"not a Pax8 subscription id (a UUID): {sub!r}")
        return self

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def takes_webhooks(self) -> bool:
        return any(pc.type == "webhook" for pc in self.sources)

    def is_protected(self, names: list[str]) -> str:
        """The first `protected` glob that matches any of `names` (case-insensitive), or ''."""
        for pattern in self.protected:
            for name in names:
                if name and fnmatch.fnmatchcase(name.lower(), pattern.lower()):
                    return pattern
        return ""


class ConnectorSettings(Section):
    state: str = "/var/lib/offboard-connector/state.db"   # a SQLite file's path, or a postgresql:// URL
    state_password: SecretRef | None = None               # the PostgreSQL user's password, where it needs one
    poll_interval: Duration = 300.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    audit_key: SecretRef | None = None                    # keys the audit chain (HMAC)
    lease_seconds: Positive = 60                          # a dead holder's lease is taken over after this
    workers: Positive = 4                                 # tenants worked on at once
    retention_days: NonNegative = 0                       # personal data of finished terminations; 0: keep
    shutdown_grace: Duration = 30.0                       # SIGTERM: in-flight actions finish within this


class WebhookSettings(Section):
    listen: Annotated[str, AfterValidator(_listen)] = "127.0.0.1:8086"
    secret: SecretRef | None = None       # only where one tenant alone takes webhooks
    trusted_proxies: list[Network] = []   # whose X-Forwarded-For is believed (connector.net.client_address)
    allow_from: list[Network] = []        # where requests may come from (the client address); empty: anywhere


class AlertTarget(Section):
    """One incoming webhook (Slack, Teams). Its URL carries its own credential: give a secret reference."""

    type: Literal["slack", "teams"]
    url: Annotated[str | Secret, PlainValidator(_url_or_secret)]

    def endpoint(self) -> str:
        """The URL to post to, resolved now; masked in logs and the store from here on."""
        url = self.url.reveal() if isinstance(self.url, Secret) else self.url
        if isinstance(self.url, Secret):
            try:
                _https_url(url)
            except ValueError as e:
                raise ConfigError(f"{self.url.ref} does not hold a usable URL: {e}", self.url.where) from None
        remember_secret(url)
        return url


class AlertSettings(Section):
    """`[alerts]`: a hold, a new needs_human or a provider failing too long is told once to each target."""

    targets: list[AlertTarget] = Field([], alias="target")
    psa_ticket: bool = True               # also a note on the termination's PSA ticket, where it has one
    provider_failing_after: Duration = 1800.0


class PsaSettings(Section):
    type: Literal["connectwise"]
    url: HttpsUrl
    company: str
    public_key: SecretRef
    private_key: SecretRef
    client_id: SecretRef
    callback_token: SecretRef | None = None
    ticket_board: str = ""        # open a ticket there for each offboarding an HR feed starts; "" = never
    ticket_status: str = ""       # its status and type by name; "" = the board's defaults
    ticket_type: str = ""
    leaver_field: str = ""
    date_field: str = ""
    allow_increase: bool = False


class DistributorSettings(Section):
    """`[distributor]`: the MSP's one distributor account (Pax8 partner API, OAuth client credentials)."""

    type: Literal["pax8"]
    base_url: HttpsUrl = "https://api.pax8.com/v1"
    client_id: str = Field(min_length=1)
    client_secret: SecretRef
    audience: str = "https://api.pax8.com"


class Config(Section):
    model_config = ConfigDict(frozen=False)
    path: str = Field("", exclude=True)
    connector: ConnectorSettings = Field(default_factory=ConnectorSettings)
    webhook: WebhookSettings | None = None
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    psa: PsaSettings | None = None
    distributor: DistributorSettings | None = None
    tenants: list[Tenant] = Field([], alias="tenant")

    @model_validator(mode="after")
    def _whole(self) -> Config:
        if not self.tenants:
            raise invalid("tenant", "at least one [[tenant]] is required")
        ids: set[str] = set()
        for i, t in enumerate(self.tenants):
            if t.id in ids:
                raise invalid(("tenant", i, "id"), f"duplicate tenant id {t.id!r}")
            ids.add(t.id)
        self._check_webhook_secrets()
        for i, t in enumerate(self.tenants):
            if self.psa is None and (t.billing or t.psa_company_id is not None):
                raise invalid(("tenant", i, "billing" if t.billing else "psa_company_id"),
                              "needs a [psa] section (the PSA that holds this tenant's company and agreement)")
            if t.billing and t.psa_company_id is None:
                raise invalid(("tenant", i, "psa_company_id"), "[tenant.billing] needs psa_company_id")
            if t.pax8_company_id is not None and self.distributor is None:
                raise invalid(("tenant", i, "pax8_company_id"), "needs a [distributor] section (type = \"pax8\")")
        _locate(self, "")
        return self

    def _check_webhook_secrets(self) -> None:
        """One shared `[webhook] secret` cannot tell tenants apart: with two webhook tenants, each has its own."""
        takers = [(i, t) for i, t in enumerate(self.tenants) if t.takes_webhooks]
        shared = self.webhook is not None and self.webhook.secret is not None
        for i, t in takers:
            if t.webhook_secret is not None:
                continue
            if len(takers) > 1:
                raise invalid(("tenant", i, "webhook_secret"),
                              f"{len(takers)} tenants take webhooks ({', '.join(t.id for _, t in takers)}): "
                              "each needs its own webhook_secret")
            if not shared:
                raise invalid(("tenant", i, "webhook_secret"),
                              "this tenant takes webhooks: give it webhook_secret (or [webhook] secret)")

    def tenant(self, tenant_id: str) -> Tenant:
        for t in self.tenants:
            if t.id == tenant_id:
                return t
        raise ConfigError(f"no tenant {tenant_id!r} in the config (tenants: {', '.join(t.id for t in self.tenants)})", self.path)


def _locate(value: Any, where: str) -> None:
    """Tell every secret and plugin block its key path, for the errors raised when they are used."""
    if isinstance(value, Secret):
        value.where = where
    elif isinstance(value, PluginConfig):
        value.where = where
        _locate(value.options, where)
    elif isinstance(value, BaseModel):
        for name, f in type(value).model_fields.items():
            key = f.alias or name
            _locate(getattr(value, name), f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _locate(item, f"{where}[{i}]")


# -- errors -----------------------------------------------------------------------
EXPECTED = {"string_type": "a string", "int_type": "an integer", "int_from_float": "an integer",
            "float_type": "a number", "bool_type": "true or false", "list_type": "a list",
            "dict_type": "a table", "model_type": "a table", "model_attributes_type": "a table"}


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _message(error: dict) -> str:
    """Say what is wrong in the config's terms; never echo a value that could be a secret."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "missing":
        return "required key is missing"
    if kind in ("value_error", "assertion_error"):
        return str(ctx["error"])
    if kind == "literal_error":
        return f"must be {ctx['expected']}; got {error['input']!r}"
    if kind == "greater_than_equal":
        return f"must be {ctx['ge']} or more"
    if kind in EXPECTED:
        return f"expected {EXPECTED[kind]}, got {type(error['input']).__name__}"
    return error["msg"]


def load(path: str | os.PathLike | None = None) -> Config:
    path = str(path or os.environ.get("OFFBOARD_CONFIG") or DEFAULT_PATH)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config file not found (give --config or set $OFFBOARD_CONFIG)", path) from None
    except OSError as e:
        raise ConfigError(f"cannot read config: {e.strerror}", path) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", path) from None
    return parse(raw, path)


def parse(raw: dict, path: str = "<config>") -> Config:
    """Validate a parsed TOML document; the first problem is a ConfigError `PATH: KEY.PATH: what`."""
    try:
        config = Config.model_validate(raw)
    except ValidationError as e:
        error = e.errors(include_url=False)[0]
        where = _key_path(error["loc"])
        raise ConfigError(_message(error), f"{path}: {where}" if where else path) from None
    config.path = path
    return config
