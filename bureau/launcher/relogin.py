"""Logging the machine in again after a soft logout (WIRE.md: "with soft_logout: true log
in again keeping the device").

This is the one network call the launcher makes after first boot, and it is narrow on
purpose: only the launcher holds the key the machine's password derives from, so only it
can log in; it goes only to the homeserver session.json names (written by first boot, not
by the daemon); and the launcher asks the homeserver itself whether the session was
soft-logged-out rather than taking the daemon's word for it. A session the homeserver
ended for good (a hard logout, a revoked device, a deactivated account) is not revived.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bureau.errors import BureauError, MatrixError
from bureau.machine_state import load_session, save_session
from bureau.matrix.client import MatrixHTTP
from bureau.passwords import machine_permanent_password
from bureau.secret import Secret
from bureau.wire import names
from bureau.wire.files import Session


def relogin(state_dir: Path, secret_key: Secret, log: Any) -> bool:
    """Log in again with the same device if the homeserver says the session was soft
    logged out; False when the session still works (nothing to do). Raises BureauError,
    holding no secret, when logging in again is not the remedy or fails."""
    session = load_session(state_dir)
    if session is None:
        raise BureauError(f"{state_dir}/session.json: missing")
    client = MatrixHTTP(session.homeserver_url, session.access_token, max_attempts=3)
    try:
        client.whoami()
    except MatrixError as exc:
        if exc.errcode != "M_UNKNOWN_TOKEN":
            raise
        if not exc.soft_logout:
            raise BureauError(
                "the homeserver ended this machine's session for good (no soft_logout); "
                "not logging in again"
            ) from None
    else:
        return False
    localpart, _ = names.parse_user_id(session.user_id)
    password = machine_permanent_password(localpart, secret_key)
    login = MatrixHTTP(session.homeserver_url, max_attempts=3).login_password(
        localpart, password, device_id=session.device_id
    )
    if login.user_id != session.user_id or login.device_id != session.device_id:
        raise BureauError(
            f"the homeserver logged us in as {login.user_id} (device {login.device_id}), "
            f"not {session.user_id} (device {session.device_id})"
        )
    save_session(
        state_dir,
        Session(session.homeserver_url, login.user_id, login.access_token, login.device_id),
    )
    log.info("logged in again after a soft logout", device_id=login.device_id)
    return True
