"""RingCentral against the sandbox's stateful account (connector/sandbox/ringcentral.py).

Every request is checked against the vendored 1.0.48 spec, the v2 phone-numbers excerpt or
the comm-handling excerpt (a violation fails the test at teardown). The shared provider
contract runs in both call-handling modes; the engine test proves the "number goes dead"
rule from the sandbox's recorded order of writes. The admin tests put Microsoft 365 in the
same sandbox: an admin in RingCentral alone is held in every system of the tenant.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json

import pytest

from connector import config, plugins
from connector.errors import ConfigError, NotYet, RetryableError
from connector.model import ActionContext, PlannedAction, Termination
from connector.providers.microsoft365 import auth
from connector.providers.ringcentral import client
from connector.reconcile import reconcile
from connector.sandbox.microsoft365 import VENDOR_URLS, Microsoft365
from connector.sandbox.ringcentral import VENDOR_URL, RingCentral
from connector.sandbox.web import Sandbox
from connector.store import Store
from tests.contract.provider_contract import ProviderContract, run_action
from tests.sandboxes import SECRET as M365_SECRET, SECRET_ENV as M365_SECRET_ENV, add_leaver, seed

SUCCESSOR = "morgan.manager@contoso.com"
SECRET, JWT = "rc-Secret-9f2Kq.x", "eyJhbGciOiJSUzI1NiJ9.sandbox-jwt-7Yt3"
SERIAL = itertools.count(1)
NOW = dt.datetime(2026, 11, 23, 18, 0, tzinfo=dt.timezone.utc)
TODAY = dt.datetime.now(dt.timezone.utc).date()          # delete_after_days counts on the real clock
HOURS = (1.0, 30.0, 24.0 * 40)                 # voicemail ages: one inside message-store's default 24 h, two outside
ROOMY = {"Auth": 5, "Light": 1000, "Medium": 1000, "Heavy": 1000}   # the groups' real limits are tested on their own


@pytest.fixture(params=["answering-rule", "comm-handling"])
def call_handling(request) -> str:
    return request.param


@pytest.fixture
def rc(reach, monkeypatch, call_handling) -> RingCentral:
    monkeypatch.setenv("RC_SECRET", SECRET)
    monkeypatch.setenv("RC_JWT", JWT)
    client._tokens.clear()
    account = RingCentral(client_secret=SECRET, jwt=JWT, new_call_handling=call_handling == "comm-handling",
                          limits=ROOMY)
    account.add_extension(SUCCESSOR, "Morgan", "Manager", numbers=("+13125550100",))
    account.url = reach(Sandbox(account), {"ringcentral": VENDOR_URL})["ringcentral"]
    return account


def rc_block(account: RingCentral, archive, **extra) -> dict:
    return {"type": "ringcentral", "server_url": account.url, "client_id": account.client_id,
            "client_secret": "env:RC_SECRET", "jwt": "env:RC_JWT", "voicemail_archive": str(archive), **extra}


def build(account, archive, policy=None, **extra):
    tenant = config.parse({"tenant": [{"id": "contoso", "policy": policy or {},
                                       "provider": [rc_block(account, archive, **extra)]}]}).tenants[0]
    pc = tenant.providers[0]
    return plugins.load("providers", pc.type)(pc.name, pc.options, tenant, pc.where)


@pytest.fixture
def provider(rc, tmp_path):
    return build(rc, tmp_path / "voicemail")


def new_leaver(account: RingCentral, numbers: int = 2, kind: str = "voluntary",
               roles: tuple[str, ...] = ("Standard",)) -> Termination:
    n = next(SERIAL)
    email = f"leaver{n}.person@contoso.com"
    account.add_extension(email, "Leaver", f"Person{n}", voicemail_ages=HOURS, roles=roles,
                          numbers=tuple(f"+1312555{n:02d}{i:02d}" for i in range(numbers)))
    return Termination("contoso", f"E{n}", email, "Leaver", f"Person{n}", kind=kind,
                       termination_date=dt.date(2026, 11, 23), successor=SUCCESSOR)


@pytest.fixture
def leaver(rc, request) -> Termination:
    """A fresh leaver; the one whose extension is disabled has had its numbers moved already (or it must refuse)."""
    params = getattr(request.node, "callspec", None)
    action = params.params.get("action_name") if params else None
    return new_leaver(rc, numbers=0 if action == "disable_extension" else 2)


@pytest.fixture
def snapshot(rc, tmp_path):
    def read(termination: Termination) -> dict:
        ext = rc.by_email(termination.email)
        folder = tmp_path / "voicemail" / ext.id
        return {"status": ext.status, "statusInfo": dict(ext.status_info), "numbers": rc.numbers_of(ext.id),
                "forwarded_to": rc.forward_target(ext), "name": (ext.first, ext.last, ext.email),
                "archive": sorted(p.name for p in folder.iterdir()) if folder.exists() else []}
    return read


@pytest.fixture
def secrets():
    return [SECRET, JWT]


class TestRingCentralContract(ProviderContract):
    action_names = ["forward_calls", "move_numbers", "archive_voicemail", "disable_extension"]


def apply(provider, termination, name, dry_run=False, **params):
    provider.prepare([termination])
    subject = provider.match(termination).subject
    action = PlannedAction(provider.name, name, provider.actions[name], "", tuple(params.items()))
    return provider.apply(action, ActionContext(termination, subject, dry_run=dry_run,
                                                local_date=termination.termination_date))


def three_passes(provider, termination, name, snapshot, **params):
    """Dry run changes nothing, the first run changes, the second is unchanged; -> the first run's result."""
    untouched = snapshot(termination)
    assert apply(provider, termination, name, dry_run=True, **params).outcome == "planned"
    assert snapshot(termination) == untouched
    first = apply(provider, termination, name, **params)
    assert first.outcome == "changed" and snapshot(termination) != untouched
    assert apply(provider, termination, name, **params).outcome == "unchanged"
    return first


def test_calls_and_numbers_reach_the_successor(rc, provider, call_handling):
    leaver = new_leaver(rc)
    ext, successor = rc.by_email(leaver.email), rc.by_email(SUCCESSOR)
    for name in ("forward_calls", "move_numbers"):
        assert run_action(provider, leaver, name).outcome == "changed"
    assert rc.numbers_of(ext.id) == [] and len(rc.numbers_of(successor.id)) == 3
    assert rc.forward_target(ext) == successor.id
    legacy = [p for _, _, p in rc.calls if "answering-rule" in p]
    assert bool(legacy) == (call_handling == "answering-rule"), "the call-handling API that applies, and only it"


def test_voicemail_older_than_24_hours_is_archived_with_its_audio(rc, provider, tmp_path):
    leaver = new_leaver(rc)
    ext = rc.by_email(leaver.email)
    result = run_action(provider, leaver, "archive_voicemail")
    assert result.outcome == "changed" and len(result.before["unarchived"]) == len(HOURS)
    folder = tmp_path / "voicemail" / ext.id
    for message in ext.voicemail:
        metadata = json.loads((folder / f"{message.id}.json").read_text())
        assert metadata["from"]["phoneNumber"] == message.caller
        assert (folder / f"{message.id}-{message.id}1.mp3").read_bytes() == message.audio
    assert (folder.stat().st_mode & 0o777) == 0o700


def test_disabling_refuses_while_a_direct_number_is_on_the_extension(rc, provider):
    leaver = new_leaver(rc)
    result = run_action(provider, leaver, "disable_extension")
    assert result.outcome == "needs_human" and "dead" in result.reason
    assert rc.by_email(leaver.email).status == "Enabled"


def test_disable_says_why_and_never_renames(rc, provider):
    leaver = new_leaver(rc, numbers=0, kind="immediate")
    assert run_action(provider, leaver, "disable_extension").outcome == "changed"
    ext = rc.by_email(leaver.email)
    assert ext.status_info["reason"] == "Involuntarily" and "contoso/" in ext.status_info["comment"]
    assert (ext.first, ext.last, ext.email) == ("Leaver", leaver.last_name, leaver.email)
    assert [w.op for w in rc.writes.entries("ringcentral")] == ["PUT extension status,statusInfo"]


def test_no_successor_extension_needs_a_human(rc, provider):
    leaver = new_leaver(rc)
    orphan = Termination(leaver.tenant, leaver.employee_id, leaver.email, successor="nobody@contoso.com")
    result = run_action(provider, orphan, "move_numbers")
    assert result.outcome == "needs_human" and "nobody@contoso.com" in result.reason
    assert len(rc.numbers_of(rc.by_email(leaver.email).id)) == 2


def test_the_configured_successor_wins_over_the_manager(rc, tmp_path):
    other = rc.add_extension("deputy@contoso.com", "Dee", "Puty")
    provider = build(rc, tmp_path / "voicemail", successor="deputy@contoso.com")
    leaver = new_leaver(rc)
    assert run_action(provider, leaver, "forward_calls").outcome == "changed"
    assert rc.forward_target(rc.by_email(leaver.email)) == other.id


def test_restore_puts_back_the_forwarding_the_numbers_and_the_extension(rc, provider, snapshot):
    leaver = new_leaver(rc)
    before = snapshot(leaver)
    journal = {name: run_action(provider, leaver, name).before for name in ("forward_calls", "move_numbers")}
    journal["disable_extension"] = run_action(provider, leaver, "disable_extension").before
    for done in ("disable_extension", "move_numbers", "forward_calls"):          # reverse phase order
        three_passes(provider, leaver, provider.undo[done], snapshot, before=journal[done], action=done)
    assert snapshot(leaver) == {**before, "statusInfo": {}}


def test_retain_deletes_the_extension_and_keeps_its_numbers_in_inventory(rc, tmp_path):
    provider = build(rc, tmp_path / "voicemail", policy={"delete_after_days": 3})
    leaver = dataclasses.replace(new_leaver(rc), termination_date=TODAY - dt.timedelta(days=5))
    provider.prepare([leaver])
    subject = provider.match(leaver).subject
    assert "delete_extension" in [a.action for a in provider.plan(subject, leaver)]
    numbers = rc.numbers_of(subject.native_id)
    action = provider.planned("delete_extension")
    ctx = ActionContext(leaver, subject)
    assert provider.apply(action, ActionContext(leaver, subject, dry_run=True)).outcome == "planned"
    assert subject.native_id in rc.extensions
    assert provider.apply(action, ctx).outcome == "changed"
    assert subject.native_id not in rc.extensions
    kept = sorted(n["phoneNumber"] for n in rc.numbers.values() if n["usageType"] == "Inventory")
    assert kept == numbers
    assert provider.apply(action, ctx).outcome == "unchanged"


def test_retain_waits_for_delete_after_days(rc, tmp_path):
    provider = build(rc, tmp_path / "voicemail", policy={"delete_after_days": 30})
    leaver = dataclasses.replace(new_leaver(rc), termination_date=TODAY - dt.timedelta(days=5))
    provider.prepare([leaver])
    subject = provider.match(leaver).subject
    with pytest.raises(NotYet) as caught:
        provider.apply(provider.planned("delete_extension"), ActionContext(leaver, subject))
    assert 24 * 86400 < caught.value.delay <= 25 * 86400 and subject.native_id in rc.extensions


def test_a_long_retry_after_parks_the_action(rc, provider):
    leaver = new_leaver(rc)
    provider.prepare([leaver])
    subject = provider.match(leaver).subject
    rc.knobs.throttle_next, rc.knobs.retry_after = 1, 120
    with pytest.raises(RetryableError) as caught:
        provider.apply(provider.planned("forward_calls"), ActionContext(leaver, subject))
    assert 119 <= caught.value.delay <= 120 and "429" in caught.value.message


def test_a_short_retry_after_is_waited_for(rc, provider):
    rc.knobs.throttle_next, rc.knobs.retry_after = 1, 1
    provider.check_online()
    assert rc.knobs.throttle_next == 0


def test_a_spent_rate_limit_group_is_not_asked_again_until_it_refills(reach, monkeypatch, tmp_path):
    monkeypatch.setenv("RC_SECRET", SECRET)
    monkeypatch.setenv("RC_JWT", JWT)
    client._tokens.clear()
    account = RingCentral(client_secret=SECRET, jwt=JWT, limits={"Auth": 5, "Light": 50, "Medium": 2, "Heavy": 10})
    account.url = reach(Sandbox(account), {"ringcentral": VENDOR_URL})["ringcentral"]
    provider = build(account, tmp_path)
    provider.check_online()
    provider.check_online()                    # answered with X-Rate-Limit-Remaining: 0
    asked = len(account.calls)
    with pytest.raises(RetryableError) as caught:
        provider.check_online()
    assert "Medium" in caught.value.message and caught.value.delay > 50     # listExtensions: Medium, as the spec says
    assert len(account.calls) == asked, "a spent group was asked again"


def test_the_token_is_cached_across_passes(rc, tmp_path):
    for _ in range(3):
        build(rc, tmp_path).check_online()
    assert rc.token_calls == 1


def test_a_refused_jwt_names_the_credential_and_never_its_value(rc, tmp_path, monkeypatch):
    monkeypatch.setenv("RC_JWT", "eyJhbGciOiJSUzI1NiJ9.revoked-one")
    with pytest.raises(ConfigError) as caught:
        build(rc, tmp_path).check_online()
    text = str(caught.value)
    assert "HTTP 400" in text and "tenant[0].provider[0].jwt = env:RC_JWT" in text and "invalid_grant" in text
    assert "revoked-one" not in text and SECRET not in text


def test_a_refused_client_secret_names_it(rc, tmp_path, monkeypatch):
    monkeypatch.setenv("RC_SECRET", "wrong-secret-value")
    with pytest.raises(ConfigError) as caught:
        build(rc, tmp_path).check_online()
    assert "refused client_id / client_secret (tenant[0].provider[0].client_secret = env:RC_SECRET)" in \
        str(caught.value) and "HTTP 401 invalid_client" in str(caught.value)
    assert "wrong-secret-value" not in str(caught.value)


def test_an_api_401_after_a_fresh_token_names_the_jwt(rc, tmp_path, monkeypatch):
    monkeypatch.setattr(rc, "authorized", lambda request: False)     # the JWT's user lost its rights
    with pytest.raises(ConfigError) as caught:
        build(rc, tmp_path).check_online()
    assert "HTTP 401" in str(caught.value) and "tenant[0].provider[0].jwt" in str(caught.value)
    assert rc.token_calls == 2 and JWT not in str(caught.value)


def test_a_revoked_access_token_is_replaced_once(rc, tmp_path):
    provider = build(rc, tmp_path)
    provider.check_online()
    rc.tokens.clear()                              # revoked at RingCentral's side
    provider.check_online()
    assert rc.token_calls == 2


@pytest.mark.parametrize("sandbox_mode", ["responses", "https"])
def test_engine_moves_numbers_and_forwarding_before_disabling(rc, tmp_path, sandbox_mode):
    """The number-goes-dead rule, from the sandbox's recorded order of writes, through the real engine."""
    leaver = new_leaver(rc)
    ext, successor = rc.by_email(leaver.email), rc.by_email(SUCCESSOR)
    numbers = rc.numbers_of(ext.id)
    cfg = config.parse({"tenant": [{"id": "contoso", "policy": {"successor": SUCCESSOR},
                                    "provider": [rc_block(rc, tmp_path / "voicemail")]}]})
    store = Store.memory()
    report = reconcile(cfg, store, on_demand=[Termination("contoso", leaver.employee_id, leaver.email,
                                                          termination_date=leaver.termination_date)], now=NOW)
    assert report.exit_code == 0
    assert store.termination(f"contoso/{leaver.employee_id}")["state"] == "done"
    writes = [w.op.split(" ")[:2] for w in rc.writes.entries("ringcentral", ok=True)]
    disabled = writes.index(["PUT", "extension"])
    moved = [i for i, w in enumerate(writes) if w == ["PATCH", "phone-numbers"]]
    forwarded = [i for i, w in enumerate(writes) if w[1] in ("answering-rule", "comm-handling/state-rules")]
    assert len(moved) == len(numbers) and forwarded and max(moved + forwarded) < disabled
    assert ext.status == "Disabled" and all(rc.reaches(n) == successor.id for n in numbers)
    again = reconcile(cfg, store, on_demand=[Termination("contoso", leaver.employee_id, leaver.email,
                                                         termination_date=leaver.termination_date)], now=NOW)
    assert again.exit_code == 0 and len(rc.writes.entries("ringcentral")) == len(writes)


def test_numbers_never_moved_keep_the_extension_from_being_deleted(rc, provider):
    leaver = new_leaver(rc)
    provider.prepare([leaver])
    subject = provider.match(leaver).subject
    numbers = rc.numbers_of(subject.native_id)
    [anchor] = provider.anchors(subject, leaver)
    assert subject.native_id in anchor and all(n in anchor for n in numbers)
    run_action(provider, leaver, "forward_calls")
    run_action(provider, leaver, "move_numbers")
    assert provider.anchors(subject, leaver) == []


# -- admins are never touched -----------------------------------------------------------------------

@pytest.mark.parametrize("roles, reason", [
    (("Super Admin",), "holds RingCentral role Super Admin"),
    (("Standard", "Phone System Admin"), "holds RingCentral role Phone System Admin"),
    (("Users Admin", "Billing Admin"), "holds RingCentral role Users Admin, Billing Admin"),
    (("Office Administrator",), "holds RingCentral role Office Administrator"),
])
def test_an_admin_role_marks_the_match_an_admin(rc, provider, roles, reason):
    leaver, plain = new_leaver(rc, roles=roles), new_leaver(rc)
    provider.prepare([leaver, plain])
    admin = provider.match(leaver)
    assert admin.status == "matched" and admin.subject.is_admin and admin.subject.admin_reason == reason
    assert not provider.match(plain).subject.is_admin


@pytest.fixture
def cloud_and_phones(reach, monkeypatch) -> tuple[Microsoft365, RingCentral]:
    """Microsoft 365 and RingCentral mounted in one sandbox (over HTTPS a test has only one)."""
    monkeypatch.setenv("RC_SECRET", SECRET)
    monkeypatch.setenv("RC_JWT", JWT)
    monkeypatch.setenv(M365_SECRET_ENV, M365_SECRET)
    client._tokens.clear()
    auth.applications.clear()
    cloud = Microsoft365(secret=M365_SECRET)
    seed(cloud)
    phones = RingCentral(client_secret=SECRET, jwt=JWT, limits=ROOMY)
    phones.add_extension(SUCCESSOR, "Morgan", "Manager", numbers=("+13125550100",))
    sandbox = cloud.mount(Sandbox())
    sandbox.add(phones)
    urls = reach(sandbox, {**VENDOR_URLS, "ringcentral": VENDOR_URL})
    cloud.urls, phones.url = {name: urls[name] for name in VENDOR_URLS}, urls["ringcentral"]
    return cloud, phones


@pytest.mark.parametrize("sandbox_mode", ["responses", "https"])
def test_an_admin_only_in_ringcentral_is_held_in_every_system(cloud_and_phones, tmp_path, sandbox_mode):
    cloud, phones = cloud_and_phones
    n = next(SERIAL)
    leaver = add_leaver(cloud, n)                                 # a plain user in Microsoft 365
    ext = phones.add_extension(leaver.email, "Leaver", f"Person{n}", numbers=(f"+1312555{n:02d}00",),
                               voicemail_ages=HOURS, roles=("Super Admin",))
    cloud_before, phones_before = cloud.snapshot(leaver.email), phones.state([leaver.email])
    entra = {"type": "entra", **cloud.provider_block(f"env:{M365_SECRET_ENV}")}
    cfg = config.parse({"tenant": [{"id": "contoso", "policy": {"successor": SUCCESSOR},
                                    "provider": [entra, rc_block(phones, tmp_path / "voicemail")]}]})
    store = Store.memory()
    report = reconcile(cfg, store, on_demand=[leaver], now=NOW)
    assert report.exit_code == 2
    row = store.termination(f"contoso/{leaver.employee_id}")
    assert row["state"] == "needs_human"
    assert "holds admin rights in ringcentral (holds RingCentral role Super Admin)" in row["reason"]
    journal = {f"{a['provider']}/{a['action']}": a["status"] for a in store.actions(row["id"])}
    planned = {name: status for name, status in journal.items() if not name.endswith("/match_account")}
    assert {"entra/block_sign_in", "ringcentral/disable_extension"} <= set(planned)
    assert set(planned.values()) == {"needs_human"}, planned
    assert phones.writes.entries() == [], "held: nothing is written in any system of the sandbox"
    assert cloud.snapshot(leaver.email) == cloud_before and phones.state([leaver.email]) == phones_before
    assert ext.status == "Enabled" and not (tmp_path / "voicemail" / ext.id).exists()


@pytest.mark.parametrize("status", [500, 503])
def test_a_failing_role_read_fails_the_match_and_writes_nothing(rc, provider, tmp_path, status):
    leaver = new_leaver(rc)
    rc.failing[r"/restapi/v1\.0/account/~/extension/\d+/assigned-role"] = status
    rc.knobs.retry_after = 120                                   # parked for a later pass, not waited for here
    provider.prepare([leaver])
    with pytest.raises(RetryableError, match=f"HTTP {status}"):
        provider.match(leaver)
    cfg = config.parse({"tenant": [{"id": "contoso", "policy": {"successor": SUCCESSOR},
                                    "provider": [rc_block(rc, tmp_path / "voicemail")]}]})
    store = Store.memory()
    reconcile(cfg, store, on_demand=[leaver], now=NOW)
    row = store.termination(f"contoso/{leaver.employee_id}")
    assert row["state"] != "done"
    matched = next(a for a in store.actions(row["id"]) if a["action"] == "match_account")
    assert matched["status"] == "failed" and f"HTTP {status}" in matched["reason"]
    assert rc.writes.entries("ringcentral") == [], "an unread role is not taken for no role"
    rc.failing.clear()
    provider.prepare([leaver])
    assert provider.match(leaver).status == "matched"
