"""Process hardening for processes that hold secrets in memory: no core dumps, and no
ptrace or /proc/<pid>/mem access by other processes of the same user."""

from __future__ import annotations

import ctypes
import ctypes.util
import resource

_PR_SET_DUMPABLE = 4


def no_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
