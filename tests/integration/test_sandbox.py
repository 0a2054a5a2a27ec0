"""The sandbox's own rules, asked directly over HTTP in both modes: refusals, paging, throttling, knobs, write log.

These are what make the provider tests mean something: if the sandbox let a synced
user be disabled in the cloud, the Entra tests could not catch a provider that tried.
"""
from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
import requests

from connector.sandbox.bamboohr import BambooHR
from connector.sandbox.microsoft365 import VENDOR_URLS, Microsoft365
from connector.sandbox.web import Sandbox, TokenBucket
from connector.sandbox.workday import Workday
from tests.sandboxes import MODES, add_leaver, seed

SANDBOX_MODES = MODES


class Cloud:
    """A seeded tenant and its Graph and Exchange, asked with a valid token each."""

    def __init__(self, reach):
        self.tenant = Microsoft365(secret="sandbox-rules-Secret-1")
        seed(self.tenant)
        self.sandbox = self.tenant.mount(Sandbox())
        self.tenant.urls = self.urls = reach(self.sandbox, {**VENDOR_URLS, "_sandbox": "https://sandbox.test/_sandbox"})
        self.graph_token = self.tenant.token(self.urls["graph"])

    def graph(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.graph_token}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.urls['graph']}/v1.0{path}", headers=headers, timeout=10, **kwargs)

    def cmdlet(self, name: str, token: str | None = None, **params) -> requests.Response:
        base = self.urls["exchange"]
        return requests.post(f"{base}/adminapi/beta/{self.tenant.tenant_id}/InvokeCommand",
                             headers={"Authorization": f"Bearer {token or self.tenant.token(base)}",
                                      "X-AnchorMailbox": f"UPN:{params.get('Identity', 'x@contoso.com')}"},
                             json={"CmdletInput": {"CmdletName": name, "Parameters": params}}, timeout=10)

    def batch(self, *subs: dict) -> requests.Response:
        return self.graph("POST", "/$batch", json={"requests": [{"id": str(i), **s} for i, s in enumerate(subs)]})

    def control(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, f"{self.urls['_sandbox']}/{path}", timeout=10, **kwargs)


@pytest.fixture
def cloud(reach) -> Cloud:
    return Cloud(reach)


def user_id(cloud: Cloud, upn: str) -> str:
    return cloud.tenant.user_by_upn(upn)["id"]


# -- the vendor's refusals -------------------------------------------------------------------------

def test_a_synced_user_refuses_cloud_sign_in_and_password_writes(cloud):
    leaver = add_leaver(cloud.tenant, 1, synced=True)
    uid = user_id(cloud, leaver.email)
    for body in ({"accountEnabled": False}, {"passwordProfile": {"password": "Long-enough-1"}}):
        refused = cloud.graph("PATCH", f"/users/{uid}", json=body)
        assert refused.status_code == 400 and "on-premises mastered" in refused.json()["error"]["message"]
    assert cloud.graph("POST", f"/users/{uid}/revokeSignInSessions").status_code == 200     # sessions are the cloud's
    assert cloud.tenant.snapshot(leaver.email)["accountEnabled"] is True


def test_a_licence_inherited_from_a_group_cannot_be_removed_from_the_user(cloud):
    leaver = add_leaver(cloud.tenant, 1)
    uid, e3 = user_id(cloud, leaver.email), cloud.tenant.sku("SPE_E3")
    refused = cloud.graph("POST", f"/users/{uid}/assignLicense", json={"addLicenses": [], "removeLicenses": [e3]})
    assert refused.status_code == 400 and "inherited from a group" in refused.json()["error"]["message"]
    group = cloud.tenant.group_named("E3 Licence")["id"]
    assert cloud.graph("DELETE", f"/groups/{group}/members/{uid}/$ref").status_code == 204
    assert ("SPE_E3", group) not in cloud.tenant.snapshot(leaver.email)["licences"]


def test_the_default_mfa_method_goes_last(cloud):
    leaver = add_leaver(cloud.tenant, 1)                          # default: the phone
    uid = user_id(cloud, leaver.email)
    phone, app = (m["id"] for m in cloud.tenant.methods[uid][1:])
    refused = cloud.graph("DELETE", f"/users/{uid}/authentication/phoneMethods/{phone}")
    assert refused.status_code == 400 and "default method" in refused.json()["error"]["message"]
    assert cloud.graph("DELETE", f"/users/{uid}/authentication/microsoftAuthenticatorMethods/{app}").status_code == 204
    assert cloud.graph("DELETE", f"/users/{uid}/authentication/phoneMethods/{phone}").status_code == 204


def test_conversion_to_shared_shows_only_on_a_later_read(cloud):
    leaver = add_leaver(cloud.tenant, 1)
    cloud.tenant.mailboxes[leaver.email].conversion_reads = 2
    assert cloud.cmdlet("Set-Mailbox", Identity=leaver.email, Type="Shared").status_code == 200
    seen = [cloud.cmdlet("Get-Mailbox", Identity=leaver.email).json()["value"][0]["RecipientTypeDetails"]
            for _ in range(4)]
    assert seen == ["UserMailbox", "UserMailbox", "SharedMailbox", "SharedMailbox"]


def test_a_timed_conversion_shows_once_its_time_has_passed_however_often_read(cloud):
    leaver = add_leaver(cloud.tenant, 1)
    box = cloud.tenant.mailboxes[leaver.email]
    box.conversion_seconds = 0.5
    assert cloud.cmdlet("Set-Mailbox", Identity=leaver.email, Type="Shared").status_code == 200
    kind = lambda: cloud.cmdlet("Get-Mailbox", Identity=leaver.email).json()["value"][0]["RecipientTypeDetails"]
    assert [kind() for _ in range(3)] == ["UserMailbox"] * 3
    time.sleep(max(0.0, box.converted_at - time.time()))
    assert kind() == "SharedMailbox"


def test_a_cmdlet_parameter_outside_its_set_is_refused_by_name(cloud):
    add_leaver(cloud.tenant, 1)
    refused = cloud.cmdlet("Set-Mailbox", Identity="leaver1.person@contoso.com", Typ="Shared")
    assert refused.status_code == 400 and "'Typ'" in refused.text
    assert cloud.tenant.mailboxes["leaver1.person@contoso.com"].converting_to is None


def test_a_token_is_good_for_its_resource_only(cloud):
    graph_token = cloud.graph_token
    assert cloud.cmdlet("Get-AcceptedDomain", token=graph_token).status_code == 401
    assert cloud.graph("GET", "/subscribedSkus", headers={"Authorization": "Bearer forged"}).status_code == 401


@pytest.mark.parametrize("form,error", [
    ({"client_secret": "wrong"}, "invalid_client"),
    ({"client_id": "00000000-0000-0000-0000-00000000abcd"}, "unauthorized_client"),
    ({"scope": "https://graph.microsoft.com/User.Read.All"}, "invalid_scope"),
    ({"grant_type": "password"}, "unsupported_grant_type"),
])
def test_the_token_endpoint_refuses_as_entra_does(cloud, form, error):
    good = {"grant_type": "client_credentials", "client_id": cloud.tenant.client_id,
            "client_secret": "sandbox-rules-Secret-1", "scope": f"{cloud.urls['graph']}/.default"}
    url = f"{cloud.urls['login']}/{cloud.tenant.tenant_id}/oauth2/v2.0/token"
    assert requests.post(url, data=good, timeout=10).status_code == 200
    refused = requests.post(url, data={**good, **form}, timeout=10)
    assert refused.status_code in (400, 401) and refused.json()["error"] == error
    unknown_tenant = requests.get(f"{cloud.urls['login']}/no-such-tenant/v2.0/.well-known/openid-configuration")
    assert unknown_tenant.status_code == 400 and "AADSTS90002" in unknown_tenant.json()["error_description"]


# -- paging ----------------------------------------------------------------------------------------------

def test_graph_pages_with_next_links_until_the_last_page(cloud):
    for n in range(7):
        add_leaver(cloud.tenant, n)
    url, seen = "/users?$top=3&$select=id", []
    while url:
        page = cloud.graph("GET", url).json()
        seen += [u["id"] for u in page["value"]]
        url = page.get("@odata.nextLink", "").split("/v1.0", 1)[-1] if "@odata.nextLink" in page else ""
    assert sorted(seen) == sorted(cloud.tenant.users) and len(seen) == 8      # 7 leavers and the manager
    assert cloud.graph("GET", "/users?$skip=3").status_code == 400


def test_exchange_pages_with_next_links(cloud):
    leaver = add_leaver(cloud.tenant, 1)
    cloud.tenant.mailboxes[leaver.email].permissions.append({"User": "x@contoso.com", "AccessRights": ["FullAccess"]})
    cloud.tenant.exchange.page = 1
    first = cloud.cmdlet("Get-MailboxPermission", Identity=leaver.email).json()
    assert len(first["value"]) == 1 and "skip=1" in first["@odata.nextLink"]
    assert first["@odata.nextLink"].startswith(cloud.urls["exchange"])


# -- throttling, in and outside $batch ----------------------------------------------------------------------

def test_a_token_bucket_per_tenant_answers_429_with_retry_after(cloud):
    cloud.tenant.graph.knobs.bucket = TokenBucket(rate=0.5, burst=3)
    answers = [cloud.graph("GET", "/subscribedSkus") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert int(answers[-1].headers["Retry-After"]) >= 1
    assert answers[-1].json()["error"]["code"] == "TooManyRequests"


def test_inside_a_batch_each_request_is_throttled_alone_and_the_batch_answers_200(cloud):
    leavers = [add_leaver(cloud.tenant, n) for n in range(4)]
    cloud.tenant.graph.knobs.bucket = TokenBucket(rate=0.01, burst=2)
    answer = cloud.batch(*({"method": "PATCH", "url": f"/users/{user_id(cloud, t.email)}",
                            "headers": {"Content-Type": "application/json"}, "body": {"accountEnabled": False}}
                           for t in leavers))
    assert answer.status_code == 200
    statuses = [r["status"] for r in sorted(answer.json()["responses"], key=lambda r: r["id"])]
    assert statuses == [204, 204, 429, 429]
    assert all("Retry-After" in r["headers"] for r in answer.json()["responses"] if r["status"] == 429)
    assert [cloud.tenant.snapshot(t.email)["accountEnabled"] for t in leavers] == [False, False, True, True]


def test_counted_throttles_spend_themselves(cloud):
    cloud.tenant.graph.knobs.throttle_next = 2
    assert [cloud.graph("GET", "/subscribedSkus").status_code for _ in range(3)] == [429, 429, 200]


# -- latency split, outage, the control endpoint ----------------------------------------------------------

@pytest.mark.parametrize("before,after,landed_while_waiting", [(0.0, 0.6, True), (0.6, 0.0, False)],
                         ids=["after-the-write", "before-the-write"])
def test_latency_is_split_around_the_moment_the_write_lands(cloud, before, after, landed_while_waiting):
    leaver = add_leaver(cloud.tenant, 1)
    uid = user_id(cloud, leaver.email)
    cloud.tenant.graph.knobs.latency = (before, after)
    answer: list = []
    client = threading.Thread(target=lambda: answer.append(cloud.graph("PATCH", f"/users/{uid}",
                                                                        json={"accountEnabled": False})))
    started = time.monotonic()
    client.start()
    time.sleep(0.3)                                                    # the client is still waiting
    assert not answer
    assert (cloud.tenant.snapshot(leaver.email)["accountEnabled"] is False) == landed_while_waiting
    client.join(5)
    assert answer[0].status_code == 204 and time.monotonic() - started >= 0.6
    assert cloud.tenant.snapshot(leaver.email)["accountEnabled"] is False


def test_an_outage_answers_503_and_changes_nothing_until_it_is_switched_off(cloud):
    leaver = add_leaver(cloud.tenant, 1)
    uid = user_id(cloud, leaver.email)
    assert cloud.control("POST", "knobs/graph", json={"outage": True, "retry_after": 7}).status_code == 200
    down = cloud.graph("PATCH", f"/users/{uid}", json={"accountEnabled": False})
    assert down.status_code == 503 and down.headers["Retry-After"] == "7"
    assert cloud.tenant.snapshot(leaver.email)["accountEnabled"] is True
    assert cloud.graph("GET", "/subscribedSkus").status_code == 503
    assert cloud.control("GET", "knobs").json()["graph"]["outage"] is True
    cloud.control("POST", "knobs/graph", json={"outage": False})
    assert cloud.graph("PATCH", f"/users/{uid}", json={"accountEnabled": False}).status_code == 204


@pytest.mark.parametrize("settings", [{"outage": "yes"}, {"latency": [1]}, {"throttle_next": -1}, {"speed": 2}])
def test_the_control_endpoint_refuses_what_is_not_a_knob(cloud, settings):
    refused = cloud.control("POST", "knobs/graph", json=settings)
    assert refused.status_code == 400
    assert cloud.control("GET", "knobs").json()["graph"]["outage"] is False


# -- the write log -------------------------------------------------------------------------------------------

def test_every_write_is_logged_once_with_time_caller_and_outcome_and_reads_are_not(cloud):
    leaver, synced = add_leaver(cloud.tenant, 1), add_leaver(cloud.tenant, 2, synced=True)
    before = time.time()
    cloud.graph("GET", f"/users/{user_id(cloud, leaver.email)}")
    cloud.graph("PATCH", f"/users/{user_id(cloud, leaver.email)}", json={"accountEnabled": False})
    cloud.graph("PATCH", f"/users/{user_id(cloud, synced.email)}", json={"accountEnabled": False})      # refused
    cloud.batch({"method": "POST", "url": f"/users/{user_id(cloud, leaver.email)}/revokeSignInSessions"})
    cloud.cmdlet("Set-Mailbox", Identity=leaver.email, HiddenFromAddressListsEnabled=True)
    log = cloud.control("GET", "writes").json()["writes"]
    assert [(w["system"], w["op"], w["status"]) for w in log] == [
        ("graph", "PATCH users/{id} accountEnabled", 204), ("graph", "PATCH users/{id} accountEnabled", 400),
        ("graph", "POST users/{id}/revokeSignInSessions", 200),
        ("exchange", "Set-Mailbox HiddenFromAddressListsEnabled", 200)]
    assert [w["target"] for w in log] == [user_id(cloud, leaver.email), user_id(cloud, synced.email),
                                          user_id(cloud, leaver.email), leaver.email]
    assert all(w["caller"].startswith(cloud.tenant.client_id + "@") for w in log)
    assert all(before <= w["at"] <= time.time() for w in log)
    assert cloud.control("GET", "writes", params={"system": "exchange"}).json()["writes"] == log[-1:]


# -- the HR systems ----------------------------------------------------------------------------------------------

def test_workday_runs_the_report_as_it_stands_now(reach):
    wd = Workday()
    wd.hire("21001", "Logan", "McNeil", "logan.mcneil@contoso.com", "teresa.brooks@contoso.com")
    wd.hire("21017", "Ravi", "Menon", "ravi.menon@contoso.com")
    wd.terminate("21001", dt.date(2026, 3, 13))
    wd.terminate("21017", dt.date(2026, 4, 1))
    base = reach(Sandbox(wd), {"workday": "https://wd5-services1.myworkday.com"})["workday"] + wd.report_path()
    auth = (f"{wd.username}@{wd.tenant}", wd.password)
    report = requests.get(base, params={"format": "json"}, auth=auth, timeout=10).json()["Report_Entry"]
    assert report[0] == {"Employee_ID": "21001", "Worker": "Logan McNeil", "First_Name": "Logan", "Last_Name": "McNeil",
                         "Work_Email": "logan.mcneil@contoso.com", "Manager_Email": "teresa.brooks@contoso.com",
                         "Termination_Date": "2026-03-13-07:00",
                         "Primary_Termination_Reason": "Terminate Employee > Voluntary > Resignation"}
    assert "Manager_Email" not in report[1]                   # no value: left out, not sent empty
    wd.rescind("21017")
    wd.rename("email", "Email_-_Work")
    [entry] = requests.get(base, params={"format": "json"}, auth=auth, timeout=10).json()["Report_Entry"]
    assert "Email_-_Work" in entry and "Work_Email" not in entry
    assert requests.get(base, auth=auth, timeout=10).headers["Content-Type"] == "application/xml"
    assert requests.get(base, params={"format": "json"}, auth=(wd.username, "wrong"), timeout=10).status_code == 401


def test_the_workday_source_reads_the_sandbox_report(reach, monkeypatch):
    from connector import config
    from connector.sources.workday import WorkdaySource

    wd = Workday()
    wd.hire("21001", "Logan", "McNeil", "Logan.McNeil@contoso.com", "teresa.brooks@contoso.com")
    wd.terminate("21001", dt.date(2026, 3, 13))
    base = reach(Sandbox(wd), {"workday": "https://wd5-services1.myworkday.com"})["workday"]
    monkeypatch.setenv("WORKDAY_PASSWORD", wd.password)
    block = {"type": "workday", "url": base + wd.report_path(), "username": wd.username,
             "password": "env:WORKDAY_PASSWORD"}
    tenant = config.parse({"tenant": [{"id": "contoso", "source": [block], "provider": [{"type": "fake"}]}]}).tenants[0]
    plugin = tenant.sources[0]
    [leaver] = WorkdaySource(plugin.name, plugin.options, tenant, plugin.where).pull().terminations
    assert (leaver.employee_id, leaver.email, leaver.termination_date) == (
        "21001", "logan.mcneil@contoso.com", dt.date(2026, 3, 13))
    assert wd.calls[-1][2].endswith("/Terminations")


def test_bamboohr_answers_a_rate_limit_with_429_and_retry_after(reach):
    hr = BambooHR()
    base = reach(Sandbox(hr), {"bamboohr": hr.vendor_url})["bamboohr"]
    hr.knobs.bucket = TokenBucket(rate=0.1, burst=1)
    ask = lambda: requests.get(f"{base}/api/v1/employees/changed", params={"since": "2026-03-01T00:00:00+00:00"},  # noqa: E731
                               auth=(hr.api_key, "x"), headers={"Accept": "application/json"}, timeout=10)
    assert ask().status_code == 200
    limited = ask()
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1

