"""What bureau needs from a homeserver beyond the client-server API: the few account
operations only a server admin may make. The operator side asks for them through this
interface and never names a homeserver's admin API; supporting another homeserver is one
new module implementing HomeserverAdmin, chosen in ``homeserver_admin``.

Every method raises MatrixError (MatrixUnreachable when the homeserver cannot be reached)
with the status the homeserver gave, as the blocking client does."""

from __future__ import annotations

from typing import Protocol

from bureau.matrix.client import MatrixHTTP
from bureau.matrix.synapse_admin import SynapseAdmin
from bureau.secret import Secret


class HomeserverAdmin(Protocol):
    def is_server_admin(self, user_id: str) -> bool:
        """Whether the account may use the admin API; False where the homeserver refuses
        to say (the asker is no admin) or has no such API."""
        ...

    def is_deactivated(self, user_id: str) -> bool:
        """Whether an existing account is deactivated (404 when there is no account)."""
        ...

    def deactivate(self, user_id: str) -> None:
        """The account can no longer log in and its devices and tokens are gone; its rooms
        and events stay (no erasure). 404 when there is no such account."""
        ...

    def reactivate(self, user_id: str, password: Secret) -> None:
        """A deactivated account back, logging in with ``password`` (a deactivated account
        has none), with no device left from before."""
        ...

    def reset_password(self, user_id: str, password: Secret) -> None:
        """The account's password is now ``password`` and every device it had is logged
        out (their tokens die). How bureau mints a principal's token: a fresh password,
        a normal login with it, the password thrown away; the token is then a device of
        the account's, which deactivation revokes. (A homeserver's "log in as" token may
        not be: Synapse keeps its admin login tokens alive after deactivation.)"""
        ...


def homeserver_admin(client: MatrixHTTP) -> HomeserverAdmin:
    """The admin interface of the homeserver ``client`` talks to, acting as its user (who
    must be a server admin for anything but ``is_server_admin``). Synapse is the one
    homeserver bureau sets up and tests against."""
    return SynapseAdmin(client)
