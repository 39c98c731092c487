"""Password derivations shared with the upstream Go Bureau (WIRE.md: hex SHA-256 of a
UTF-8 string). Pure functions; inputs and outputs are Secrets."""

from __future__ import annotations

import hashlib
import secrets

from bureau.secret import Secret

ADMIN_LOCALPART = "bureau-admin"


def _sha256_hex(text: str) -> Secret:
    return Secret(hashlib.sha256(text.encode("utf-8")).hexdigest())


def admin_password(registration_token: Secret) -> Secret:
    return _sha256_hex("bureau-admin-password:" + registration_token.reveal())


def machine_permanent_password(localpart: str, age_secret_key: Secret) -> Secret:
    return _sha256_hex(f"bureau-machine-permanent:{localpart}:{age_secret_key.reveal()}")


def machine_legacy_password(localpart: str, registration_token: Secret) -> Secret:
    """Upstream's launcher's, on its registration-token first boot (firstboot.go
    derivePassword). Bureau's launcher has no such path (a machine never holds the hub's
    token); kept as the record of upstream's derivation, with its test vector."""
    return _sha256_hex(f"bureau-machine-password:{localpart}:{registration_token.reveal()}")


def one_time_password() -> Secret:
    """64 lowercase hex characters from 32 random bytes, as bootstrap.json requires."""
    return Secret(secrets.token_hex(32))
