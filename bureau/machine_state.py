"""The machine's state directory: session.json (WIRE.md), 0600, written atomically."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

from bureau.files import atomic_write, read_private_json
from bureau.wire.files import Session

SESSION_FILE = "session.json"


def session_path(state_dir: Path) -> Path:
    return state_dir / SESSION_FILE


def load_session(state_dir: Path, owners: Collection[int] | None = None) -> Session | None:
    """session.json, read strictly: its token is the machine's, so a file someone else
    could have written (another owner than ``owners``, default files.trusted_owners(); a
    symlink; a loose mode) is an error, never a session."""
    path = session_path(state_dir)
    if not path.exists() and not path.is_symlink():
        return None
    return Session.from_json(read_private_json(path, strict=True, owners=owners), str(path))


def save_session(state_dir: Path, session: Session) -> None:
    body = json.dumps(session.to_json(), indent=2) + "\n"
    atomic_write(session_path(state_dir), body.encode(), 0o600)
