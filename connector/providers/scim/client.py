"""scim2-client over the project's one HTTP path, so a SCIM app's answers meet the same error table.

scim2-client builds and checks the requests and answers (models, ETags, PatchOp) and leaves
the sending to an engine; this engine sends through `connector.http.send`, which refuses
plain http to other machines, honours Retry-After and turns every failure status into a
typed error before scim2-client sees it. What scim2-client then refuses (an answer that is
not SCIM) is a PermanentError: an API answer is hostile until it validates.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterator

import requests
from pydantic import ValidationError
from scim2_client import BaseSyncSCIMClient, SCIMClientException
from scim2_models import EnterpriseUser, Group, ResourceType, SCIMException, ScimPolicy, ScimProvider, ServiceProviderConfig, \
    User

from ... import http
from ...errors import PermanentError

MEDIA = "application/scim+json"
RESOURCE_TYPES = [ResourceType.from_resource(User[EnterpriseUser]), ResourceType.from_resource(Group)]
UserModel = User[EnterpriseUser]
#: an app's own attributes are kept as they came, so a PUT (where PATCH is not supported) sends them back
KEEP_UNKNOWN = ScimPolicy(unknown=ScimPolicy.Unknown.keep)


def describe(app: str):
    """The message of a SCIM Error body (RFC 7644 3.12: detail, scimType), naming the app."""
    def message(resp: requests.Response) -> str:
        try:
            body = resp.json()
        except ValueError:
            body = None
        detail = body.get("detail") if isinstance(body, dict) else None
        kind = body.get("scimType") if isinstance(body, dict) else None
        text = " ".join(str(part)[:300] for part in (detail or resp.reason, f"(scimType {kind})" if kind else "") if part)
        return f"{app}: {text}"
    return message


class ScimClient(BaseSyncSCIMClient):
    def __init__(self, base_url: str, token: str, app: str, where: str):
        super().__init__(provider=self.describing(None))
        self.base_url = base_url.rstrip("/")
        self.where = where
        self.describe = describe(app)
        self.session = http.session()
        self.session.headers.update({"Authorization": f"Bearer {token}", "Accept": MEDIA})

    @staticmethod
    def describing(config: ServiceProviderConfig | None) -> ScimProvider:
        return ScimProvider(models=[User, EnterpriseUser, Group], resource_types=RESOURCE_TYPES, config=config,
                            policy=KEEP_UNKNOWN)

    def _stays_under_base_url(self, endpoint: str) -> bool:
        return endpoint.startswith("/") and not endpoint.startswith("//") and ".." not in endpoint

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        body = kwargs.pop("json", None)
        if body is not None:
            kwargs["data"] = json.dumps(body)
            kwargs["headers"] = {"Content-Type": MEDIA, **kwargs.get("headers", {})}
        return http.send(self.session, method, self.base_url + url, self.where, describe=self.describe, **kwargs)

    @contextmanager
    def checked(self) -> Iterator[None]:
        """An answer scim2-client refuses (not SCIM, not the model) is a permanent error of that app."""
        try:
            yield
        except (SCIMClientException, SCIMException, ValidationError) as e:
            raise PermanentError(f"the answer is not valid SCIM: {str(e)[:300]}", self.where) from None

    def close(self) -> None:
        self.session.close()
