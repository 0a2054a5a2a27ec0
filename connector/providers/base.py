"""The contract every provider keeps, whoever wrote it.

A provider reads state (`prepare` + `match`), says what is missing (`plan`, pure:
no I/O), and performs one action (`apply`), which re-reads the target and writes
only on a difference, reporting `changed` or `unchanged` with before and after
(in dry-run mode: `planned` or `unchanged`, and no write). It raises the typed
errors of `connector.errors`; the engine decides what happens next.

Restore (`offboard restore`): `undo` maps an action to the action that puts its journaled
before-state back. Undo actions are ordinary actions (phase "restore") applied through the
same contract, with `params` carrying `before` (the original's journaled before-state) and
`action` (the original's name). An action mapped to "" needs nothing put back (new sign-ins
make new sessions); one with no entry is a person's job, and restore says so by name.
Retain: before anything is deleted the engine asks every provider what the person's
account there still `anchors` (a shared mailbox, a hold, numbers not moved): while any
provider names something, no provider deletes.
"""
from __future__ import annotations

from typing import Any, ClassVar

from ..errors import OffboardError, Stopped
from ..model import ActionContext, Match, PlannedAction, Result, Subject, Termination
from ..plugins import Plugin


class Provider(Plugin):
    #: action name -> phase, in the order the actions run within their phase
    actions: ClassVar[dict[str, str]] = {}
    #: whose `Subject.manager` names the successor when several systems know the person (higher wins):
    #: on-premises AD, where synced users come from, outranks Entra ID
    manager_authority: ClassVar[int] = 0
    #: action -> the action that puts its journaled before-state back ("" : nothing to put back)
    undo: ClassVar[dict[str, str]] = {}
    #: `prepare` reads every service `check_online` does and fails the same way (a refused credential raises
    #: ConfigError): a pass whose leavers are known before it starts need not check first
    prepare_checks_online: ClassVar[bool] = False

    # -- reading -----------------------------------------------------------
    def check_online(self) -> None:
        """Prove the credential and permissions with one read-only call; raise ConfigError if not."""
        raise NotImplementedError

    def prepare(self, terminations: list[Termination]) -> None:
        """Read what matching needs once per pass (one paged search, then an index)."""

    def match(self, termination: Termination) -> Match:
        raise NotImplementedError

    # -- deciding ----------------------------------------------------------
    def plan(self, subject: Subject, termination: Termination) -> list[PlannedAction]:
        """Pure: the actions still needed, from `subject.state` and the tenant policy."""
        raise NotImplementedError

    def anchors(self, subject: Subject, termination: Termination) -> list[str]:
        """What this account still anchors, in words ("a shared mailbox ..."): while any provider names
        something, the person's accounts are not deleted (retain). May read; the default anchors nothing."""
        return []

    # -- acting ------------------------------------------------------------
    def apply(self, action: PlannedAction, ctx: ActionContext) -> Result:
        """Re-read, compare, act only on a difference; honour ctx.dry_run."""
        handler = getattr(self, action.action, None)
        if handler is None or action.action not in self.actions:
            raise NotImplementedError(f"{self.type} has no action {action.action}")
        return handler(action, ctx)

    def apply_many(self, items: list[tuple[PlannedAction, ActionContext]]) -> list[Result | OffboardError]:
        """Apply several actions of one phase, many leavers at once (the engine journals each first).

        `items` keep, for each subject, the order of `actions`; a provider that can batch
        (Graph `$batch`) overrides this and must keep that per-subject order, and write nothing
        before `ctx.wait_until_due()` returns. One result or typed error per item, in the same order.
        """
        out: list[Result | OffboardError] = []
        for action, ctx in items:
            ctx.wait_until_due()
            if not ctx.proceed():
                out.append(Stopped("the termination was cancelled or held while the pass ran", self.where))
                continue
            try:
                out.append(self.apply(action, ctx))
            except OffboardError as e:
                out.append(e)
        return out


    # -- helpers for subclasses -------------------------------------------
    def planned(self, action: str, description: str = "", **params: Any) -> PlannedAction:
        return PlannedAction(self.name, action, self.actions[action], description, tuple(sorted(params.items())))

    @staticmethod
    def undone(action: PlannedAction) -> tuple[str, Any]:
        """(the original action's name, its journaled before-state) from an undo action's params."""
        params = dict(action.params)
        return params["action"], params["before"]

    @staticmethod
    def outcome(before: Any, after: Any, dry_run: bool, reason: str = "") -> Result:
        """`unchanged` when before already equals the wanted state, else `planned` (dry run) or `changed`."""
        if before == after:
            return Result("unchanged", before, after, reason)
        return Result("planned" if dry_run else "changed", before, after, reason)
