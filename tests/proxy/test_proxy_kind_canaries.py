"""Every credential kind's secrets go to the upstream and nowhere else. One bureau-proxy,
at debug level, carries every kind against its real counterpart (an upstream that echoes
what it gets, moto, the authorization server and its echoing resource), and is driven
through successes and failures alike: scope refusals, a refused token resent, a refused
client, a body too large to sign, an unreachable upstream. Then no canary (the static
secrets, the AWS secret key and session token, the OAuth client secret, every access
and refresh token the authorization server issued) may be found in what the workload got back, in
the proxy's log, in its argv or environment, or in any file it could have written."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_server import REGION, aws_server
from oauth_server import authorization_server
from processes import Reply, proxy, unix_request
from recording_upstream import RecordingUpstream

from bureau.proxy.aws_injector import SIGNED_BODY_LIMIT

STATIC = {
    "HEADER": "canary-header-6f1a",
    "QUERY": "canary-query-2c7b",
    "USER": "canary-user-93e0",
    "PASSWORD": "canary-password-d41f",
    "BOT": "canary-path-70aa",
    "SESSION_TOKEN": "canary-session-token-5b3e",
    "FAKE_SECRET": "canary-aws-secret-unused-8e2d",
}
CLIENT_SECRET = "canary-client-secret-1d9c"


def _forms(secret: str) -> set[str]:
    """What a leak of ``secret`` could look like in text."""
    raw = secret.encode()
    return {secret, base64.b64encode(raw).decode(), base64.b64encode(raw).decode().rstrip("=")}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with (
        RecordingUpstream() as echo,
        aws_server() as aws,
        authorization_server("proxy-client", CLIENT_SECRET, token_ttl=600) as auth,
    ):
        oauth = {
            "grant": "client_credentials",
            "token_url": auth.token_url,
            "client_id": "CID",
            "client_secret": "CSECRET",
        }
        sigv4 = {"access_key_id": "AK", "secret_access_key": "SK", "region": REGION}
        services = {
            "static": {
                "upstream_url": echo.url,
                "inject_headers": {"X-Key": "HEADER"},
                "inject_query": {"key": "QUERY"},
                "path_prefix": "/bot{BOT}",
                "basic_auth": {"username": "USER", "password": "PASSWORD"},
                "deny": ["* /private/**"],
            },
            "s3": {"upstream_url": aws.endpoint, "aws_sigv4": {**sigv4, "service": "s3"}},
            "sqs": {"upstream_url": aws.endpoint, "aws_sigv4": {**sigv4, "service": "sqs"}},
            "aws-echo": {
                "upstream_url": echo.url,
                "aws_sigv4": {
                    **sigv4,
                    "secret_access_key": "FAKE_SECRET",
                    "session_token": "SESSION_TOKEN",
                    "service": "execute-api",
                },
            },
            "oauth": {"upstream_url": auth.resource_url, "oauth2": oauth},
            "refresh": {
                "upstream_url": auth.resource_url,
                "oauth2": {**oauth, "grant": "refresh_token", "refresh_token": "RTOKEN"},
            },
            "oauth-echo": {"upstream_url": echo.url, "oauth2": oauth},
            "oauth-wrong": {
                "upstream_url": auth.resource_url,
                "oauth2": {**oauth, "client_secret": "PASSWORD"},
            },
            "gone": {
                "upstream_url": "http://127.0.0.1:1",
                "basic_auth": {"username": "USER", "password": "PASSWORD"},
            },
        }
        credentials = {
            **STATIC,
            "AK": aws.access_key_id,
            "SK": aws.secret_access_key,
            "CID": "proxy-client",
            "CSECRET": CLIENT_SECRET,
            "RTOKEN": auth.refresh_token,
        }
        payload = {
            "principal": "@t/fleet/prod/agent/alpha:bureau.local",
            "services": services,
            "credentials": credentials,
        }
        secrets = [
            *STATIC.values(),
            aws.secret_access_key,
            CLIENT_SECRET,
            auth.refresh_token,
        ]
        yield {"payload": payload, "secrets": secrets, "echo": echo, "auth": auth}


def test_no_canary_leaves_the_upstream_bound_request(world: dict[str, Any], tmp_path: Path) -> None:
    sock = tmp_path / "run" / "p.sock"
    sock.parent.mkdir()
    env = {"PATH": os.environ["PATH"], "BUREAU_LOG_LEVEL": "debug"}
    echo: RecordingUpstream = world["echo"]
    replies: list[Reply] = []

    def call(method: str, target: str, body: bytes | None = None, **headers: str) -> Reply:
        reply = unix_request(sock, method, target, body=body, headers=headers)
        replies.append(reply)
        return reply

    with proxy(world["payload"], sock, env=env) as running:
        pid = running.proc.pid
        for shape in ("json", "text", "split", "redirect"):
            assert call("GET", f"/http/static/{shape}/x?q=1").status in (200, 302)
        assert call("GET", "/http/static/private/x").status == 403
        assert call("PUT", "/http/s3/canaries").status == 200
        assert call("PUT", "/http/s3/canaries/k", b"v").status == 200
        assert call("GET", "/http/s3/canaries/k").body == b"v"
        assert call("GET", "/http/s3/no-such-bucket/k").status == 404
        sqs = {"Content-Type": "application/x-amz-json-1.0"}
        created = call(
            "POST",
            "/http/sqs/",
            json.dumps({"QueueName": "canaries"}).encode(),
            **sqs,
            **{"X-Amz-Target": "AmazonSQS.CreateQueue"},
        )
        assert created.status == 200, created.body
        assert call("POST", "/http/sqs/", b"x" * (SIGNED_BODY_LIMIT + 1), **sqs).status == 413
        assert call("POST", "/http/aws-echo/text/x", b"{}").status == 200
        assert call("GET", "/http/oauth/items").status == 200
        assert call("GET", "/http/refresh/items").status == 200
        world["auth"].control("revoke")
        assert call("GET", "/http/oauth/items").status == 200  # a 401, resent
        assert call("GET", "/http/oauth-echo/json/x").status == 200
        assert call("GET", "/http/oauth-wrong/items").status == 503
        assert call("GET", "/http/gone/x").status == 502
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        minted = echo.last().headers["authorization"].removeprefix("Bearer ")
        assert len(minted) >= 16
        code, log = running.stop()
    assert code == 0
    assert "access token refused" in log  # the run went where it was meant to
    # Every token the authorization server minted: the access tokens of each route and
    # the refresh tokens it rotated.
    issued = world["auth"].issued()
    assert minted in issued
    assert len(issued) >= 6
    secrets = [*world["secrets"], *issued]
    workload_saw = "\n".join(
        json.dumps(r.headers) + "\n" + r.body.decode("latin-1") for r in replies
    )
    files = "\n".join(p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file())
    places = {
        "responses": workload_saw,
        "log": log,
        "environ": environ.decode("latin-1"),
        "argv": argv.decode("latin-1"),
        "files": files,
    }
    for secret in secrets:
        for form in _forms(secret):
            for where, text in places.items():
                assert form not in text, f"{secret[:12]}... in {where}"
    # The echoes did come back, as stars: the workload was shown the places they were.
    assert workload_saw.count("*" * 16) >= 8
