"""Process hardening for processes that hold secrets in memory: no core dumps, and no
ptrace or /proc/<pid>/mem access by other processes of the same user."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import resource
from pathlib import Path

_PR_SET_DUMPABLE = 4
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4


@functools.cache
def _libc() -> ctypes.CDLL:
    # find_library runs `ldconfig -p` (milliseconds): once per process, not per call.
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _prctl(option: int, arg: int | bytes, what: str) -> None:
    libc = _libc()
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({what}) failed")


def no_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(_PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE, 0")


def clear_ambient_capabilities() -> None:
    """Capabilities granted as ambient ones stay in this process's permitted and
    effective sets, and are no longer handed to what it executes."""
    _libc().prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL on old kernels


def become_subreaper() -> None:
    """Orphaned descendants (proxies forked by the template) become this process's
    children, so that their exit status can be collected here."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1, "PR_SET_CHILD_SUBREAPER")


def set_process_name(name: str) -> None:
    """What ps, top and the journal's _COMM show (15 bytes at most)."""
    _prctl(_PR_SET_NAME, name.encode()[:15], "PR_SET_NAME")


def set_title(argv: list[str]) -> bool:
    """Rewrite the command line /proc/self/cmdline (and so ps) shows, within the bytes the
    original one occupied, as setproctitle does. CPython copied argv at start-up, so the
    original strings are free to overwrite. False when it had to be cut short."""
    title = "\0".join(argv)
    stat = Path("/proc/self/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    start, end = int(fields[45]), int(fields[46])  # proc(5) fields 48 and 49
    room = end - start
    data = title.encode()[: room - 1]
    ctypes.memmove(start, data.ljust(room, b"\0"), room)
    return len(data) == len(title.encode())
