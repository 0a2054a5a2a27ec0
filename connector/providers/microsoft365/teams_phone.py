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

from ...errors import NotYet, OffboardError, PermanentError
from .graph import GraphCall
from .provider import TEAMS_NUMBERS

POLL_WAITS = (0.0, 0.5, 1.0, 2.0, 4.0)      # seconds before each read of an operation
LATER = 30.0                                # then the journal waits this long before the next attempt
PERMISSION = "TeamsTelephoneNumber.ReadWrite.All"
FINAL = ("failed", "skipped")


def assigned(answer: Any, where: str) -> list[dict]:
    """The numberAssignments read as a list, or the error that stops the Teams Phone actions."""
    if isinstance(answer, list):
        return answer
    raise PermanentError(f"the Teams Phone numbers cannot be read ({answer}); the app needs {PERMISSION}", where)


def unassign(number: dict) -> GraphCall:
    return GraphCall("POST", f"{TEAMS_NUMBERS}/unassignNumber",
                     {"telephoneNumber": number["telephoneNumber"], "numberType": number["numberType"]})


def assign(number: dict, user_id: str) -> GraphCall:
    return GraphCall("POST", f"{TEAMS_NUMBERS}/assignNumber",
                     {"telephoneNumber": number["telephoneNumber"], "assignmentTargetId": user_id,
                      "numberType": number["numberType"], "assignmentCategory": "primary"})


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
