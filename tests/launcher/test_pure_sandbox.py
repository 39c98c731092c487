"""The sandbox spec and the launcher's own check of it, as plain functions: every refusal
is one line naming the field, and nothing that could reach the machine's secrets passes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bureau.daemon.reconcile import Ensure, plan
from bureau.errors import InputError
from bureau.launcher import sandbox_policy as policy
from bureau.wire.credentials import content_digest
from bureau.wire.machine_config import MachineConfig
from bureau.wire.sandbox_spec import SandboxSpec

STATE = "/var/lib/bureau"
RUN = "/run/bureau-test"
MACHINE = policy.Machine((STATE, RUN, "/etc/bureau", "/run/credentials/x"))


def _spec(**fields: Any) -> dict[str, Any]:
    return {"template": "t/template:x", "command": ["/usr/bin/true"], **fields}


def _check(content: dict[str, Any], machine: policy.Machine = MACHINE) -> policy.Checked:
    return policy.check(policy.parse(content), machine, ["TOKEN"])


def _refused(content: dict[str, Any], machine: policy.Machine = MACHINE) -> str:
    with pytest.raises(policy.SpecRefused) as caught:
        _check(content, machine)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_plain_spec_passes_with_every_namespace_new() -> None:
    checked = _check(_spec(filesystem=[{"source": "/usr", "dest": "/usr"}]))
    argv = policy.bwrap_argv(checked, workspace_fd=3, socket_dir_fd=4, block_fd=5, status_fd=6)
    assert argv[:5] == ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns",
                        "--die-with-parent"]  # fmt: skip
    assert "--share-net" not in argv
    assert argv[argv.index("--ro-bind") : argv.index("--ro-bind") + 3] == [
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    assert argv[argv.index("--remount-ro") + 1] == "/"
    assert argv[-2:] == ["--", "/usr/bin/true"]
    assert checked.pids == policy.DEFAULT_PIDS


@pytest.mark.parametrize(
    ("source", "exposed"),
    [
        (STATE, STATE),
        (STATE + "/machine-key.txt", STATE),
        ("/var/lib", STATE),
        ("/", STATE),
        (RUN, RUN),
        ("/run", RUN),
        ("/etc/bureau", "/etc/bureau"),
        ("/etc", "/etc/bureau"),
        ("/run/credentials/x", "/run/credentials/x"),
        ("/proc", "/proc"),
        ("/sys", "/sys"),
        ("/dev", "/dev"),
    ],
)
def test_mounts_that_would_expose_the_machine_are_refused(source: str, exposed: str) -> None:
    # Optional, and perhaps absent here: refused all the same.
    message = _refused(_spec(filesystem=[{"source": source, "dest": "/mnt", "optional": True}]))
    assert message.startswith("filesystem[0].source:")
    assert exposed in message


def test_a_symlink_to_a_protected_path_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "innocent"
    link.symlink_to("/etc")
    message = _refused(_spec(filesystem=[{"source": str(link), "dest": "/mnt"}]))
    assert "which is /etc" in message
    assert "/etc/bureau" in message


def test_a_device_is_refused(tmp_path: Path) -> None:
    message = _refused(
        _spec(filesystem=[{"source": "/dev/null", "dest": "/mnt/null"}]),
        policy.Machine(()),
    )
    assert "device" in message or "/dev" in message


@pytest.mark.parametrize(
    ("mount", "field"),
    [
        ({"source": "usr", "dest": "/usr"}, "source"),
        ({"source": "/usr/../etc", "dest": "/usr"}, "source"),
        ({"source": "/usr", "dest": "usr"}, "dest"),
        ({"source": "/usr", "dest": "/a/../b"}, "dest"),
        ({"source": "/usr", "dest": "/"}, "dest"),
        ({"source": "/usr", "dest": "/workspace"}, "dest"),
        ({"source": "/usr", "dest": "/run/bureau/proxy.sock"}, "dest"),
        ({"source": "/usr", "dest": "/proc/self"}, "dest"),
        ({"dest": "/sbx-tmp", "type": "tmpfs", "options": "exec"}, "options"),
        ({"source": "/usr", "dest": "/x", "options": "size=1M"}, "options"),
        ({"source": "/no/such/dir", "dest": "/x"}, "source"),
    ],
)
def test_bad_mounts_name_their_field(mount: dict[str, Any], field: str) -> None:
    assert _refused(_spec(filesystem=[mount])).startswith(f"filesystem[0].{field}:")


def test_namespaces_the_host_never_shares() -> None:
    every = {"pid": True, "net": True, "ipc": True, "uts": True}
    for name in ("pid", "ipc", "uts"):
        message = _refused(_spec(namespaces={**every, name: False}))
        assert message.startswith(f"namespaces.{name}:")
    host_net = _spec(namespaces={**every, "net": False})
    assert "--allow-host-network" in _refused(host_net)
    allowed = _check(host_net, policy.Machine(MACHINE.protected, host_network=True))
    argv = policy.bwrap_argv(allowed, workspace_fd=3, socket_dir_fd=4, block_fd=5, status_fd=6)
    assert "--share-net" in argv


def test_the_launcher_sets_the_proxy_socket_and_credentials_must_be_there() -> None:
    assert _refused(_spec(environment={"BUREAU_PROXY_SOCKET": "/x"})).startswith(
        "environment.BUREAU_PROXY_SOCKET"
    )
    assert "lacks GITHUB" in _refused(_spec(required_credentials=["TOKEN", "GITHUB"]))


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ({"command": []}, "command"),
        ({"command": ["a\0b"]}, "command"),
        ({"environment": {"1X": "y"}}, "environment.1X"),
        ({"restart_policy": "sometimes"}, "restart_policy"),
        ({"secrets": {}}, "secrets"),
        ({"resources": {"memory_limit_mb": -1}}, "memory_limit_mb"),
    ],
)
def test_bad_specs_name_their_field(content: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError) as caught:
        SandboxSpec.from_json({"template": "", "command": ["/bin/true"], **content})
    assert field in str(caught.value)


def test_tmpfs_sizes() -> None:
    checked = _check(
        _spec(filesystem=[{"dest": "/sbx-tmp", "type": "tmpfs", "options": "size=2m,mode=1777"}])
    )
    assert checked.mounts == (("--size", str(2 << 20), "--perms", "1777", "--tmpfs", "/sbx-tmp"),)


def test_plan_restarts_only_what_changed() -> None:
    principal = "@ns/fleet/prod/agent/a:hub"
    entry = {"principal": principal, "auto_start": True}
    config = MachineConfig.from_json({"principals": [entry]})
    credentials = {principal: {"v": 1}}
    spec = _spec()
    running = {principal: content_digest({"v": 1})}
    # The entry goes as published, for the launcher to check its signature.
    assert plan(config, credentials, running, specs={principal: spec}) == [
        Ensure(principal, {"v": 1}, spec, entry)
    ]
    same = {principal: content_digest(spec)}
    assert plan(config, credentials, running, specs={principal: spec}, sandboxes=same) == []
    # Held (its template does not resolve, nothing good before): neither started nor stopped.
    assert plan(config, credentials, {}, held={principal}) == []
    assert plan(config, {}, running, held={principal}) == []
