"""A directory served over real HTTP on 127.0.0.1, so two processes can work against one system.

`responses` lives inside one process; leases are about two. The server keeps the
accounts, counts every write per (account, action), and can be slowed down so two
passes really overlap. `HttpDirectory` is the provider that talks to it.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from connector.errors import RetryableError
from connector.model import Match, Subject
from connector.providers.base import Provider


class CountingDirectory:
    def __init__(self, accounts: dict[str, dict], delay: float = 0.0):
        self.accounts = accounts          # id -> {"employee_id", "email", "enabled", "groups"}
        self.writes: Counter = Counter()
        self.delay = delay
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                with fake.lock:
                    self._answer(200, fake.accounts)

            def do_POST(self):
                _, _, uid, action = self.path.split("/")
                time.sleep(fake.delay)
                with fake.lock:
                    account = fake.accounts[uid]
                    if action == "disable":
                        account["enabled"] = False
                    elif action == "remove_groups":
                        account["groups"] = []
                    fake.writes[(uid, action)] += 1
                    self._answer(200, account)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HttpDirectory(Provider):
    """Read all accounts once per pass; each action re-reads its account and writes only on a difference."""

    type = "http_directory"
    actions = {"disable_account": "revoke", "remove_groups": "reclaim"}

    def __init__(self, name, options, tenant, where="", url=""):
        super().__init__(name, options, tenant, where)
        self.url = url
        self.session = requests.Session()

    def _accounts(self) -> dict:
        try:
            return self.session.get(f"{self.url}/accounts", timeout=10).json()
        except requests.RequestException as e:
            raise RetryableError(str(e), self.where, delay=1) from None

    def check_online(self):
        self._accounts()

    def match(self, t):
        found = [(uid, a) for uid, a in self._accounts().items() if a["employee_id"] == t.employee_id]
        if not found:
            return Match("not_found")
        uid, a = found[0]
        return Match("matched", Subject(self.name, uid, [a["email"]], a))

    def plan(self, subject, t):
        wanted = [self.planned("disable_account")] if subject.state["enabled"] else []
        return wanted + ([self.planned("remove_groups")] if subject.state["groups"] else [])

    def _act(self, ctx, key: str, wanted, verb: str):
        before = self._accounts()[ctx.subject.native_id][key]
        result = self.outcome(before, wanted, ctx.dry_run)
        if result.outcome == "changed":
            self.session.post(f"{self.url}/accounts/{ctx.subject.native_id}/{verb}", timeout=30).raise_for_status()
        return result

    def disable_account(self, action, ctx):
        return self._act(ctx, "enabled", False, "disable")

    def remove_groups(self, action, ctx):
        return self._act(ctx, "groups", [], "remove_groups")

    def close(self):
        self.session.close()
