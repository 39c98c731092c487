"""Template inheritance and an assignment's overrides, as upstream resolves them
(lib/templatedef/resolve.go, cmd/bureau-daemon/template.go). Pure: the caller fetches.

Order: a template's parents are resolved depth first, left to right, each on its own;
the resolved parents are merged left to right and the template itself last. Then the
assignment's ``extra_inherits``, each resolved on its own, are merged on top left to right
(so they win over the template, as upstream's do), then ``command_override`` and
``extra_environment_variables``.

Merge of a later layer over an earlier, field by field (upstream's ``Merge``):
- ``description``, ``isolation``, ``command``, ``environment``, ``credential_ref``: the
  later wins when it sets one (non-empty);
- ``namespaces``, ``security``, ``resources``, ``health_check``, ``output_capture``: the
  later replaces the whole object when it has one (no merge inside: the flags form one
  unit, and a partial object means the others off, as upstream reads it);
- ``environment_variables``, ``proxy_services``, ``roles``, ``default_payload``: key by
  key, the later wins a key (a proxy service, a role, a payload value replaced whole);
- ``prepend_variables``: per variable, the later layer's entries first, then the
  earlier's, duplicates dropped;
- ``create_dirs``, ``required_credentials``, ``required_services``: appended, duplicates
  dropped, the first kept;
- ``filesystem``, ``secrets``: appended; a later mount at the same ``dest`` (a later
  binding of the same ``key``) replaces the earlier one, which is dropped from its place;
- ``allowed_pipelines``: the intersection when both set one (a later layer narrows,
  never widens), else whichever is set;
- ``origin`` is the later layer's only (it says where that event was published from);
  ``inherits`` is consumed;
- ``extra`` (fields upstream does not have): the later wins a field, so that whoever
  judges the result still sees it.

A chain (the template asked for, its parent, that parent's parent...) holds at most
``MAX_DEPTH`` templates; upstream has no limit, PRINCIPALS.md asks for one. A cycle, a
missing template or a chain too long is an ``InputError`` naming the chain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bureau.errors import InputError
from bureau.wire.template import Template
from bureau.wire.template_parts import TemplateRef, env_problem, read_string, read_strings
from bureau.wire.template_upstream import (
    intersect_pipelines,
    merge_prepend,
    merge_secrets,
    read_payload,
    read_secrets,
)

Fetch = Callable[[TemplateRef], Template | None]
MAX_DEPTH = 8
ASSIGNMENT = "assignment"  # provenance of what the assignment's overrides set
# Where the first occurrence is kept rather than the later layer's.
_FIRST_KEPT = ("create_dirs[", "required_credentials[", "required_services[")
_SCALARS = ("description", "isolation", "command", "environment", "credential_ref")
_REPLACED = ("namespaces", "security", "resources", "health_check", "output_capture")
_MAPS = ("environment_variables", "proxy_services", "roles", "default_payload", "extra")
_LISTS = ("create_dirs", "required_credentials", "required_services")

_Layer = tuple[Template, dict[str, str]]


@dataclass(frozen=True)
class Resolved:
    """A merged template (``inherits`` empty) and, for each field, the source of its
    value: the template ref, or ``ASSIGNMENT``. Keys: the field's name for a scalar or an
    object (``command``, ``namespaces``, ``credential_ref``, ``allowed_pipelines``...);
    one per map key (``environment_variables.HOME``, ``proxy_services.github``,
    ``roles.shell``; ``extra.NAME`` for a field upstream does not have) and one per list
    item (``filesystem[/tmp]`` by dest, ``secrets[TOKEN]`` by key, ``create_dirs[/tmp]``,
    ``required_credentials[TOKEN]``, ``required_services[ticket]``).
    ``sources`` is every template that took part, in merge order: a change to any of them
    changes the workload."""

    ref: TemplateRef
    template: Template
    provenance: dict[str, str] = field(default_factory=dict)
    sources: tuple[TemplateRef, ...] = ()


def field_paths(template: Template) -> Iterable[str]:
    """The provenance keys a template sets (see ``Resolved``)."""
    yield from (k for k in _SCALARS if getattr(template, k))
    for key in (*_REPLACED, "allowed_pipelines", "origin"):
        if getattr(template, key) is not None:
            yield key
    for key in (*_MAPS, "prepend_variables"):
        yield from (f"{key}.{k}" for k in getattr(template, key))
    yield from (f"filesystem[{m.dest}]" for m in template.filesystem)
    yield from (f"secrets[{b.key}]" for b in template.secrets)
    for key in _LISTS:
        yield from (f"{key}[{item}]" for item in getattr(template, key))


def _union(first: tuple[str, ...], then: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*first, *then)))


def merge(base: Template, top: Template) -> Template:
    """``top`` over ``base``, as the module says."""
    replaced = {m.dest for m in top.filesystem}
    fields: dict[str, Any] = {k: getattr(top, k) or getattr(base, k) for k in _SCALARS}
    for key in _REPLACED:
        value = getattr(top, key)
        fields[key] = value if value is not None else getattr(base, key)
    fields |= {k: {**getattr(base, k), **getattr(top, k)} for k in _MAPS}
    fields |= {k: _union(getattr(base, k), getattr(top, k)) for k in _LISTS}
    return Template(
        **fields,
        filesystem=(*(m for m in base.filesystem if m.dest not in replaced), *top.filesystem),
        prepend_variables=merge_prepend(base.prepend_variables, top.prepend_variables),
        secrets=merge_secrets(base.secrets, top.secrets),
        allowed_pipelines=intersect_pipelines(base.allowed_pipelines, top.allowed_pipelines),
        origin=top.origin,
    )


def _merge(base: _Layer, top: _Layer) -> _Layer:
    template = merge(base[0], top[0])
    provenance = {}
    for path in field_paths(template):
        first, then = (base[1], top[1]) if path.startswith(_FIRST_KEPT) else (top[1], base[1])
        provenance[path] = first[path] if path in first else then[path]
    return template, provenance


def _own(template: Template, source: str) -> _Layer:
    # Merged onto nothing: duplicates within the one template are dropped the same way.
    return _merge((Template(), {}), (template, dict.fromkeys(field_paths(template), source)))


def _chain(refs: Sequence[TemplateRef]) -> str:
    return " -> ".join(str(r) for r in refs)


class _Walk:
    """One resolution: a cache of resolved templates (a diamond is fetched once) with,
    for each, its longest chain, so that a cached template still counts in the depth."""

    def __init__(self, fetch: Fetch) -> None:
        self.fetch = fetch
        self.done: dict[TemplateRef, tuple[_Layer, tuple[TemplateRef, ...]]] = {}

    def check(self, chain: tuple[TemplateRef, ...]) -> None:
        if len(chain) > MAX_DEPTH:
            raise InputError(
                str(chain[0]),
                "inherits",
                f"more than {MAX_DEPTH} templates in one chain: {_chain(chain)}",
            )

    def layer(self, ref: TemplateRef, above: tuple[TemplateRef, ...]) -> _Layer:
        chain = (*above, ref)
        if ref in above:
            raise InputError(str(chain[0]), "inherits", f"cycle: {_chain(chain)}")
        if ref in self.done:
            layer, deepest = self.done[ref]
            self.check((*above, *deepest))
            return layer
        self.check(chain)
        template = self.fetch(ref)
        if template is None:
            if not above:
                raise InputError(str(ref), None, "template not found")
            raise InputError(str(chain[0]), "inherits", f"{ref} not found: {_chain(chain)}")
        merged: _Layer | None = None
        longest: tuple[TemplateRef, ...] = (ref,)
        for parent in template.inherits:
            layer = self.layer(parent, chain)
            merged = layer if merged is None else _merge(merged, layer)
            longest = max(longest, (ref, *self.done[parent][1]), key=len)
        own = _own(template, str(ref))
        result = own if merged is None else _merge(merged, own)
        self.done[ref] = (result, longest)
        return result


def resolve(ref: TemplateRef, fetch: Fetch, extra_inherits: Sequence[TemplateRef] = ()) -> Resolved:
    """``ref`` with its parents, then ``extra_inherits`` over it. ``fetch`` returns the
    stored template for a ref, or None when there is none; it may raise InputError for
    one it cannot parse."""
    walk = _Walk(fetch)
    template, provenance = walk.layer(ref, ())
    for extra in extra_inherits:
        template, provenance = _merge((template, provenance), walk.layer(extra, ()))
    return Resolved(ref, template, provenance, tuple(walk.done))


def apply_assignment(
    resolved: Resolved,
    command_override: Sequence[str] = (),
    extra_environment_variables: Mapping[str, str] | None = None,
    upstream: Mapping[str, Any] | None = None,
) -> Resolved:
    """The assignment's overrides, as upstream applies them (cmd/bureau-daemon/template.go
    resolveInstanceConfig): a non-empty ``command_override`` replaces the command;
    ``extra_environment_variables`` are merged over, key by key. ``upstream``: the
    assignment's fields this version does not model, of which these act on the template
    as upstream's do: a non-empty ``environment_override`` or
    ``required_services_override`` replaces the template's, ``secrets_override`` does
    when present (even ``[]``), ``payload`` is merged over ``default_payload``.
    (``extra_inherits`` need fetching: ``resolve`` takes them.)"""
    extra = dict(extra_environment_variables or {})
    for key, value in extra.items():
        problem = env_problem(key, value)
        if problem:
            raise InputError(ASSIGNMENT, f"extra_environment_variables.{key}", problem)
    if isinstance(command_override, str) or not all(
        isinstance(a, str) and a and "\0" not in a for a in command_override
    ):
        raise InputError(ASSIGNMENT, "command_override", "expected a list of non-empty strings")
    provenance = dict(resolved.provenance)
    template = resolved.template
    if command_override:
        template = replace(template, command=tuple(command_override))
        provenance["command"] = ASSIGNMENT
    if extra:
        environment = {**template.environment_variables, **extra}
        template = replace(template, environment_variables=environment)
        provenance |= {f"environment_variables.{k}": ASSIGNMENT for k in extra}
    template = _upstream_overrides(template, provenance, upstream or {})
    return replace(resolved, template=template, provenance=provenance)


def _upstream_overrides(
    template: Template, provenance: dict[str, str], upstream: Mapping[str, Any]
) -> Template:
    fields = {k: v for k, v in upstream.items() if v is not None}  # Go reads null as absent
    if nix := read_string(fields, "environment_override", ASSIGNMENT):
        template = replace(template, environment=nix)
        provenance["environment"] = ASSIGNMENT
    services = read_strings(fields, "required_services_override", ASSIGNMENT)
    if services:
        template = replace(template, required_services=services)
        _replace_items(provenance, "required_services", services)
    if "secrets_override" in fields:  # [] too: the template's are dropped
        secrets = read_secrets(fields, "secrets_override", ASSIGNMENT)
        template = replace(template, secrets=secrets)
        _replace_items(provenance, "secrets", tuple(b.key for b in secrets))
    if payload := read_payload(fields, "payload", ASSIGNMENT):
        template = replace(template, default_payload={**template.default_payload, **payload})
        provenance |= {f"default_payload.{k}": ASSIGNMENT for k in payload}
    return template


def _replace_items(provenance: dict[str, str], key: str, items: Iterable[str]) -> None:
    for path in [p for p in provenance if p.startswith(f"{key}[")]:
        del provenance[path]
    provenance |= {f"{key}[{item}]": ASSIGNMENT for item in items}
