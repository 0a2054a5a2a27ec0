"""An in-memory directory provider for engine tests: real state that writes really change.

It counts every write, can fail or crash on demand, and keeps the order in which
actions ran, so the engine's ordering, gating and crash recovery can be asserted.
"""
from __future__ import annotations

import datetime as dt
import threading

from connector.config import PluginOptions
from connector.model import Match, Subject
from connector.providers.base import Provider


class Crash(BaseException):
    """Simulates the process dying mid-action (not an error the engine may catch)."""


class FakeOptions(PluginOptions):
    label: str = ""


class FakeDirectory(Provider):
    """Registered as provider type `fake` for the whole test session (tests/conftest.py)."""

    type = "fake"
    options_model = FakeOptions
    actions = {"disable_account": "revoke", "reset_password": "revoke", "convert_mailbox": "preserve",
               "remove_groups": "reclaim"}

    def __init__(self, name, options, tenant, where="", accounts=None, log=None):
        super().__init__(name, options, tenant, where)
        self.accounts = accounts if accounts is not None else {}
        self.log = log if log is not None else []
        self.writes: list[tuple[str, str]] = []
        self.successors: dict[str, str] = {}     # account -> the successor the engine resolved for it
        self.fail: dict[str, BaseException] = {}      # action -> error to raise (once, then removed) or Crash
        self.crash_after_write: set[str] = set()
        self.lock = threading.Lock()

    @staticmethod
    def account(uid, employee_id, email, groups=("staff",), admin=False, names=()):
        return {"id": uid, "employee_id": employee_id, "email": email, "enabled": True, "groups": list(groups),
                "pwd_set": dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc), "mailbox": "UserMailbox",
                "admin": admin, "names": [email, *names]}

    def check_online(self):
        error = self.fail.pop("check_online", None)
        if error:
            raise error

    def match(self, t):
        """DESIGN.md "Matching": the id is authoritative; an id and an address on different accounts is ambiguous."""
        by_id = [a for a in self.accounts.values() if t.employee_id and a["employee_id"] == t.employee_id]
        by_address = [a for a in self.accounts.values() if t.email and t.email in a["names"]]
        found = by_id or by_address
        if not found:
            return Match("not_found")
        if len(found) > 1:
            return Match("ambiguous", candidates=[a["id"] for a in found], reason="two accounts")
        if any(a["id"] != found[0]["id"] for a in by_address):
            return Match("ambiguous", candidates=sorted({a["id"] for a in by_id + by_address}),
                         reason="the employee id and the address point at different accounts")
        a = found[0]
        return Match("matched", Subject(self.name, a["id"], a["names"], dict(a), is_admin=a["admin"],
                                        admin_reason="Global Administrator" if a["admin"] else "",
                                        anchor=a.get("anchor", ""), manager=a.get("manager")))

    def plan(self, subject, t):
        s = subject.state
        wanted = []
        if s["enabled"]:
            wanted.append(self.planned("disable_account"))
        wanted.append(self.planned("reset_password"))
        if s["mailbox"] != "SharedMailbox":
            wanted.append(self.planned("convert_mailbox"))
        if s["groups"]:
            wanted.append(self.planned("remove_groups"))
        return wanted

    def _write(self, action, account, key, value, ctx):
        before = account[key]
        if before == value:
            return self.outcome(before, value, ctx.dry_run)
        if ctx.dry_run:
            return self.outcome(before, value, True)
        error = self.fail.pop(action, None)
        if error:
            raise error
        with self.lock:
            account[key] = value
            self.writes.append((account["id"], action))
            self.successors[account["id"]] = ctx.termination.successor
            self.log.append((self.name, account["id"], action))
        if action in self.crash_after_write:
            raise Crash(action)
        return self.outcome(before, value, False)

    def disable_account(self, action, ctx):
        return self._write(action.action, self.accounts[ctx.subject.native_id], "enabled", False, ctx)

    def reset_password(self, action, ctx):
        account = self.accounts[ctx.subject.native_id]
        if ctx.since and account["pwd_set"] >= ctx.since:
            return self.outcome("reset", "reset", ctx.dry_run)
        if ctx.dry_run:
            return self.outcome({"pwd_set": str(account["pwd_set"])}, {"pwd_set": "now"}, True)
        return self._write(action.action, account, "pwd_set", dt.datetime.now(dt.timezone.utc), ctx)

    def convert_mailbox(self, action, ctx):
        return self._write(action.action, self.accounts[ctx.subject.native_id], "mailbox", "SharedMailbox", ctx)

    def remove_groups(self, action, ctx):
        return self._write(action.action, self.accounts[ctx.subject.native_id], "groups", [], ctx)
