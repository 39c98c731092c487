"""gf-reapi-credhelper: a Bazel credential helper (``--credential_helper=host=PATH``).

Bazel runs ``gf-reapi-credhelper get`` with ``{"uri": "..."}`` on stdin and reads
``{"headers": {"Authorization": ["Bearer <token>"]}, "expires": "<RFC 3339>"}`` from
stdout. The helper answers only for the host the profile maps to a helper, with the token
from the profile's token file. Every failure is one line on stderr without the token,
nothing on stdout, and a non-zero exit: Bazel then goes without credentials rather than
with wrong ones.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from bureau.profile import model, sources
from bureau.profile.token_file import TokenFileError, read_token

PROG = "gf-reapi-credhelper"
MAX_REQUEST = 64 * 1024
OPAQUE_TOKEN_SECONDS = 300  # how long Bazel may keep a token whose expiry it cannot see


class HelperError(Exception):
    pass


def requested_host(raw: str) -> str:
    if not raw.strip():
        raise HelperError('stdin: empty; expected {"uri": "..."}')
    try:
        request = json.loads(raw)
    except json.JSONDecodeError:
        raise HelperError('stdin: not JSON; expected {"uri": "..."}') from None
    if not isinstance(request, dict) or not isinstance(request.get("uri"), str):
        raise HelperError('stdin: expected an object with a string "uri"')
    host = urlsplit(request["uri"]).hostname
    if not host:
        raise HelperError("stdin: uri has no host")
    return host


def answer(raw: str, profile: model.Profile | None, now: float) -> str:
    host = requested_host(raw)
    if profile is None:
        raise HelperError("no fleet profile (GF_FLYWHEEL_PROFILE_STATE is set nowhere)")
    helper = model.parse_helper(profile.get(model.HELPER, ""))
    if helper is None or helper.host != host:
        raise HelperError(f"{host}: not mapped to this helper by {model.HELPER}")
    token_path = profile.get(model.TOKEN_FILE, "")
    if not token_path:
        raise HelperError(f"{model.TOKEN_FILE}: not set in the profile")
    try:
        token = read_token(Path(token_path), now=now)
    except TokenFileError as exc:
        raise HelperError(str(exc)) from None
    expires = token.expires_at if token.expires_at is not None else int(now) + OPAQUE_TOKEN_SECONDS
    body = {
        "headers": {"Authorization": ["Bearer " + token.value.reveal()]},
        "expires": datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return json.dumps(body)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args != ["get"]:
            raise HelperError(f'usage: {PROG} get (with {{"uri": ...}} on stdin)')
        raw = sys.stdin.read(MAX_REQUEST + 1)
        if len(raw) > MAX_REQUEST:
            raise HelperError(f"stdin: larger than {MAX_REQUEST} bytes")
        found = sources.load()
        reply = answer(raw, found.profile if found else None, time.time())
    except HelperError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        raise SystemExit(1) from None
    sys.stdout.write(reply + "\n")
    sys.stdout.flush()
