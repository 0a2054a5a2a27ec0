"""Teams Phone numbers of a leaver: handed to the successor or unassigned, through Graph's asynchronous number orders.

`assignNumber` and `unassignNumber` answer 202 with the Location of a long-running
operation. It is polled a few times with a growing wait (a few seconds in all); one still
running then waits in the journal (`NotYet`) instead of holding a worker, and the next
attempt reads the assignments again and orders only what is still assigned. `failed` and
`skipped` are final and carry Graph's reason. A numbers read that Graph refused (the app
lacks TeamsTelephoneNumber.ReadWrite.All) fails these actions only, naming the permission.
"""
from __future__ import annotations

import time
from typing import Any, Generator
from urllib.parse import quote

from ...errors import NotYet, OffboardError, PermanentError
from .graph import GraphCall, page_items
from .provider import NUMBER_FIELDS, TEAMS_NUMBERS, odata_literal

POLL_WAITS = (0.0, 0.5, 1.0, 2.0, 4.0)      # seconds before each read of an operation
LATER = 30.0                                # then the journal waits this long before the next attempt
PERMISSION = "TeamsTelephoneNumber.ReadWrite.All"
FINAL = ("failed", "skipped")


def assigned(answer: Any, where: str) -> list[dict]:
    """The numberAssignments read (a page, or its items) as a list, or the error that stops the Teams Phone actions."""
    if isinstance(answer, dict):
        answer = page_items(answer, where)
    if isinstance(answer, list):
        return answer
    raise PermanentError(f"the Teams Phone numbers cannot be read ({answer}); the app needs {PERMISSION}", where)


def read(telephone_number: str) -> GraphCall:
    """The assignment of one number, wherever it is now."""
    return GraphCall("GET", f"{TEAMS_NUMBERS}?$filter={quote(f'telephoneNumber eq {odata_literal(telephone_number)}')}"
                            f"&$select={NUMBER_FIELDS}")


def state(number: dict, found: list[dict]) -> dict:
    """What the journal keeps of a number: itself, its type, and whom it is assigned to now (None: nobody)."""
    target = found[0].get("assignmentTargetId") if found else None
    return {"telephoneNumber": number["telephoneNumber"], "numberType": number["numberType"],
            "assignmentTargetId": target or None}


def move(number: dict, target: str | None, graph_base: str, where: str) -> Generator[list[GraphCall], list[Any], None]:
    """Unassign the number from whoever has it, then assign it to `target` (a user id) unless that is None."""
    body = {"telephoneNumber": number["telephoneNumber"], "numberType": number["numberType"]}
    if number["assignmentTargetId"]:
        yield from run(GraphCall("POST", f"{TEAMS_NUMBERS}/unassignNumber", body), graph_base, where)
    if target:
        yield from run(GraphCall("POST", f"{TEAMS_NUMBERS}/assignNumber",
                                 {**body, "assignmentTargetId": target, "assignmentCategory": "primary"}),
                       graph_base, where)


def run(order: GraphCall, graph_base: str, where: str) -> Generator[list[GraphCall], list[Any], None]:
    """Send one number order and poll its operation until it succeeded; raise when it failed or is still running."""
    [accepted] = yield [order]
    if isinstance(accepted, OffboardError):
        raise accepted
    location = accepted.get("Location") if isinstance(accepted, dict) else None
    if not isinstance(location, str) or not location.startswith(graph_base + "/"):
        raise PermanentError(f"{order.path.rsplit('/', 1)[-1]} answered no Location on {graph_base}: "
                             "the operation cannot be followed", where)
    status = "notStarted"
    for wait in POLL_WAITS:
        time.sleep(wait)
        [state] = yield [GraphCall("GET", location[len(graph_base):])]
        if isinstance(state, OffboardError):
            raise state
        status = str(state.get("status"))
        if status == "succeeded":
            return
        if status in FINAL:
            details = "; ".join(str(n.get("statusDetail")) for n in state.get("numbers") or []
                                if isinstance(n, dict) and n.get("statusDetail"))
            raise PermanentError(f"{order.body['telephoneNumber']}: {order.path.rsplit('/', 1)[-1]} {status}"
                                 + (f": {details}" if details else ""), where)
    raise NotYet(f"{order.body['telephoneNumber']}: {order.path.rsplit('/', 1)[-1]} still {status}", where,
                 delay=LATER)
