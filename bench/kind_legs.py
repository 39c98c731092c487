"""bureau's credential kinds beyond a static header, and response cleaning, as proxy legs
(proxy_overhead.py runs them in the same rounds as the header legs). One more bureau-proxy
carries them all, each kind a route of its own in the payload's JSON (WIRE.md "Service
routes"), every route to the same nginx upstream: what is measured is the proxy's work
(signing, holding a token, reading responses through), not AWS or the authorization server.

- ``aws_sigv4`` for a service that wants its payload hashed (execute-api): a POST with a
  small body, compared with the header kind's same POST on the same proxy; and for S3,
  which the proxy signs with UNSIGNED-PAYLOAD, a PUT of the same body.
- ``oauth2`` client credentials against the real authorization server (tests/support/
  oauth_server.py): the first request mints the token and every later one finds it held, so
  the steady state is the injector's; the token requests the server saw are reported.
- response cleaning: the s3 route fetching the same bytes as text/plain (cleaned) and as
  application/octet-stream (passed as is), as S3 serves objects; the cost is CPU per MiB,
  the one over the other.

A leg whose kind the proxy does not do yet (its route answers 503 "... is not supported by
this proxy yet"; an echo of what the route sent upstream that comes back with a credential
in it) is reported as not available, rather than measured or failed."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oauth_server import AuthorizationServer, authorization_server
from processes import unix_request
from servers import TEXT_SIZES, TOKEN, Case, Server, bureau_routes, header_route

KIND_CONCURRENCY = 16
REQUEST_BYTES = 256  # a small API call's body: what SigV4 hashes
CLIENT_ID = "bench-client"
CREDENTIALS = {  # fake credentials, in the shapes of real ones
    "TOKEN": TOKEN,
    "AWS_ACCESS_KEY_ID": "AKIABENCH7QZX2KVBN4YW",
    "AWS_SECRET_ACCESS_KEY": "bEnCh/9mJ3tR8sL5cF1hD6gKpA+wE0xY2zQ4vN7u",
    "OAUTH_CLIENT_ID": CLIENT_ID,
    "OAUTH_CLIENT_SECRET": "bench-client-secret-5d1f7c0a9e",
}
NOT_YET = b"is not supported by this proxy yet"
CLEANED_SERVICE = "s3"


def services(port: int, token_url: str) -> dict[str, Any]:
    def sigv4(service: str) -> dict[str, Any]:
        return {
            "upstream_url": f"http://127.0.0.1:{port}",
            "aws_sigv4": {
                "access_key_id": "AWS_ACCESS_KEY_ID",
                "secret_access_key": "AWS_SECRET_ACCESS_KEY",
                "region": "eu-west-1",
                "service": service,
            },
        }

    return {
        "api": header_route(port),
        "sigv4": sigv4("execute-api"),
        "s3": sigv4("s3"),
        "oauth": {
            "upstream_url": f"http://127.0.0.1:{port}",
            "oauth2": {
                "grant": "client_credentials",
                "token_url": token_url,
                "client_id": "OAUTH_CLIENT_ID",
                "client_secret": "OAUTH_CLIENT_SECRET",
            },
        },
    }


@dataclass
class KindLegs:
    alongside_small: list[Case]  # measured in the small-body c=16 case of the header legs
    groups: list[list[Case]]  # cases of their own
    server: Server
    auth: AuthorizationServer
    _verdicts: dict[str, str | None] = field(default_factory=dict)

    def unavailable(self, case: Case) -> str | None:
        """Why ``case`` cannot be measured on this proxy (None: it can), from one request
        of its shape; a failure that is not a kind missing is raised."""
        if case.server is not self.server:
            return None
        if case.leg not in self._verdicts:
            self._verdicts[case.leg] = self._probe(case)
        return self._verdicts[case.leg]

    def _probe(self, case: Case) -> str | None:
        if case.leg.startswith("cleaned"):
            return self._cleaned()
        body = b"x" * case.request_bytes if case.request_bytes is not None else None
        reply = unix_request(self.server.socket, case.method, case.path, body=body)
        if reply.status == 503 and NOT_YET in reply.body:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                return str(json.loads(reply.body)["error"])
            return reply.body.decode(errors="replace").strip()
        if reply.status != 200:
            raise RuntimeError(
                f"{case.leg}: {case.method} {case.path}: {reply.status} {reply.body[:300]!r}"
            )
        return None

    def _cleaned(self) -> str | None:
        """Whether the cleaning route's text responses are cleaned: the upstream echoes the
        Authorization it was sent, which names the access key id."""
        reply = unix_request(self.server.socket, "GET", f"/http/{CLEANED_SERVICE}/echo")
        if reply.status == 503 and NOT_YET in reply.body:
            return f"{CLEANED_SERVICE}'s route is not served by this proxy yet"
        if reply.status != 200:
            raise RuntimeError(f"/echo through bureau-proxy: {reply.status} {reply.body!r}")
        if any(value.encode() in reply.body for value in CREDENTIALS.values()):
            return "text responses are not cleaned by this proxy yet"
        if b"*" * 8 not in reply.body:
            raise RuntimeError(f"/echo through bureau-proxy: no credential seen: {reply.body!r}")
        return None

    def notes(self) -> dict[str, Any]:
        """What the authorization server saw: one token request means the token stayed
        cached through every oauth2 request."""
        stats = self.auth.control("stats")
        return {"oauth2_token_requests": stats["token_requests"]}


@contextlib.contextmanager
def legs(work: Path, port: int) -> Iterator[KindLegs]:
    secret = CREDENTIALS["OAUTH_CLIENT_SECRET"]
    with (
        authorization_server(CLIENT_ID, secret, token_ttl=3600) as auth,
        bureau_routes(work / "bureau-kinds", services(port, auth.token_url), CREDENTIALS) as ours,
    ):
        c = KIND_CONCURRENCY
        body = f"{REQUEST_BYTES}B"

        def posted(leg: str, method: str, service: str) -> Case:
            return Case(
                leg,
                ours,
                f"/http/{service}/small",
                body,
                c,
                True,
                method,
                REQUEST_BYTES,
                ("Content-Type: application/json",),
            )

        groups = [
            [
                posted("bureau header", "POST", "api"),
                posted("bureau aws_sigv4", "POST", "sigv4"),
                posted("bureau aws_sigv4 s3", "PUT", "s3"),
            ]
        ]
        base = f"/http/{CLEANED_SERVICE}"
        for size in TEXT_SIZES:
            groups.append(
                [
                    Case("cleaned (text/plain)", ours, f"{base}/text/{size}", size, c, True),
                    Case("not cleaned (binary)", ours, f"{base}/binary/{size}", size, c, True),
                ]
            )
        alongside = [Case("bureau oauth2", ours, "/http/oauth/small", "small", c, True)]
        yield KindLegs(alongside, groups, ours, auth)
