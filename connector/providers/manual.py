"""Apps with no API: the steps a person must do, tracked like any other action until someone confirms them.

Each configured step is a `needs_human` action in its phase whose reason is the step's text,
filled in for the leaver, so `status`, `plan`, the report and the ticket note show it as they
show any other action. `offboard confirm ID STEP` marks it done in the journal (and the audit
log, with who ran it); until then the termination is not `done`, and the app's steps of later
phases wait (after revoke each provider keeps its own phase order, so an open hand-over here
holds no other system). Steps of one phase are open together. The templates are checked when
the config loads: a field no leaver can fill is a config error, not a text with a hole in it.
"""
from __future__ import annotations

import string
from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from ..config import PluginOptions, Section, invalid
from ..model import PHASES, ActionContext, Match, PlannedAction, Result, Subject, Termination
from .base import Provider

#: what every template may use, from the termination and the tenant
OPEN_STEP = "open_step"     # the journaled `after` of a step waiting for a person: what `confirm` may close
LEAVER_FIELDS = ("first_name", "last_name", "email", "employee_id", "successor", "company", "termination_date",
                 "ticket")


def _phase(value: str) -> str:
    if value not in PHASES:
        raise ValueError(f"must be one of {', '.join(PHASES)}; got {value!r}")
    return value


def template_fields(text: str) -> list[str]:
    """The `{name}` fields of a template; anything else ({0}, {a.b}, {a!r}, {a:>9}) is refused."""
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as e:
        raise ValueError(f"not a valid template: {e}") from None
    fields = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"{{{name}}}: a field is a plain name such as {{first_name}}")
        fields.append(name)
    return fields


class Step(Section):
    phase: Annotated[str, AfterValidator(_phase)]
    text: str = Field(min_length=1)
    name: str = ""             # what `offboard confirm` calls it (default step1, step2, ... in config order)


class ManualOptions(PluginOptions):
    app_name: str = ""                         # how the steps name the app (default: the block's name)
    fields: dict[str, str] = {}                # more template fields, the same for every leaver: {renewal}, ...
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _templates(self) -> ManualOptions:
        known = set(LEAVER_FIELDS) | set(self.fields)
        names = set()
        for i, step in enumerate(self.steps):
            try:
                unknown = [f for f in template_fields(step.text) if f not in known]
            except ValueError as e:
                raise invalid(("steps", i, "text"), str(e)) from None
            if unknown:
                raise invalid(("steps", i, "text"), f"unknown field {{{unknown[0]}}} (known: "
                                                    f"{', '.join(sorted(known))}; add others under `fields`)")
            name = step_name(step, i)
            if not name.isidentifier() or name in names:
                raise invalid(("steps", i, "name"), f"{name!r}: each step needs a distinct name of letters, digits "
                                                    "and '_'")
            names.add(name)
        return self


def step_name(step: Step, index: int) -> str:
    return step.name or f"step{index + 1}"


class ManualSteps(Provider):
    type = "manual"
    options_model = ManualOptions

    def __init__(self, name, options, tenant, where=""):
        super().__init__(name, options, tenant, where)
        self.steps = {step_name(s, i): s for i, s in enumerate(options.steps)}
        self.actions = {name: s.phase for name, s in self.steps.items()}     # in config order, as they run

    def check_online(self) -> None:
        """Nothing to reach: a person does these steps."""

    def match(self, termination: Termination) -> Match:
        """Everyone has the steps to do: the subject is the leaver themself."""
        return Match("matched", Subject(self.name, termination.id, []))

    def text(self, step: str, termination: Termination) -> str:
        t = termination
        values: dict[str, Any] = {"first_name": t.first_name, "last_name": t.last_name, "email": t.email,
                                  "employee_id": t.employee_id, "successor": t.successor, "company": self.tenant.name,
                                  "termination_date": t.termination_date.isoformat() if t.termination_date else "",
                                  "ticket": t.ticket, **self.options.fields}
        filled = {k: v if v else f"[{k} unknown]" for k, v in values.items()}
        app = self.options.app_name or self.name
        return f"{app}: {self.steps[step].text.format_map(filled)}"

    def plan(self, subject: Subject, termination: Termination) -> list[PlannedAction]:
        return [self.planned(name, self.text(name, termination)) for name in self.steps]

    def apply(self, action: PlannedAction, ctx: ActionContext) -> Result:
        """A dry run lists the step; a real pass leaves it to a person (`offboard confirm`), marked as a step."""
        text = self.text(action.action, ctx.termination)
        if ctx.dry_run:
            return Result("planned", None, {"confirmed": True}, text)
        return Result("needs_human", None, {OPEN_STEP: text}, text)
