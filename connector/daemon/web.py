"""The listener's WSGI app: the signed termination webhook, the PSA callback, health, metrics and runs.

A webhook is answered at once: its termination is recorded in the store inside the request
(so an accepted body is never lost, even if the daemon dies a moment later), and the pass
that works on it runs in the background. Every rejection is answered before anything is
queued, and no answer says more than the status and one line of why.
"""
from __future__ import annotations

import json
import logging
import re
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..sources.webhook import WebhookRejected, read_body, verify_and_parse, webhook_secret_for
from .runner import ShuttingDown

if TYPE_CHECKING:
    from .service import Daemon

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"[0-9a-f]{1,32}")


class Answer(Exception):
    def __init__(self, status: int, body: dict | None = None):
        self.status, self.body = status, body if body is not None else {"error": HTTPStatus(status).phrase}


class App:
    def __init__(self, daemon: "Daemon"):
        self.daemon = daemon
        self.routes: list[tuple[str, re.Pattern, Callable]] = [
            ("POST", re.compile(r"/webhook/generic"), self.generic_webhook),
            ("POST", re.compile(r"/webhook/connectwise/([^/]{1,200})"), self.connectwise_callback),
            ("GET", re.compile(r"/healthz"), self.healthz),
            ("GET", re.compile(r"/metrics"), self.metrics),
            ("GET", re.compile(r"/runs/([^/]{1,64})"), self.run),
        ]

    def __call__(self, environ: dict, start_response) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "")
        try:
            if not self.daemon.client_allowed(environ):
                raise Answer(403)
            for verb, pattern, handler in self.routes:
                m = pattern.fullmatch(path)
                if m:
                    if method != verb:
                        raise Answer(405)
                    status, body, content_type = handler(environ, *m.groups())
                    break
            else:
                raise Answer(404)
        except Answer as a:
            status, body, content_type = a.status, a.body, "application/json"
        except Exception:
            log.exception("%s %s failed", method, path)
            status, body, content_type = 500, {"error": "internal error"}, "application/json"
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        start_response(f"{status} {HTTPStatus(status).phrase}",
                       [("Content-Type", content_type), ("Content-Length", str(len(data))),
                        ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")])
        return [data]

    # -- routes ----------------------------------------------------------------------------
    def generic_webhook(self, environ: dict):
        config = self.daemon.config
        try:
            body = read_body(environ["wsgi.input"], environ.get("CONTENT_LENGTH"),
                             terminated=environ.get("wsgi.input_terminated", False))
            termination = verify_and_parse(body, headers(environ), webhook_secret_for(config), time.time(),
                                           self.daemon.store)
        except WebhookRejected as e:
            log.info("webhook rejected from %s: %s", self.daemon.client_address(environ), e)
            raise Answer(e.status, {"error": e.message}) from None
        try:
            run_id = self.daemon.accept(termination)
        except ShuttingDown:
            raise Answer(503, {"error": "the daemon is stopping; send it again"}) from None
        return 202, {"run_id": run_id}, "application/json"

    def connectwise_callback(self, environ: dict, token: str):
        try:
            body = read_body(environ["wsgi.input"], environ.get("CONTENT_LENGTH"),
                             terminated=environ.get("wsgi.input_terminated", False))
            status, answer = self.daemon.accept_ticket_callback(token, body)
        except WebhookRejected as e:
            raise Answer(e.status, {"error": e.message}) from None
        except ShuttingDown:
            raise Answer(503, {"error": "the daemon is stopping; send it again"}) from None
        return status, answer, "application/json"

    def healthz(self, environ: dict):
        reasons, info = self.daemon.health()
        return (503 if reasons else 200), {"status": "unhealthy" if reasons else "ok", "reasons": reasons, **info}, \
            "application/json"

    def metrics(self, environ: dict):
        return 200, generate_latest(self.daemon.metrics), CONTENT_TYPE_LATEST

    def run(self, environ: dict, run_id: str):
        row = self.daemon.store.run(run_id) if RUN_ID.fullmatch(run_id) else None
        if row is None:
            raise Answer(404)
        return 200, {"run_id": row["id"], "state": row["state"], "trigger": row["trigger"],
                     "terminations": row["terminations"], "exit_code": row["exit_code"],
                     "started_at": row["started_at"], "finished_at": row["finished_at"]}, "application/json"


def headers(environ: dict) -> dict[str, str]:
    return {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
