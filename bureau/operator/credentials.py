"""The operator credential file (WIRE.md: ``bureau-creds``, 0600, KEY=VALUE): ours, or
upstream's (``MATRIX_*`` keys only), read alike."""

from __future__ import annotations

from pathlib import Path

from bureau.files import atomic_write, parse_env, read_private_file, render_env
from bureau.matrix.client import MatrixHTTP
from bureau.wire.files import OperatorCredentials

HEADER = "Bureau operator credentials: the hub's admin login and registration token. Keep 0600."


def read(path: Path) -> dict[str, str]:
    """The file's KEY=VALUE pairs, as written."""
    return parse_env(read_private_file(path), str(path))


def load(path: Path, fleet: str | None = None) -> OperatorCredentials:
    """``fleet`` (validated; from --fleet) wins over the file's BUREAU_FLEET, which
    upstream's file lacks (then DEFAULT_FLEET)."""
    return OperatorCredentials.from_env(read(path), str(path), fleet)


def render(creds: OperatorCredentials) -> bytes:
    return render_env(creds.to_env(), HEADER).encode()


def write(path: Path, creds: OperatorCredentials) -> bool:
    """Write the file unless it already holds exactly this; returns whether it changed."""
    body = render(creds)
    try:
        if path.read_bytes() == body:
            return False
    except FileNotFoundError:
        pass
    atomic_write(path, body, 0o600)
    return True


def admin_client(creds: OperatorCredentials) -> MatrixHTTP:
    return MatrixHTTP(creds.homeserver_url, creds.admin_token)
