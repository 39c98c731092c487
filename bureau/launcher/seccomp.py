"""A sandbox's own seccomp filter, handed to bwrap (``--seccomp FD``): system calls a
workload has no business making fail with EPERM, whatever unit the launcher runs under
(under systemd, the unit's filter is inherited as well; run by hand, this is all there
is). Pure: the classic BPF program as bytes.

Denied: ptrace and reading or writing other processes' memory (even its own namespace's
pid 1, bwrap's init, is the workload's uid), perf events, BPF, the kernel keyring, kexec,
modules, raw I/O ports, userfaultfd (a favourite of kernel exploits), accounting, swap,
reboot, quotas and file handles (open_by_handle_at). Calls of another architecture (i386 or
x32 on x86_64) are refused outright: the numbers below would not mean the same calls."""

from __future__ import annotations

import platform
import struct

# struct seccomp_data: nr at 0, arch at 4.
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
_ALLOW = 0x7FFF0000
_ERRNO_EPERM = 0x00050000 | 1
_X32_BIT = 0x40000000

DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "perf_event_open",
    "bpf",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "open_by_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
    "userfaultfd",
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "quotactl",
    "iopl",
    "ioperm",
)
# From the kernel's headers (asm/unistd_64.h; asm-generic/unistd.h for aarch64).
_NUMBERS = {
    "x86_64": (
        0xC000003E,
        {
            "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
            "perf_event_open": 298, "bpf": 321, "keyctl": 250, "add_key": 248,
            "request_key": 249, "kexec_load": 246, "kexec_file_load": 320,
            "open_by_handle_at": 304, "init_module": 175, "finit_module": 313,
            "delete_module": 176, "userfaultfd": 323, "acct": 163, "swapon": 167,
            "swapoff": 168, "reboot": 169, "quotactl": 179, "iopl": 172, "ioperm": 173,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
            "perf_event_open": 241, "bpf": 280, "keyctl": 219, "add_key": 217,
            "request_key": 218, "kexec_load": 104, "kexec_file_load": 294,
            "open_by_handle_at": 265, "init_module": 105, "finit_module": 273,
            "delete_module": 106, "userfaultfd": 282, "acct": 89, "swapon": 224,
            "swapoff": 225, "reboot": 142, "quotactl": 60,
        },
    ),
}  # fmt: skip


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program(machine: str | None = None) -> bytes | None:
    """The filter for this machine's architecture; None where we have no table (the
    sandbox then runs with the unit's filter only)."""
    entry = _NUMBERS.get(machine or platform.machine())
    if entry is None:
        return None
    arch, numbers = entry
    calls = sorted(numbers.values())
    x32 = arch == 0xC000003E  # x32 calls share the architecture, with a bit set
    deny = 5 + x32 + len(calls)  # index of the final EPERM return
    out = [
        _insn(_LD_W_ABS, 0, 0, 4),
        _insn(_JEQ_K, 1, 0, arch),  # the native architecture: go on
        _insn(_RET_K, 0, 0, _ERRNO_EPERM),
        _insn(_LD_W_ABS, 0, 0, 0),
    ]
    at = len(out)
    if x32:
        out.append(_insn(_JGE_K, deny - at - 1, 0, _X32_BIT))
        at += 1
    for number in calls:
        out.append(_insn(_JEQ_K, deny - at - 1, 0, number))
        at += 1
    out.append(_insn(_RET_K, 0, 0, _ALLOW))
    out.append(_insn(_RET_K, 0, 0, _ERRNO_EPERM))
    return b"".join(out)
