"""HomeserverAdmin over Synapse's admin API (/_synapse/admin), through the blocking
client; and Synapse's shared-secret registration, which only the hub (bureau.hub, which
runs Synapse and holds its registration_shared_secret) uses. The only module of bureau
that names a /_synapse path."""

from __future__ import annotations

import hashlib
import hmac

from bureau.matrix.client import MatrixHTTP, response_error, segment, text_field
from bureau.secret import Secret

ADMIN = "/_synapse/admin"


class SynapseAdmin:
    def __init__(self, client: MatrixHTTP) -> None:
        self._client = client

    def is_server_admin(self, user_id: str) -> bool:
        what = f"ask whether {user_id} is a server admin"
        resp = self._client.send("GET", f"{ADMIN}/v1/users/{segment(user_id)}/admin", what=what)
        if resp.status in (403, 404):
            return False
        if resp.status >= 400:
            raise response_error(what, resp)
        return resp.body.get("admin") is True

    def is_deactivated(self, user_id: str) -> bool:
        account = self._client.call(
            "GET", f"{ADMIN}/v2/users/{segment(user_id)}", what=f"read {user_id}"
        )
        return account.get("deactivated") is True

    def deactivate(self, user_id: str) -> None:
        self._client.call(
            "POST",
            f"{ADMIN}/v1/deactivate/{segment(user_id)}",
            {"erase": False},
            what=f"deactivate {user_id}",
        )

    def reactivate(self, user_id: str, password: Secret) -> None:
        self._client.call(
            "PUT",
            f"{ADMIN}/v2/users/{segment(user_id)}",
            {"deactivated": False, "password": password.reveal(), "logout_devices": True},
            what=f"reactivate {user_id}",
        )

    def reset_password(self, user_id: str, password: Secret) -> None:
        self._client.call(
            "POST",
            f"{ADMIN}/v1/reset_password/{segment(user_id)}",
            {"new_password": password.reveal(), "logout_devices": True},
            what=f"set a new password for {user_id}",
        )


def register_server_admin(
    client: MatrixHTTP, localpart: str, password: Secret, shared_secret: Secret
) -> None:
    """Synapse's shared-secret registration of a server admin (the hub's first account:
    the registration token's accounts are never admins)."""
    path = f"{ADMIN}/v1/register"
    what = f"register server admin {localpart}"
    nonce = text_field(client.call("GET", path, what=what), "nonce", what)
    signed = "\x00".join((nonce, localpart, password.reveal(), "admin")).encode()
    mac = hmac.new(shared_secret.reveal().encode(), signed, hashlib.sha1)
    body = {
        "nonce": nonce,
        "username": localpart,
        "password": password.reveal(),
        "admin": True,
        "mac": mac.hexdigest(),
    }
    client.call("POST", path, body, what=what)
