"""Wheels of this working tree and of everything it depends on, for a pip that reaches no
index: what script/bootstrap-machine installs from inside a throwaway machine. The
dependencies' wheels are the versions this checkout's venv holds, built once and kept in
.venv/wheelhouse/ under a digest of those versions; bureau's own wheel is built anew
each time, from the files as they are now."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".venv" / "wheelhouse"


@dataclass(frozen=True)
class Wheels:
    bureau: Path  # bureau's own wheel
    dirs: tuple[Path, ...]  # where pip finds every wheel it needs

    def pip_env(self) -> dict[str, str]:
        """pip's settings for installing from these wheels alone."""
        return {
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": " ".join(map(str, self.dirs)),
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }


def _pip(*args: str | Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, f"pip {' '.join(map(str, args))}: {done.stderr}"


def _dependencies() -> Path:
    """A directory of wheels for bureau's dependencies, at this venv's versions."""
    requirements = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    digest = hashlib.sha256("\n".join([*requirements, frozen]).encode()).hexdigest()[:16]
    kept = CACHE / digest
    if kept.is_dir():
        return kept
    CACHE.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=CACHE))
    try:
        constraints = building / "constraints.txt"
        constraints.write_text(frozen)
        _pip("wheel", "--constraint", constraints, "--wheel-dir", building, *requirements)
        constraints.unlink()
        try:
            building.rename(kept)
        except OSError:  # another run built it meanwhile
            if not kept.is_dir():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return kept


def build(workdir: Path) -> Wheels:
    """bureau's wheel (in ``workdir``) and its dependencies'."""
    source = workdir / "source"
    source.mkdir(parents=True)
    # A copy: building in place would leave build/ and *.egg-info in the shared tree.
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(
        REPO / "bureau", source / "bureau", ignore=shutil.ignore_patterns("__pycache__")
    )
    own = workdir / "bureau-wheel"
    _pip("wheel", "--no-deps", "--wheel-dir", own, source)
    (wheel,) = own.glob("bureau-*.whl")
    return Wheels(wheel, (own, _dependencies()))
