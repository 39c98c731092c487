"""bureau.wire.sandbox_spec: what the daemon asks the launcher to run. A full spec round
trips both ways; each bad field is refused in one line naming it. (The launcher's own
policy on a well-formed spec: tests/launcher/test_pure_sandbox.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from bureau.errors import InputError
from bureau.wire.credentials import content_digest
from bureau.wire.sandbox_spec import MAX_ARGS, MAX_DIRS, MAX_ENVIRONMENT, MAX_MOUNTS, SandboxSpec
from bureau.wire.template_parts import Mount, Namespaces, Resources

MISSING = object()  # in a change: take the field out
# Every field set, each nested part too.
SPEC: dict[str, Any] = {
    "template": "bureau/template:agent-base",
    "command": ["/usr/bin/python3", "-c", "print(1)\nprint(2)"],
    "environment": {"HOME": "/workspace", "MODE": "fast\tand tabbed"},
    "filesystem": [
        {"source": "/usr", "dest": "/usr"},
        {"source": "/srv/data", "dest": "/data", "type": "bind", "mode": "rw", "optional": True},
        {"dest": "/tmp", "type": "tmpfs", "options": "size=64m"},  # noqa: S108 -- in the sandbox
    ],
    "namespaces": {"pid": True, "net": False, "ipc": True, "uts": True},
    "resources": {"cpu_shares": 1024, "memory_limit_mb": 512, "pids_limit": 128},
    "create_dirs": ["/workspace/out"],
    "required_credentials": ["MATRIX_TOKEN", "github-token"],
    "restart_policy": "always",
}


def test_a_full_spec_round_trips_both_ways() -> None:
    spec = SandboxSpec.from_json(SPEC)
    assert spec.to_json() == SPEC
    assert SandboxSpec.from_json(spec.to_json()) == spec
    assert spec.filesystem[1] == Mount("/data", "/srv/data", "bind", "rw", "", optional=True)
    assert spec.namespaces == Namespaces(pid=True, net=False, ipc=True, uts=True)
    assert spec.resources == Resources(1024, 512, 128)
    assert spec.digest == content_digest(SPEC)


def test_a_bare_spec_takes_the_defaults_and_writes_them() -> None:
    spec = SandboxSpec.from_json({"command": ["/bin/true"]})
    assert spec.namespaces is None  # every namespace new
    assert spec.restart_policy == "on-failure"
    assert spec.to_json() == {
        "template": "",
        "command": ["/bin/true"],
        "environment": {},
        "filesystem": [],
        "resources": {},
        "create_dirs": [],
        "required_credentials": [],
        "restart_policy": "on-failure",
    }
    assert SandboxSpec.from_json(spec.to_json()) == spec


def test_each_field_changes_the_digest() -> None:
    bare = SandboxSpec.from_json({"command": ["/bin/x"]}).to_json()
    digests = {SandboxSpec.from_json(SPEC).digest}
    for key in SPEC:
        changed = {k: v for k, v in SPEC.items() if k != key}
        if key in bare:  # namespaces: absent is every namespace new
            changed[key] = bare[key]
        digests.add(SandboxSpec.from_json(changed).digest)
    assert len(digests) == len(SPEC) + 1


def _changed(field: str, value: object) -> dict[str, Any]:
    data = {k: v for k, v in SPEC.items() if k != field}
    if value is not MISSING:
        data[field] = value
    return data


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("template", 5, "template"),
        ("template", "a\nb", "template"),
        ("command", MISSING, "command"),
        ("command", [], "command"),
        ("command", "/bin/sh", "command"),
        ("command", [""], "command"),
        ("command", ["a\0b"], "command"),
        ("command", [5], "command"),
        ("command", ["x"] * (MAX_ARGS + 1), "command"),
        ("environment", "HOME=/", "environment"),
        ("environment", {f"V{i}": "x" for i in range(MAX_ENVIRONMENT + 1)}, "environment"),
        ("environment", {"1X": "y"}, "environment.1X"),
        ("environment", {"A-B": "y"}, "environment.A-B"),
        ("environment", {"A": 5}, "environment.A"),
        ("environment", {"A": "a\nb"}, "environment.A"),
        ("filesystem", {"dest": "/usr"}, "filesystem"),
        ("filesystem", [{"source": "/a", "dest": "/a"}] * (MAX_MOUNTS + 1), "filesystem"),
        ("filesystem", ["/usr"], "filesystem[0]"),
        ("filesystem", [{"source": "/usr"}], "filesystem[0]: dest"),
        ("filesystem", [{"dest": "/usr"}], "filesystem[0]: source"),
        ("filesystem", [{"source": "/x", "dest": "/t", "type": "tmpfs"}], "filesystem[0]: source"),
        ("filesystem", [{"source": "/x", "dest": "/x", "type": "overlay"}], "filesystem[0]: type"),
        ("filesystem", [{"source": "/x", "dest": "/x", "mode": "rwx"}], "filesystem[0]: mode"),
        ("filesystem", [{"source": "/x", "dest": "/x", "optional": 1}], "filesystem[0]: optional"),
        ("filesystem", [{"source": "/x", "dest": "/x", "uid": 0}], "filesystem[0]: uid"),
        ("filesystem", [{"source": 5, "dest": "/x"}], "filesystem[0]: source"),
        ("namespaces", "all", "namespaces"),
        ("namespaces", {"pid": 1}, "namespaces: pid"),
        ("namespaces", {"user": True}, "namespaces: user"),
        ("resources", 512, "resources"),
        ("resources", {"cpu_shares": -1}, "resources: cpu_shares"),
        ("resources", {"memory_limit_mb": 1.5}, "resources: memory_limit_mb"),
        ("resources", {"pids_limit": True}, "resources: pids_limit"),
        ("resources", {"pids_limit": 2**63}, "resources: pids_limit"),
        ("resources", {"gpus": 1}, "resources: gpus"),
        ("create_dirs", "/workspace/out", "create_dirs"),
        ("create_dirs", [""], "create_dirs"),
        ("create_dirs", [5], "create_dirs"),
        ("create_dirs", ["/a\nb"], "create_dirs"),
        ("create_dirs", [f"/d{i}" for i in range(MAX_DIRS + 1)], "create_dirs"),
        ("required_credentials", "MATRIX_TOKEN", "required_credentials"),
        ("required_credentials", [""], "required_credentials"),
        ("required_credentials", [None], "required_credentials"),
        ("restart_policy", "sometimes", "restart_policy"),
        ("restart_policy", None, "restart_policy"),
        ("restart_policy", ["always"], "restart_policy"),
        # OURS, between a launcher and a daemon of one release: a field the launcher does
        # not know could widen the sandbox, so it is refused, never ignored.
        ("secrets", {"A": "b"}, "secrets"),
        ("devices", ["/dev/kvm"], "devices"),
    ],
)
def test_a_bad_field_is_refused_by_name(field: str, value: object, named: str) -> None:
    with pytest.raises(InputError) as refused:
        SandboxSpec.from_json(_changed(field, value))
    message = str(refused.value)
    assert message.startswith(f"sandbox: {named}: "), message
    assert "\n" not in message


def test_not_an_object() -> None:
    for content in ([SPEC], "spec", None):
        with pytest.raises(InputError, match=r"^sandbox: expected an object$"):
            SandboxSpec.from_json(content)
