"""Manual steps: open until a person confirms them, in the app's phase order, never silently skipped."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from connector import cli, config, plugins
from connector.reconcile import reconcile
from connector.errors import ConfigError
from tests.fakes.directory import FakeDirectory, FakeOptions
from tests.helpers import FAKE_PROVIDER, load, write_config
from tests.unit.conftest import NOW, leaver, states

MANUAL = '''
[[tenant.provider]]
type = "manual"
name = "practiceapp"
app_name = "PracticeApp"
fields = { renewal = "2027-03-31" }
steps = [
  { phase = "preserve", name = "transfer", text = "Transfer {first_name} {last_name}'s clients and appointments to {successor}" },
  { phase = "reclaim", text = "Delete the user in PracticeApp to free the licence (contracted until {renewal})" },
]
'''
POLICY = '[tenant.policy]\nsuccessor = "sam.successor@contoso.com"\n'
TRANSFER = "PracticeApp: Transfer FirstE1 Last's clients and appointments to sam.successor@contoso.com"
DELETE = "PracticeApp: Delete the user in PracticeApp to free the licence (contracted until 2027-03-31)"


@pytest.fixture
def steps_env(env, tmp_path, monkeypatch):
    env.config_path = write_config(tmp_path, tenant_extra=POLICY, providers=FAKE_PROVIDER + MANUAL)
    env.config = load(env.config_path)
    tenant = env.config.tenants[0]
    env.directory = FakeDirectory("ad", FakeOptions(), tenant, accounts=env.directory.accounts, log=env.order)
    block = tenant.providers[1]
    env.manual = plugins.load("providers", "manual")(block.name, block.options, tenant, block.where)
    env.run = lambda now=NOW, **kw: reconcile(
        env.config, env.store, now=now, providers=lambda t: [env.directory, env.manual], **kw)
    monkeypatch.setenv("SUDO_USER", "alice")
    return env


def journal(env, tid="contoso/E1") -> dict[str, dict]:
    return {f"{a['provider']}/{a['action']}": a for a in env.store.actions(tid)}


def confirm(env, step, capsys, tid="contoso/E1") -> tuple[int, str, str]:
    env.store.close()                         # the CLI opens the state file itself, as a person's shell would
    code = cli.main(["--config", str(env.config_path), "confirm", tid, step])
    env.store = type(env.store).open(str(env.config.connector.state))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_an_open_step_holds_the_termination_but_no_other_system(steps_env):
    env = steps_env
    env.csv(leaver("E1", "ann@contoso.com"))
    report = env.run()
    assert states(env) == {"contoso/E1": "needs_human"} and report.exit_code == 2
    j = journal(env)
    assert (j["practiceapp/transfer"]["status"], j["practiceapp/transfer"]["reason"]) == ("needs_human", TRANSFER)
    assert "practiceapp/step2" not in j                      # the app's reclaim step waits for its hand-over
    assert [a for _, _, a in env.order] == ["disable_account", "reset_password", "convert_mailbox", "remove_groups"]
    rendered = cli.render_terminations(report.rows)
    assert TRANSFER in rendered and "needs_human" in rendered


def test_status_lists_the_open_step(steps_env, capsys):
    env = steps_env
    env.csv(leaver("E1", "ann@contoso.com"))
    env.run()
    env.store.close()
    assert cli.main(["--config", str(env.config_path), "--json", "status"]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(a["action"], a["outcome"], a["reason"]) for a in row["actions"] if a["provider"] == "practiceapp"
            and a["action"] != "match_account"} == \
        {("transfer", "needs_human", TRANSFER)}


def test_plan_lists_every_step_with_its_text(steps_env):
    env = steps_env
    env.csv(leaver("E1", "ann@contoso.com"))
    report = env.run(dry_run=True)
    [row] = report.rows
    assert [(a["action"], a["outcome"], a["reason"]) for a in row["actions"] if a["provider"] == "practiceapp"
            and a["action"] != "match_account"] == [("transfer", "planned", TRANSFER), ("step2", "planned", DELETE)]


def test_confirm_is_journaled_audited_idempotent_and_the_steps_go_in_order(steps_env, capsys):
    env = steps_env
    env.csv(leaver("E1", "ann@contoso.com"))
    env.run()
    code, out, _ = confirm(env, "transfer", capsys)
    assert code == 0 and "confirmed by alice" in out
    step = journal(env)["practiceapp/transfer"]
    assert step["status"] == "changed" and json.loads(step["after"])["confirmed_by"].startswith("alice")
    [audited] = [a for a in env.store.audit_trail("contoso/E1") if a["event"] == "person_confirm"]
    assert json.loads(audited["data"])["by"].startswith("alice") and json.loads(audited["data"])["step"] == TRANSFER
    assert states(env) == {"contoso/E1": "due"}

    rows = len(env.store.audit_trail("contoso/E1"))
    code, out, _ = confirm(env, "practiceapp/transfer", capsys)
    assert code == 0 and "already confirmed" in out
    assert len(env.store.audit_trail("contoso/E1")) == rows

    env.run(now=NOW + dt.timedelta(minutes=5))                # the app's reclaim step opens now
    assert states(env) == {"contoso/E1": "needs_human"}
    assert (journal(env)["practiceapp/step2"]["status"], journal(env)["practiceapp/step2"]["reason"]) == \
        ("needs_human", DELETE)
    assert confirm(env, "step2", capsys)[0] == 0
    env.run(now=NOW + dt.timedelta(minutes=10))
    assert states(env) == {"contoso/E1": "done"}

    writes, trail = len(env.directory.writes), len(env.store.audit_trail("contoso/E1"))
    env.run(now=NOW + dt.timedelta(hours=1))                  # a second pass after confirmation changes nothing
    assert states(env) == {"contoso/E1": "done"}
    assert (len(env.directory.writes), len(env.store.audit_trail("contoso/E1"))) == (writes, trail)


def test_only_an_open_step_can_be_confirmed(steps_env, capsys):
    env = steps_env
    env.csv(leaver("E1", "ann@contoso.com"))
    env.run()
    code, _, err = confirm(env, "step2", capsys)              # not reached yet
    assert code == 1 and "names 0 manual steps" in err
    code, _, err = confirm(env, "ad/disable_account", capsys)  # not a manual step
    assert code == 1 and "names 0 manual steps" in err
    assert journal(env)["practiceapp/transfer"]["status"] == "needs_human"


# -- config --------------------------------------------------------------------------------
def manual_block(**step) -> dict:
    return {"tenant": [{"id": "c", "provider": [{"type": "manual", "steps": [{"phase": "preserve", **step}]}]}]}


@pytest.mark.parametrize("text, message", [
    ("Hand over to {succesor}", r"steps\[0\]\.text: unknown field \{succesor\}"),
    ("Tell {first_name.__class__}", r"steps\[0\]\.text: \{first_name.__class__\}: a field is a plain name"),
    ("Call {0}", r"a field is a plain name"),
    ("Unclosed {first_name", r"not a valid template"),
])
def test_a_template_no_leaver_can_fill_is_a_config_error(text, message):
    with pytest.raises(ConfigError, match=message):
        config.parse(manual_block(text=text))


def test_a_phase_the_engine_does_not_run_is_a_config_error():
    with pytest.raises(ConfigError, match=r"steps\[0\]\.phase: must be one of"):
        config.parse({"tenant": [{"id": "c", "provider": [{"type": "manual",
                                                           "steps": [{"phase": "later", "text": "x"}]}]}]})


def test_fields_of_the_block_fill_templates_and_an_empty_value_says_so():
    tenant = config.parse({"tenant": [{"id": "c", "name": "Contoso Ltd", "provider": [{
        "type": "manual", "fields": {"renewal": "2027-03-31"},
        "steps": [{"phase": "reclaim", "text": "{company}: free {first_name}'s seat before {renewal}, ask {successor}"}]
    }]}]}).tenants[0]
    block = tenant.providers[0]
    provider = plugins.load("providers", "manual")(block.name, block.options, tenant, block.where)
    from connector.model import Termination
    text = provider.text("step1", Termination("c", "E1", "a@c.com", "Ann"))
    assert text == "manual: Contoso Ltd: free Ann's seat before 2027-03-31, ask [successor unknown]"


def test_a_held_person_is_not_released_by_confirming_a_step(steps_env, capsys):
    env = steps_env
    env.csv(leaver("E9", "svc-backup@contoso.com"))          # a protected account: every provider holds
    env.run()
    assert "held for the whole person" in journal(env, "contoso/E9")["practiceapp/transfer"]["reason"]
    code, _, err = confirm(env, "transfer", capsys, tid="contoso/E9")
    assert code == 1 and "only an open step is confirmed" in err
    assert journal(env, "contoso/E9")["practiceapp/transfer"]["status"] == "needs_human"


def test_an_open_step_does_not_stop_another_system_from_being_retried(steps_env):
    """The licence removal failed once while the hand-over waits for a person: the next pass still retries it."""
    from connector.errors import RetryableError
    env = steps_env
    env.csv(leaver("E1", "ann@contoso.com"))
    env.directory.fail["remove_groups"] = RetryableError("DC busy", delay=60)
    env.run()
    assert journal(env)["ad/remove_groups"]["status"] == "failed"
    env.run(now=NOW + dt.timedelta(minutes=5))
    assert journal(env)["ad/remove_groups"]["status"] == "changed"
    assert journal(env)["practiceapp/transfer"]["status"] == "needs_human"
    assert states(env) == {"contoso/E1": "needs_human"}
