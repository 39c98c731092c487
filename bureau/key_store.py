"""Where the machine's private key rests (WIRE.md "Machine key").

- ``systemd-creds``: sealed by ``systemd-creds encrypt --name=machine-key`` (host key or
  TPM) into ``machine-key.cred``; systemd hands it to the unit decrypted through
  ``LoadCredentialEncrypted=machine-key:...`` as ``$CREDENTIALS_DIRECTORY/machine-key``.
- ``plain``: ``machine-key.txt``, 0600, no trailing newline. Only when asked for.
``machine-key.pub`` (0644) is written in both cases.

The key crosses to systemd-creds over a pipe, never argv or environment, and a sealed key
is decrypted and compared before it is trusted, so a machine never rotates its password
to one derived from a key it cannot read back. A stored key is read strictly (no symlink,
0600, owned by this user or root; files.read_private_bytes): a key someone else planted
would have the machine publish it and derive its password from it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Collection
from enum import StrEnum
from pathlib import Path

from bureau import age_keys
from bureau.errors import KeyStoreError
from bureau.files import atomic_write, read_private_bytes, read_private_file
from bureau.secret import Secret

CREDENTIAL_NAME = "machine-key"
SEALED_FILE = "machine-key.cred"
PLAIN_FILE = "machine-key.txt"
PUBLIC_FILE = "machine-key.pub"
SEALED_MAX_BYTES = 64 * 1024  # a sealed age key is about 1 KiB


class KeyStorage(StrEnum):
    AUTO = "auto"
    SYSTEMD_CREDS = "systemd-creds"
    PLAIN = "plain"


def _creds_env() -> dict[str, str]:
    # systemd-creds must not see our notify socket or credentials directory.
    return {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}


def _systemd_creds(args: list[str], stdin: bytes) -> bytes:
    binary = shutil.which("systemd-creds")
    if binary is None:
        raise KeyStoreError("systemd-creds is not installed")
    result = subprocess.run(
        [binary, *args], input=stdin, capture_output=True, env=_creds_env(), check=False
    )
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        raise KeyStoreError(
            f"systemd-creds {args[0]} failed: {lines[-1] if lines else 'no output'}"
        )
    return result.stdout


def systemd_creds_works() -> bool:
    """Whether sealing works on this host (a systemd-creds that can encrypt with the host
    key or a TPM), tried with a throwaway payload."""
    try:
        _systemd_creds(["encrypt", f"--name={CREDENTIAL_NAME}", "-", "-"], b"probe")
    except KeyStoreError:
        return False
    return True


def resolve(storage: KeyStorage) -> KeyStorage:
    if storage is not KeyStorage.AUTO:
        return storage
    return KeyStorage.SYSTEMD_CREDS if systemd_creds_works() else KeyStorage.PLAIN


def load(
    state_dir: Path, credentials_directory: str | None, owners: Collection[int] | None = None
) -> tuple[Secret, str] | None:
    """The stored key and where it came from, in WIRE.md's order, or None when none.
    Files in ``state_dir`` must be owned by ``owners`` (default files.trusted_owners());
    what systemd delivers in ``credentials_directory`` is systemd's, not checked."""
    if credentials_directory:
        delivered = Path(credentials_directory) / CREDENTIAL_NAME
        if delivered.exists():
            return Secret(delivered.read_text().strip()), str(delivered)
    sealed = state_dir / SEALED_FILE
    if _present(sealed):
        # Read here (strictly), decrypted from the pipe: systemd-creds would open any file.
        blob = read_private_bytes(sealed, SEALED_MAX_BYTES, strict=True, owners=owners)
        raw = _systemd_creds(["decrypt", f"--name={CREDENTIAL_NAME}", "-", "-"], blob)
        return Secret(raw.decode().strip()), str(sealed)
    plain = state_dir / PLAIN_FILE
    if _present(plain):
        return Secret(read_private_file(plain, strict=True, owners=owners).strip()), str(plain)
    return None


def _present(path: Path) -> bool:
    # A dangling symlink is present too: reading it strictly says what is wrong.
    return path.exists() or path.is_symlink()


def store(state_dir: Path, secret_key: Secret, storage: KeyStorage) -> Path:
    if storage is KeyStorage.SYSTEMD_CREDS:
        path = state_dir / SEALED_FILE
        sealed = _systemd_creds(
            ["encrypt", f"--name={CREDENTIAL_NAME}", "-", "-"], secret_key.reveal().encode()
        )
        atomic_write(path, sealed, 0o600)
        opened = _systemd_creds(["decrypt", f"--name={CREDENTIAL_NAME}", str(path), "-"], b"")
        if Secret(opened.decode().strip()) != secret_key:
            path.unlink()
            raise KeyStoreError(f"{path}: the sealed key does not decrypt to the generated key")
        return path
    if storage is KeyStorage.PLAIN:
        path = state_dir / PLAIN_FILE
        atomic_write(path, secret_key.reveal().encode(), 0o600)
        return path
    raise KeyStoreError(f"key storage {storage} must be resolved before storing")


def write_public(state_dir: Path, public_key: str) -> None:
    path = state_dir / PUBLIC_FILE
    if not path.exists() or path.read_text().strip() != public_key:
        atomic_write(path, public_key.encode() + b"\n", 0o644)


def ensure(
    state_dir: Path, storage: KeyStorage, credentials_directory: str | None
) -> tuple[Secret, str, str]:
    """Load the machine key, or generate and persist one. Returns (secret key, public key,
    what happened) where the last is a short description for the log."""
    found = load(state_dir, credentials_directory)
    if found is not None:
        secret_key, source = found
        public_key = age_keys.public_key_of(secret_key, source)
        write_public(state_dir, public_key)
        return secret_key, public_key, f"loaded from {source}"
    chosen = resolve(storage)
    secret_key, public_key = age_keys.generate()
    path = store(state_dir, secret_key, chosen)
    write_public(state_dir, public_key)
    return secret_key, public_key, f"generated and stored with {chosen} in {path}"
