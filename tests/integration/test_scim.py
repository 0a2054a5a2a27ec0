"""The SCIM provider against a real SCIM server: scim2-server's WSGI app under cheroot over HTTPS on 127.0.0.1.

Each test gets a fresh server state (its own storage), seeded over SCIM itself with users
and groups, and a bearer token. What the server did is read from its storage, never
through the provider, and every request it answered is logged, so a test can say which
method carried a write and what status came back.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json

import pytest
from scim2_client.engines.wsgi import WSGISCIMClient
from scim2_models import Group, ScimProvider, User
from scim2_server.memory import InMemoryStorage
from scim2_server.service import ScimService
from scim2_server.testserver.application import BEARER_TOKEN_SCHEME, BearerTokenApplication
from scim2_server.utils import load_default_resource_types, load_default_schemas, load_default_service_provider_config

from connector import config, plugins
from connector.errors import ConfigError, RetryableError
from connector.model import ActionContext, PlannedAction, Termination
from connector.sandbox.server import HttpsServer
from tests.contract.provider_contract import ProviderContract

TOKEN = "scim-T0ken-of-the-app"
TOKEN_ENV = "SCIM_TEST_TOKEN"
APP = "FieldApp"
serial = itertools.count(1)
#: the same test against an app that announces PATCH and one that does not (PUT is used)
PATCH_OR_PUT = pytest.mark.parametrize("scim_options", [{"patch": True, "etag": True}, {"patch": False, "etag": True}],
                                       ids=["patch", "put"])


class ScimApp:
    """One scim2-server application with its storage, a request log and an optional hook before writes."""

    def __init__(self, patch: bool = True, etag: bool = True):
        spc = load_default_service_provider_config()
        spc.patch.supported = patch
        spc.etag.supported = etag
        spc.authentication_schemes = [BEARER_TOKEN_SCHEME]
        provider = ScimProvider.from_discovery(load_default_schemas().values(), load_default_resource_types().values(),
                                               config=spc)
        self.storage = InMemoryStorage()
        self.app = BearerTokenApplication(self.storage, provider, service=ScimService(provider, secret="k" * 32),
                                          bearer_tokens=[TOKEN])
        self.log: list[tuple[str, str, int]] = []
        self.if_match: list[str | None] = []      # the If-Match of each write the provider sent
        self.before_write = None          # called once, before the next write reaches the server
        self.refusals: list[tuple[int, dict]] = []     # (status, headers) answered, in turn, before the app is asked
        self.admin = WSGISCIMClient(self.app, base_url="http://localhost/v2",
                                    headers={"Authorization": f"Bearer {TOKEN}"},
                                    provider=ScimProvider(models=[User, Group], config=spc))

    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if self.refusals and method != "GET":
            status, headers = self.refusals.pop(0)
            self.log.append((method, path, status))
            start_response(f"{status} Refused", [("Content-Type", "application/scim+json"), *headers.items()])
            return [json.dumps({"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": str(status),
                                "detail": "try later", **({"scimType": "uniqueness"} if status == 409 else {})
                                }).encode()]
        if method in ("PATCH", "PUT", "DELETE"):
            self.if_match.append(environ.get("HTTP_IF_MATCH"))
            if self.before_write:
                hook, self.before_write = self.before_write, None
                hook()

        def recorded(status, headers, exc_info=None):
            self.log.append((method, path, int(status.split()[0])))
            return start_response(status, headers, exc_info)
        return self.app(environ, recorded)

    def writes(self) -> list[tuple[str, str, int]]:
        return [entry for entry in self.log if entry[0] != "GET"]

    # -- seeding and reading behind the provider's back -----------------------------------
    def add_user(self, user_name: str, external_id: str | None = None, emails: tuple[str, ...] = (),
                 active: bool = True) -> str:
        user = self.admin.create(User(user_name=user_name, external_id=external_id, active=active,
                                      emails=[{"value": e, "type": "work"} for e in emails] or None))
        return user.id

    def add_group(self, name: str, *member_ids: str) -> str:
        return self.admin.create(Group(display_name=name, members=[{"value": m} for m in member_ids] or None)).id

    def edit(self, model, resource_id: str, change) -> None:
        """Another admin's write, by PUT (every server here takes it): read, change, replace."""
        resource = self.admin.query(model, resource_id)
        change(resource)
        self.admin.replace(resource)

    def user(self, user_id: str) -> dict:
        return next(r.model_dump() for r in self.storage.resources if r.id == user_id)

    def groups_of(self, user_id: str) -> list[str]:
        return sorted(r.display_name for r in self.storage.resources
                      if r.meta.resource_type == "Group" and any(m.value == user_id for m in r.members or []))

    def snapshot(self) -> list[dict]:
        return sorted((r.model_dump() for r in self.storage.resources), key=lambda d: d["id"])


@pytest.fixture(scope="session")
def scim_server(tmp_path_factory):
    holder = {}
    with HttpsServer(lambda environ, start: holder["app"](environ, start),
                     tmp_path_factory.mktemp("scim-tls")) as server:
        yield server, holder


@pytest.fixture
def scim_options() -> dict:
    """What the server announces; override (or parametrize) in a test."""
    return {"patch": True, "etag": True}


@pytest.fixture
def scim_app(scim_server, scim_options, monkeypatch) -> ScimApp:
    server, holder = scim_server
    app = holder["app"] = ScimApp(**scim_options)
    app.url = f"{server.url}/v2"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca_file)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    app.manager = app.add_user("morgan.manager@contoso.com", "M1", ("morgan.manager@contoso.com",))
    app.sales = app.add_group("Sales", app.manager)
    app.finance = app.add_group("Finance", app.manager)
    return app


@pytest.fixture
def make_scim(scim_app):
    def make(policy: dict | None = None, **options):
        block = {"type": "scim", "name": "fieldapp", "app_name": APP, "base_url": scim_app.url,
                 "token": f"env:{TOKEN_ENV}", "delete": "after_retention", **options}
        tenant = config.parse({"tenant": [{"id": "contoso", "name": "Contoso Ltd", "policy": policy or {},
                                           "provider": [block]}]}).tenants[0]
        pc = tenant.providers[0]
        return plugins.load("providers", "scim")(pc.name, pc.options, tenant, pc.where)
    return make


def new_leaver(app: ScimApp, user_name: str | None = None, **kw) -> tuple[Termination, str]:
    n = next(serial)
    email = f"leaver{n}@contoso.com"
    uid = app.add_user(user_name or email, f"E{n}", (email,), **kw)
    for group in (app.sales, app.finance):
        app.edit(Group, group, lambda g: setattr(g, "members", [*g.members, {"value": uid}]))
    return Termination("contoso", f"E{n}", email, "Lee", f"Vermont{n}", termination_date=dt.date(2026, 11, 20)), uid


class TestScimContract(ProviderContract):
    action_names = ["deactivate_user", "remove_groups"]

    @pytest.fixture
    def provider(self, make_scim):
        return make_scim()

    @pytest.fixture
    def leaver(self, scim_app):
        return new_leaver(scim_app)[0]

    @pytest.fixture
    def snapshot(self, scim_app):
        return lambda termination: scim_app.snapshot()

    @pytest.fixture
    def secrets(self):
        return [TOKEN]


def ctx_for(provider, termination, dry_run=False, local_date=None):
    provider.prepare([termination])
    match = provider.match(termination)
    return ActionContext(termination=termination, subject=match.subject, dry_run=dry_run,
                         local_date=local_date or termination.termination_date)


def undo_of(provider, original: str, before) -> PlannedAction:
    """The restore engine's call: the undo action, fed the original's name and journaled before-state."""
    name = provider.undo[original]
    return PlannedAction(provider.name, name, provider.actions[name], "", (("action", original), ("before", before)))


def three_passes(provider, action: PlannedAction, ctx: ActionContext, look):
    """Dry run (planned, nothing moves), changed, unchanged: what the server shows after each."""
    untouched = look()
    dry = provider.apply(action, dataclasses.replace(ctx, dry_run=True))
    assert dry.outcome == "planned" and look() == untouched
    first = provider.apply(action, ctx)
    assert first.outcome == "changed" and look() != untouched
    changed = look()
    assert provider.apply(action, ctx).outcome == "unchanged" and look() == changed
    return first


# -- matching --------------------------------------------------------------------------------
@pytest.mark.parametrize("attribute", ["userName", "emails", "externalId"])
def test_match_by_each_attribute(scim_app, make_scim, attribute):
    t, uid = new_leaver(scim_app, user_name=f"lee{next(serial)}")       # userName is not the address
    provider = make_scim(match_attribute=attribute)
    provider.prepare([t])
    match = provider.match(t)
    if attribute == "userName":
        assert match.status == "not_found"
        t = dataclasses.replace(t, email=scim_app.user(uid)["userName"].upper())     # userName ignores case
        match = provider.match(t)
    assert match.status == "matched" and match.subject.native_id == uid
    assert match.subject.state["groups"] == [{"id": scim_app.finance, "displayName": "Finance", "member": True},
                                             {"id": scim_app.sales, "displayName": "Sales", "member": True}]


def test_the_employee_id_is_authoritative(scim_app, make_scim):
    t, uid = new_leaver(scim_app)
    moved = dataclasses.replace(t, email="someone.else@contoso.com")      # an address no user has
    provider = make_scim(match_attribute="externalId")
    assert provider.match(moved).subject.native_id == uid
    other = scim_app.add_user("other@contoso.com", "X1", ("other@contoso.com",))
    clash = dataclasses.replace(t, email="other@contoso.com")             # the id and the address disagree
    match = provider.match(clash)
    assert match.status == "ambiguous" and set(match.candidates) == {uid, other}


def test_two_users_with_the_address_are_ambiguous(scim_app, make_scim):
    scim_app.add_user("dup1", "D1", ("dup@contoso.com",))
    scim_app.add_user("dup2", "D2", ("dup@contoso.com",))
    match = make_scim(match_attribute="emails").match(Termination("contoso", "D9", "dup@contoso.com"))
    assert match.status == "ambiguous" and len(match.candidates) == 2


def test_a_quote_in_the_value_stays_a_value(scim_app, make_scim):
    """`o"brien` is quoted and escaped: it matches that user, and cannot widen the filter to everyone."""
    uid = scim_app.add_user('o"brien@contoso.com', "Q1")
    provider = make_scim()
    assert provider.match(Termination("contoso", "Q1", 'O"Brien@contoso.com')).subject.native_id == uid
    hostile = Termination("contoso", "Q2", 'x" or userName pr or userName eq "y')
    assert provider.match(hostile).status == "not_found"
    assert all(status == 200 for _, _, status in scim_app.log)


# -- actions -----------------------------------------------------------------------------------
@PATCH_OR_PUT
def test_deactivate_and_remove_groups_three_passes(scim_app, make_scim, scim_options):
    t, uid = new_leaver(scim_app)
    provider = make_scim()
    ctx = ctx_for(provider, t)
    planned = {a.action: a for a in provider.plan(ctx.subject, t)}
    assert list(planned) == ["deactivate_user", "remove_groups"]          # delete_after_days = 0: never deleted
    first = three_passes(provider, planned["deactivate_user"], ctx, lambda: scim_app.user(uid)["active"])
    assert (first.before, first.after) == ({"active": True}, {"active": False})
    first = three_passes(provider, planned["remove_groups"], ctx, lambda: scim_app.groups_of(uid))
    assert [g["displayName"] for g in first.before if g["member"]] == ["Finance", "Sales"]
    assert scim_app.groups_of(uid) == [] and scim_app.groups_of(scim_app.manager) == ["Finance", "Sales"]
    methods = {m for m, path, _ in scim_app.writes()}
    assert methods == ({"PATCH"} if scim_options["patch"] else {"PUT"})
    assert all(status < 400 for _, _, status in scim_app.writes())


@PATCH_OR_PUT
def test_a_concurrent_change_is_caught_by_the_etag_and_kept(scim_app, make_scim, scim_options):
    """Someone edits the user between our read and our write: 412, a re-read, and their change survives."""
    t, uid = new_leaver(scim_app)
    provider = make_scim()
    ctx = ctx_for(provider, t)
    scim_app.before_write = lambda: scim_app.edit(User, uid, lambda u: setattr(u, "display_name", "Renamed meanwhile"))
    result = provider.apply(provider.planned("deactivate_user"), ctx)
    assert result.outcome == "changed"
    statuses = [status for method, path, status in scim_app.writes() if path.endswith(uid)]
    assert statuses[-2:] == [412, 200 if not scim_options["patch"] else 204]
    assert scim_app.user(uid)["active"] is False and scim_app.user(uid)["displayName"] == "Renamed meanwhile"


@pytest.mark.parametrize("scim_options", [{"patch": True, "etag": True}, {"patch": True, "etag": False}],
                         ids=["etag", "no-etag"])
def test_if_match_is_sent_only_where_the_app_supports_etags(scim_app, make_scim, scim_options):
    t, _ = new_leaver(scim_app)
    provider = make_scim()
    provider.apply(provider.planned("deactivate_user"), ctx_for(provider, t))
    assert scim_app.if_match and all(bool(tag) == scim_options["etag"] for tag in scim_app.if_match)


def test_delete_user_waits_for_the_retention_then_deletes(scim_app, make_scim):
    t, uid = new_leaver(scim_app)
    provider = make_scim(policy={"delete_after_days": 30})
    ctx = ctx_for(provider, t)
    action = next(a for a in provider.plan(ctx.subject, t) if a.action == "delete_user")
    assert action.phase == "retain"
    from connector.errors import NotYet
    with pytest.raises(NotYet, match="kept until 2026-12-20"):
        provider.apply(action, ctx)
    later = dataclasses.replace(ctx, local_date=dt.date(2026, 12, 20))
    first = three_passes(provider, action, later, lambda: any(r.id == uid for r in scim_app.storage.resources))
    assert first.before["exists"] is True and first.after == {"exists": False}


def test_delete_never_keeps_the_user(scim_app, make_scim):
    t, _ = new_leaver(scim_app)
    provider = make_scim(policy={"delete_after_days": 30}, delete="never")
    ctx = ctx_for(provider, t)
    assert "delete_user" not in {a.action for a in provider.plan(ctx.subject, t)}


@PATCH_OR_PUT
def test_undo_puts_the_user_back(scim_app, make_scim):
    """restore: each undo action is an ordinary action fed the original's journaled before-state."""
    t, uid = new_leaver(scim_app)
    provider = make_scim()
    ctx = ctx_for(provider, t)
    done = {name: provider.apply(provider.planned(name), ctx) for name in ("deactivate_user", "remove_groups")}
    for original, result in done.items():
        undo = undo_of(provider, original, result.before)
        assert undo.phase == "restore"
        look = (lambda: scim_app.user(uid)["active"]) if original == "deactivate_user" else \
            (lambda: scim_app.groups_of(uid))
        three_passes(provider, undo, ctx, look)
    assert scim_app.user(uid)["active"] is True and scim_app.groups_of(uid) == ["Finance", "Sales"]


def test_restrict_leaves_and_joins_the_policy_groups(scim_app, make_scim):
    """The notice-period groups, from the policy's restrict_remove_groups and restrict_add_groups."""
    scim_app.add_group("Office only")
    t, uid = new_leaver(scim_app)
    provider = make_scim()
    provider.tenant.policy = provider.tenant.policy.model_copy(
        update={"restrict_remove_groups": ["fin*"], "restrict_add_groups": ["Office only"]})
    ctx = ctx_for(provider, t)
    planned = {a.action: a for a in provider.plan(ctx.subject, t)}
    assert {planned["restrict_leave_groups"].phase, planned["restrict_join_groups"].phase} == {"restrict"}
    left = three_passes(provider, planned["restrict_leave_groups"], ctx, lambda: scim_app.groups_of(uid))
    joined = three_passes(provider, planned["restrict_join_groups"], ctx, lambda: scim_app.groups_of(uid))
    assert scim_app.groups_of(uid) == ["Office only", "Sales"]
    for name, result in (("restrict_join_groups", joined), ("restrict_leave_groups", left)):
        provider.apply(undo_of(provider, name, result.before), ctx)
    assert scim_app.groups_of(uid) == ["Finance", "Sales"]


# -- the app's answers ---------------------------------------------------------------------------
@pytest.mark.parametrize("status", [429, 503])
def test_throttling_honours_retry_after(scim_app, make_scim, status):
    t, uid = new_leaver(scim_app)
    provider = make_scim()
    ctx = ctx_for(provider, t)
    scim_app.refusals = [(status, {"Retry-After": "1"})]           # short: waited for in place, then sent again
    assert provider.apply(provider.planned("deactivate_user"), ctx).outcome == "changed"
    scim_app.refusals = [(status, {"Retry-After": "600"})] * 4      # long: parked by the engine for that long
    with pytest.raises(RetryableError) as parked:
        provider.apply(provider.planned("remove_groups"), ctx)
    assert parked.value.delay == 600.0 and len(scim_app.refusals) == 3
    assert scim_app.user(uid)["active"] is False and scim_app.groups_of(uid) == ["Finance", "Sales"]


def test_a_conflict_is_re_read_and_a_lasting_one_left_to_the_next_pass(scim_app, make_scim):
    t, uid = new_leaver(scim_app)
    provider = make_scim()
    ctx = ctx_for(provider, t)
    scim_app.refusals = [(409, {})]
    assert provider.apply(provider.planned("deactivate_user"), ctx).outcome == "changed"
    scim_app.refusals = [(409, {})] * 3
    with pytest.raises(RetryableError, match="changed in FieldApp 3 times"):
        provider.apply(provider.planned("remove_groups"), ctx)
    assert scim_app.groups_of(uid) == ["Finance", "Sales"]


def test_check_online_reads_the_capabilities(scim_app, make_scim, caplog):
    caplog.set_level("INFO")
    make_scim().check_online()
    assert "FieldApp supports patch yes, filter yes, etag yes, bulk yes" in caplog.text


def test_a_refused_token_is_a_config_error_naming_the_app(scim_app, make_scim, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "not-the-token")
    with pytest.raises(ConfigError) as refused:
        make_scim().check_online()
    assert "HTTP 401" in str(refused.value) and APP in str(refused.value)
    assert "not-the-token" not in str(refused.value)


def test_http_base_url_to_another_machine_is_refused():
    with pytest.raises(ConfigError, match="https"):
        config.parse({"tenant": [{"id": "c", "provider": [{"type": "scim", "base_url": "http://app.example/scim",
                                                           "token": "env:X", "delete": "never"}]}]})


def test_delete_must_be_decided_per_app():
    with pytest.raises(ConfigError, match=r"provider\[0\]\.delete: required"):
        config.parse({"tenant": [{"id": "c", "provider": [{"type": "scim", "base_url": "https://app.example/scim",
                                                           "token": "env:X"}]}]})


def test_the_engine_offboards_the_app_user_and_a_second_pass_writes_nothing(scim_app):
    from connector.reconcile import reconcile
    from connector.store import Store

    t, uid = new_leaver(scim_app)
    today = dt.datetime.now(dt.timezone.utc)
    t = dataclasses.replace(t, termination_date=today.date(), kind="immediate")
    cfg = config.parse({"tenant": [{"id": "contoso", "provider": [{
        "type": "scim", "name": "fieldapp", "app_name": APP, "base_url": scim_app.url, "token": f"env:{TOKEN_ENV}",
        "delete": "never"}]}]})
    store = Store.memory()
    report = reconcile(cfg, store, on_demand=[t], now=today)
    assert report.exit_code == 0 and store.state_of(t.id) == "done"
    assert scim_app.user(uid)["active"] is False and scim_app.groups_of(uid) == []
    writes = len(scim_app.writes())
    assert reconcile(cfg, store, on_demand=[t], now=today).exit_code == 0
    assert len(scim_app.writes()) == writes
