"""The launcher's import closure is its audit surface: no HTTP framework, no Matrix SDK,
no operator-only code."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = (
    "aiohttp",
    "nio",
    "synapse",
    "yaml",
    "bureau.cli",
    "bureau.hub",
    "bureau.daemon",
    "bureau.proxy",
)


def test_launcher_imports_stay_small() -> None:
    probe = "import json, sys, bureau.launcher.main; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    modules = json.loads(result.stdout)
    assert "bureau.launcher.first_boot" in modules
    loaded = [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert loaded == []
    # pyrage is reached through exactly one module of ours.
    assert "pyrage" in modules
