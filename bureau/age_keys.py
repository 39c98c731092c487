"""The machine's age X25519 key pair. The only module that imports pyrage: ``str()`` of a
pyrage identity *is* the secret key, so identities never leave this module; callers get
a Secret and the public key string."""

from __future__ import annotations

from pyrage import x25519

from bureau.errors import KeyStoreError
from bureau.secret import Secret


def generate() -> tuple[Secret, str]:
    identity = x25519.Identity.generate()
    return Secret(str(identity)), str(identity.to_public())


def public_key_of(secret_key: Secret, where: str) -> str:
    try:
        identity = x25519.Identity.from_str(secret_key.reveal())
    except Exception:  # pyrage raises its own error types; the message would echo input
        raise KeyStoreError(f"{where}: does not hold an AGE-SECRET-KEY-1... key") from None
    return str(identity.to_public())
