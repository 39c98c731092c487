"""Running principals in real bubblewrap sandboxes from a real launcher: a machine enrolled
against the test Synapse, a principal's credentials provisioned for a real upstream, and
specs sent on the launcher socket as the daemon sends them."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub_fleet import Fleet
from launcher_proc import UNSIGNED, RunningLauncher, Service, broker_args, launcher, sandboxd
from machine_helpers import (
    Enrolled,
    credentials_event,
    enroll,
    provision_credentials,
    services_file,
)
from processes import echo_upstream, launcher_call

PRINCIPAL = "agent/alpha"
# The start of a workload in Python: ``call(method, path, body)`` on its proxy socket, the
# JSON answer decoded. Workloads travel base64 in a template's environment (a template's
# strings hold no newline).
PROXY_CLIENT = r"""
import http.client, json, os, socket, time
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(os.environ["BUREAU_PROXY_SOCKET"])
def call(method, path, body=None):
    c = Unix("proxy")
    c.request(method, path, None if body is None else json.dumps(body),
              {"Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, json.loads(r.read() or b"{}")
"""
PYTHON = "/usr/bin/python3"
SYSTEM = [
    {"source": "/usr", "dest": "/usr", "mode": "ro"},
    {"source": "/bin", "dest": "/bin", "mode": "ro", "optional": True},
    {"source": "/lib", "dest": "/lib", "mode": "ro", "optional": True},
    {"source": "/lib64", "dest": "/lib64", "mode": "ro", "optional": True},
    {"dest": "/tmp", "type": "tmpfs", "options": "size=16M"},  # noqa: S108 -- inside the sandbox
]


def python_template(parent: str, workload: str, **environment: str) -> dict[str, Any]:
    """A template (``m.bureau.template`` content) running ``workload``, Python, under
    ``parent``: it travels base64 in the environment (a template's strings hold no
    newline), beside ``environment``."""
    return {
        "inherits": [parent],
        "command": [
            PYTHON,
            "-c",
            "import base64, os; exec(base64.b64decode(os.environ['WORKLOAD']))",
        ],
        "environment_variables": {
            "WORKLOAD": base64.b64encode(workload.encode()).decode(),
            **environment,
        },
    }


def spec(command: list[str], **fields: Any) -> dict[str, Any]:
    """A sandbox spec as the daemon sends it, with the system read-only and a /tmp."""
    out: dict[str, Any] = {
        "template": "test/template:sandbox",
        "command": command,
        "environment": {"PATH": "/usr/bin:/bin", "HOME": "/workspace"},
        "filesystem": SYSTEM,
        "restart_policy": "never",
    }
    out.update(fields)
    return out


def python_spec(code: str, **fields: Any) -> dict[str, Any]:
    return spec([PYTHON, "-c", code], **fields)


def wait_until(predicate: Callable[[], Any], seconds: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"not reached within {seconds} s: {what}"
        time.sleep(0.05)


def fleet_of(fleet: Fleet) -> dict[str, str]:
    """bureau-sandboxd's fleet and server arguments for ``fleet``."""
    return {"fleet": fleet.name, "server": fleet.hub.server_name}


def workspace_of(sandbox_dir: Path, principal_id: str) -> Path:
    return sandbox_dir / hashlib.sha256(principal_id.encode()).hexdigest()[:32]


@dataclass
class Sandboxed:
    fleet: Fleet
    machine: Enrolled
    launcher: RunningLauncher
    principal: str  # the user ID
    credentials: dict[str, Any]
    upstream: str
    sandbox_dir: Path
    sandboxd: Service | None  # None: the launcher hosts its sandboxes itself

    @property
    def host(self) -> Service:
        assert self.sandboxd is not None
        return self.sandboxd

    def ensure(
        self, sandbox: dict[str, Any] | None, credentials: dict[str, Any] | None = None
    ) -> Any:
        request: dict[str, Any] = {
            "action": "ensure",
            "principal": self.principal,
            "credentials": credentials or self.credentials,
        }
        if sandbox is not None:
            request["sandbox"] = sandbox
        return launcher_call(self.launcher.socket, request)

    def listed(self) -> dict[str, Any]:
        reply = launcher_call(self.launcher.socket, {"action": "list"})
        (item,) = [p for p in reply["principals"] if p["principal"] == self.principal]
        return dict(item)

    def sandbox(self) -> dict[str, Any]:
        return dict(self.listed().get("sandbox") or {})

    @property
    def workspace(self) -> Path:
        return workspace_of(self.sandbox_dir, self.principal)

    def result(self, name: str = "result.json", seconds: float = 30) -> Any:
        """What the workload wrote to /workspace/NAME (it writes it last, atomically)."""
        path = self.workspace / name
        wait_until(path.exists, seconds, f"{name} in the workspace\n{self.launcher.log()}")
        return json.loads(path.read_text())


def kill_sandboxes_under(run_dir: Path) -> None:
    """After a test: every sandbox a launcher of this run dir recorded (bwrap's inner
    process dies with its outer one)."""
    records = run_dir / "launcher" / "sandboxes"
    for record in records.glob("*.json") if records.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, KeyError, ProcessLookupError):
            os.kill(int(json.loads(record.read_text())["pid"]), signal.SIGKILL)


@contextlib.contextmanager
def sandboxed(
    fleet: Fleet,
    tmp_path: Path,
    run_dir: Path,
    *sandboxd_args: str,
    secrets: str = "TOKEN=sandbox-canary-1\n",
    broker: bool = True,
) -> Iterator[Sandboxed]:
    """A launcher whose sandboxes bureau-sandboxd hosts (as the units run them), and a
    principal's credentials ready for it. ``sandboxd_args``: more of bureau-sandboxd's.
    Without ``broker``, the launcher hosts them itself (and gets those arguments)."""
    machine = enroll(fleet, tmp_path)
    with echo_upstream() as upstream:
        services = services_file(tmp_path, upstream)
        done = provision_credentials(fleet, machine, PRINCIPAL, services, secrets)
        assert done.returncode == 0, done.stderr
        content = credentials_event(fleet, machine)
        principal = f"@{fleet.name}/{PRINCIPAL}:{fleet.hub.server_name}"
        # bwrap sets a sandbox up as the sandbox's uid, which must pass through (o+x) to
        # the workspaces and the run dir, as under /var/lib and /run.
        run_dir.chmod(0o751)
        sandbox_dir = run_dir.with_name(run_dir.name + "-sandbox")
        name, state = machine.machine.short_name, machine.state_dir
        try:
            with contextlib.ExitStack() as stack:
                host, args = None, ["--sandbox-dir", str(sandbox_dir), *sandboxd_args]
                if broker:
                    host = stack.enter_context(
                        sandboxd(run_dir, state, sandbox_dir, *sandboxd_args, **fleet_of(fleet))
                    )
                    args = broker_args(run_dir)
                running = stack.enter_context(launcher(name, state, run_dir, *args, *UNSIGNED))
                yield Sandboxed(
                    fleet, machine, running, principal, content, upstream, sandbox_dir, host
                )
        finally:
            kill_sandboxes_under(run_dir)
            shutil.rmtree(sandbox_dir, ignore_errors=True)
