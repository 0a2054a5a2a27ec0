"""The Graph schema check catches the typos it exists for, alone and wired into the sandbox's Graph."""
import pytest
import requests

from connector.sandbox.contract import SchemaViolation, graph_schema

GOOD = [
    ("GET", "/v1.0/users?$filter=employeeId eq 'E1'&$select=id,accountEnabled,licenseAssignmentStates", None),
    ("PATCH", "/v1.0/users/u1", {"accountEnabled": False, "passwordProfile": {"password": "x", "forceChangePasswordNextSignIn": True}}),
    ("POST", "/v1.0/users/u1/revokeSignInSessions", None),
    ("POST", "/v1.0/users/u1/assignLicense", {"addLicenses": [{"skuId": "s"}], "removeLicenses": ["s"]}),
    ("GET", "/v1.0/users/u1/memberOf?$select=id,groupTypes,mailEnabled,onPremisesSyncEnabled", None),
    ("DELETE", "/v1.0/users/u1/authentication/phoneMethods/m1", None),
    ("DELETE", "/v1.0/groups/g1/members/u1/$ref", None),
    ("GET", "/v1.0/subscribedSkus", None),
    ("GET", "/v1.0/roleManagement/directory/roleAssignments?$filter=principalId eq 'u1'&$expand=roleDefinition", None),
    ("GET", "/v1.0/roleManagement/directory/roleEligibilityScheduleInstances?$filter=principalId eq 'u1'", None),
    ("GET", "/v1.0/users/u1/manager?$select=id,mail,userPrincipalName,accountEnabled", None),
    ("GET", "/v1.0/users/u1/memberOf?$select=id,isAssignableToRole", None),
]

TYPOS = [
    ("POST", "/v1.0/users/u1/revokeSigninSessions", None),                    # operation name
    ("GET", "/v1.0/user/u1", None),                                            # entity set
    ("DELETE", "/v1.0/users/u1/authentication/phoneMethod/m1", None),          # navigation
    ("PATCH", "/v1.0/users/u1", {"acountEnabled": False}),                     # body property
    ("PATCH", "/v1.0/users/u1", {"passwordProfile": {"pasword": "x"}}),        # nested complex type
    ("POST", "/v1.0/users/u1/assignLicense", {"addLicense": [], "removeLicenses": []}),   # action parameter
    ("GET", "/v1.0/users?$select=id,acountEnabled", None),                     # $select
    ("POST", "/v1.0/$batch", {"requests": [{"id": "1", "method": "PATCH", "url": "/users/u1",
                                             "body": {"acountEnabled": False}}]}),      # inside a batch
]


@pytest.mark.parametrize("method,url,body", GOOD)
def test_real_requests_pass(method, url, body):
    graph_schema().check(method, url, body)


@pytest.mark.parametrize("method,url,body", TYPOS)
def test_a_typo_fails(method, url, body):
    with pytest.raises(SchemaViolation):
        graph_schema().check(method, url, body)


def test_the_sandbox_checks_every_request_batch_included(m365):
    graph = m365.urls["graph"]
    answer = requests.post(f"{graph}/v1.0/$batch", headers={"Authorization": f"Bearer {m365.token(graph)}"}, json={"requests": [
        {"id": "1", "method": "PATCH", "url": "/users/u1", "headers": {"Content-Type": "application/json"},
         "body": {"acountEnabled": False}}]})
    assert answer.status_code == 400
    assert any("acountEnabled" in v for v in m365.graph.violations)
    m365.graph.violations.clear()          # the fixture fails any test that leaves one behind


def test_every_method_collection_the_provider_deletes_from_is_in_v1():
    from connector.providers.microsoft365.entra import DELETABLE
    for collection in DELETABLE.values():
        graph_schema().check("DELETE", f"/v1.0/users/u1/authentication/{collection}/m1")


@pytest.mark.parametrize("collection", ["qrCodePinMethods", "qrCodePinMethod", "hardwareOathMethods"])
def test_kinds_the_provider_reports_instead_have_no_v1_collection(collection):
    from connector.providers.microsoft365.entra import DELETABLE
    assert collection not in DELETABLE.values()
    with pytest.raises(SchemaViolation):
        graph_schema().check("DELETE", f"/v1.0/users/u1/authentication/{collection}/m1")
