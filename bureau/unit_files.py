"""The systemd units and tmpfiles.d entry shipped inside the package (bureau/units/), read
as text: `bureau machine doctor --fix` installs exactly these, so the units on a host
always match the code that runs under them. Pure apart from reading package data."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

SANDBOXD_UNIT = "bureau-sandboxd.service"
LAUNCHER_UNIT = "bureau-launcher.service"
DAEMON_UNIT = "bureau-daemon.service"
# In the order they start: the launcher wants bureau-sandboxd, the daemon the launcher.
SERVICES = (SANDBOXD_UNIT, LAUNCHER_UNIT, DAEMON_UNIT)
TMPFILES = "bureau.tmpfiles.conf"
UNIT_DIR = Path("/etc/systemd/system")
TMPFILES_PATH = Path("/etc/tmpfiles.d/bureau.conf")


def packaged(name: str) -> str:
    return (resources.files("bureau") / "units" / name).read_text(encoding="utf-8")


def binaries() -> list[str]:
    """The programs the units' ExecStart= lines run, in unit order."""
    found = []
    for name in SERVICES:
        text = packaged(name).replace("\\\n", " ")
        for line in text.splitlines():
            if line.startswith("ExecStart="):
                found.append(shlex.split(line.partition("=")[2])[0])
    return found


@dataclass(frozen=True)
class Directory:
    path: Path
    mode: int
    user: str
    group: str


def directories(text: str | None = None) -> list[Directory]:
    """The ``d`` lines of the tmpfiles.d entry: what directories exist, owned and moded."""
    found = []
    for line in (packaged(TMPFILES) if text is None else text).splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0] == "d":
            found.append(Directory(Path(fields[1]), int(fields[2], 8), fields[3], fields[4]))
    return found
