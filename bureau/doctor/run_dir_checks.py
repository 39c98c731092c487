"""The doctor's check of what the launcher keeps under /run/bureau: adoption records in
``launcher/``, proxy sockets in ``fleet/``. All of it must be bureau's (or root's), with
no directory writable by group or others and no symbolic link: an entry planted while
the run dir was loose outlives the repair of the run dir's own mode, and the launcher
refuses to serve over one (files.check_owned_tree)."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Collection, Iterator
from pathlib import Path

from bureau.doctor.findings import Finding, fail, not_applicable, ok
from bureau.doctor.host_checks import RUN_DIR, USER, trusted
from bureau.errors import BureauError
from bureau.host import Host

PARTS = ("launcher", "fleet")  # as bureau/launcher/main.py's RUN_DIR_PARTS


class RunDirChecks:
    def __init__(self, host: Host) -> None:
        self.host = host

    def entries(self) -> Iterator[Finding]:
        name = f"contents of {RUN_DIR}"
        if not self._tops():
            yield not_applicable(name, "the launcher keeps nothing there yet")
            return
        owners = trusted(self.host)
        unsafe = [found for top in self._tops() for found in _unsafe(top, owners)]
        if not unsafe:
            yield ok(name, f"{USER}'s own")
            return
        path, problem = unsafe[0]
        more = f" (and {len(unsafe) - 1} more)" if len(unsafe) > 1 else ""
        yield fail(
            name,
            f"{RUN_DIR / path.relative_to(self.host.path(RUN_DIR))} {problem}{more}",
            f"directories made {USER}'s and not writable by others; files and links someone "
            "else put there removed",
            self._fix,
        )

    def _tops(self) -> list[Path]:
        run_dir = self.host.path(RUN_DIR)
        return [run_dir / p for p in PARTS if (run_dir / p).exists() or (run_dir / p).is_symlink()]

    def _fix(self) -> None:
        account, team = self.host.user(USER), self.host.group(USER)
        if account is None or team is None:
            raise BureauError(f"user or group {USER} does not exist yet")
        owners = trusted(self.host)
        for top in self._tops():
            pending = [top]
            while pending:
                path = pending.pop()
                # Proxies' temporary sockets come and go while the doctor walks.
                with contextlib.suppress(FileNotFoundError):
                    st = path.lstat()
                    if stat.S_ISDIR(st.st_mode):
                        # A directory holds nothing of its own; what is in it is next.
                        if st.st_uid not in owners:
                            os.chown(path, account.id, team.id, follow_symlinks=False)
                        path.chmod(stat.S_IMODE(st.st_mode) & ~0o022)
                        pending.extend(path.iterdir())
                    elif stat.S_ISLNK(st.st_mode) or st.st_uid not in owners:
                        path.unlink()


def _unsafe(top: Path, owners: Collection[int]) -> Iterator[tuple[Path, str]]:
    pending = [top]
    while pending:
        path = pending.pop()
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            yield path, "is a symbolic link"
            continue
        if st.st_uid not in owners:
            yield path, f"is owned by uid {st.st_uid}"
        if stat.S_ISDIR(st.st_mode):
            if st.st_mode & 0o022:
                yield path, f"has mode {stat.S_IMODE(st.st_mode):04o}"
            with contextlib.suppress(FileNotFoundError):
                pending.extend(path.iterdir())
