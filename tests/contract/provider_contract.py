"""The contract every provider passes, shared as Singer SDK taps share theirs.

Subclass `ProviderContract` in a provider's test module and supply the fixtures:

- `provider`: a ready provider instance talking to the real system or a stateful fake;
- `leaver`: a *fresh* `Termination` whose account exists and is untouched (one per test);
- `snapshot`: a callable `snapshot(termination) -> dict` that reads the system's state
  for that person without going through the provider (so the check cannot lie);
- `secrets`: strings that must never appear in results, logs or repr output.

and the class attribute `action_names`: every action the provider can plan for an
ordinary leaver. Each action is run three times, as Ansible does: dry run changes
nothing, first run changes, second run is `unchanged`; so is its undo (`Provider.undo`),
given the before-state the action journaled, as `offboard restore` gives it.
"""
from __future__ import annotations

import datetime as dt
import json
import logging

import pytest

from connector.model import PHASES, RESTORE, ActionContext, PlannedAction


def run_action(provider, termination, action_name, *, dry_run=False, since=None, gone_ok=False):
    """Match, plan and apply one action the way the engine does; None when it is not planned (or, with
    `gone_ok`, when the account is gone: what a deletion leaves)."""
    provider.prepare([termination])
    match = provider.match(termination)
    if gone_ok and match.status == "not_found":
        return None
    assert match.status == "matched", f"{termination.email}: {match.status} {match.reason}"
    planned = [a for a in provider.plan(match.subject, termination) if a.action == action_name]
    if not planned:
        return None
    ctx = ActionContext(termination=termination, subject=match.subject, dry_run=dry_run, since=since,
                        ticket=termination.ticket, local_date=termination.termination_date)
    return provider.apply(planned[0], ctx)


def run_undo(provider, termination, subject, action_name, before, *, dry_run=False, since=None, shown=None):
    """Apply the undo of `action_name` as `offboard restore` does: the account as matched now (else `subject`,
    as the journal remembers it), the journaled before-state in the params."""
    provider.prepare([termination])
    match = provider.match(termination)
    subject = match.subject if match.status == "matched" else subject
    undo = PlannedAction(provider.name, provider.undo[action_name], RESTORE, "",
                         (("action", action_name), ("before", json.loads(json.dumps(before, default=str)))))
    ctx = ActionContext(termination=termination, subject=subject, dry_run=dry_run, since=since,
                        show_once=(shown if shown is not None else []).append)
    return provider.apply(undo, ctx)


class ProviderContract:
    action_names: list[str] = []
    #: actions after which the account is no longer found (a deletion)
    gone_after: tuple[str, ...] = ()
    #: actions whose undo derives the wanted state from the world, not the before-state (billing re-synced to
    #: the real count): right after the action it has nothing to change
    undo_rederives: tuple[str, ...] = ()

    def test_match_finds_the_leaver(self, provider, leaver):
        provider.prepare([leaver])
        match = provider.match(leaver)
        assert match.status == "matched"
        assert match.subject.native_id
        assert match.subject.provider == provider.name

    def test_plan_is_pure_and_lists_every_action(self, provider, leaver, snapshot):
        before = snapshot(leaver)
        provider.prepare([leaver])
        match = provider.match(leaver)
        first = provider.plan(match.subject, leaver)
        second = provider.plan(match.subject, leaver)
        assert first == second
        assert {a.action for a in first} >= set(self.action_names)
        assert all(a.phase in PHASES for a in first)
        assert snapshot(leaver) == before

    def test_action_three_passes(self, provider, leaver, snapshot, action_name):
        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=2)
        untouched = snapshot(leaver)
        dry = run_action(provider, leaver, action_name, dry_run=True, since=since)
        assert dry is not None, f"{action_name} was not planned for a fresh leaver"
        assert dry.outcome == "planned"
        assert snapshot(leaver) == untouched, "a dry run changed the system"

        first = run_action(provider, leaver, action_name, since=since)
        assert first.outcome == "changed"
        assert first.before is not None and first.after is not None
        assert first.before != first.after
        changed = snapshot(leaver)
        assert changed != untouched, "apply said changed but the system shows no difference"

        again = run_action(provider, leaver, action_name, since=since, gone_ok=action_name in self.gone_after)
        assert again is None or again.outcome == "unchanged", "the second run changed something again"
        assert snapshot(leaver) == changed

    def test_undo_three_passes(self, provider, leaver, snapshot, action_name):
        undo = provider.undo.get(action_name)
        if not undo:
            pytest.skip(f"{action_name}: nothing to put back" if undo == "" else f"{action_name} has no undo")
        assert provider.actions[undo] == RESTORE
        provider.prepare([leaver])
        subject = provider.match(leaver).subject
        done = run_action(provider, leaver, action_name, since=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=2))
        assert done.outcome == "changed"
        offboarded = snapshot(leaver)
        since, shown = dt.datetime.now(dt.timezone.utc), []
        dry = run_undo(provider, leaver, subject, action_name, done.before, dry_run=True, since=since)
        if action_name in self.undo_rederives:
            assert dry.outcome == "unchanged" and snapshot(leaver) == offboarded
            return
        assert dry.outcome == "planned"
        assert snapshot(leaver) == offboarded, "a dry run of the undo changed the system"
        first = run_undo(provider, leaver, subject, action_name, done.before, since=since, shown=shown)
        assert first.outcome == "changed", first.reason
        restored = snapshot(leaver)
        assert restored != offboarded, "the undo said changed but the system shows no difference"
        again = run_undo(provider, leaver, subject, action_name, done.before, since=since, shown=shown)
        assert again.outcome == "unchanged", "the second undo changed something again"
        assert snapshot(leaver) == restored
        assert len(shown) <= 1, "a new password or pass was issued twice"
        for text in shown:
            assert text.split()[-1] not in json.dumps([first.before, first.after, first.reason, again.after])

    def test_nothing_left_to_plan_after_every_action(self, provider, leaver):
        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=2)
        for name in self.action_names:
            run_action(provider, leaver, name, since=since)
        provider.prepare([leaver])
        match = provider.match(leaver)
        if set(self.gone_after) & set(self.action_names):
            assert match.status == "not_found", "the account outlived its deletion"
            return
        left = [a.action for a in provider.plan(match.subject, leaver) if a.action in self.action_names
                and a.action not in self.journal_only_actions]
        assert left == []

    #: actions whose completion cannot be read back from the system (a password reset):
    #: the engine's journal, not the plan, says they are done
    journal_only_actions: tuple[str, ...] = ()

    def test_secrets_never_surface(self, provider, leaver, secrets, caplog, action_name):
        caplog.set_level(logging.DEBUG)
        result = run_action(provider, leaver, action_name, since=dt.datetime.now(dt.timezone.utc))
        text = json.dumps([result.before, result.after, result.reason] if result else [], default=str)
        text += repr(provider.options) + caplog.text
        for secret in secrets:
            assert secret not in text


def pytest_generate_tests(metafunc):
    if "action_name" in metafunc.fixturenames and metafunc.cls is not None:
        metafunc.parametrize("action_name", metafunc.cls.action_names)
