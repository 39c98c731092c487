"""The launcher's import closure is its audit surface: no HTTP framework, no Matrix SDK,
no operator-only code. Its own modules are held to an allowlist: a new import into the
launcher is a decision, made here, not an accident."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = (
    "aiohttp",
    "nio",
    "synapse",
    "yaml",
    "bureau.cli",
    "bureau.operator",
    "bureau.matrix.homeserver_admin",
    "bureau.matrix.synapse_admin",
    "bureau.matrix.sync",
    "bureau.hub",
    "bureau.daemon",
    "bureau.proxy",
)


def test_launcher_imports_stay_small() -> None:
    probe = "import json, sys, bureau.launcher.main; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    modules = json.loads(result.stdout)
    assert "bureau.launcher.first_boot" in modules
    loaded = [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert loaded == []
    # pyrage is reached through exactly one module of ours.
    assert "pyrage" in modules


# Every module of ours the launcher loads, no more: a new one is a decision made here, and
# one it no longer loads leaves the list. The sandbox's spec and policy are pure; the
# blocking Matrix client, its retry schedule and the fleet rooms' resolution serve first
# boot (before any principal runs). Nothing of the operator's (rooms made, invitations, the
# homeserver's admin API): a machine is provisioned before its first boot.
ALLOWED_OURS = {
    "bureau",
    "bureau.age_keys",
    "bureau.wire.credentials",
    "bureau.edge",
    "bureau.errors",
    "bureau.files",
    "bureau.hardening",
    "bureau.journal",
    "bureau.key_store",
    "bureau.launcher",
    "bureau.launcher.cgroups",
    "bureau.launcher.children",
    "bureau.launcher.first_boot",
    "bureau.launcher.fleet_bundles",
    "bureau.launcher.main",
    "bureau.launcher.processes",
    "bureau.wire.launcher_answers",
    "bureau.wire.launcher_protocol",
    "bureau.launcher.proxy_kind",
    "bureau.launcher.relogin",
    "bureau.wire.sandbox_broker",
    "bureau.launcher.sandbox_broker",
    "bureau.launcher.sandbox_flags",
    "bureau.launcher.sandbox_host",
    "bureau.launcher.sandbox_kind",
    "bureau.launcher.sandbox_paths",
    "bureau.launcher.sandbox_policy",
    "bureau.launcher.sandbox_start",
    "bureau.launcher.sandbox_uids",
    "bureau.launcher.seccomp",
    "bureau.launcher.server",
    "bureau.launcher.spawner",
    "bureau.launcher.supervisor",
    "bureau.lifecycle",
    "bureau.log",
    "bureau.wire.machine_config",
    "bureau.machine_state",
    "bureau.matrix",
    "bureau.matrix.client",
    "bureau.matrix.retry",
    "bureau.wire",
    "bureau.wire.names",
    "bureau.notify",
    "bureau.matrix.fleet_rooms",
    "bureau.passwords",
    "bureau.wire.proxy_payload",
    "bureau.wire.rooms",
    "bureau.wire.sandbox_spec",
    "bureau.wire.scope_rules",
    "bureau.wire.service_route",
    "bureau.wire.route_checks",
    "bureau.wire.credential_kinds",
    "bureau.wire.files",
    "bureau.secret",
    "bureau.wire.template_parts",
    "bureau.wire.template_upstream",
    "bureau.wire.template",
    # Operator signatures (#19): the launcher checks them against its pinned keys, and
    # resolves a signed assignment's sandbox itself (pure: no Matrix, no daemon).
    "bureau.launcher.operator_trust",
    "bureau.wire.operator_keys",
    "bureau.wire.signing",
    "bureau.wire.fleet_bundle",  # fleet bundles' names, refs and shards (#20): pure
    "bureau.template_policy",
    "bureau.template_resolve",
    "bureau.template_spec",
}
# Third-party packages (top level). structlog loads its Twisted integration when Twisted is
# installed, as it is in the dev environment (Synapse); a worker's venv has none of them.
# signedjson, canonicaljson and PyNaCl (nacl, over libsodium through cffi) check operator
# signatures as Synapse checks Matrix signatures; unpaddedbase64 is signedjson's.
ALLOWED_THIRD_PARTY = {
    "pyrage",
    "sdnotify",
    "structlog",
    "typing_extensions",
    "signedjson",
    "canonicaljson",
    "nacl",
    "_cffi_backend",
    "_sodium",
    "unpaddedbase64",
}
ONLY_WITH_SYNAPSE = {"twisted", "zope", "constantly", "incremental", "attr", "attrs"}


def test_launcher_imports_only_what_is_allowed() -> None:
    probe = "import json, sys, bureau.launcher.main; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    modules = set(json.loads(result.stdout))
    ours = {m for m in modules if m.split(".")[0] == "bureau"}
    assert ours - ALLOWED_OURS == set()
    assert ALLOWED_OURS - ours == set()
    tops = {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names)
    tops -= {"bureau", "__main__", "_distutils_hack"} | {
        t for t in tops if t.startswith("__editable__")
    }
    assert tops - ALLOWED_THIRD_PARTY - ONLY_WITH_SYNAPSE == set()


# bureau-sandboxd holds the capabilities to run as any sandbox uid: it loads no key, no
# Matrix client, no proxy, nothing of first boot; only the sandbox's own modules, and the
# pure parsing the spec takes (sandbox_spec and the template model it shares; credential
# names are checked as credentials_event checks them, which names the Secret type).
SANDBOXD_ALLOWED = {
    "bureau",
    "bureau.wire.credentials",
    "bureau.wire.machine_config",
    "bureau.wire.sandbox_spec",
    "bureau.wire.scope_rules",
    "bureau.wire.service_route",
    "bureau.wire.route_checks",
    "bureau.wire.credential_kinds",
    "bureau.secret",
    "bureau.wire.template_parts",
    "bureau.wire.template_upstream",
    "bureau.wire.template",
    "bureau.edge",
    "bureau.errors",
    "bureau.files",
    "bureau.hardening",
    "bureau.journal",
    "bureau.launcher",
    "bureau.wire.sandbox_broker",
    "bureau.launcher.cgroups",
    "bureau.launcher.children",
    "bureau.launcher.processes",
    "bureau.launcher.sandbox_flags",
    "bureau.launcher.sandbox_host",
    "bureau.launcher.sandbox_paths",
    "bureau.launcher.sandbox_policy",
    "bureau.launcher.sandbox_start",
    "bureau.launcher.sandbox_uids",
    "bureau.launcher.seccomp",
    "bureau.log",
    "bureau.wire",
    "bureau.wire.names",
    "bureau.notify",
    "bureau.sandboxd",
    "bureau.sandboxd.main",
}


def test_sandboxd_imports_only_what_is_allowed() -> None:
    probe = "import json, sys, bureau.sandboxd.main; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    modules = set(json.loads(result.stdout))
    assert {m for m in modules if m.split(".")[0] == "bureau"} - SANDBOXD_ALLOWED == set()
    assert not {"pyrage", "nio", "aiohttp"} & {m.split(".")[0] for m in modules}
