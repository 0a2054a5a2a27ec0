"""Config validation: every error names the file and the key path."""
import datetime as dt
import textwrap

import pytest

from connector import config as configmod
from connector.cli import main
from connector.config import Secret, mask_secrets
from connector.errors import ConfigError

BASE = """
[[tenant]]
id = "contoso"
timezone = "America/Chicago"
{tenant}
[[tenant.source]]
type = "csv"
path = "/srv/hr/*.csv"
"""


def base(tenant=""):
    return BASE.replace("{tenant}", tenant)


def load_text(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(textwrap.dedent(text))
    return configmod.load(path)


def error_of(tmp_path, text) -> str:
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text)
    return str(e.value)


def test_defaults_are_filled(tmp_path):
    cfg = load_text(tmp_path, base())
    t = cfg.tenants[0]
    assert t.policy["revoke_at"] == dt.time(17, 0)
    assert (t.max_terminations_per_run, t.max_terminations_per_day) == (10, 25)
    assert cfg.connector["poll_interval"] == 300
    assert t.sources[0].name == "csv"


@pytest.mark.parametrize("text, where", [
    (base("[tenant.policy]\ncolour = 1\n"), "tenant[0].policy.colour"),
    (base("[tenant.policy]\nrevoke_at = '25:00'\n"), "tenant[0].policy.revoke_at"),
    (base("[tenant.policy]\nmailbox = 'archive'\n"), "tenant[0].policy.mailbox"),
    (base().replace('path = "/srv/hr/*.csv"', 'path = 3'), "tenant[0].source[0].path"),
    (base().replace('type = "csv"', 'type = "paper"'), "tenant[0].source[0].type"),
    (base().replace('"America/Chicago"', '"Mars/Olympus"'), "tenant[0].timezone"),
    (base("max_terminations_per_run = 0"), "tenant[0].max_terminations_per_run"),
    (base() + "[[tenant.source]]\ntype = 'csv'\npath = '/x'\nbogus = 1\n", "tenant[0].source[1].bogus"),
    ("[connector]\npoll = '5m'\n" + base(), "connector.poll"),
    ("[webhook]\nsecret = 'hunter22'\n" + base(), "webhook.secret"),
    ("", "tenant"),
])
def test_bad_values_name_the_key_path_and_file(tmp_path, text, where):
    message = error_of(tmp_path, text)
    assert message.startswith(str(tmp_path / "c.toml") + ": " + where + ":"), message


def test_broken_toml_names_the_file_and_line(tmp_path):
    message = error_of(tmp_path, "[[tenant]\nid = 1")
    assert "c.toml" in message and "line 1" in message


def test_secret_references_resolve_lazily_and_never_print(tmp_path, monkeypatch):
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "ad").write_text("S3cret-from-systemd\n")
    (tmp_path / "pw").write_text("S3cret-from-file")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    monkeypatch.setenv("AD_PW", "S3cret-from-env")
    for ref, value in (("credential:ad", "S3cret-from-systemd"), (f"file:{tmp_path}/pw", "S3cret-from-file"),
                       ("env:AD_PW", "S3cret-from-env")):
        secret = Secret(ref, "x.bind_password")
        assert value not in repr(secret) and value not in str(secret)
        assert secret.reveal() == value
        assert mask_secrets(f"bind with {value} failed") == "bind with *** failed"


def test_a_missing_secret_names_the_key(monkeypatch):
    monkeypatch.delenv("NOPE", raising=False)
    with pytest.raises(ConfigError) as e:
        Secret("env:NOPE", "tenant[0].provider[0].bind_password").reveal()
    assert str(e.value) == "tenant[0].provider[0].bind_password: environment variable NOPE is not set"


def test_the_example_config_passes_check(capsys):
    assert main(["--config", "config/example.toml", "check"]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_reports_one_line_and_exit_1(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(base("bogus = true"))
    assert main(["--config", str(tmp_path / "c.toml"), "check"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("offboard: error: ") and "tenant[0].bogus" in err


def test_check_builds_every_plugin_so_rules_across_keys_are_caught(tmp_path, capsys):
    text = base() + """
[[tenant.provider]]
type = "active_directory"
url = "ldap://dc1.contoso.local"
bind_user = "svc@contoso.local"
bind_password = "env:AD_PW"
disabled_ou = "OU=Leavers,DC=contoso,DC=local"
"""
    (tmp_path / "c.toml").write_text(text)
    assert main(["--config", str(tmp_path / "c.toml"), "check"]) == 1
    assert "start_tls" in capsys.readouterr().err
