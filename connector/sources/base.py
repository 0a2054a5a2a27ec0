"""The contract of an HR feed: pull terminations, cheaply from a cursor or whole.

A source raises `SourceError` when the feed as a whole cannot be believed (5xx,
a body that breaks the schema, a full read that suddenly returns nobody): the
engine then changes nothing because of it. A bad single record goes into
`rejected` and the rest still counts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .. import http
from ..errors import InputRejected, PermanentError, RetryableError, SourceError
from ..model import Termination
from ..plugins import Plugin


@dataclass
class Pull:
    terminations: list[Termination] = field(default_factory=list)
    rejected: list[InputRejected] = field(default_factory=list)
    cursor: str | None = None
    complete: bool = True     # a whole read: a person absent from it is no longer leaving


class Source(Plugin):
    def pull(self, since: str | None = None) -> Pull:
        raise NotImplementedError


def fetch_json(session, method: str, url: str, where: str, **kwargs: Any) -> Any:
    """One request to an HR feed; a failed or non-JSON answer is a SourceError (401/403 stay ConfigError).

    Non-JSON includes JSON nested deeper than the parser's recursion limit: a RecursionError
    would otherwise escape every handler and stop the pass for every tenant.
    """
    try:
        resp = http.send(session, method, url, where, **kwargs)
    except RetryableError as e:
        raise SourceError(f"{urlsplit(url).path}: {e.message} (retry after {e.delay:.0f} s)", where) from None
    except PermanentError as e:
        raise SourceError(f"{urlsplit(url).path}: {e.message}", where) from None
    try:
        return resp.json()
    except (ValueError, RecursionError):
        raise SourceError(f"{urlsplit(url).path}: the answer is not JSON (or nests too deep)", where) from None
