"""Run bureau-launcher as usual, but SIGKILL it right after a named first-boot step has
completed: a crash at an exact point, with nothing unwound (no finally, no atexit).

    python kill_at_step.py STEP [bureau-launcher arguments...]
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from bureau.launcher import first_boot, main

STOP_AT = first_boot.Step(sys.argv[1])
_boot = first_boot.boot_with_bootstrap


def _boot_and_die(**kwargs: Any) -> Any:
    progress = kwargs["checkpoint"]

    def checkpoint(step: first_boot.Step) -> None:
        progress(step)
        if step is STOP_AT:
            os.kill(os.getpid(), signal.SIGKILL)

    return _boot(**{**kwargs, "checkpoint": checkpoint})


first_boot.boot_with_bootstrap = _boot_and_die
main.main(sys.argv[2:])
