"""Every credential kind end to end as an operator deploys it: `bureau credentials
provision` with a services file using each kind and scope rules, the encrypted bundle
published on a real Synapse, a real bureau-launcher starting the principal's proxy from
it, and the workload's plain requests reaching each kind's real counterpart (an upstream
that records and echoes, moto checking signatures, the authorization server and its
resource). No canary shows in what the workload got back, the launcher's log (the proxy's
with it, at debug level), or the proxy's argv or environment."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from aws_server import REGION, aws_server
from conftest import Fleet
from launcher_proc import UNSIGNED, launcher, proxies_under
from machine_helpers import credentials_event, enroll, provision_credentials
from oauth_server import authorization_server
from processes import Reply, launcher_ensure, unix_request
from recording_upstream import RecordingUpstream

PRINCIPAL = "agent/alpha"
QUERY_KEY = "launcher-canary-query-31f"
PASSWORD = "launcher-canary-password-c07"
BOT = "launcher-canary-bot-9aa"
CLIENT_SECRET = "launcher-canary-client-secret-e4d"


def _services(echo: str, aws: str, token_url: str, resource: str) -> dict[str, Any]:
    sigv4 = {"access_key_id": "AWS_KEY_ID", "secret_access_key": "AWS_SECRET", "region": REGION}
    oauth = {
        "grant": "client_credentials",
        "token_url": token_url,
        "client_id": "CLIENT_ID",
        "client_secret": "CLIENT_SECRET",
    }
    return {
        "static": {
            "upstream_url": echo,
            "inject_query": {"key": "QUERY_KEY"},
            "basic_auth": {"username": "USER", "password": "PASSWORD"},
            "path_prefix": "/bot{BOT}",
            "allow": ["GET /v1/**"],
            "deny": ["* /v1/admin/**"],
        },
        "s3": {"upstream_url": aws, "aws_sigv4": {**sigv4, "service": "s3"}},
        "sqs": {"upstream_url": aws, "aws_sigv4": {**sigv4, "service": "sqs"}},
        "oauth": {"upstream_url": resource, "oauth2": oauth},
        "refresh": {
            "upstream_url": resource,
            "oauth2": {**oauth, "grant": "refresh_token", "refresh_token": "REFRESH_TOKEN"},
        },
    }


@pytest.mark.slow
def test_every_kind_through_a_real_launcher(fleet: Fleet, tmp_path: Path, run_dir: Path) -> None:
    machine = enroll(fleet, tmp_path)
    with (
        RecordingUpstream() as echo,
        aws_server() as aws,
        authorization_server("launcher-client", CLIENT_SECRET) as auth,
    ):
        services = tmp_path / "services.json"
        services.write_text(
            json.dumps(_services(echo.url, aws.endpoint, auth.token_url, auth.resource_url))
        )
        secrets = {
            "QUERY_KEY": QUERY_KEY,
            "USER": "launcher-user",
            "PASSWORD": PASSWORD,
            "BOT": BOT,
            "AWS_KEY_ID": aws.access_key_id,
            "AWS_SECRET": aws.secret_access_key,
            "CLIENT_ID": "launcher-client",
            "CLIENT_SECRET": CLIENT_SECRET,
            "REFRESH_TOKEN": auth.refresh_token,
        }
        stdin = "".join(f"{k}={v}\n" for k, v in secrets.items())
        provisioned = provision_credentials(fleet, machine, PRINCIPAL, services, stdin)
        assert provisioned.returncode == 0, provisioned.stderr
        event = credentials_event(fleet, machine)
        principal = f"@{fleet.name}/{PRINCIPAL}:{fleet.hub.server_name}"
        # The test hands the launcher its own ensure, as test_launcher_serving does (no
        # signed assignment); operator signatures are tested on their own.
        with launcher(machine.machine.short_name, machine.state_dir, run_dir, *UNSIGNED) as running:
            ensured = launcher_ensure(running.socket, principal, event)
            assert ensured["ok"], (ensured, running.log())
            sock = Path(ensured["socket"])
            replies: list[Reply] = []

            def call(method: str, target: str, body: bytes | None = None, **headers: str) -> Reply:
                reply = unix_request(sock, method, target, body=body, headers=headers)
                replies.append(reply)
                return reply

            # The static kinds, and their scope: a refusal never reaches the upstream.
            assert call("GET", "/http/static/v1/text/me").status == 200
            seen = echo.last()
            assert seen.target == f"/bot{BOT}/v1/text/me?key={QUERY_KEY}"
            basic = base64.b64encode(f"launcher-user:{PASSWORD}".encode()).decode()
            assert seen.headers["authorization"] == f"Basic {basic}"
            count = echo.count
            assert call("GET", "/http/static/v1/admin/users").json()["rule"] == "deny"
            assert call("DELETE", "/http/static/v1/me").json()["rule"] == "allow"
            assert echo.count == count
            # AWS: S3 and SQS, the workload unsigned, moto checking every signature.
            assert call("PUT", "/http/s3/launcher-bucket").status == 200
            assert call("PUT", "/http/s3/launcher-bucket/k", b"stored").status == 200
            assert call("GET", "/http/s3/launcher-bucket/k").body == b"stored"
            queue = call(
                "POST",
                "/http/sqs/",
                json.dumps({"QueueName": "launcher"}).encode(),
                **{
                    "Content-Type": "application/x-amz-json-1.0",
                    "X-Amz-Target": "AmazonSQS.CreateQueue",
                },
            )
            assert queue.status == 200, queue.body
            # OAuth 2.0, both grants; the resource echoes the token, as stars.
            for service in ("oauth", "refresh"):
                reply = call("GET", f"/http/{service}/items")
                assert reply.status == 200, reply.body
                assert reply.json()["echo"].startswith("Bearer ****")
            issued = auth.issued()  # every access and refresh token minted
            (pid,) = proxies_under(run_dir)
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode("latin-1")
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode("latin-1")
            log = running.log()
    workload_saw = "\n".join(json.dumps(r.headers) + r.body.decode("latin-1") for r in replies)
    canaries = [QUERY_KEY, PASSWORD, BOT, basic, aws.secret_access_key, CLIENT_SECRET]
    canaries += issued
    for canary in canaries:
        for where, text in {
            "responses": workload_saw,
            "log": log,
            "environ": environ,
            "argv": argv,
        }.items():
            assert canary not in text, f"{canary[:12]}... in {where}"
    assert '"request refused"' in log  # the proxy's own lines are in the log scanned
