"""The short-lived REAPI token the credential helper hands to Bazel: read from the file
the profile names, only when that file is safe (a regular file of the caller's, not
readable by group or others), and with its expiry when it is a JWT. Errors never contain
the token."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from bureau.secret import Secret

MAX_TOKEN_BYTES = 64 * 1024
SKEW_SECONDS = 60  # a token this close to its exp is treated as expired


class TokenFileError(Exception):
    """One line naming the file and the problem; never the token."""


@dataclass(frozen=True)
class Token:
    value: Secret
    expires_at: int | None  # Unix seconds (exp minus the skew margin) for a JWT


def jwt_expiry(token: str) -> int | None:
    """The ``exp`` claim of a JWT, or None when the token is not a JWT or has none. Pure;
    the signature is not checked (the cache front door does that)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, json.JSONDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return exp if isinstance(exp, int) and not isinstance(exp, bool) else None


def read_token(path: Path, now: float | None = None, uid: int | None = None) -> Token:
    where = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise TokenFileError(f"{where}: no such token file") from None
    except OSError as exc:
        raise TokenFileError(f"{where}: {exc.strerror or 'cannot open'}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TokenFileError(f"{where}: not a regular file")
        if st.st_uid != (os.getuid() if uid is None else uid):
            raise TokenFileError(f"{where}: owned by uid {st.st_uid}, not by you")
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise TokenFileError(
                f"{where}: mode {stat.S_IMODE(st.st_mode):04o} lets others read it; chmod 600"
            )
        raw = os.read(fd, MAX_TOKEN_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_TOKEN_BYTES:
        raise TokenFileError(f"{where}: larger than {MAX_TOKEN_BYTES} bytes")
    try:
        value = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise TokenFileError(f"{where}: not ASCII text") from None
    if not value or any(c.isspace() for c in value):
        raise TokenFileError(f"{where}: expected one token on one line")
    exp = jwt_expiry(value)
    expires_at = None if exp is None else exp - SKEW_SECONDS
    if expires_at is not None and expires_at <= (time.time() if now is None else now):
        raise TokenFileError(f"{where}: the token expired (exp {exp}); fetch a new one")
    return Token(Secret(value), expires_at)
