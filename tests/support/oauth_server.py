"""A real OAuth 2.0 authorization server (oidc-provider, from the npm registry) with a
resource server beside it, on 127.0.0.1, for bureau-proxy's oauth2 credential kinds.
script/setup installs it (`npm ci` in tests/support/oauth_server); see server.mjs for
what it serves. The client secret goes to it on stdin, never in argv."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent / "oauth_server"


@dataclass(frozen=True)
class AuthorizationServer:
    port: int
    token_url: str
    # Minted into the server's store for the client, as a finished login would leave it.
    refresh_token: str = field(repr=False)

    @property
    def resource_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/resource"

    def control(self, action: str) -> dict[str, int]:
        """down, up (the token endpoint answers 503 while down), revoke (every access
        token issued so far is refused from now on) or stats."""
        method = "GET" if action == "stats" else "POST"
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/control/{action}", method=method
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            stats: dict[str, int] = json.load(response)
        return stats

    def issued(self) -> list[str]:
        """Every access and refresh token the server has issued so far (the one it
        minted at start included): what a workload must never see."""
        url = f"http://127.0.0.1:{self.port}/control/issued"
        with urllib.request.urlopen(url, timeout=10) as response:
            tokens: dict[str, list[str]] = json.load(response)
        return tokens["access_tokens"] + tokens["refresh_tokens"]


@contextmanager
def authorization_server(
    client_id: str,
    client_secret: str,
    *,
    client_auth: str = "basic",
    token_ttl: int = 300,
    scopes: tuple[str, ...] = (),
) -> Iterator[AuthorizationServer]:
    node = shutil.which("node")
    assert node, "node is not installed: run script/setup"
    assert (HERE / "node_modules/oidc-provider").is_dir(), "run script/setup (npm ci)"
    config = {
        "client_id": client_id,
        "client_secret": client_secret,
        "client_auth": client_auth,
        "token_ttl": token_ttl,
        "scopes": list(scopes),
    }
    # As a context manager, Popen closes its pipes and reaps the server on the way out.
    with subprocess.Popen(
        [node, str(HERE / "server.mjs")],
        cwd=HERE,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdin is not None
            assert proc.stdout is not None
            proc.stdin.write(json.dumps(config))
            proc.stdin.close()
            # One line once it listens; EOF instead means it failed to start.
            line = proc.stdout.readline()
            assert line, f"the authorization server exited with {proc.wait(timeout=10)}"
            ready = json.loads(line)
            yield AuthorizationServer(ready["port"], ready["token_url"], ready["refresh_token"])
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
