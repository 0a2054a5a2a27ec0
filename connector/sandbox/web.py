"""The one request path of the sandbox: every emulated system answers `Request -> Response`.

A request reaches a system either as a `responses` callback inside the test process
(`mocked.register`) or through the WSGI app over HTTPS (`Sandbox.__call__`, served by
`server.HttpsServer`); both build the same `Request` and go through `Sandbox.handle`, so the
two modes share one state, one spec check, one write log and one set of knobs. Systems are
mounted by name: over HTTPS, `graph` answers below `https://127.0.0.1:PORT/graph`; behind
`responses`, below whatever vendor URL the test gives it. `_sandbox` is the control surface
a test in another process reads and turns: the write log, the spec violations, the knobs
(mounted like a system, so behind `responses` too when a test names a URL for it).
"""
from __future__ import annotations

import http
import json
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from requests.structures import CaseInsensitiveDict

CONTROL = "_sandbox"


@dataclass
class Request:
    method: str
    base: str                      # the system's mount as the client addressed it, no trailing slash
    path: str                      # below the mount, from "/", still percent-encoded
    query: str = ""                # raw query string
    headers: CaseInsensitiveDict = field(default_factory=CaseInsensitiveDict)
    body: bytes = b""
    peer: str = "responses"        # the client's address over HTTPS; "responses" inside the test process

    @property
    def url(self) -> str:
        return self.base + self.path + (f"?{self.query}" if self.query else "")

    @property
    def segments(self) -> list[str]:
        return [unquote(s) for s in self.path.split("/") if s]

    def params(self) -> dict[str, list[str]]:
        return parse_qs(self.query, keep_blank_values=True)

    def arg(self, name: str, default: str | None = None) -> str | None:
        return self.params().get(name, [default])[0]

    def json(self) -> Any:
        """The JSON body (None when empty); `BadBody` for anything that is not JSON."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadBody(f"the body is not JSON: {e}") from None

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode("utf-8", "replace")).items()}


class BadBody(ValueError):
    """A request body the system cannot even parse."""


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def json_response(status: int, value: Any, headers: dict | None = None) -> Response:
    return Response(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(value).encode())


def text_response(status: int, text: str = "", content_type: str = "text/plain") -> Response:
    return Response(status, {"Content-Type": content_type} if text else {}, text.encode())


# -- the write log -------------------------------------------------------------------------
@dataclass(frozen=True)
class Write:
    at: float            # Unix time the write was answered
    system: str
    op: str              # what was asked: "PATCH users/{id}", "Set-Mailbox"
    target: str          # what it was asked of: a user id, a mailbox, a group/member pair
    caller: str          # who asked: the app (client id) and the peer address
    status: int          # how it was answered


class WriteLog:
    """Every state-changing call of every system, refused ones included, in order."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: list[Write] = []

    def record(self, system: str, op: str, target: str, caller: str, status: int) -> None:
        with self._lock:
            self._entries.append(Write(time.time(), system, op, target, caller, status))

    def entries(self, system: str | None = None, ok: bool | None = None) -> list[Write]:
        with self._lock:
            found = list(self._entries)
        return [w for w in found if (system is None or w.system == system)
                and (ok is None or (w.status < 400) == ok)]


# -- the knobs -----------------------------------------------------------------------------
class TokenBucket:
    """Graph-like throttling: `burst` requests at once per key (a tenant), refilled at `rate` per second."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self._state: dict[str, tuple[float, float]] = {}    # key -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when the request may go, else the seconds until it may (what Retry-After says)."""
        now = time.monotonic()
        with self._lock:
            tokens, then = self._state.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            if tokens >= 1:
                self._state[key] = (tokens - 1, now)
                return 0.0
            self._state[key] = (tokens, now)
            return (1 - tokens) / self.rate if self.rate > 0 else 3600.0


class KnobSettings(BaseModel):
    """What `POST /_sandbox/knobs/SYSTEM` may set; every key optional, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True)
    latency: tuple[float, float] | None = None
    outage: bool | None = None
    throttle_next: int | None = Field(None, ge=0)
    throttle_next_item: int | None = Field(None, ge=0)
    retry_after: float | None = Field(None, ge=0)
    bucket: tuple[float, int] | None = None               # (rate per second, burst); [0, 0] turns it off


class Knobs:
    """What a test turns on one system, in process or through the control endpoint."""

    def __init__(self):
        self.latency = (0.0, 0.0)       # seconds before a request is handled, and after its write landed
        self.outage = False             # every request answers 503
        self.throttle_next = 0          # the next N requests answer 429 (a batch: as a whole)
        self.throttle_next_item = 0     # the next N sub-requests of a batch answer 429 inside it
        self.retry_after = 0.0          # the Retry-After of those 429s and of the outage's 503
        self.bucket: TokenBucket | None = None

    def throttled(self, key: str, item: bool = False, budget: bool = True) -> float | None:
        """Seconds to tell the client to wait, or None: the request may go. A request with a `budget`
        spends one token of `key`'s bucket (a $batch envelope has none: its sub-requests do)."""
        counter = "throttle_next_item" if item else "throttle_next"
        if getattr(self, counter) > 0:
            setattr(self, counter, getattr(self, counter) - 1)
            return self.retry_after
        wait = self.bucket.take(key) if self.bucket and budget else 0.0
        return wait or None

    def update(self, settings: KnobSettings) -> None:
        for key, value in settings.model_dump(exclude_none=True).items():
            if key == "bucket":
                self.bucket = TokenBucket(*value) if value[1] > 0 else None
            else:
                setattr(self, key, tuple(value) if key == "latency" else value)

    def describe(self) -> dict:
        return {"latency": list(self.latency), "outage": self.outage, "throttle_next": self.throttle_next,
                "throttle_next_item": self.throttle_next_item, "retry_after": self.retry_after,
                "bucket": [self.bucket.rate, self.bucket.burst] if self.bucket else None}


def retry_after_header(seconds: float) -> dict[str, str]:
    """Whole seconds, rounded up, as a server sends them."""
    return {"Retry-After": str(max(0, -int(-seconds // 1)))}


# -- systems and the sandbox -----------------------------------------------------------------
class System:
    """One emulated system: its state, behind `handle`, guarded by `lock`."""

    name = ""

    def __init__(self):
        self.lock = threading.RLock()
        self.knobs = Knobs()
        self.writes = WriteLog()            # the sandbox's own log once mounted
        self.violations: list[str] = []     # requests the vendor's spec does not allow
        self.calls: list[tuple[str, str, str]] = []    # (service, method, path) of every request that reached `handle`
        self.failing: dict[str, int] = {}   # path regex -> the status that route answers instead: an outage of one route

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def failing_status(self, path: str) -> int | None:
        """The status `failing` makes this path answer, if any (each system words the error its own way)."""
        return next((status for pattern, status in self.failing.items() if re.fullmatch(pattern, path)), None)

    def wrote(self, op: str, target: str, caller: str, status: int) -> None:
        self.writes.record(self.name, op, target, caller, status)

    def state(self, emails: list[str]) -> dict | None:
        """What offboarding changed for these people here, read from the state (None: this system keeps none),
        for `GET /_sandbox/state`: how `offboard demo` reads back what the daemon did."""
        return None


class Sandbox:
    """The emulated systems by name, and the WSGI app that serves them and the control surface."""

    def __init__(self, *systems: System):
        self.writes = WriteLog()
        self.systems: dict[str, System] = {}
        for system in systems:
            self.add(system)

    def add(self, system: System) -> System:
        if system.name in self.systems or system.name == CONTROL or not system.name:
            raise ValueError(f"cannot mount a system named {system.name!r} twice or at all")
        system.writes = self.writes
        self.systems[system.name] = system
        return system

    @property
    def violations(self) -> list[str]:
        return [v for system in self.systems.values() for v in system.violations]

    def handle(self, name: str, request: Request) -> Response:
        if name == CONTROL:
            return self.control(request)
        system = self.systems[name]
        knobs = system.knobs
        if knobs.outage:
            return json_response(503, {"error": {"code": "ServiceUnavailable", "message": "sandbox outage"}},
                                 retry_after_header(knobs.retry_after))
        before, after = knobs.latency
        if before:
            time.sleep(before)
        try:
            response = system.handle(request)
        except BadBody as e:
            response = text_response(400, str(e))
        if after:
            time.sleep(after)            # the write has landed; the client does not know yet
        return response

    # -- WSGI ---------------------------------------------------------------------------------
    def __call__(self, environ: dict, start_response) -> list[bytes]:
        raw = environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
        path, _, query = raw.partition("?")
        if not query:
            query = environ.get("QUERY_STRING", "")
        name, _, rest = path.lstrip("/").partition("/")
        headers = CaseInsensitiveDict({key[5:].replace("_", "-").title(): value for key, value in environ.items()
                                       if key.startswith("HTTP_")})
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers[key.replace("_", "-").title()] = environ[key]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        host = environ.get("HTTP_HOST") or f"{environ['SERVER_NAME']}:{environ['SERVER_PORT']}"
        request = Request(environ["REQUEST_METHOD"], f"{environ['wsgi.url_scheme']}://{host}/{name}",
                          "/" + rest, query, headers, body, f"{environ.get('REMOTE_ADDR')}:{environ.get('REMOTE_PORT')}")
        if name == CONTROL or name in self.systems:
            response = self.handle(name, request)
        else:
            response = text_response(404, f"no system {name!r} here; mounted: {', '.join(self.systems)}")
        reason = http.HTTPStatus(response.status).phrase
        start_response(f"{response.status} {reason}", [*response.headers.items(),
                                                        ("Content-Length", str(len(response.body)))])
        return [response.body]

    def control(self, request: Request) -> Response:
        """GET writes[?system=S], GET violations, GET knobs, GET state?email=E..., POST knobs/SYSTEM {settings}."""
        route = (request.method, *request.segments)
        if route == ("GET", "writes"):
            system = request.arg("system")
            return json_response(200, {"writes": [asdict(w) for w in self.writes.entries(system)]})
        if route == ("GET", "violations"):
            return json_response(200, {"violations": self.violations})
        if route == ("GET", "state"):
            emails = request.params().get("email", [])
            found = {name: s.state(emails) for name, s in self.systems.items()}
            return json_response(200, {name: state for name, state in found.items() if state is not None})
        if route == ("GET", "knobs"):
            return json_response(200, {name: s.knobs.describe() for name, s in self.systems.items()})
        if len(route) == 3 and route[:2] == ("POST", "knobs") and route[2] in self.systems:
            try:
                settings = KnobSettings.model_validate_json(request.body or b"{}")
            except ValidationError as e:
                return text_response(400, str(e))
            knobs = self.systems[route[2]].knobs
            knobs.update(settings)
            return json_response(200, knobs.describe())
        return text_response(404, "control: GET writes, GET violations, GET knobs, GET state, POST knobs/SYSTEM")
