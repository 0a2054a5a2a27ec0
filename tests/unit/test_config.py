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

[[tenant.provider]]
type = "fake"
"""

PSA = """[psa]
type = "connectwise"
url = "https://na.myconnectwise.net/v4_6_release/apis/3.0"
company = "msp"
public_key = "env:CW_PUBLIC"
private_key = "env:CW_PRIVATE"
client_id = "env:CW_CLIENT_ID"
"""

AD = """
[[tenant.provider]]
type = "active_directory"
url = "ldaps://dc1.contoso.local"
bind_user = "svc@contoso.local"
bind_password = "env:AD_PW"
disabled_ou = "OU=Leavers,DC=contoso,DC=local"
"""

WEBHOOK_TENANT = """
[[tenant]]
id = "{id}"
{extra}
[[tenant.source]]
type = "webhook"

[[tenant.provider]]
type = "fake"
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


def webhook_tenant(id, extra=""):
    return WEBHOOK_TENANT.replace("{id}", id).replace("{extra}", extra)


def test_defaults_are_filled_and_typed(tmp_path):
    cfg = load_text(tmp_path, base())
    t = cfg.tenants[0]
    assert isinstance(t.policy.revoke_at, dt.time) and t.policy.revoke_at == dt.time(17, 0)
    assert (t.policy.mailbox, t.policy.remove_groups, t.policy.hard_delete, t.policy.block_group) == \
        ("shared", True, False, "")
    assert t.policy.forward_domains == [] and t.billing_basis == "assigned" and t.webhook_secret is None
    assert (t.max_terminations_per_run, t.max_terminations_per_day) == (10, 25)
    assert (cfg.connector.poll_interval, cfg.connector.lease_seconds, cfg.connector.workers) == (300.0, 60, 4)
    assert cfg.connector.audit_key is None and cfg.webhook is None and cfg.psa is None
    assert t.name == "contoso" and t.sources[0].name == "csv" and t.sources[0].options.path == "/srv/hr/*.csv"
    assert (t.providers[0].type, t.providers[0].name, t.providers[0].where) == ("fake", "fake", "tenant[0].provider[0]")


def test_values_are_converted(tmp_path):
    cfg = load_text(tmp_path, '[connector]\npoll_interval = "2h"\naudit_key = "file:/etc/k"\nworkers = 8\n' + base(
        '[tenant.policy]\nrevoke_at = "09:05"\nforward_domains = ["Partner.Example"]\nsuccessor = "a@contoso.com"\n'))
    t = cfg.tenants[0]
    assert cfg.connector.poll_interval == 7200.0 and cfg.connector.workers == 8
    assert cfg.connector.audit_key.ref == "file:/etc/k" and cfg.connector.audit_key.where == "connector.audit_key"
    assert t.policy.revoke_at == dt.time(9, 5) and t.policy.forward_domains == ["partner.example"]
    assert t.policy.successor == "a@contoso.com"


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
    ("[connector]\nlease_seconds = 0\n" + base(), "connector.lease_seconds"),
    ("[webhook]\nsecret = 'hunter22'\n" + base(), "webhook.secret"),
    (base("[tenant.policy]\nforward_to = 'someone'\n"), "tenant[0].policy.forward_to"),
    (base("billing_basis = 'invoiced'\n"), "tenant[0].billing_basis"),
    (base("[tenant.billing]\nSPE_E3 = 9101\n"), "tenant[0].psa_agreement_id"),
    (base("psa_company_id = 250\n"), "tenant[0].psa_company_id"),           # no [psa] holds that company
    (PSA + base("psa_agreement_id = 4123\n[tenant.billing]\nSPE_E3 = 9101\n"), "tenant[0].psa_company_id"),
    (base() + "[[tenant.provider]]\ntype = 'fake'\n", "tenant[0].provider[1].name"),
    ("", "tenant"),
])
def test_bad_values_name_the_key_path_and_file(tmp_path, text, where):
    message = error_of(tmp_path, text)
    assert message.startswith(str(tmp_path / "c.toml") + ": " + where + ":"), message


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('disabled_ou = "OU=Leavers,DC=contoso,DC=local"', "disabled_ou = 7"),
     "tenant[0].provider[1].disabled_ou: expected a string, got int"),
    (lambda t: t + "colour = 'red'\n", "tenant[0].provider[1].colour: unknown key (known keys: base_dn, bind_password, "
     "bind_user, ca_file, deleted_ou, disabled_ou, name, page_size, start_tls, timeout, type, url)"),
    (lambda t: t.replace('disabled_ou = "OU=Leavers,DC=contoso,DC=local"', ""),
     "tenant[0].provider[1].disabled_ou: required key is missing"),
    (lambda t: t.replace('"env:AD_PW"', '"Pa55word-in-the-file"'),
     "tenant[0].provider[1].bind_password: expected a secret reference: env:NAME, file:/path or credential:NAME"),
    (lambda t: t + "page_size = 0\n",
     "tenant[0].provider[1].page_size: must be 1 or more"),
])
def test_plugin_errors_read_file_tenant_provider_key_what(tmp_path, edit, message):
    got = error_of(tmp_path, edit(base() + AD))
    assert got.startswith(f"{tmp_path / 'c.toml'}: {message}"), got
    assert "Pa55word-in-the-file" not in got


def test_a_secret_never_shows_in_repr_or_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("AD_PW", "S3cret-in-env")
    cfg = load_text(tmp_path, base() + AD)
    secret = cfg.tenants[0].providers[1].options.bind_password
    assert secret.where == "tenant[0].provider[1].bind_password" and secret.reveal() == "S3cret-in-env"
    assert "S3cret-in-env" not in repr(cfg) + str(cfg) and "env:AD_PW" in repr(cfg)
    for bad in ('"S3cret-in-env"', '["S3cret-in-env"]'):
        assert "S3cret-in-env" not in error_of(tmp_path, (base() + AD).replace('"env:AD_PW"', bad))


def test_a_tenant_without_a_provider_is_refused(tmp_path):
    text = base().replace('[[tenant.provider]]\ntype = "fake"\n', "")
    assert error_of(tmp_path, text) == \
        f"{tmp_path / 'c.toml'}: tenant[0].provider: a tenant needs at least one [[tenant.provider]]"


@pytest.mark.parametrize("url, accepted", [
    ("https://contoso.bamboohr.com", True), ("http://127.0.0.1:8443", True), ("http://127.9.9.9", True),
    ("http://localhost:8080/x", True), ("http://[::1]:8443", True),
    ("http://example.com", False), ("http://127.0.0.1.example.com", False), ("ftp://example.com", False),
    ("contoso.bamboohr.com", False),
])
def test_http_sources_and_providers_need_https_except_on_loopback(tmp_path, url, accepted):
    text = base() + f"[[tenant.source]]\ntype = 'bamboohr'\nbase_url = '{url}'\napi_key = 'env:K'\n"
    if accepted:
        assert load_text(tmp_path, text).tenants[0].sources[1].options.base_url == url
    else:
        assert error_of(tmp_path, text).startswith(f"{tmp_path / 'c.toml'}: tenant[0].source[1].base_url: ")


def test_graph_urls_and_the_psa_url_are_https_too(tmp_path):
    entra = base() + ("[[tenant.provider]]\ntype = 'entra'\ntenant_id = 't'\nclient_id = 'c'\n"
                      "client_secret = 'env:S'\ngraph_url = 'http://graph.example.com'\n")
    assert "tenant[0].provider[1].graph_url: must be https://" in error_of(tmp_path, entra)
    psa = ("[psa]\ntype = 'connectwise'\nurl = 'http://cw.example.com'\ncompany = 'msp'\n"
           "public_key = 'env:A'\nprivate_key = 'env:B'\nclient_id = 'env:C'\n") + base()
    assert "psa.url: must be https://" in error_of(tmp_path, psa)


def test_microsoft365_needs_exactly_one_credential_offline(tmp_path):
    block = "[[tenant.provider]]\ntype = 'entra'\ntenant_id = 't'\nclient_id = 'c'\n"
    assert "tenant[0].provider[1]: give client_secret, or certificate_path" in error_of(tmp_path, base() + block)
    assert "tenant[0].provider[1].thumbprint: certificate_path needs thumbprint" in \
        error_of(tmp_path, base() + block + "certificate_path = '/etc/k.pem'\n")


def test_one_webhook_tenant_may_use_the_shared_secret(tmp_path):
    cfg = load_text(tmp_path, "[webhook]\nsecret = 'env:HOOK'\n" + webhook_tenant("contoso") + base().replace(
        'id = "contoso"', 'id = "fabrikam"'))
    assert cfg.webhook.secret.where == "webhook.secret" and cfg.tenants[0].webhook_secret is None


def test_a_webhook_tenant_needs_some_secret(tmp_path):
    assert error_of(tmp_path, webhook_tenant("contoso")).endswith(
        "tenant[0].webhook_secret: this tenant takes webhooks: give it webhook_secret (or [webhook] secret)")


def test_two_webhook_tenants_each_need_their_own_secret(tmp_path):
    shared = "[webhook]\nsecret = 'env:HOOK'\n"
    text = shared + webhook_tenant("contoso", "webhook_secret = 'env:A'") + webhook_tenant("fabrikam")
    assert error_of(tmp_path, text) == (f"{tmp_path / 'c.toml'}: tenant[1].webhook_secret: 2 tenants take webhooks "
                                        "(contoso, fabrikam): each needs its own webhook_secret")
    both = shared + webhook_tenant("contoso", "webhook_secret = 'env:A'") + webhook_tenant(
        "fabrikam", "webhook_secret = 'env:B'")
    assert [t.webhook_secret.where for t in load_text(tmp_path, both).tenants] == \
        ["tenant[0].webhook_secret", "tenant[1].webhook_secret"]


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


def test_check_catches_rules_across_keys_offline(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(base() + AD.replace("ldaps://", "ldap://"))
    assert main(["--config", str(tmp_path / "c.toml"), "check"]) == 1
    assert "tenant[0].provider[1].url: ldap:// without start_tls" in capsys.readouterr().err


DAEMON_KEYS = """
[connector]
retention_days = 365
shutdown_grace = "45s"

[webhook]
trusted_proxies = ["127.0.0.1", "10.0.0.0/8", "::1"]
allow_from = ["192.0.2.0/24", "2001:db8::/32"]

[alerts]
psa_ticket = false
provider_failing_after = "2h"

[[alerts.target]]
type = "teams"
url = "credential:teams-webhook"

[[alerts.target]]
type = "slack"
url = "https://hooks.slack.example/services/T0/B0/x"
"""


def test_the_daemon_keys_are_typed(tmp_path):
    cfg = load_text(tmp_path, DAEMON_KEYS + base())
    assert (cfg.connector.retention_days, cfg.connector.shutdown_grace) == (365, 45.0)
    assert [str(n) for n in cfg.webhook.trusted_proxies] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    assert [str(n) for n in cfg.webhook.allow_from] == ["192.0.2.0/24", "2001:db8::/32"]
    assert (cfg.alerts.psa_ticket, cfg.alerts.provider_failing_after) == (False, 7200.0)
    teams, slack = cfg.alerts.targets
    assert teams.type == "teams" and isinstance(teams.url, Secret) and teams.url.where == "alerts.target[0].url"
    assert slack.endpoint() == "https://hooks.slack.example/services/T0/B0/x"
    assert mask_secrets("posted to https://hooks.slack.example/services/T0/B0/x") == "posted to ***"


def test_the_daemon_keys_default_to_keep_everything_and_believe_no_proxy(tmp_path):
    cfg = load_text(tmp_path, "[webhook]\n" + base())
    assert (cfg.connector.retention_days, cfg.connector.shutdown_grace) == (0, 30.0)
    assert cfg.webhook.trusted_proxies == [] and cfg.webhook.allow_from == []
    assert cfg.alerts.targets == [] and cfg.alerts.psa_ticket is True and cfg.alerts.provider_failing_after == 1800.0


def test_an_alert_url_from_a_credential_is_checked_when_resolved(tmp_path, monkeypatch):
    (tmp_path / "teams-webhook").write_text("https://contoso.webhook.office.example/hook/1\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = load_text(tmp_path, DAEMON_KEYS + base())
    assert cfg.alerts.targets[0].endpoint() == "https://contoso.webhook.office.example/hook/1"
    (tmp_path / "teams-webhook").write_text("http://attacker.example/\n")
    with pytest.raises(ConfigError, match="alerts.target.0..url: credential:teams-webhook does not hold a usable URL"):
        cfg.alerts.targets[0].endpoint()


@pytest.mark.parametrize("text, where", [
    ('[webhook]\ntrusted_proxies = ["10.0.0.0/33"]\n', "webhook.trusted_proxies[0]"),
    ('[webhook]\nallow_from = ["everyone"]\n', "webhook.allow_from[0]"),
    ('[webhook]\nallow_from = "10.0.0.0/8"\n', "webhook.allow_from"),
    ('[connector]\nretention_days = -1\n', "connector.retention_days"),
    ('[connector]\nshutdown_grace = "soon"\n', "connector.shutdown_grace"),
    ('[alerts]\nprovider_failing_after = "forever"\n', "alerts.provider_failing_after"),
    ('[[alerts.target]]\ntype = "pager"\nurl = "https://x.example/"\n', "alerts.target[0].type"),
    ('[[alerts.target]]\ntype = "slack"\nurl = "http://hooks.example/"\n', "alerts.target[0].url"),
    ('[[alerts.target]]\ntype = "slack"\n', "alerts.target[0].url"),
])
def test_bad_daemon_keys_name_their_path(tmp_path, text, where):
    message = error_of(tmp_path, text + base())
    assert message.startswith(str(tmp_path / "c.toml") + ": " + where + ":"), message


def test_the_mask_list_is_bounded_and_keeps_what_is_in_use(monkeypatch):
    monkeypatch.setattr(Secret, "_revealed", type(Secret._revealed)())
    monkeypatch.setattr(Secret, "REMEMBERED", 50)
    monkeypatch.setenv("IN_USE", "the-current-secret")
    in_use = Secret("env:IN_USE")
    for i in range(150):
        monkeypatch.setenv("ROTATING", f"rotated-value-{i:05d}")
        Secret("env:ROTATING").reveal()
        if i % 10 == 0:
            in_use.reveal()
    assert len(Secret._revealed) == 50
    assert mask_secrets("the-current-secret rotated-value-00149") == "*** ***"
    assert "rotated-value-00000" in mask_secrets("rotated-value-00000")     # long gone, no longer masked


def test_a_rotated_file_secret_is_read_afresh(tmp_path):
    path = tmp_path / "s"
    path.write_text("first-value\n")
    secret = Secret(f"file:{path}")
    assert secret.reveal() == "first-value"
    path.write_text("second-value\n")
    assert secret.reveal() == "second-value"
    assert mask_secrets("first-value second-value") == "*** ***"


PAX8 = """[distributor]
type = "pax8"
client_id = "pax8-client"
client_secret = "env:PAX8_SECRET"
"""
SUB = "05c587df-9e7d-4ef9-8218-0262198e36c9"


def test_the_distributor_and_licence_terms_are_typed(tmp_path):
    cfg = load_text(tmp_path, PAX8 + base(f'pax8_company_id = "c0ffee00-0000-4000-8000-000000000001"\n'
                                          f'billing_basis = "subscribed"\n'
                                          f'pax8_subscriptions = {{ SPE_E3 = "{SUB}" }}\n'
                                          '[tenant.licences]\nEMS = { term = "annual", renews = 2027-03-01, price = 12 }\n'
                                          'SPE_E3 = { term = "monthly" }\n'))
    assert (cfg.distributor.base_url, cfg.distributor.audience) == ("https://api.pax8.com/v1", "https://api.pax8.com")
    tenant = cfg.tenants[0]
    assert tenant.pax8_subscriptions == {"SPE_E3": SUB} and tenant.billing_basis == "subscribed"
    assert (tenant.licences["EMS"].renews, tenant.licences["EMS"].price) == (dt.date(2027, 3, 1), 12.0)
    assert tenant.licences["SPE_E3"].renews is None and tenant.licences["SPE_E3"].price is None


@pytest.mark.parametrize("head, tenant, where, what", [
    ("", f'pax8_company_id = "{SUB}"\n', "tenant[0].pax8_company_id", "needs a [distributor] section"),
    (PAX8, 'pax8_company_id = "contoso"\n', "tenant[0].pax8_company_id", "not a Pax8 company id"),
    (PAX8, f'pax8_subscriptions = {{ SPE_E3 = "{SUB}" }}\n', "tenant[0].pax8_company_id", "needs pax8_company_id"),
    (PAX8, f'pax8_company_id = "{SUB}"\npax8_subscriptions = {{ SPE_E3 = "9101" }}\n',
     "tenant[0].pax8_subscriptions.SPE_E3", "not a Pax8 subscription id"),
    ("", 'billing_basis = "subscribed"\n', "tenant[0].billing_basis", "needs [tenant.pax8_subscriptions]"),
    ("", 'licences = { EMS = { term = "annual" } }\n', "tenant[0].licences.EMS.renews", "needs the date it renews"),
    ("", 'licences = { EMS = { term = "monthly", renews = "2027-03-01" } }\n', "tenant[0].licences.EMS.renews",
     "give no date"),
    ("", 'licences = { EMS = { term = "annual", renews = "1 March" } }\n', "tenant[0].licences.EMS.renews",
     "not a date"),
    ("", 'licences = { EMS = { term = "weekly" } }\n', "tenant[0].licences.EMS.term", "must be"),
    ("", 'licences = { EMS = { term = "monthly", price = -1 } }\n', "tenant[0].licences.EMS.price", "0.0 or more"),
    (PAX8.replace('client_secret = "env:PAX8_SECRET"', 'client_secret = "hunter2-plain"'), "",
     "distributor.client_secret", "expected a secret reference"),
    (PAX8.replace('type = "pax8"', 'type = "ingram"'), "", "distributor.type", "must be 'pax8'"),
])
def test_bad_distributor_keys_name_their_path(tmp_path, head, tenant, where, what):
    message = error_of(tmp_path, head + base(tenant))
    assert message.startswith(f"{tmp_path / 'c.toml'}: {where}:") and what in message, message
    assert "hunter2" not in message
