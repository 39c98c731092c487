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
        if self.is_real_root:
            try:
                return Account(name, pwd.getpwnam(name).pw_uid)
            except KeyError:
                return None
        return self._accounts("etc/passwd").get(name)

    def group(self, name: str) -> Account | None:
        if self.is_real_root:
            try:
                return Account(name, grp.getgrnam(name).gr_gid)
            except KeyError:
                return None
        return self._accounts("etc/group").get(name)

    def _accounts(self, relative: str) -> dict[str, Account]:
        try:
            found = parse_accounts((self.root / relative).read_text())
        except FileNotFoundError:
            found = {}
        # root is 0 on every Linux, listed or not.
        return {"root": Account("root", 0), **found}

    def name_of_uid(self, uid: int) -> str:
        if self.is_real_root:
            try:
                return pwd.getpwuid(uid).pw_name
            except KeyError:
                return str(uid)
        names = {a.id: a.name for a in self._accounts("etc/passwd").values()}
        return names.get(uid, str(uid))

    def name_of_gid(self, gid: int) -> str:
        if self.is_real_root:
            try:
                return grp.getgrgid(gid).gr_name
            except KeyError:
                return str(gid)
        names = {a.id: a.name for a in self._accounts("etc/group").values()}
        return names.get(gid, str(gid))

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
