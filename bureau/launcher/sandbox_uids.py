"""Which uid each principal's sandbox runs as: one of the machine's sandbox range, never
root's, the launcher's or the daemon's, and the same one for a principal for as long as
its workspace exists (the workspace belongs to it). Kept in the state dir
(``sandbox-uids.json``, 0600, written atomically), so a restarted launcher keeps it."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

from bureau.errors import InputError, UsageError
from bureau.files import atomic_write, read_private_json
from bureau.launcher.children import LauncherError

FILE = "sandbox-uids.json"
DEFAULT_RANGE = (2_000_000_000, 2_000_065_535)


def parse_range(text: str) -> tuple[int, int]:
    """``FIRST-LAST`` (inclusive), for --sandbox-uids."""
    first, sep, last = text.partition("-")
    if not sep or not first.isdigit() or not last.isdigit():
        raise UsageError(
            f"--sandbox-uids: {text!r}: expected FIRST-LAST, e.g. 2000000000-2000065535"
        )
    low, high = int(first), int(last)
    if not 0 < low <= high < 2**31 - 1:
        raise UsageError(f"--sandbox-uids: {text!r}: expected 0 < FIRST <= LAST < 2147483647")
    return low, high


class SandboxUids:
    def __init__(
        self, state_dir: Path, uid_range: tuple[int, int], reserved: Collection[int]
    ) -> None:
        self._path = state_dir / FILE
        self._range = uid_range
        self._reserved = {0, *reserved}
        low, high = uid_range
        clash = sorted(u for u in self._reserved if low <= u <= high)
        if clash:
            raise UsageError(
                f"--sandbox-uids: {low}-{high} holds uid {clash[0]}, which is root's, the "
                "launcher's or the daemon's; sandboxes must run as none of them"
            )
        self._uids: dict[str, int] = {}
        if self._path.exists():
            data = read_private_json(self._path, strict=True)
            if not isinstance(data, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                for k, v in data.items()
            ):
                raise InputError(str(self._path), None, "expected an object of principal -> uid")
            self._uids = dict(data)

    def known(self, principal: str) -> bool:
        return principal in self._uids

    def principals(self) -> list[str]:
        """Every principal given a uid."""
        return sorted(self._uids)

    def get(self, principal: str) -> int:
        uid = self._uids[principal]
        if uid in self._reserved:
            raise ValueError(f"uid {uid} is reserved")
        return uid

    def allocate(self, principal: str) -> int:
        if principal in self._uids:
            return self.get(principal)
        taken = set(self._uids.values())
        low, high = self._range
        uid = next((u for u in range(low, high + 1) if u not in taken), None)
        if uid is None:
            raise LauncherError(f"no free uid in --sandbox-uids {low}-{high} for a sandbox")
        self._uids[principal] = uid
        atomic_write(self._path, json.dumps(self._uids, sort_keys=True).encode(), 0o600)
        return uid
