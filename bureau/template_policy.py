"""What this worker does with the upstream template fields it does not run as upstream's
machines do, judged on a principal's resolved template (parents and assignment applied),
where it would run. Pure.

Every field is read and kept whatever is decided here (``wire.template``). Each is:
- honoured, as upstream's launcher does it (cmd/bureau-launcher/sandbox.go
  specToProfile): ``environment`` (a Nix store path: /nix/store mounted read-only, its
  ``bin`` first on PATH) and ``prepend_variables``, folded into the spec by ``honour``;
  ``allowed_pipelines`` holds by construction, as no pipeline runs here;
- ignored with a warning (``ignored``), where its absence costs the workload a feature
  and nobody any protection: ``roles``, ``required_services``, ``default_payload``,
  ``output_capture``;
- or the principal is refused (``refusal``), in one line naming the field and the
  template that set it, where running without it would leave the workload less
  protected, less accountable or less confined than its author asked, or would hand a
  credential to the workload: ``isolation: none``, ``secrets``, a ``credential_ref`` to a
  room other than a fleet room, ``response_interceptors``, and a field upstream does not
  have either (``extra``: what it asks for cannot be judged).

``credential_ref`` is honoured for the machine's own fleet room (``${FLEET_ROOM}:<name>``):
its principal's proxy serves that fleet bundle's credentials and routes beside its own.
Judged here without the machine, a ref is kept when it names a fleet room; the daemon and
the launcher, which know the machine, refuse one to another fleet's room (``fleet_ref``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from bureau.errors import InputError
from bureau.template_resolve import Resolved
from bureau.wire import names
from bureau.wire.fleet_bundle import CredentialRef
from bureau.wire.template import Template
from bureau.wire.template_parts import Mount

NIX_STORE = "/nix/store"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"  # upstream's, when the template sets none
IGNORED = {
    "roles": "observation roles (layout panes) are not provided here",
    "required_services": "service sockets (/run/bureau/service/<role>.sock) are not mounted here",
    "default_payload": "/run/bureau/payload.json is not written here",
    "output_capture": "output is not captured here; it goes to the journal",
}
SECRETS = "a credential never enters the sandbox here; use proxy_services"
FLEET_ROOM_ONLY = "only the fleet room's bundles (${FLEET_ROOM}:<name>) are served here"


@dataclass(frozen=True)
class Ignored:
    field: str
    source: str  # the template (or "assignment") that set it
    why: str

    def __str__(self) -> str:
        return f"{self.field} (from {self.source}) is ignored: {self.why}"


def _source(resolved: Resolved, key: str) -> str:
    return resolved.provenance.get(key, str(resolved.ref))


def _refused(template: Template) -> Iterator[tuple[str, str, str]]:
    """(provenance key, field, why) for each refused field, most serious first."""
    if template.isolation == "none":
        yield "isolation", "isolation", "'none' asks for no sandbox; never run here"
    for binding in template.secrets[:1]:
        key = binding.key
        yield f"secrets[{key}]", "secrets", f"hands {key} to the workload; {SECRETS}"
    if template.credential_ref and not _names_a_fleet_room(template.credential_ref):
        why = f"names {template.credential_ref[:80]}; {FLEET_ROOM_ONLY}"
        yield "credential_ref", "credential_ref", why
    for name, service in sorted(template.proxy_services.items()):
        if service.response_interceptors:
            why = (
                "this worker's proxy does not publish them: what the workload does "
                f"through {name} would go unattributed"
            )
            yield f"proxy_services.{name}", f"proxy_services.{name}.response_interceptors", why
    for name in sorted(template.extra):
        yield f"extra.{name}", name, "not a template field this worker knows; cannot judge it"
    nix = template.environment
    if nix and (
        not nix.startswith(NIX_STORE + "/")
        or ":" in nix
        or any(part in (".", "..", "") for part in nix.split("/")[1:])
    ):
        yield "environment", "environment", f"{nix!r} is not a Nix store path"


def _names_a_fleet_room(value: str) -> bool:
    """Whether ``value`` parses and names ``${FLEET_ROOM}`` or some fleet's room."""
    try:
        # Any fleet stands in for the machine's: only the shape is judged here.
        names.validate_fleet(CredentialRef.parse(value, "ns/fleet/any", "credential_ref").room)
    except (InputError, names.InvalidName):
        return False
    return True


def fleet_ref(value: str, fleet: str, server: str, where: str) -> CredentialRef:
    """A principal's ``credential_ref`` on a machine of ``fleet`` on ``server``: the bundle
    it names in that fleet's room; InputError naming ``where`` and ``credential_ref``
    otherwise (one that does not parse, or another room)."""
    room = names.fleet_room_localpart(fleet)
    ref = CredentialRef.parse(value, room, where)
    if not ref.in_fleet_room(room, server):
        raise InputError(where, "credential_ref", f"names {ref}; {FLEET_ROOM_ONLY}")
    return ref


def refusal(resolved: Resolved) -> InputError | None:
    """Why this worker does not run the principal, if it does not: the first of the
    refused fields, named with the template (or assignment) that set it."""
    first = next(_refused(resolved.template), None)
    if first is None:
        return None
    key, field, why = first
    return InputError(_source(resolved, key), field, why)


def ignored(resolved: Resolved) -> tuple[Ignored, ...]:
    """The fields the principal runs without, each with the first template that set it."""
    template = resolved.template
    found = []
    for field, why in IGNORED.items():
        value = getattr(template, field)
        if field == "output_capture":
            keys = ["output_capture"] if value is not None and value.enabled else []
        elif field == "required_services":
            keys = [f"required_services[{s}]" for s in value]
        else:
            keys = [f"{field}.{k}" for k in value]
        if keys:
            found.append(Ignored(field, _source(resolved, keys[0]), why))
    return tuple(found)


def honour(template: Template) -> Template:
    """``environment`` and ``prepend_variables`` folded into the environment and mounts,
    in upstream's order: PATH is prepend_variables' : the environment's bin : the
    template's PATH (or upstream's default)."""
    variables = dict(template.environment_variables)
    filesystem = template.filesystem
    if template.environment:
        if not any(m.dest in (NIX_STORE, "/nix") for m in filesystem):
            filesystem = (*filesystem, Mount(dest=NIX_STORE, source=NIX_STORE, mode="ro"))
        variables["PATH"] = f"{template.environment}/bin:{variables.get('PATH') or DEFAULT_PATH}"
    for name, items in sorted(template.prepend_variables.items()):
        if items:
            existing = variables.get(name)
            variables[name] = ":".join(items) + (f":{existing}" if existing else "")
    return replace(
        template,
        environment="",
        prepend_variables={},
        environment_variables=variables,
        filesystem=filesystem,
    )


def notes(resolved: Resolved) -> list[str]:
    """What an operator is told on push: why this worker would not run it, or what it
    would run without."""
    refused = refusal(resolved)
    if refused is not None:
        return [f"this bureau's machines refuse a principal on it: {refused}"]
    return [f"this bureau's machines run it without {item}" for item in ignored(resolved)]
