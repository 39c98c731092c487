"""The real counterparts the proxy's credential kinds are tested against are strict: moto
with authentication enforced refuses a request signed with the wrong secret, and the
authorization server's resource refuses a token it did not issue and a revoked one, and
its refresh tokens rotate. A counterpart that accepted anything would let every proxy test pass."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import botocore.exceptions
import pytest
from aws_server import aws_server
from oauth_server import AuthorizationServer, authorization_server

CLIENT_SECRET = "canary-client-secret-0c4f"


def _post(
    url: str, form: dict[str, str], *, basic: tuple[str, str] | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if basic:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(basic).encode()).decode()
    request = urllib.request.Request(
        url, urllib.parse.urlencode(form).encode(), headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, json.load(refused)


def _resource(server: AuthorizationServer, token: str) -> int:
    request = urllib.request.Request(
        server.resource_url + "/items", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code


def test_moto_refuses_a_wrong_signature_and_accepts_the_right_one() -> None:
    with aws_server() as aws:
        s3: Any = aws.client("s3")
        s3.create_bucket(Bucket="counterpart")
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["counterpart"]
        forged: Any = aws.client("s3", secret="not-the-secret")
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            forged.list_buckets()
        assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_the_authorization_server_issues_refreshes_and_its_resource_checks() -> None:
    client = ("proxy-client", CLIENT_SECRET)
    credentials = {"grant_type": "client_credentials", "scope": "read"}
    with authorization_server(*client, token_ttl=60, scopes=("read",)) as server:
        status, minted = _post(server.token_url, credentials, basic=client)
        assert (status, minted["expires_in"]) == (200, 60)
        assert _resource(server, minted["access_token"]) == 200
        assert _resource(server, "not-issued-by-it") == 401
        # Refresh tokens rotate: the new one works, the one used is spent.
        used = {"grant_type": "refresh_token", "refresh_token": server.refresh_token}
        status, refreshed = _post(server.token_url, used, basic=client)
        assert status == 200
        assert refreshed["refresh_token"] != server.refresh_token
        assert _resource(server, refreshed["access_token"]) == 200
        assert _post(server.token_url, used, basic=client)[0] == 400
        assert _post(server.token_url, credentials, basic=("proxy-client", "wrong"))[0] == 401
        server.control("revoke")
        assert _resource(server, minted["access_token"]) == 401
        server.control("down")
        assert _post(server.token_url, credentials, basic=client)[0] == 503
        assert server.control("stats")["token_requests"] == 5
