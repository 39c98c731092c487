"""Processes that hold a secret cannot be dumped: no core file, and the kernel refuses
their memory to a peer. The canary scan of a machine's whole life is test_canary_cycle."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from functools import partial
from pathlib import Path

from conftest import BIN, Fleet
from launcher_proc import UNSIGNED, kill_proxies_under, proxies_under, service, template_of
from machine_helpers import credentials_event, enroll, provision_credentials, services_file
from processes import echo_upstream, launcher_ensure


def _cores(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("core*")]


def _abort(pid: int) -> None:
    """SIGABRT a process that holds a secret, after checking it cannot dump core."""
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    core = next(ln for ln in limits if ln.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"], core
    os.kill(pid, signal.SIGABRT)


def test_launcher_template_and_proxies_cannot_be_dumped(fleet: Fleet, tmp_path: Path) -> None:
    """Every process that holds the key or a credential (launcher, template, proxy) has a
    core limit of 0 and PR_SET_DUMPABLE 0 set: a peer without CAP_SYS_PTRACE cannot open
    its memory, and SIGABRT leaves no core file, where an ordinary process in the same
    directory leaves one."""
    machine = enroll(fleet, tmp_path)
    base = Path(tempfile.mkdtemp(prefix="bureau-nd-", dir="/tmp"))
    run_dir, cwd = base / "run", base / "cwd"
    cwd.mkdir()
    try:
        # The control: a dumpable process in the same directory leaves a core there.
        control = subprocess.run(
            [str(BIN / "python"), "-c", _ABORT_WITH_CORE], cwd=cwd, check=False
        )
        assert control.returncode == -signal.SIGABRT
        made = _cores(cwd)
        assert made, "core_pattern sends cores elsewhere: this test could not see them"
        for core in made:
            core.unlink()

        with echo_upstream() as upstream:
            services = services_file(tmp_path, upstream)
            secret = "TOKEN=dump-canary\n"
            assert (
                provision_credentials(fleet, machine, "agent/alpha", services, secret).returncode
                == 0
            )
            content = credentials_event(fleet, machine)
            # Without CAP_SYS_PTRACE (it needs none), so that a peer without it can tell
            # dumpable from not: the kernel lets it open a dumpable process's memory only.
            argv = [
                *NO_PTRACE,
                str(BIN / "bureau-launcher"),
                "--machine-name",
                machine.machine.short_name,
                "--state-dir",
                str(machine.state_dir),
                "--run-dir",
                str(run_dir),
                *UNSIGNED,
            ]
            stop_proxies = partial(kill_proxies_under, run_dir)
            with service(argv, "launcher serving", cwd=cwd, after_stop=stop_proxies) as running:
                principal = f"@{fleet.name}/agent/alpha:{fleet.hub.server_name}"
                assert launcher_ensure(run_dir / "launcher.sock", principal, content)["ok"]
                (proxy,) = proxies_under(run_dir)
                template = template_of(running.proc.pid)
                with subprocess.Popen([*NO_PTRACE, "sleep", "60"]) as control_sleep:
                    try:
                        readable = _memory_readable(
                            control_sleep.pid, running.proc.pid, template, proxy
                        )
                    finally:
                        control_sleep.kill()
                assert readable == [True, False, False, False], "control, launcher, template, proxy"
                _abort(proxy)
                running.wait_for('"exit": "signal SIGABRT"')
                _abort(template)
                _abort(running.proc.pid)
                assert running.proc.wait(timeout=30) == -signal.SIGABRT
        assert _cores(cwd, machine.state_dir, run_dir) == []
    finally:
        kill_proxies_under(run_dir)
        shutil.rmtree(base, ignore_errors=True)


_ABORT_WITH_CORE = (
    "import os, resource; "
    "resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2); os.abort()"
)


NO_PTRACE = ["setpriv", "--bounding-set=-sys_ptrace"]


def _memory_readable(*pids: int) -> list[bool]:
    """Whether a process of the same user without CAP_SYS_PTRACE may open each one's
    /proc/PID/mem: the kernel's own answer to PR_GET_DUMPABLE, seen from outside."""
    probe = (
        "import sys\n"
        "for pid in sys.argv[1:]:\n"
        "    try:\n"
        "        open(f'/proc/{pid}/mem', 'rb').close()\n"
        "        print('yes')\n"
        "    except PermissionError:\n"
        "        print('no')\n"
    )
    answer = subprocess.run(
        [*NO_PTRACE, str(BIN / "python"), "-c", probe, *map(str, pids)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line == "yes" for line in answer.stdout.split()]
