"""Where a profile is read from, in order of precedence; the first source that sets
GF_FLYWHEEL_PROFILE_STATE is the profile, and nothing is mixed in from the others (a
half-overridden profile would be neither):

  1. the environment (a NixOS or Home Manager module exports it to sessions);
  2. ``.env.flywheel.local`` in the working directory (flywheel-enroll's fallback);
  3. ``$HOME/.config/gloriousflywheel/profile.env`` (the Home Manager module);
  4. ``/etc/profile.d/gloriousflywheel.sh`` (the NixOS module);
  5. ``/run/bureau/profile.env`` (materialized by bureau-daemon from the fleet room).

Files are parsed, never executed: ``NAME=value`` lines, an optional ``export``, simple
quotes; anything else is skipped.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from bureau.profile import model

LOCAL_FILE = ".env.flywheel.local"
HOME_FILE = Path(".config/gloriousflywheel/profile.env")
SYSTEM_FILE = Path("/etc/profile.d/gloriousflywheel.sh")
BUREAU_FILE = Path("/run/bureau/profile.env")


@dataclass(frozen=True)
class Found:
    source: str  # "environment" or a path
    profile: model.Profile


def parse_env_file(text: str) -> model.Profile:
    """The profile variables of an env or profile.d file. Pure; never runs anything."""
    found: model.Profile = {}
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("export "):
            stripped = stripped[len("export ") :].strip()
        name, sep, raw = stripped.partition("=")
        if not sep or name not in model.VARIABLES:
            continue
        try:
            words = shlex.split(raw, comments=True)
        except ValueError:
            continue
        found[name] = words[0] if len(words) == 1 else ""
    return found


def candidates(cwd: Path, home: Path | None, root: Path) -> list[tuple[str, Path | None]]:
    files: list[tuple[str, Path | None]] = [("environment", None), (LOCAL_FILE, cwd / LOCAL_FILE)]
    if home is not None:
        files.append((str(home / HOME_FILE), home / HOME_FILE))
    for path in (SYSTEM_FILE, BUREAU_FILE):
        files.append((str(path), root / str(path).lstrip("/")))
    return files


def load(
    environ: dict[str, str] | None = None,
    cwd: Path | None = None,
    root: Path = Path("/"),
) -> Found | None:
    environ = dict(os.environ) if environ is None else environ
    home = Path(environ["HOME"]) if environ.get("HOME") else None
    for source, path in candidates(cwd or Path.cwd(), home, root):
        if path is None:
            profile = {k: v for k, v in environ.items() if k in model.VARIABLES}
        else:
            try:
                profile = parse_env_file(path.read_text())
            except (OSError, UnicodeDecodeError):
                continue
        if profile.get(model.STATE):
            return Found(source, profile)
    return None
