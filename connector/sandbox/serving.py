"""`offboard serve` as a real subprocess, driven the way systemd and the HR and PSA systems drive it.

`offboard demo`, the daemon tests and the benchmarks share this: a fake systemd notify socket
to read READY from, the daemon's JSON log, its listener, signed webhook bodies as an HR system
sends them, and the people of the generated company nobody is offboarding yet.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from . import world as worldmod
from .company import Employee
from .configs import TENANT

OFFBOARD = str(Path(sys.executable).with_name("offboard"))
HOOK_SECRET = "hook-secret-4f1c9e0b7a"
CALLBACK_TOKEN = "cw-callback-7d3e1a9f"


class NotifySocket:
    """What systemd's end of `Type=notify` sees: one datagram per sd_notify call."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, line: str, timeout: float) -> str:
        """The first message holding `line` (e.g. READY=1), waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if line in message.split("\n"):
                    return message
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {line} on the notify socket; got {self.messages}")
            with contextlib.suppress(socket.timeout):
                self.messages.append(self.sock.recv(4096).decode())

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class Daemon:
    """One `offboard serve` process: start, signal, kill, and its JSON log."""

    def __init__(self, folder: Path, config: Path, env: dict, name: str = "serve"):
        self.folder, self.config, self.env, self.name = folder, config, env, name
        self.log = folder / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.notify: NotifySocket | None = None

    def start(self, timeout: float = 60) -> "Daemon":
        self.notify = NotifySocket(self.folder / f"{self.name}-{time.monotonic_ns()}.sock")
        env = dict(self.env, NOTIFY_SOCKET=self.notify.path)
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([OFFBOARD, "--config", str(self.config), "serve"], stderr=log,
                                         stdout=subprocess.DEVNULL, env=env)
        ready = self.notify.wait_for("READY=1", timeout)
        status = next(line for line in ready.split("\n") if line.startswith("STATUS="))
        self.url = "http://" + status.rsplit("listening on ", 1)[1]
        return self

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.notify.close()
        return code

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=10, **kw)

    def post(self, path: str, body: bytes, headers: dict | None = None) -> requests.Response:
        return requests.post(self.url + path, data=body, headers=headers or {}, timeout=30)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([OFFBOARD, "--config", str(self.config), *args], capture_output=True, text=True,
                              env=self.env, timeout=60)


def webhook_body(person: Employee, tenant: str = TENANT, *, on: dt.date | None = None, at: str = "",
                 timestamp: int | None = None, **extra) -> bytes:
    data = {"tenant": tenant, "employee_id": person.number, "email": person.email, "first_name": person.given,
            "last_name": person.surname, "manager_email": person.manager,
            "termination_date": (on or dt.datetime.now(dt.timezone.utc).date()).isoformat(),
            "kind": "voluntary" if at else "immediate", "timestamp": int(time.time()) if timestamp is None else timestamp,
            **({"termination_time": at} if at else {}), **extra}
    return json.dumps(data).encode()


def whole_minute_after(seconds: float) -> dt.datetime:
    """The first whole minute (UTC) at least `seconds` from now: a webhook's termination_time is HH:MM."""
    at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)
    whole = at.replace(second=0, microsecond=0)
    return whole if whole == at else whole + dt.timedelta(minutes=1)


def signed(body: bytes, secret: str = HOOK_SECRET) -> dict:
    return {"X-Offboard-Signature": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
            "Content-Type": "application/json"}


def cloud_only_stayers(world: worldmod.World) -> list[Employee]:
    """People nobody is offboarding yet whose whole offboarding the cloud can do (not synced from AD),
    with mailboxes that may be unlicensed."""
    return [p for p in world.company.people
            if not p.leaver and not p.synced and not p.litigation_hold and p.mailbox_gb < 50]


@contextlib.contextmanager
def requests_seen(sandbox):
    """(when it arrived, the system, the request) of every request the sandbox gets while inside; then as before."""
    seen, handle = [], sandbox.handle
    sandbox.handle = lambda name, request: seen.append((time.time(), name, request)) or handle(name, request)
    try:
        yield seen
    finally:
        sandbox.handle = handle


def wait_until(check, timeout: float, every: float = 0.25, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not hold within {timeout} s")
        time.sleep(every)
