"""The homeserver-admin interface over Synapse, against the session's real Synapse: what
decommission, provision and `bureau agent` rely on, one account's life from register to
deactivate and back."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Fleet, fresh

from bureau.errors import MatrixError
from bureau.matrix.client import MatrixHTTP
from bureau.matrix.homeserver_admin import homeserver_admin
from bureau.operator import agents
from bureau.operator.credentials import admin_client
from bureau.secret import Secret
from bureau.wire import names

BUREAU = Path(__file__).resolve().parents[2] / "bureau"


def test_an_account_deactivated_and_brought_back(fleet: Fleet) -> None:
    hub = fleet.hub
    accounts = homeserver_admin(admin_client(fleet.creds))
    assert accounts.is_server_admin(fleet.creds.admin_user)

    localpart = fresh("acct")
    user = names.user_id(localpart, hub.server_name)
    first = Secret("first-password-" + fresh(""))
    MatrixHTTP(hub.url).register_with_token(localpart, first, hub.token)
    assert not accounts.is_server_admin(user)
    assert not accounts.is_deactivated(user)

    own = MatrixHTTP(hub.url, MatrixHTTP(hub.url).login_password(localpart, first).access_token)
    # Asked by someone who is no server admin: False, not an error.
    assert not homeserver_admin(own).is_server_admin(fleet.creds.admin_user)

    # A principal's token, as `bureau agent create` mints it: a new password logs out
    # every earlier device, and the token is a device of the account's own.
    minted = MatrixHTTP(
        hub.url, agents.mint_token(admin_client(fleet.creds), fleet.creds, localpart)
    )
    assert minted.whoami()[0] == user
    _assert_revoked(own)
    with pytest.raises(MatrixError) as old_password:
        MatrixHTTP(hub.url).login_password(localpart, first)
    assert old_password.value.status == 403
    again = MatrixHTTP(
        hub.url, agents.mint_token(admin_client(fleet.creds), fleet.creds, localpart)
    )
    _assert_revoked(minted)  # an older bundle's token dies with the new one

    accounts.deactivate(user)
    assert accounts.is_deactivated(user)
    # Its devices are gone, the minted token with them (destroy's promise), and its
    # password too.
    _assert_revoked(again)
    with pytest.raises(MatrixError) as refused:
        MatrixHTTP(hub.url).login_password(localpart, first)
    assert refused.value.status == 403

    second = Secret("second-password-" + fresh(""))
    accounts.reactivate(user, second)
    assert not accounts.is_deactivated(user)
    assert MatrixHTTP(hub.url).login_password(localpart, second).user_id == user


def _assert_revoked(client: MatrixHTTP) -> None:
    with pytest.raises(MatrixError) as revoked:
        client.whoami()
    assert revoked.value.status == 401


def test_no_such_account_is_404(fleet: Fleet) -> None:
    accounts = homeserver_admin(admin_client(fleet.creds))
    nobody = names.user_id(fresh("nobody"), fleet.hub.server_name)
    for call in (accounts.deactivate, accounts.is_deactivated):
        with pytest.raises(MatrixError) as missing:
            call(nobody)
        assert missing.value.status == 404


def test_only_the_synapse_module_names_the_synapse_admin_api() -> None:
    """Another homeserver is one new module: nothing else may reach past the interface."""
    naming = sorted(
        str(path.relative_to(BUREAU))
        for path in BUREAU.rglob("*.py")
        if "/_synapse" in path.read_text()
    )
    assert naming == ["matrix/synapse_admin.py"]
