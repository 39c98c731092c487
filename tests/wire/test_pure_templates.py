"""Plain unit tests of the template model (wire/template, template_parts) and of
inheritance (template_resolve): wire format, refusals naming the field, refs, merge order,
provenance and the chain named in every resolution error. Upstream's fields this bureau
does not run as upstream does: test_pure_template_upstream."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from bureau.errors import InputError
from bureau.template_resolve import (
    ASSIGNMENT,
    MAX_DEPTH,
    Resolved,
    apply_assignment,
    resolve,
)
from bureau.wire import names
from bureau.wire.service_route import ServiceRoute
from bureau.wire.template import Template
from bureau.wire.template_parts import Namespaces, ProxyService, Resources, Security, TemplateRef

# Every field, in the form to_json writes it (sorted maps, zero fields left out).
FULL: dict[str, Any] = {
    "description": "an agent",
    "inherits": ["bureau/template:base", "iree/template@other.example:8448:gpu"],
    "command": ["/usr/bin/agent", "--serve"],
    "environment_variables": {"HOME": "/workspace", "TERM": "xterm"},
    "filesystem": [
        {"dest": "/scratch", "type": "tmpfs", "options": "size=64M"},
        {"source": "/etc/ssl", "dest": "/etc/ssl", "mode": "ro"},
        {
            "source": "/opt/models",
            "dest": "/models",
            "type": "bind",
            "mode": "rw",
            "optional": True,
        },
    ],
    "namespaces": {"pid": True, "net": True, "ipc": True, "uts": False},
    "resources": {"cpu_shares": 512, "memory_limit_mb": 2048, "pids_limit": 256},
    "security": {"new_session": True, "die_with_parent": True, "no_new_privs": True},
    "create_dirs": ["/scratch", "/workspace/.cache"],
    "required_credentials": ["API_TOKEN", "MATRIX_TOKEN"],
    "health_check": {
        "type": "http",
        "endpoint": "/health",
        "interval_seconds": 10,
        "timeout_seconds": 2,
        "failure_threshold": 3,
        "grace_period_seconds": 30,
    },
    "proxy_services": {
        "anthropic": {
            "upstream": "https://api.anthropic.com",
            "inject_headers": {"x-api-key": "API_TOKEN"},
            "strip_headers": ["x-api-key", "authorization"],
        },
        "github": {
            "upstream": "https://api.github.com",
            "inject_headers": {"Authorization": "GITHUB_TOKEN"},
            "auth_scheme": "Bearer",
        },
    },
    "origin": {"content_hash": "sha256:00", "flake_ref": "github:x/y"},
}


def with_field(path: str, value: object) -> dict[str, Any]:
    """FULL with one field (dotted path, list indexes as numbers) set to value."""
    data = copy.deepcopy(FULL)
    *parents, last = path.split(".")
    node: Any = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def refused(obj: object) -> str:
    with pytest.raises(InputError) as caught:
        Template.from_json(obj, "t")
    return str(caught.value)


# -- wire format --------------------------------------------------------------------------


def test_full_template_round_trips() -> None:
    template = Template.from_json(FULL, "t")
    assert template.to_json() == FULL
    assert Template.from_json(json.loads(json.dumps(template.to_json())), "t") == template
    assert template.inherits[1] == TemplateRef("iree/template", "gpu", "other.example:8448")
    assert template.namespaces == Namespaces(pid=True, net=True, ipc=True, uts=False)


def test_empty_template_and_zero_nested_objects() -> None:
    assert Template.from_json({}, "t") == Template()
    assert Template().to_json() == {}
    # A present object, even all zero, replaces a parent's: it must survive a round trip.
    zero = Template(namespaces=Namespaces(), security=Security(), resources=Resources())
    assert zero.to_json() == {
        "namespaces": {"pid": False, "net": False, "ipc": False, "uts": False},
        "resources": {},
        "security": {"new_session": False, "die_with_parent": False, "no_new_privs": False},
    }
    assert Template.from_json(zero.to_json(), "t") == zero


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("description", 1, "t: description:"),
        ("inherits", "bureau/template:base", "t: inherits:"),
        ("inherits.0", 7, "t: inherits[0]:"),
        ("inherits.1", "no-colon", "t: inherits[1]:"),
        ("command", "/usr/bin/agent", "t: command:"),
        ("command.1", "", "t: command[1]:"),
        ("command.0", ["nested"], "t: command[0]:"),
        ("environment_variables", ["HOME"], "t: environment_variables:"),
        ("environment_variables.HOME", 1, "t: environment_variables.HOME:"),
        ("environment_variables.HOME", "a\x00b", "t: environment_variables.HOME:"),
        ("environment_variables.1BAD", "x", "t: environment_variables.1BAD:"),
        ("filesystem", {"dest": "/scratch"}, "t: filesystem:"),
        ("filesystem.0", "/scratch", "t: filesystem[0]: expected an object"),
        ("filesystem.1.dest", 1, "t: filesystem[1]: dest:"),
        ("filesystem.1.dest", "", "t: filesystem[1]: dest:"),
        ("filesystem.1.source", ["/etc"], "t: filesystem[1]: source:"),
        ("filesystem.1.source", "", "t: filesystem[1]: source: a bind mount"),
        ("filesystem.0.source", "/x", "t: filesystem[0]: source: a tmpfs"),
        ("filesystem.1.type", "overlay", "t: filesystem[1]: type:"),
        ("filesystem.1.mode", "rx", "t: filesystem[1]: mode:"),
        ("filesystem.2.optional", "yes", "t: filesystem[2]: optional:"),
        ("filesystem.0.options", 64, "t: filesystem[0]: options:"),
        ("filesystem.1.dest", "/scratch", "t: filesystem[1].dest: '/scratch' is mounted twice"),
        ("namespaces", True, "t: namespaces: expected an object"),
        ("namespaces.net", "true", "t: namespaces: net:"),
        ("security.no_new_privs", 1, "t: security: no_new_privs:"),
        ("resources", [], "t: resources: expected an object"),
        ("resources.memory_limit_mb", "2048", "t: resources: memory_limit_mb:"),
        ("resources.memory_limit_mb", 1.5, "t: resources: memory_limit_mb:"),
        ("resources.pids_limit", -1, "t: resources: pids_limit:"),
        ("resources.cpu_shares", True, "t: resources: cpu_shares:"),
        ("create_dirs", "/scratch", "t: create_dirs:"),
        ("create_dirs.1", None, "t: create_dirs[1]:"),
        ("required_credentials.0", "api token", "t: required_credentials[0]:"),
        ("health_check.interval_seconds", 0, "t: health_check: interval_seconds:"),
        ("health_check.interval_seconds", "10", "t: health_check: interval_seconds:"),
        ("health_check.endpoint", "", "t: health_check: endpoint:"),
        ("health_check.type", "tcp", "t: health_check: type:"),
        ("health_check.timeout_seconds", -2, "t: health_check: timeout_seconds:"),
        ("proxy_services", [], "t: proxy_services:"),
        ("proxy_services.Bad Name", {}, "t: proxy_services.Bad Name:"),
        ("proxy_services.github", "https://x", "t: proxy_services.github: expected an object"),
        ("proxy_services.github.upstream", 1, "t: proxy_services.github: upstream:"),
        ("proxy_services.github.upstream", "ftp://x", "t: proxy_services.github: upstream:"),
        ("proxy_services.github.inject_headers", [], "t: proxy_services.github: inject_headers:"),
        (
            "proxy_services.github.inject_headers.Host",
            "GITHUB_TOKEN",
            "t: proxy_services.github: inject_headers.Host:",
        ),
        (
            "proxy_services.github.inject_headers.Authorization",
            "not a name",
            "t: proxy_services.github: inject_headers.Authorization:",
        ),
        ("proxy_services.github.strip_headers", ["a b"], "t: proxy_services.github: strip_"),
        ("proxy_services.github.auth_scheme", "Bearer x", "t: proxy_services.github: auth_"),
        ("proxy_services.github.upstream_url", "https://x", "github: upstream_url: a template"),
        ("origin", "github:x/y", "t: origin: expected an object"),
        ("origin.url", 1, "t: origin: url:"),
        ("isolation", "partial", "t: isolation: 'partial' is not one of standard, none"),
    ],
)
def test_a_bad_field_is_named(path: str, value: object, named: str) -> None:
    assert named in refused(with_field(path, value))


def test_not_an_object() -> None:
    assert refused([]) == "t: expected an object"


def test_unknown_fields_are_kept_and_refused_only_on_write() -> None:
    """Liberal in what we read (a newer upstream's field is kept and written back), strict
    in what we write (push calls check_known); inside a shape we know, still refused."""
    template = Template.from_json({**FULL, "zeta": {"z": 1}}, "t")
    assert template.extra == {"zeta": {"z": 1}}
    assert template.to_json() == {**FULL, "zeta": {"z": 1}}
    with pytest.raises(InputError, match=r"^t: zeta: unknown field$"):
        template.check_known("t")
    both = Template.from_json({**FULL, "zeta": 1, "alpha": 2}, "t")
    with pytest.raises(InputError, match=r"^t: alpha: unknown fields: alpha, zeta$"):
        both.check_known("t")
    Template.from_json(FULL, "t").check_known("t")
    assert "t: filesystem[0]: size: unknown field" in refused(with_field("filesystem.0.size", 1))


def test_proxy_service_becomes_a_credentials_route() -> None:
    github = Template.from_json(FULL, "t").proxy_services["github"]
    assert github.to_route("api") == ServiceRoute(
        "https://api.github.com", {"Authorization": "GITHUB_TOKEN"}, "Bearer"
    )
    with pytest.raises(InputError, match=r"x: inject_headers: no credential to inject"):
        ProxyService("https://example.com").to_route("x")


# -- refs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "room", "name", "server"),
    [
        ("bureau/template:agent-base", "bureau/template", "agent-base", ""),
        ("template:minimal", "template", "minimal", ""),
        ("iree/template@other.example:foo", "iree/template", "foo", "other.example"),
        ("iree/template@other.example:8448:v2", "iree/template", "v2", "other.example:8448"),
        ("iree/template@[::1]:8448:v2", "iree/template", "v2", "[::1]:8448"),
    ],
)
def test_good_refs(text: str, room: str, name: str, server: str) -> None:
    ref = TemplateRef.parse(text)
    assert ref == TemplateRef(room, name, server)
    assert str(ref) == text
    assert ref.state_key == name
    assert ref.room_alias("bureau.local") == f"#{room}:{server or 'bureau.local'}"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "not a template ref"),
        ("bureau/template", "not a template ref"),
        (":base", "not a template ref"),
        ("bureau/template:", "template name"),
        ("bureau/template:..", "template name"),
        ("bureau/template:.hidden", "template name"),
        ("bureau/template:a b", "template name"),
        ("bureau/template:" + "a" * 256, "template name"),
        ("bureau/template:a\nb", "template name"),
        ("@server:base", "empty name"),
        ("bureau/template@:base", "empty server name"),
        ("bureau/template@bad server:base", "may contain only"),
        ("Bureau/template:base", "may contain only"),
        ("bureau//template:base", "empty segment"),
        ("bureau/../template:base", "starting with '.'"),
    ],
)
def test_bad_refs(text: str, problem: str) -> None:
    with pytest.raises(names.InvalidName, match=problem):
        TemplateRef.parse(text)


# -- inheritance --------------------------------------------------------------------------


class Store:
    """Templates by ref string, and what was fetched."""

    def __init__(self, **templates: dict[str, Any]) -> None:
        self.templates = {
            f"t:{name}": Template.from_json(obj, name) for name, obj in templates.items()
        }
        self.fetched: list[str] = []

    def __call__(self, ref: TemplateRef) -> Template | None:
        self.fetched.append(str(ref))
        return self.templates.get(str(ref))

    def resolve(self, name: str, *extra: str) -> Resolved:
        return resolve(TemplateRef.parse(f"t:{name}"), self, [TemplateRef.parse(e) for e in extra])


def mount(dest: str, mode: str = "ro") -> dict[str, Any]:
    return {"source": dest, "dest": dest, "mode": mode}


def family() -> Store:
    """child inherits [left, right]; left inherits base: three levels, two parents."""
    return Store(
        base={
            "description": "base",
            "command": ["base"],
            "environment_variables": {"A": "base", "B": "base"},
            "filesystem": [{"dest": "/scratch", "type": "tmpfs"}, mount("/etc/ssl")],
            "namespaces": {"pid": True, "net": True, "ipc": True, "uts": True},
            "security": {"new_session": True, "die_with_parent": True, "no_new_privs": True},
            "resources": {"memory_limit_mb": 512, "pids_limit": 100},
            "create_dirs": ["/scratch", "/var/cache"],
            "required_credentials": ["BASE_TOKEN"],
            "proxy_services": {"api": {"upstream": "https://base.example"}},
            "origin": {"content_hash": "sha256:base"},
        },
        left={
            "inherits": ["t:base"],
            "environment_variables": {"B": "left", "C": "left"},
            "filesystem": [mount("/etc/ssl", "rw")],
            "resources": {"cpu_shares": 10},
            "create_dirs": ["/var/cache", "/left"],
        },
        right={
            "command": ["right"],
            "environment_variables": {"C": "right", "D": "right"},
            "namespaces": {"pid": True},
            "create_dirs": ["/scratch", "/right"],
            "required_credentials": ["RIGHT_TOKEN", "BASE_TOKEN"],
            "proxy_services": {
                "api": {"upstream": "https://right.example"},
                "other": {"upstream": "https://other.example"},
            },
        },
        child={
            "description": "child",
            "inherits": ["t:left", "t:right"],
            "environment_variables": {"D": "child"},
            "create_dirs": ["/child", "/left"],
        },
    )


def test_inheritance_order_and_merge_rules() -> None:
    resolved = family().resolve("child")
    assert resolved.template.to_json() == {
        "description": "child",  # scalar: the child last
        "command": ["right"],  # scalar: the later parent over the earlier's ancestor
        "environment_variables": {"A": "base", "B": "left", "C": "right", "D": "child"},
        # a later mount at the same dest replaces the earlier one
        "filesystem": [{"dest": "/scratch", "type": "tmpfs"}, mount("/etc/ssl", "rw")],
        # nested objects are replaced whole, as upstream: right's partial namespaces win
        "namespaces": {"pid": True, "net": False, "ipc": False, "uts": False},
        "resources": {"cpu_shares": 10},
        "security": {"new_session": True, "die_with_parent": True, "no_new_privs": True},
        # lists appended in order, duplicates dropped, the first kept
        "create_dirs": ["/scratch", "/var/cache", "/left", "/right", "/child"],
        "required_credentials": ["BASE_TOKEN", "RIGHT_TOKEN"],
        # maps key by key; a proxy service replaced whole
        "proxy_services": {
            "api": {"upstream": "https://right.example"},
            "other": {"upstream": "https://other.example"},
        },
        # origin is not inherited; inherits is consumed
    }
    assert resolved.template.inherits == ()
    assert [str(s) for s in resolved.sources] == ["t:base", "t:left", "t:right", "t:child"]


def test_provenance_names_the_source_of_each_field_and_key() -> None:
    assert family().resolve("child").provenance == {
        "description": "t:child",
        "command": "t:right",
        "namespaces": "t:right",
        "security": "t:base",
        "resources": "t:left",
        "environment_variables.A": "t:base",
        "environment_variables.B": "t:left",
        "environment_variables.C": "t:right",
        "environment_variables.D": "t:child",
        "proxy_services.api": "t:right",
        "proxy_services.other": "t:right",
        "filesystem[/scratch]": "t:base",
        "filesystem[/etc/ssl]": "t:left",
        "create_dirs[/scratch]": "t:base",  # right's later one was the duplicate
        "create_dirs[/var/cache]": "t:base",
        "create_dirs[/left]": "t:left",
        "create_dirs[/right]": "t:right",
        "create_dirs[/child]": "t:child",
        "required_credentials[BASE_TOKEN]": "t:base",
        "required_credentials[RIGHT_TOKEN]": "t:right",
    }


def test_parents_are_resolved_before_they_are_merged() -> None:
    """The later parent wins with what it inherited, not only with what it sets."""
    store = family()
    child = store.templates["t:child"]
    store.templates["t:child"] = Template(inherits=tuple(reversed(child.inherits)))
    resolved = store.resolve("child")
    assert resolved.template.command == ("base",)
    assert resolved.provenance["command"] == "t:base"
    assert resolved.template.namespaces == Namespaces(True, True, True, True)
    assert resolved.template.environment_variables["C"] == "left"


def test_a_template_without_parents_resolves_to_itself() -> None:
    resolved = family().resolve("base")
    assert resolved.template == family().templates["t:base"]
    assert set(resolved.provenance.values()) == {"t:base"}
    assert "origin" in resolved.provenance


def test_a_diamond_is_fetched_once() -> None:
    store = Store(
        base={"create_dirs": ["/base"], "command": ["x"]},
        a={"inherits": ["t:base"], "create_dirs": ["/a"]},
        b={"inherits": ["t:base"], "create_dirs": ["/b"]},
        top={"inherits": ["t:a", "t:b"]},
    )
    resolved = store.resolve("top")
    assert resolved.template.create_dirs == ("/base", "/a", "/b")
    assert sorted(store.fetched) == ["t:a", "t:b", "t:base", "t:top"]


def test_a_cycle_names_the_chain() -> None:
    store = Store(
        a={"inherits": ["t:b"]},
        b={"inherits": ["t:ok", "t:c"]},
        c={"inherits": ["t:a"]},
        ok={},
        loop={"inherits": ["t:loop"]},
    )
    with pytest.raises(InputError) as caught:
        store.resolve("a")
    assert str(caught.value) == "t:a: inherits: cycle: t:a -> t:b -> t:c -> t:a"
    with pytest.raises(InputError, match=r"cycle: t:loop -> t:loop$"):
        store.resolve("loop")


def test_a_missing_template_names_the_chain() -> None:
    store = Store(a={"inherits": ["t:b"]}, b={"inherits": ["t:gone"]})
    with pytest.raises(InputError) as caught:
        store.resolve("a")
    assert str(caught.value) == "t:a: inherits: t:gone not found: t:a -> t:b -> t:gone"
    with pytest.raises(InputError, match=r"^t:nothing: template not found$"):
        store.resolve("nothing")


def chain_of(length: int) -> Store:
    """t:l1 inherits t:l2 ... inherits t:l<length>."""
    return Store(
        **{f"l{i}": {"inherits": [f"t:l{i + 1}"]} for i in range(1, length)},
        **{f"l{length}": {"command": ["deepest"]}},
    )


def test_a_chain_of_max_depth_is_accepted() -> None:
    assert MAX_DEPTH == 8
    resolved = chain_of(8).resolve("l1")
    assert resolved.template.command == ("deepest",)
    assert resolved.provenance["command"] == "t:l8"


def test_a_chain_over_max_depth_names_it() -> None:
    with pytest.raises(InputError) as caught:
        chain_of(9).resolve("l1")
    chain = " -> ".join(f"t:l{i}" for i in range(1, 10))
    assert str(caught.value) == f"t:l1: inherits: more than 8 templates in one chain: {chain}"


def test_depth_counts_a_template_met_again_deeper() -> None:
    """l3..l8 is resolved under a short path first, then met again under a long one."""
    store = chain_of(8)
    store.templates["t:top"] = Template(
        inherits=tuple(TemplateRef.parse(r) for r in ("t:l3", "t:x"))
    )
    store.templates["t:x"] = Template(inherits=(TemplateRef.parse("t:y"),))
    store.templates["t:y"] = Template(inherits=(TemplateRef.parse("t:l3"),))
    with pytest.raises(InputError) as caught:
        store.resolve("top")
    chain = " -> ".join(["t:top", "t:x", "t:y", *(f"t:l{i}" for i in range(3, 9))])
    assert str(caught.value).endswith(f"one chain: {chain}")


# -- the assignment's overrides -----------------------------------------------------------


def test_extra_inherits_are_merged_over_the_template() -> None:
    store = family()
    store.templates["t:mixin"] = Template.from_json(
        {
            "inherits": ["t:right"],
            "command": ["mixin"],
            "environment_variables": {"D": "mixin"},
            "create_dirs": ["/child", "/mixin"],
        },
        "mixin",
    )
    resolved = store.resolve("child", "t:mixin")
    # an extra wins over the template itself, as upstream's extra_inherits do
    assert resolved.template.command == ("mixin",)
    assert resolved.template.environment_variables["D"] == "mixin"
    assert resolved.template.create_dirs == (
        "/scratch",
        "/var/cache",
        "/left",
        "/right",
        "/child",
        "/mixin",
    )
    assert resolved.provenance["command"] == "t:mixin"
    assert resolved.provenance["create_dirs[/child]"] == "t:child"
    assert resolved.sources[-1] == TemplateRef.parse("t:mixin")
    with pytest.raises(InputError, match=r"^t:absent: template not found$"):
        store.resolve("child", "t:absent")


def test_assignment_overrides() -> None:
    resolved = family().resolve("child")
    applied = apply_assignment(resolved, ["/bin/override", "-v"], {"D": "mine", "E": "new"})
    assert applied.template.command == ("/bin/override", "-v")
    assert applied.template.environment_variables == {
        "A": "base",
        "B": "left",
        "C": "right",
        "D": "mine",
        "E": "new",
    }
    assert applied.provenance["command"] == ASSIGNMENT
    assert applied.provenance["environment_variables.D"] == ASSIGNMENT
    assert applied.provenance["environment_variables.A"] == "t:base"
    assert resolved.template.command == ("right",)  # the input is left as it was
    assert apply_assignment(resolved) == resolved
    assert apply_assignment(resolved, [], {}) == resolved


@pytest.mark.parametrize(
    ("command", "env", "named"),
    [
        (["ok"], {"BAD-NAME": "x"}, "assignment: extra_environment_variables.BAD-NAME:"),
        (["ok"], {"X": "a\nb"}, "assignment: extra_environment_variables.X:"),
        ([""], {}, "assignment: command_override:"),
        ("/bin/sh", {}, "assignment: command_override:"),
    ],
)
def test_bad_assignment_overrides_are_named(
    command: list[str], env: dict[str, str], named: str
) -> None:
    with pytest.raises(InputError) as caught:
        apply_assignment(family().resolve("child"), command, env)
    assert str(caught.value).startswith(named)


def test_proxy_service_carries_scope_and_the_credential_kinds_into_its_route() -> None:
    """OURS: a template's proxy service takes the same scope and kinds as a bundle's route,
    and the route it becomes keeps them (an unbound bundle is served with these)."""
    service = {
        "upstream": "https://sqs.eu-west-1.amazonaws.com",
        "allow": ["POST /123456789012/jobs"],
        "deny": ["* /**/admin/**"],
        "aws_sigv4": {
            "access_key_id": "AWS_ACCESS_KEY_ID",
            "secret_access_key": "AWS_SECRET_ACCESS_KEY",
            "region": "eu-west-1",
            "service": "sqs",
        },
    }
    parsed = ProxyService.from_json(service, "t: proxy_services: sqs")
    assert parsed.to_json() == service
    route = parsed.to_route("sqs")
    assert route.allow == ("POST /123456789012/jobs",)
    assert route.aws_sigv4 is not None
    assert route.aws_sigv4.service == "sqs"
    with pytest.raises(InputError, match=r"t: allow\[0\]: 'POST': expected"):
        ProxyService.from_json({**service, "allow": ["POST"]}, "t")
