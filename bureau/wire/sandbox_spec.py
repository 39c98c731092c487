"""What the daemon asks the launcher to run in a principal's sandbox (OURS): the principal's
template with its parents and the assignment's overrides applied, as one typed value. Pure.

The daemon resolves templates (it reads Matrix); the launcher never trusts that it did so
honestly: it checks every spec itself (launcher/sandbox_policy.py) before anything runs.
The spec holds no secret: templates cannot name credentials, and the workload reaches its
services only through its proxy socket.

    {"template": "bureau/template:agent-base",      shown, not acted on
     "command": ["/usr/bin/python3", "-m", "agent"],
     "environment": {"HOME": "/workspace"},
     "filesystem": [{"source": "/usr", "dest": "/usr", "mode": "ro"}, ...],
     "namespaces": {"pid": true, "net": true, "ipc": true, "uts": true} | absent (all new),
     "resources": {"cpu_shares": 1024, "memory_limit_mb": 512, "pids_limit": 128},
     "create_dirs": ["/workspace/out"],
     "required_credentials": ["MATRIX_TOKEN"],
     "restart_policy": "always" | "on-failure" | "never"}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bureau.errors import InputError
from bureau.wire.credentials import content_digest
from bureau.wire.machine_config import RESTART_POLICIES
from bureau.wire.template import Template
from bureau.wire.template_parts import (
    Mount,
    Namespaces,
    Resources,
    env_problem,
    is_text,
    read_object,
)

DEFAULT_RESTART_POLICY = "on-failure"
# Bounds that keep a spec (and the bwrap command line made from it) small.
MAX_ARGS = 256
MAX_ENVIRONMENT = 256
MAX_MOUNTS = 64
MAX_DIRS = 64
_FIELDS = frozenset(
    {
        "template",
        "command",
        "environment",
        "filesystem",
        "namespaces",
        "resources",
        "create_dirs",
        "required_credentials",
        "restart_policy",
    }
)
WHERE = "sandbox"


def _argument(value: object) -> bool:
    # A command line may hold newlines (sh -c scripts); nothing in argv may hold a NUL.
    return isinstance(value, str) and bool(value) and "\0" not in value


def _texts(obj: dict[str, Any], key: str, bound: int) -> tuple[str, ...]:
    value = obj.get(key, [])
    ok = _argument if key == "command" else (lambda v: is_text(v) and bool(v))
    if not isinstance(value, list) or not all(ok(v) for v in value):
        raise InputError(WHERE, key, "expected a list of non-empty strings")
    if len(value) > bound:
        raise InputError(WHERE, key, f"more than {bound} entries")
    return tuple(value)


@dataclass(frozen=True)
class SandboxSpec:
    template: str
    command: tuple[str, ...]
    environment: dict[str, str] = field(default_factory=dict)
    filesystem: tuple[Mount, ...] = ()
    namespaces: Namespaces | None = None  # None: every namespace new
    resources: Resources = field(default_factory=Resources)
    create_dirs: tuple[str, ...] = ()
    required_credentials: tuple[str, ...] = ()
    restart_policy: str = DEFAULT_RESTART_POLICY

    @classmethod
    def from_template(
        cls, ref: str, template: Template, restart_policy: str | None = None
    ) -> SandboxSpec:
        """From a resolved template (overrides applied). Its ``security`` is not carried:
        the launcher always sets every one of those flags."""
        spec = cls(
            template=ref,
            command=template.command,
            environment=dict(template.environment_variables),
            filesystem=template.filesystem,
            namespaces=template.namespaces,
            resources=template.resources or Resources(),
            create_dirs=template.create_dirs,
            required_credentials=template.required_credentials,
            restart_policy=restart_policy or DEFAULT_RESTART_POLICY,
        )
        return cls.from_json(spec.to_json())  # the same checks the launcher makes

    @classmethod
    def from_json(cls, obj: object) -> SandboxSpec:
        data = read_object(obj, WHERE, _FIELDS)
        template = data.get("template", "")
        if not is_text(template):
            raise InputError(WHERE, "template", "expected a template ref")
        command = _texts(data, "command", MAX_ARGS)
        if not command:
            raise InputError(
                WHERE, "command", "no command: the template and the assignment set none"
            )
        environment = data.get("environment", {})
        if not isinstance(environment, dict):
            raise InputError(WHERE, "environment", "expected an object of string -> string")
        if len(environment) > MAX_ENVIRONMENT:
            raise InputError(WHERE, "environment", f"more than {MAX_ENVIRONMENT} variables")
        for name, value in environment.items():
            problem = env_problem(name, value)
            if problem:
                raise InputError(WHERE, f"environment.{name}", problem)
        mounts = data.get("filesystem", [])
        if not isinstance(mounts, list) or len(mounts) > MAX_MOUNTS:
            raise InputError(WHERE, "filesystem", f"expected a list of at most {MAX_MOUNTS} mounts")
        filesystem = tuple(
            Mount.from_json(m, f"{WHERE}: filesystem[{i}]") for i, m in enumerate(mounts)
        )
        raw_namespaces = data.get("namespaces")
        namespaces = (
            None
            if raw_namespaces is None
            else Namespaces.from_json(raw_namespaces, f"{WHERE}: namespaces")
        )
        resources = Resources.from_json(data.get("resources", {}), f"{WHERE}: resources")
        policy = data.get("restart_policy", DEFAULT_RESTART_POLICY)
        if policy not in RESTART_POLICIES:
            raise InputError(WHERE, "restart_policy", f"expected {', '.join(RESTART_POLICIES)}")
        return cls(
            template=str(template),
            command=command,
            environment=dict(environment),
            filesystem=filesystem,
            namespaces=namespaces,
            resources=resources,
            create_dirs=_texts(data, "create_dirs", MAX_DIRS),
            required_credentials=_texts(data, "required_credentials", MAX_ENVIRONMENT),
            restart_policy=str(policy),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "template": self.template,
            "command": list(self.command),
            "environment": dict(self.environment),
            "filesystem": [m.to_json() for m in self.filesystem],
            "resources": self.resources.to_json(),
            "create_dirs": list(self.create_dirs),
            "required_credentials": list(self.required_credentials),
            "restart_policy": self.restart_policy,
        }
        if self.namespaces is not None:
            out["namespaces"] = self.namespaces.to_json()
        return out

    @property
    def digest(self) -> str:
        """Identity of what runs: a change of it restarts the workload."""
        return content_digest(self.to_json())
