"""The contract every provider passes, shared as Singer SDK taps share theirs.

Subclass `ProviderContract` in a provider's test module and supply the fixtures:

- `provider`: a ready provider instance talking to the real system or a stateful fake;
- `leaver`: a *fresh* `Termination` whose account exists and is untouched (one per test);
- `snapshot`: a callable `snapshot(termination) -> dict` that reads the system's state
  for that person without going through the provider (so the check cannot lie);
- `secrets`: strings that must never appear in results, logs or repr output.

and the class attribute `action_names`: every action the provider can plan for an
ordinary leaver. Each action is run three times, as Ansible does: dry run changes
nothing, first run changes, second run is `unchanged`.
"""
from __future__ import annotations

import json
import logging


from connector.model import ActionContext


def run_action(provider, termination, action_name, *, dry_run=False, since=None):
    """Match, plan and apply one action the way the engine does; None when it is not planned."""
    provider.prepare([termination])
    match = provider.match(termination)
    assert match.status == "matched", f"{termination.email}: {match.status} {match.reason}"
    planned = [a for a in provider.plan(match.subject, termination) if a.action == action_name]
    if not planned:
        return None
    ctx = ActionContext(termination=termination, subject=match.subject, dry_run=dry_run, since=since,
                        ticket=termination.ticket, local_date=termination.termination_date)
    return provider.apply(planned[0], ctx)


class ProviderContract:
    action_names: list[str] = []

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
        assert all(a.phase in ("revoke", "preserve", "reclaim", "bill", "retain") for a in first)
        assert snapshot(leaver) == before

    def test_action_three_passes(self, provider, leaver, snapshot, action_name):
        import datetime as dt

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

        again = run_action(provider, leaver, action_name, since=since)
        assert again is None or again.outcome == "unchanged", "the second run changed something again"
        assert snapshot(leaver) == changed

    def test_nothing_left_to_plan_after_every_action(self, provider, leaver):
        import datetime as dt

        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=2)
        for name in self.action_names:
            run_action(provider, leaver, name, since=since)
        provider.prepare([leaver])
        match = provider.match(leaver)
        left = [a.action for a in provider.plan(match.subject, leaver) if a.action in self.action_names
                and a.action not in self.journal_only_actions]
        assert left == []

    #: actions whose completion cannot be read back from the system (a password reset):
    #: the engine's journal, not the plan, says they are done
    journal_only_actions: tuple[str, ...] = ()

    def test_secrets_never_surface(self, provider, leaver, secrets, caplog, action_name):
        import datetime as dt

        caplog.set_level(logging.DEBUG)
        result = run_action(provider, leaver, action_name, since=dt.datetime.now(dt.timezone.utc))
        text = json.dumps([result.before, result.after, result.reason] if result else [], default=str)
        text += repr(provider.options) + caplog.text
        for secret in secrets:
            assert secret not in text


def pytest_generate_tests(metafunc):
    if "action_name" in metafunc.fixturenames and metafunc.cls is not None:
        metafunc.parametrize("action_name", metafunc.cls.action_names)
