"""The host that `bureau machine doctor` looks at and mends, under a root prefix.

Every path goes through ``Host.path``, so the doctor runs against a temporary tree in
tests (``--root``) exactly as it runs against ``/``. Users and groups are read from the
root's own /etc/passwd and /etc/group (through NSS on the real root), and created with
``useradd``/``groupadd --prefix``. systemd is *running* only on the real root when
/run/systemd/system exists; unit files are enabled offline with ``systemctl --root``.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bureau.errors import BureauError


@dataclass(frozen=True)
class Account:
    name: str
    id: int


def parse_accounts(text: str) -> dict[str, Account]:
    """name -> id from passwd(5) or group(5) text. Pure."""
    found = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            found[fields[0]] = Account(fields[0], int(fields[2]))
    return found


class Host:
    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root.absolute()

    @property
    def is_real_root(self) -> bool:
        return self.root == Path("/")

    def path(self, absolute: Path | str) -> Path:
        return self.root / str(absolute).lstrip("/")

    # -- accounts ------------------------------------------------------------------------

    def user(self, name: str) -> Account | None:
        return self._by_name(name, "etc/passwd", lambda n: pwd.getpwnam(n).pw_uid)

    def group(self, name: str) -> Account | None:
        return self._by_name(name, "etc/group", lambda n: grp.getgrnam(n).gr_gid)

    def name_of_uid(self, uid: int) -> str:
        return self._by_id(uid, "etc/passwd", lambda i: pwd.getpwuid(i).pw_name)

    def name_of_gid(self, gid: int) -> str:
        return self._by_id(gid, "etc/group", lambda i: grp.getgrgid(i).gr_name)

    def _by_name(self, name: str, database: str, nss: Callable[[str], int]) -> Account | None:
        """On the real root through NSS (LDAP and friends included), else the root's file."""
        if self.is_real_root:
            try:
                return Account(name, nss(name))
            except KeyError:
                return None
        return self._accounts(database).get(name)

    def _by_id(self, number: int, database: str, nss: Callable[[int], str]) -> str:
        """The name of a uid or gid, or the number itself when it has none."""
        if self.is_real_root:
            try:
                return nss(number)
            except KeyError:
                return str(number)
        names = {a.id: a.name for a in self._accounts(database).values()}
        return names.get(number, str(number))

    def _accounts(self, relative: str) -> dict[str, Account]:
        try:
            found = parse_accounts((self.root / relative).read_text())
        except FileNotFoundError:
            found = {}
        # root is 0 on every Linux, listed or not.
        return {"root": Account("root", 0), **found}

    def prefix_args(self) -> list[str]:
        return [] if self.is_real_root else ["--prefix", str(self.root)]

    # -- systemd -------------------------------------------------------------------------

    @property
    def systemd_running(self) -> bool:
        return self.is_real_root and Path("/run/systemd/system").is_dir()

    def systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        root = [] if self.is_real_root else [f"--root={self.root}"]
        return run_tool("systemctl", *root, *args)


def run_tool(program: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A system tool, its output captured; missing tools are a clear error."""
    binary = shutil.which(program)
    if binary is None:
        raise BureauError(f"{program} is not installed")
    return subprocess.run(
        [binary, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")},
    )


def tool_failed(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"
