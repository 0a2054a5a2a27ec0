"""Logging for people (the CLI's one-line text) and for journald (the daemon's one JSON object per line).

Both pass every record through one filter that masks each secret value this process
resolved, in the message and in every structured field, so a token or a password
that reaches an error text still never reaches a log. Structured fields (tenant,
employee, provider, action, outcome) travel as `extra=` and become JSON keys.
"""
from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from .config import mask_secrets

#: the structured fields a record may carry, as `extra=`
FIELDS = ("tenant", "employee", "termination", "provider", "action", "phase", "outcome", "error", "run_id")


class MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_secrets(record.getMessage())
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        for name in FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, mask_secrets(value))
        return True


def setup_logging(level: str, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(MaskingFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"levelname": "level", "asctime": "time", "name": "logger"},
                                           datefmt="%Y-%m-%dT%H:%M:%S%z", json_ensure_ascii=False))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))   # one line per job run is noise
