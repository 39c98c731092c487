"""The machine's age X25519 key pair. The only module that imports pyrage: ``str()`` of a
pyrage identity *is* the secret key, so identities never leave this module; callers get
a Secret and the public key string."""

from __future__ import annotations

import io

import pyrage
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


class DecryptFailed(Exception):
    """The bundle is not for this key, or it was tampered with or truncated."""


def encrypt(plaintext: bytes, recipients: list[str]) -> bytes:
    try:
        parsed = [x25519.Recipient.from_str(r) for r in recipients]
    except Exception:  # pyrage's RecipientError
        raise KeyStoreError("not an age1... X25519 recipient") from None
    return pyrage.encrypt(plaintext, parsed)


def decrypt(ciphertext: bytes, secret_key: Secret) -> bytes:
    """Decrypt with the streaming form, which stays linear in the number of recipients
    where pyrage.decrypt() grows with its square."""
    identity = x25519.Identity.from_str(secret_key.reveal())
    out = io.BytesIO()
    try:
        pyrage.decrypt_io(io.BytesIO(ciphertext), out, [identity])
    except Exception:  # pyrage's DecryptError: its text names no secret, but keep ours fixed
        raise DecryptFailed("not encrypted to this machine's key, or damaged") from None
    return out.getvalue()
