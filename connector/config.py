"""Load and validate the TOML config before anything touches a real system.

Every error names the file and the key path (`tenant[0].provider[1].disabled_ou`),
because the person reading it is a technician with the file open in an editor.
Plugins (providers, sources) declare their own keys with `Field`, so a third-party
plugin gets the same validation for free.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import os
import re
import tomllib
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError

DEFAULT_PATH = "/etc/offboard-connector/config.toml"
SECRET_RE = re.compile(r"^(env|file|credential):(.+)$")
_MISSING = object()


class Secret:
    """A reference to a secret (`env:NAME`, `file:/path`, `credential:NAME`), resolved only on use.

    `str()` and `repr()` never show the value, so a secret that leaks into a log
    line or a JSON dump shows its reference instead.
    """

    _revealed: set[str] = set()   # every value ever resolved: the log filter masks them

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
        if value:
            Secret._revealed.add(value)
        return value


def mask_secrets(text: str) -> str:
    """Replace every secret value resolved in this process by `***`."""
    for value in Secret._revealed:
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


@dataclass
class Field:
    """One config key: its type, whether it is required, its default, and an optional check."""

    kind: str                  # str int bool float list secret url time duration table dict
    required: bool = False
    default: Any = None
    choices: tuple = ()
    check: Callable[[Any], Any] | None = None   # returns the converted value or raises ValueError
    schema: dict | None = None                  # for kind "table"/"tables": nested fields
    help: str = ""


def _convert(value: Any, f: Field, where: str) -> Any:
    def bad(msg: str) -> ConfigError:
        return ConfigError(msg, where)

    kind = f.kind
    if kind in ("str", "url", "path"):
        if not isinstance(value, str):
            raise bad(f"expected a string, got {type(value).__name__}")
        if kind == "url" and not re.match(r"^[a-z][a-z0-9+.-]*://[^/\s]+", value):
            raise bad(f"not a URL: {value!r}")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"expected an integer, got {type(value).__name__}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(f"expected a number, got {type(value).__name__}")
        value = float(value)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise bad(f"expected true or false, got {value!r}")
    elif kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("expected a list of strings")
    elif kind == "secret":
        if not isinstance(value, str) or not SECRET_RE.match(value):
            raise bad("expected a secret reference: env:NAME, file:/path or credential:NAME (never the secret itself)")
        value = Secret(value, where)
    elif kind == "time":
        try:
            value = parse_hhmm(value)
        except ValueError as e:
            raise bad(str(e)) from None
    elif kind == "duration":
        try:
            value = parse_duration(value)
        except ValueError as e:
            raise bad(str(e)) from None
    elif kind == "dict_int":
        if not isinstance(value, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
            raise bad("expected a table of name = integer")
    elif kind == "table_raw":
        if not isinstance(value, dict):
            raise bad("expected a table")
    elif kind == "table":
        if not isinstance(value, dict):
            raise bad("expected a table")
        value = validate(value, f.schema or {}, where)
    else:  # pragma: no cover - a programming error in a schema
        raise AssertionError(kind)
    if f.choices and value not in f.choices:
        raise bad(f"must be one of {', '.join(map(str, f.choices))}; got {value!r}")
    if f.check:
        try:
            value = f.check(value)
        except ValueError as e:
            raise bad(str(e)) from None
    return value


def validate(raw: dict, schema: dict[str, Field], where: str) -> dict:
    """Check `raw` against `schema`; return a new dict with defaults filled and values converted."""
    out: dict[str, Any] = {}
    for key in raw:
        if key not in schema:
            known = ", ".join(sorted(schema)) or "none"
            raise ConfigError(f"unknown key (known keys: {known})", _join(where, key))
    for key, f in schema.items():
        path = _join(where, key)
        if key in raw:
            out[key] = _convert(raw[key], f, path)
        elif f.required:
            raise ConfigError("required key is missing", path)
        else:
            out[key] = f.default() if callable(f.default) else f.default
    return out


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _timezone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as America/Chicago)") from None


def _delegate(value: str) -> str:
    if value in ("manager", "none") or re.fullmatch(r"[^@\s]+@[^@\s]+", value):
        return value
    raise ValueError(f"must be manager, none or an email address; got {value!r}")


def _listen(value: str) -> str:
    if not re.fullmatch(r"[\w.:\[\]-]+:\d{1,5}", value):
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


def _at_least(value: int, least: int) -> int:
    if value < least:
        raise ValueError(f"must be {least} or more")
    return value


def _tenant_id(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        raise ValueError(f"tenant id must be letters, digits, '.', '_' or '-'; got {value!r}")
    return value


POLICY = {
    "revoke_at": Field("time", default=dt.time(17, 0)),
    "mailbox": Field("str", default="shared", choices=("shared", "keep")),
    "mailbox_delegate": Field("str", default="manager", check=_delegate),
    "forward_to": Field("str", default="none", check=_delegate),
    "hide_from_gal": Field("bool", default=True),
    "auto_reply": Field("str", default=""),
    "remove_licenses": Field("bool", default=True),
    "remove_groups": Field("bool", default=True),
    "delete_after_days": Field("int", default=0, check=lambda v: _at_least(v, 0)),
}

CONNECTOR = {
    "state": Field("path", default="/var/lib/offboard-connector/state.db"),
    "poll_interval": Field("duration", default=300.0),
    "log_level": Field("str", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
}

WEBHOOK = {
    "listen": Field("str", default="127.0.0.1:8086", check=_listen),
    "secret": Field("secret", required=True),
}

PSA = {
    "type": Field("str", required=True, choices=("connectwise",)),
    "url": Field("url", required=True),
    "company": Field("str", required=True),
    "public_key": Field("secret", required=True),
    "private_key": Field("secret", required=True),
    "client_id": Field("secret", required=True),
    "callback_token": Field("secret"),
    "ticket_board": Field("str", default=""),
    "leaver_field": Field("str", default=""),
    "date_field": Field("str", default=""),
    "allow_increase": Field("bool", default=False),
}




TENANT = {
    "id": Field("str", required=True, check=_tenant_id),
    "name": Field("str", default=""),
    "timezone": Field("str", default="UTC", check=lambda v: (_timezone(v), v)[1]),
    "protected": Field("list", default=list),
    "max_terminations_per_run": Field("int", default=10, check=lambda v: _at_least(v, 1)),
    "max_terminations_per_day": Field("int", default=25, check=lambda v: _at_least(v, 1)),
    "lookback_days": Field("int", default=30, check=lambda v: _at_least(v, 0)),
    "psa_company_id": Field("int"),
    "psa_agreement_id": Field("int"),
    "billing": Field("dict_int", default=dict),
    "policy": Field("table", default=lambda: validate({}, POLICY, ""), schema=POLICY),
}


@dataclass
class PluginConfig:
    """One `[[tenant.source]]` or `[[tenant.provider]]` block, validated by its plugin's schema."""

    type: str
    name: str
    options: dict[str, Any]
    where: str


@dataclass
class Tenant:
    id: str
    name: str
    timezone: str
    protected: list[str]
    max_terminations_per_run: int
    max_terminations_per_day: int
    lookback_days: int
    psa_company_id: int | None
    psa_agreement_id: int | None
    billing: dict[str, int]
    policy: dict[str, Any]
    sources: list[PluginConfig] = field(default_factory=list)
    providers: list[PluginConfig] = field(default_factory=list)

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def is_protected(self, names: list[str]) -> str:
        """The first `protected` glob that matches any of `names` (case-insensitive), or ''."""
        for pattern in self.protected:
            for name in names:
                if name and fnmatch.fnmatchcase(name.lower(), pattern.lower()):
                    return pattern
        return ""


@dataclass
class Config:
    path: str
    connector: dict[str, Any]
    webhook: dict[str, Any] | None
    psa: dict[str, Any] | None
    tenants: list[Tenant]

    def tenant(self, tenant_id: str) -> Tenant:
        for t in self.tenants:
            if t.id == tenant_id:
                return t
        raise ConfigError(f"no tenant {tenant_id!r} in the config (tenants: {', '.join(t.id for t in self.tenants)})", self.path)


def _plugins(raw: Any, group: str, where: str) -> list[PluginConfig]:
    from . import plugins

    if not isinstance(raw, list):
        raise ConfigError(f"expected [[tenant.{group}]] blocks", where)
    out: list[PluginConfig] = []
    names: set[str] = set()
    for i, block in enumerate(raw):
        here = f"{where}[{i}]"
        if not isinstance(block, dict):
            raise ConfigError("expected a table", here)
        kind = block.get("type")
        if not isinstance(kind, str):
            raise ConfigError("required key is missing", f"{here}.type")
        cls = plugins.load(group + "s", kind, f"{here}.type")
        schema = {"type": Field("str"), "name": Field("str", default=kind), **cls.config_schema}
        options = validate(block, schema, here)
        name = options.pop("name")
        options.pop("type")
        if name in names:
            raise ConfigError(f"two {group}s are named {name!r}; give one a distinct `name`", f"{here}.name")
        names.add(name)
        out.append(PluginConfig(kind, name, options, here))
    return out


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
    try:
        config = _parse(raw)
        config.path = path
        return config
    except ConfigError as e:
        e.where = f"{path}: {e.where}" if e.where else path
        raise


def _parse(raw: dict) -> Config:
    top = {"connector": Field("table", default=lambda: validate({}, CONNECTOR, "connector"), schema=CONNECTOR),
           "webhook": Field("table", schema=WEBHOOK),
           "psa": Field("table", schema=PSA),
           "tenant": Field("list_raw", required=True)}
    for key in raw:
        if key not in top:
            raise ConfigError(f"unknown key (known keys: {', '.join(sorted(top))})", key)
    connector = _convert(raw.get("connector", {}), top["connector"], "connector")
    webhook = _convert(raw["webhook"], top["webhook"], "webhook") if "webhook" in raw else None
    psa = _convert(raw["psa"], top["psa"], "psa") if "psa" in raw else None
    tenants_raw = raw.get("tenant")
    if not isinstance(tenants_raw, list) or not tenants_raw:
        raise ConfigError("at least one [[tenant]] is required", "tenant")
    tenants: list[Tenant] = []
    for i, t in enumerate(tenants_raw):
        here = f"tenant[{i}]"
        if not isinstance(t, dict):
            raise ConfigError("expected a table", here)
        plain = {k: v for k, v in t.items() if k not in ("source", "provider")}
        values = validate(plain, TENANT, here)
        if any(x.id == values["id"] for x in tenants):
            raise ConfigError(f"duplicate tenant id {values['id']!r}", f"{here}.id")
        tenant = Tenant(**values)
        tenant.name = tenant.name or tenant.id
        tenant.sources = _plugins(t.get("source", []), "source", f"{here}.source")
        tenant.providers = _plugins(t.get("provider", []), "provider", f"{here}.provider")
        if values["billing"] and (values["psa_agreement_id"] is None):
            raise ConfigError("[tenant.billing] needs psa_agreement_id", f"{here}.psa_agreement_id")
        tenants.append(tenant)
    return Config(path="", connector=connector, webhook=webhook, psa=psa, tenants=tenants)
