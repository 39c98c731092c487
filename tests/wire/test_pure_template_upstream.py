"""Upstream's template fields that this bureau does not run as upstream's machines do
(wire/template_upstream, template_policy), as plain unit tests: each is read as upstream
writes it, written back unchanged, merged as upstream's templatedef.Merge merges it and
overridden as upstream's assignment overrides it; then judged: honoured (environment,
prepend_variables), ignored with a note (roles, required_services, default_payload,
output_capture), or the principal refused in one line naming the field and the template
that set it (isolation none, secrets, credential_ref, response_interceptors, a field
upstream does not have)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bureau.errors import InputError
from bureau.template_policy import Ignored, honour, ignored, notes, refusal
from bureau.template_resolve import ASSIGNMENT, Resolved, apply_assignment, resolve
from bureau.wire.template import FIELDS, Template
from bureau.wire.template_parts import Mount, TemplateRef
from bureau.wire.template_upstream import OutputCapture, SecretBinding

INTERCEPTOR: dict[str, Any] = {
    "method": "POST",
    "path_pattern": "^/repos/([^/]+)/([^/]+)/pulls$",
    "event_type": "m.bureau.forge_attribution",
    "event_content": {"agent": "${agent}", "entity_number": "${response.number}"},
}
# Each field upstream has and we do not run as upstream does, as upstream's encoding/json
# writes it (omitempty: allowed_pipelines [] and output_capture's enabled are kept).
UPSTREAM: dict[str, Any] = {
    "description": "an upstream agent",
    "isolation": "standard",
    "command": ["/usr/local/bin/agent"],
    "environment": "/nix/store/abc-agent-env",
    "prepend_variables": {"PATH": ["/opt/tools/bin"]},
    "roles": {"agent": ["/usr/local/bin/agent"], "shell": ["/bin/sh", "-l"]},
    "secrets": [{"key": "API_TOKEN", "env": "API_TOKEN"}, {"key": "CERT", "file": "cert.pem"}],
    "credential_ref": "${FLEET_ROOM}:nix-builder",
    "allowed_pipelines": [],
    "required_services": ["ticket", "rag"],
    "default_payload": {"model": {"name": "m"}, "max_tokens": 4096},
    "output_capture": {"enabled": False},
    "proxy_services": {
        "github": {
            "upstream": "https://api.github.com",
            "inject_headers": {"Authorization": "GITHUB_TOKEN"},
            "auth_scheme": "Bearer",
            "response_interceptors": [INTERCEPTOR],
        }
    },
}


def refused(obj: object) -> str:
    with pytest.raises(InputError) as caught:
        Template.from_json(obj, "t")
    return str(caught.value)


# -- read and written back ----------------------------------------------------------------


def test_every_upstream_field_is_read_and_written_back_unchanged() -> None:
    template = Template.from_json(UPSTREAM, "t")
    out = template.to_json()
    assert out == UPSTREAM
    assert list(out) == [k for k in FIELDS if k in out]  # upstream's field order
    assert Template.from_json(out, "t") == template
    assert template.secrets[1] == SecretBinding("CERT", file="cert.pem")
    assert template.allowed_pipelines == ()  # [] allows none; absent (None) any
    assert template.output_capture == OutputCapture(enabled=False)
    assert template.proxy_services["github"].response_interceptors[0].status_min == 0


def test_null_is_absent_as_upstreams_decoder_reads_it() -> None:
    nulls = dict.fromkeys(("command", "allowed_pipelines", "roles", "output_capture", "secrets"))
    assert Template.from_json(nulls, "t") == Template()
    assert Template().allowed_pipelines is None
    assert "allowed_pipelines" not in Template().to_json()


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("isolation", "partial", "t: isolation: 'partial' is not one of standard, none"),
        ("environment", ["/nix/store/x"], "t: environment: expected a string"),
        ("prepend_variables", {"PATH": "/a"}, "t: prepend_variables: PATH: expected a list"),
        ("prepend_variables", {"1X": ["/a"]}, "t: prepend_variables.1X: not a variable name"),
        ("prepend_variables", {"PATH": ["/a:/b"]}, "t: prepend_variables.PATH: one path each"),
        ("roles", ["shell"], "t: roles: expected an object"),
        ("roles", {"shell": [""]}, "t: roles: shell[0]: expected a non-empty string"),
        ("secrets", {"TOKEN": {"env": "TOKEN"}}, "t: secrets: expected a list"),
        ("secrets", [{"env": "X"}], "t: secrets[0]: key: required"),
        ("secrets", [{"key": "K"}], "t: secrets[0]: env: at least one of env or file"),
        ("secrets", [{"key": "K", "file": "../k"}], "t: secrets[0]: file: expected a bare"),
        ("secrets", [{"key": "K", "file": "a/k"}], "t: secrets[0]: file: expected a bare"),
        ("secrets", [{"key": "K", "file": "..k"}], "t: secrets[0]: file: expected a bare"),
        ("secrets", [{"key": "K", "env": "K", "mode": 1}], "t: secrets[0]: mode: unknown"),
        ("credential_ref", 7, "t: credential_ref: expected a string"),
        ("allowed_pipelines", "compose", "t: allowed_pipelines: expected a list"),
        ("required_services", ["ticket", 1], "t: required_services[1]: expected a non-empty"),
        ("default_payload", [1], "t: default_payload: expected an object"),
        ("output_capture", {"enabled": "yes"}, "t: output_capture: enabled: expected true"),
        ("output_capture", {"max_size": -1}, "t: output_capture: max_size: expected a whole"),
    ],
)
def test_a_bad_upstream_field_is_named(key: str, value: object, named: str) -> None:
    assert refused({**UPSTREAM, key: value}).startswith(named)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"event_content": {}}, "response_interceptors[0]: event_content: expected a non-empty"),
        ({"path_pattern": ""}, "response_interceptors[0]: path_pattern: required"),
        ({"event_type": None}, "response_interceptors[0]: event_type: expected a string"),
        ({"status_min": 300, "status_max": 200}, "response_interceptors[0]: status_min: is abo"),
        ({"status_min": 200}, "response_interceptors[0]: status_min: is above status_max"),
    ],
)
def test_a_bad_response_interceptor_is_named(change: dict[str, Any], named: str) -> None:
    data = copy.deepcopy(UPSTREAM)
    data["proxy_services"]["github"]["response_interceptors"] = [{**INTERCEPTOR, **change}]
    assert f"t: proxy_services.github: {named}" in refused(data)


# -- merged as upstream merges them ---------------------------------------------------------


class Store:
    def __init__(self, **templates: dict[str, Any]) -> None:
        self.templates = {f"t:{n}": Template.from_json(o, n) for n, o in templates.items()}

    def __call__(self, ref: TemplateRef) -> Template | None:
        return self.templates.get(str(ref))

    def resolve(self, name: str) -> Resolved:
        return resolve(TemplateRef.parse(f"t:{name}"), self)


def family() -> Store:
    """child inherits [left, right]; left inherits base."""
    return Store(
        base={
            "isolation": "none",
            "environment": "/nix/store/base",
            "prepend_variables": {"PATH": ["/base/bin"], "LD_LIBRARY_PATH": ["/base/lib"]},
            "roles": {"shell": ["/bin/sh"]},
            "secrets": [{"key": "A", "env": "A"}, {"key": "B", "env": "B"}],
            "allowed_pipelines": ["p1", "p2"],
            "required_services": ["ticket"],
            "default_payload": {"x": 1, "y": {"deep": 1}},
            "output_capture": {"enabled": True, "max_size": 10},
            "zeta": "base",
        },
        left={"inherits": ["t:base"], "credential_ref": "fleet:left", "zeta": "left"},
        right={
            "environment": "/nix/store/right",
            "roles": {"shell": ["/bin/bash"], "agent": ["/bin/agent"]},
            "allowed_pipelines": ["p2", "p3"],
            "required_services": ["rag", "ticket"],
            "default_payload": {"y": {"other": 2}},
            "output_capture": {"enabled": False},
        },
        child={
            "inherits": ["t:left", "t:right"],
            "isolation": "standard",
            "prepend_variables": {"PATH": ["/child/bin"]},
            "secrets": [{"key": "A", "file": "a"}],
        },
    )


def test_upstream_fields_merge_as_upstream_merges_them() -> None:
    resolved = family().resolve("child")
    template = resolved.template
    assert template.isolation == "standard"  # scalars: the later wins when set
    assert template.environment == "/nix/store/right"
    assert template.credential_ref == "fleet:left"
    # per variable: the later layer's entries first, then the earlier's not already there
    assert template.prepend_variables == {
        "PATH": ("/child/bin", "/base/bin"),
        "LD_LIBRARY_PATH": ("/base/lib",),
    }
    assert template.roles == {"shell": ("/bin/bash",), "agent": ("/bin/agent",)}
    # a later binding of a key replaces the earlier, which leaves its place
    assert template.secrets == (SecretBinding("B", env="B"), SecretBinding("A", file="a"))
    assert template.allowed_pipelines == ("p2",)  # intersection: never widened
    assert template.required_services == ("ticket", "rag")
    assert template.default_payload == {"x": 1, "y": {"other": 2}}  # key by key, not deep
    assert template.output_capture == OutputCapture(enabled=False)  # replaced whole
    assert template.extra == {"zeta": "left"}
    assert {k: resolved.provenance[k] for k in ("isolation", "credential_ref", "environment")} == {
        "isolation": "t:child",
        "credential_ref": "t:left",
        "environment": "t:right",
    }
    assert resolved.provenance["secrets[A]"] == "t:child"
    assert resolved.provenance["required_services[ticket]"] == "t:base"  # the first kept
    assert resolved.provenance["roles.shell"] == "t:right"
    assert resolved.provenance["extra.zeta"] == "t:left"


def test_allowed_pipelines_absent_never_widens_a_restriction() -> None:
    store = Store(
        base={"allowed_pipelines": ["p1"]},
        open={"inherits": ["t:base"]},
        none={"inherits": ["t:base"], "allowed_pipelines": []},
        free={},
    )
    assert store.resolve("open").template.allowed_pipelines == ("p1",)
    assert store.resolve("none").template.allowed_pipelines == ()
    assert store.resolve("free").template.allowed_pipelines is None


def test_the_assignments_upstream_overrides_apply_as_upstreams_do() -> None:
    resolved = family().resolve("child")
    upstream = {
        "environment_override": "/nix/store/pinned",
        "secrets_override": [],
        "required_services_override": ["rag"],
        "payload": {"x": 2},
        "labels": {"ignored": "here"},
    }
    applied = apply_assignment(resolved, upstream=upstream)
    assert applied.template.environment == "/nix/store/pinned"
    assert applied.template.secrets == ()  # present, even empty: replaces
    assert applied.template.required_services == ("rag",)
    assert applied.template.default_payload == {"x": 2, "y": {"other": 2}}
    assert applied.provenance["environment"] == ASSIGNMENT
    assert applied.provenance["required_services[rag]"] == ASSIGNMENT
    assert "required_services[ticket]" not in applied.provenance
    assert not any(k.startswith("secrets[") for k in applied.provenance)
    assert applied.provenance["default_payload.x"] == ASSIGNMENT
    # null, absent, "" and [] for the non-empty ones: the template's own are kept
    unchanged: dict[str, Any] = {"secrets_override": None, "required_services_override": []}
    assert apply_assignment(resolved, upstream={**unchanged, "environment_override": ""}) == (
        resolved
    )
    with pytest.raises(InputError, match=r"^assignment: secrets_override: expected a list"):
        apply_assignment(resolved, upstream={"secrets_override": "A"})


# -- judged where the principal would run ------------------------------------------------------


def judged(parent: dict[str, Any], **child: Any) -> Resolved:
    """A principal's template "t:child" inheriting "t:parent", which sets the fields."""
    command = {"command": ["/bin/agent"]}
    return Store(parent=parent, child={"inherits": ["t:parent"], **command, **child}).resolve(
        "child"
    )


@pytest.mark.parametrize(
    ("parent", "message"),
    [
        ({"isolation": "none"}, "t:parent: isolation: 'none' asks for no sandbox; never run here"),
        (
            {"secrets": UPSTREAM["secrets"]},
            "t:parent: secrets: hands API_TOKEN to the workload; a credential never enters the "
            "sandbox here; use proxy_services",
        ),
        (
            {"credential_ref": "ns/template:nix-builder"},
            "t:parent: credential_ref: names ns/template:nix-builder; only the fleet room's "
            "bundles (${FLEET_ROOM}:<name>) are served here",
        ),
        (
            {"proxy_services": UPSTREAM["proxy_services"]},
            "t:parent: proxy_services.github.response_interceptors: this worker's proxy does not "
            "publish them: what the workload does through github would go unattributed",
        ),
        (
            {"zeta": {"newer": True}},
            "t:parent: zeta: not a template field this worker knows; cannot judge it",
        ),
        (
            {"environment": "/nix/store/../etc"},
            "t:parent: environment: '/nix/store/../etc' is not a Nix store path",
        ),
        ({"environment": "/opt/env"}, "t:parent: environment: '/opt/env' is not a Nix store"),
        ({"environment": "/nix/store/a:/b"}, "t:parent: environment: '/nix/store/a:/b' is not"),
    ],
)
def test_a_refused_field_is_one_line_naming_it_and_its_template(
    parent: dict[str, Any], message: str
) -> None:
    found = refusal(judged(parent))
    assert found is not None
    assert str(found).startswith(message)
    assert "\n" not in str(found)
    assert len(str(found)) < 190  # machine_status keeps 200, "template: " included
    assert notes(judged(parent)) == [f"this bureau's machines refuse a principal on it: {found}"]


def test_what_resolves_away_is_not_refused() -> None:
    assert refusal(judged({"isolation": "none"}, isolation="standard")) is None
    with_secrets = judged({"secrets": UPSTREAM["secrets"]})
    assert refusal(apply_assignment(with_secrets, upstream={"secrets_override": []})) is None
    empty = {"github": {"upstream": "https://api.github.com", "response_interceptors": []}}
    assert refusal(judged({"proxy_services": empty})) is None
    allowed = judged({"allowed_pipelines": [], "environment": "/nix/store/abc-env"})
    assert refusal(allowed) is None  # no pipeline runs here; a Nix environment is honoured
    assert ignored(allowed) == ()


def test_an_ignored_field_is_named_with_its_template() -> None:
    resolved = judged(
        {
            "roles": {"shell": ["/bin/sh"]},
            "required_services": ["ticket"],
            "output_capture": {"enabled": True},
        },
        default_payload={"k": 1},
    )
    assert refusal(resolved) is None
    found = ignored(resolved)
    assert [(i.field, i.source) for i in found] == [
        ("roles", "t:parent"),
        ("required_services", "t:parent"),
        ("default_payload", "t:child"),
        ("output_capture", "t:parent"),
    ]
    assert str(found[1]) == (
        "required_services (from t:parent) is ignored: service sockets "
        "(/run/bureau/service/<role>.sock) are not mounted here"
    )
    assert notes(resolved)[0] == f"this bureau's machines run it without {found[0]}"
    assert ignored(judged({"output_capture": {"enabled": False}})) == ()
    payload = apply_assignment(judged({}), upstream={"payload": {"k": 1}})
    assert ignored(payload) == (
        Ignored("default_payload", ASSIGNMENT, "/run/bureau/payload.json is not written here"),
    )


def test_environment_and_prepend_variables_are_honoured_as_upstreams_launcher_does() -> None:
    template = Template(
        environment="/nix/store/abc-env",
        prepend_variables={"PATH": ("/opt/a", "/opt/b"), "PYTHONPATH": ("/lib/py",), "E": ()},
        environment_variables={"PATH": "/usr/bin", "HOME": "/workspace"},
        filesystem=(Mount(dest="/usr", source="/usr"),),
    )
    done = honour(template)
    assert done.environment_variables == {
        "PATH": "/opt/a:/opt/b:/nix/store/abc-env/bin:/usr/bin",
        "PYTHONPATH": "/lib/py",
        "HOME": "/workspace",
    }
    assert done.filesystem == (
        Mount(dest="/usr", source="/usr"),
        Mount(dest="/nix/store", source="/nix/store", mode="ro"),
    )
    assert (done.environment, done.prepend_variables) == ("", {})
    bare = honour(Template(environment="/nix/store/e", filesystem=(Mount("/nix", "/nix"),)))
    assert bare.environment_variables == {"PATH": "/nix/store/e/bin:/usr/local/bin:/usr/bin:/bin"}
    assert bare.filesystem == (Mount("/nix", "/nix"),)  # /nix already there: not mounted again
    assert honour(Template(command=("x",))) == Template(command=("x",))
