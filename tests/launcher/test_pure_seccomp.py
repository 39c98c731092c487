"""The sandbox's seccomp program as bytes: every jump lands inside it, every denied call
of each architecture reaches the EPERM return, and anything else reaches ALLOW (run on a
tiny interpreter of the classic BPF it uses). A real bwrap runs it in
tests/test_sandbox_escapes.py (ptrace of the sandbox's own pid 1)."""

from __future__ import annotations

import struct

import pytest

from bureau.launcher import seccomp

ALLOW, EPERM = 0x7FFF0000, 0x00050001


def _run(program: bytes, nr: int, arch: int) -> int:
    insns = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    data = {0: nr, 4: arch}
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc = data[k]
        elif code == 0x06:
            return int(k)
        elif code in (0x15, 0x35):
            hit = acc == k if code == 0x15 else acc >= k
            pc += jt if hit else jf
            assert pc + 1 < len(insns)
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")
        pc += 1


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_denied_calls_get_eperm_and_the_rest_pass(machine: str) -> None:
    program = seccomp.program(machine)
    assert program is not None
    arch, numbers = seccomp._NUMBERS[machine]
    for name, number in numbers.items():
        assert _run(program, number, arch) == EPERM, name
    denied = set(numbers.values())
    for number in range(0, 450):
        if number not in denied:
            assert _run(program, number, arch) == ALLOW, number
    assert _run(program, 0, 0x40000003) == EPERM  # i386 calls: another numbering


def test_x32_calls_are_refused() -> None:
    program = seccomp.program("x86_64")
    assert program is not None
    assert _run(program, 0x40000000 | 1, 0xC000003E) == EPERM


def test_an_architecture_without_a_table_gets_none() -> None:
    assert seccomp.program("riscv64") is None
    assert set(seccomp.DENIED) >= set(seccomp._NUMBERS["aarch64"][1])
