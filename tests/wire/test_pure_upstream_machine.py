"""Upstream Bureau's shapes on the machine side, each written from upstream's code (the file
and line are cited beside each fixture; bureau-foundation/bureau): credentials events and
their plaintexts as upstream's tools write them, read by ours; ours as upstream's launcher
reads them. Pure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from upstream_shapes import go_base64, go_json

from bureau import age_keys
from bureau.daemon import machine_info
from bureau.daemon.heartbeat import CpuSampler, status_content
from bureau.daemon.reconcile import relayed
from bureau.daemon.templates import TemplateStore
from bureau.doctor.bundle_checks import BundleChecks
from bureau.doctor.findings import Status
from bureau.doctor.machine import machine_doctor
from bureau.errors import InputError
from bureau.host import Host
from bureau.operator.machines import machine_records
from bureau.secret import Secret
from bureau.wire.credentials import (
    BINDING_KEY,
    CredentialsEvent,
    binding_digest,
    bundle_plaintext,
    open_plaintext,
    unbound_services,
)
from bureau.wire.machine_config import (
    Assignment,
    MachineConfig,
    with_entry,
    without_auto_start,
    without_entry,
)
from bureau.wire.service_route import ServiceRoute
from bureau.wire.template import EVENT_TYPE

SERVER = "bureau.local"
MACHINE = f"@bureau/fleet/prod/machine/gpu-box:{SERVER}"
PRINCIPAL = f"@bureau/fleet/prod/agent/pm:{SERVER}"
OPERATOR = f"@bureau-admin:{SERVER}"
AGE_KEY = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


# lib/credential/provision.go:151-159: version, principal, encrypted_for (the machine, and
# "escrow:operator" with an escrow key, :121-128), keys, ciphertext, provisioned_by,
# provisioned_at (time.RFC3339 in UTC); no services, and signature "" since its field has
# no omitempty (lib/schema/events_machine.go:444) while expires_at has (:448).
def upstream_principal_event(ciphertext: bytes = b"age-encryption.org/v1\n") -> dict[str, Any]:
    return {
        "version": 1,
        "principal": PRINCIPAL,
        "encrypted_for": [MACHINE, "escrow:operator"],
        # lib/schema/events_machine_test.go:481: keys need not be sorted.
        "keys": ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "github-token"],
        "ciphertext": go_base64(ciphertext),
        "provisioned_by": OPERATOR,
        "provisioned_at": "2026-02-09T18:30:00Z",
        "signature": "",
    }


# lib/credential/provision_fleet.go:184-191: no Principal at all, so ref.UserID's
# MarshalText writes "" (lib/ref/user.go:112-116).
FLEET_EVENT: dict[str, Any] = {
    "version": 1,
    "principal": "",
    "encrypted_for": [MACHINE, f"@bureau/fleet/prod/machine/other:{SERVER}"],
    "keys": ["ATTIC_PUSH_TOKEN", "CACHIX_AUTH_TOKEN"],
    "ciphertext": go_base64(b"fleet"),
    "provisioned_by": OPERATOR,
    "provisioned_at": "2026-02-09T18:30:00Z",
    "signature": "",
}

# cmd/bureau-daemon/admin.go:168-182: the daemon's provision-credential re-encryption; a
# fresh bundle's encrypted_for is the recipients' age keys (:180), and keys are every
# plaintext entry, sorted (cmd/bureau-launcher/handlers.go:929-934): a binding of ours too.
DAEMON_REWRITE: dict[str, Any] = {
    "version": 1,
    "principal": PRINCIPAL,
    "encrypted_for": [AGE_KEY],
    "keys": ["MATRIX_TOKEN", BINDING_KEY, "github-pat"],
    "ciphertext": go_base64(b"rewritten"),
    "provisioned_by": f"@bureau/fleet/prod/service/github:{SERVER}",
    "provisioned_at": "2026-02-09T19:30:00+01:00",
    "signature": "",
}


def test_upstream_events_parse_and_write_back_as_they_came() -> None:
    for content in (upstream_principal_event(), FLEET_EVENT, DAEMON_REWRITE):
        event = CredentialsEvent.from_json(content)
        assert event.services == {}
        assert event.signature == ""
        assert event.to_json() == content
    assert CredentialsEvent.from_json(upstream_principal_event()).keys == (
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "github-token",
    )
    assert CredentialsEvent.from_json(FLEET_EVENT).principal == ""
    # Go writes a nil slice as null; expires_at "" is absent to upstream (omitempty).
    sparse = {**upstream_principal_event(), "keys": None, "expires_at": ""}
    assert CredentialsEvent.from_json(sparse).keys == ()
    assert CredentialsEvent.from_json(sparse).expires_at is None
    # A field a later upstream adds is no reason to refuse.
    assert CredentialsEvent.from_json({**FLEET_EVENT, "credential_ref": "x"}).principal == ""


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"keys": ["API KEY"]}, "keys"),
        ({"keys": ["bureau.other"]}, "keys"),  # reserved, the binding aside
        ({"keys": ["-x"]}, "keys"),
        ({"principal": "@Bad Name:x"}, "principal"),
        ({"signature": None}, "signature"),
        ({"provisioned_by": 5}, "provisioned_by"),
        ({"services": {}}, "services"),  # present, it must route something
        ({"expires_at": "tomorrow"}, "expires_at"),
    ],
)
def test_what_is_still_refused_is_named(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError) as refused:
        CredentialsEvent.from_json({**upstream_principal_event(), **change}, "credentials")
    assert str(refused.value).startswith(f"credentials: {field}: ")
    assert "\n" not in str(refused.value)


def _sealed(plaintext: bytes) -> tuple[Secret, CredentialsEvent]:
    key, public = age_keys.generate()
    content = upstream_principal_event(age_keys.encrypt(plaintext, [public]))
    return key, CredentialsEvent.from_json(content)


def test_upstream_plaintext_is_unbound_and_served_only_where_allowed() -> None:
    # lib/credential/provision.go:104: json.Marshal of the map[string]string it was given.
    plaintext = go_json(
        {"MATRIX_TOKEN": "syt_a&b<c>", "OPENAI_API_KEY": "sk-test", "github-token": "ghp_x"}
    )
    key, event = _sealed(plaintext)
    opened = open_plaintext(
        age_keys.decrypt(event.ciphertext, key), event, "c", unbound_allowed=True
    )
    assert opened.bound is False
    assert {k: v.reveal() for k, v in opened.credentials.items()} == {
        "MATRIX_TOKEN": "syt_a&b<c>",
        "OPENAI_API_KEY": "sk-test",
        "github-token": "ghp_x",
    }
    assert "syt_" not in repr(opened)
    with pytest.raises(InputError) as refused:
        open_plaintext(plaintext, event, "credentials for @p", unbound_allowed=False)
    message = str(refused.value)
    assert message.startswith("credentials for @p: unbound bundle refused (no bureau.binding")
    assert "--allow-unbound-bundles" in message
    assert "\n" not in message
    assert "sk-test" not in message


def test_a_bound_bundle_stays_bound_whatever_the_event_says() -> None:
    services = {"api": ServiceRoute("https://api.example", {"Authorization": "TOKEN"}, "Bearer")}
    plaintext = bundle_plaintext({"TOKEN": Secret("v")}, PRINCIPAL, services)
    event = CredentialsEvent.from_json(
        {**upstream_principal_event(), "services": {"api": services["api"].to_json()}}
    )
    opened = open_plaintext(plaintext, event, "c", unbound_allowed=False)
    assert opened.bound is True
    assert list(opened.credentials) == ["TOKEN"]  # the binding is not a credential
    # Its services stripped (by a subverted daemon, or an upstream tool's rewrite): not an
    # unbound bundle, even where those are served.
    stripped = CredentialsEvent.from_json(upstream_principal_event())
    for allowed in (False, True):
        with pytest.raises(InputError, match="binds services this event does not carry"):
            open_plaintext(plaintext, stripped, "c", unbound_allowed=allowed)
    other = {"api": ServiceRoute("https://evil.example", {"Authorization": "TOKEN"}, "Bearer")}
    moved = CredentialsEvent.from_json(
        {**upstream_principal_event(), "services": {"api": other["api"].to_json()}}
    )
    with pytest.raises(InputError, match="does not match"):
        open_plaintext(plaintext, moved, "c", unbound_allowed=True)


def test_our_plaintext_is_what_upstreams_launcher_reads() -> None:
    """cmd/bureau-launcher/handlers.go:281 unmarshals the plaintext into a
    map[string]string, and proxy.go:241-249 hands every entry but the three MATRIX_ ones to
    the proxy as a credential of that name: ours must be a flat object of strings (it is),
    and the binding must be no name upstream gives a meaning to."""
    services = {"api": ServiceRoute("https://api.example", {"Authorization": "TOKEN"}, "Bearer")}
    plaintext = bundle_plaintext(
        {"TOKEN": Secret("v"), "MATRIX_TOKEN": Secret("syt")}, PRINCIPAL, services
    )
    data = json.loads(plaintext)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in data.items())
    assert data[BINDING_KEY] == binding_digest(PRINCIPAL, services)
    assert BINDING_KEY not in ("MATRIX_HOMESERVER_URL", "MATRIX_TOKEN", "MATRIX_USER_ID")


def test_an_unbound_bundles_routes_never_carry_its_matrix_identity_elsewhere() -> None:
    template = {"api": ServiceRoute("https://api.example", {"x-api-key": "OPENAI_API_KEY"})}
    credentials = {"MATRIX_TOKEN": Secret("syt"), "OPENAI_API_KEY": Secret("sk")}
    routes = unbound_services(template, credentials, "http://hub.internal:8008/", "c")
    assert routes["api"] == template["api"]
    # The built-in route goes to the machine's own homeserver, whatever the daemon sent.
    assert routes["matrix"].to_json() == {
        "upstream_url": "http://hub.internal:8008",
        "inject_headers": {"Authorization": "MATRIX_TOKEN"},
        "auth_scheme": "Bearer",
    }
    assert "matrix" not in unbound_services(template, {"OPENAI_API_KEY": Secret("sk")}, "h", "c")
    stealing = {"x": ServiceRoute("https://evil.example", {"Authorization": "MATRIX_TOKEN"})}
    with pytest.raises(InputError) as refused:
        unbound_services(stealing, credentials, "http://hub", "credentials for @p")
    assert str(refused.value) == (
        "credentials for @p: services: x: MATRIX_TOKEN goes only to the built-in matrix service"
    )
    posing = {"matrix": ServiceRoute("https://evil.example", {"Authorization": "OPENAI_API_KEY"})}
    with pytest.raises(InputError, match="services: matrix: is built in"):
        unbound_services(posing, credentials, "http://hub", "c")
    with pytest.raises(InputError) as nothing:
        unbound_services({}, {"OPENAI_API_KEY": Secret("sk")}, "http://hub", "c")
    assert nothing.value.field == "services"


# -- an unbound bundle's routes come from its principal's template -----------------------

NS_ROOM = "!templates:bureau.local"


def _store(templates: dict[str, dict[str, Any]]) -> TemplateStore:
    store = TemplateStore(SERVER)
    store.add_room(f"#bureau/template:{SERVER}", NS_ROOM)
    store.set_state(
        NS_ROOM, [{"type": EVENT_TYPE, "state_key": k, "content": v} for k, v in templates.items()]
    )
    return store


# lib/schema/events_template_test.go:63-68 and events_template.go:607-637: a template's
# proxy service names its URL "upstream", its scheme as upstream's docs spell it ("bearer").
UPSTREAM_TEMPLATE: dict[str, Any] = {
    "description": "an upstream agent",
    "command": ["/usr/bin/agent"],
    "proxy_services": {
        "anthropic": {
            "upstream": "https://api.anthropic.com",
            "inject_headers": {"x-api-key": "ANTHROPIC_API_KEY"},
            "strip_headers": ["x-api-key", "authorization"],
        },
        "github": {
            "upstream": "https://api.github.com",
            "inject_headers": {"Authorization": "github-token"},
            "auth_scheme": "bearer",
        },
    },
}


def test_a_templates_proxy_services_become_an_unbound_events_routes() -> None:
    store = _store({"upstream-agent": UPSTREAM_TEMPLATE})
    assignment = Assignment.from_json(
        {"principal": PRINCIPAL, "template": "bureau/template:upstream-agent", "auto_start": True},
        "config",
    )
    found = store.resolved(assignment)
    assert found is not None
    spec, services = found.spec, found.services
    assert spec.command == ("/usr/bin/agent",)
    unbound = upstream_principal_event()
    bound = {**unbound, "principal": PRINCIPAL + "x", "services": {"own": {"x": 1}}}
    relayed_content, problems = relayed(
        {PRINCIPAL: unbound, bound["principal"]: bound, "@no/template:x": FLEET_EVENT},
        {PRINCIPAL: services, bound["principal"]: services},
    )
    assert problems == {}
    # Bound, or without a template: as published, byte for byte.
    assert relayed_content[bound["principal"]] is bound
    assert relayed_content["@no/template:x"] is FLEET_EVENT
    routes = CredentialsEvent.from_json(relayed_content[PRINCIPAL]).services
    assert {n: r.to_json() for n, r in routes.items()} == {
        "anthropic": {
            "upstream_url": "https://api.anthropic.com",
            "inject_headers": {"x-api-key": "ANTHROPIC_API_KEY"},
            "strip_headers": ["x-api-key", "authorization"],
        },
        "github": {
            "upstream_url": "https://api.github.com",
            "inject_headers": {"Authorization": "github-token"},
            "auth_scheme": "bearer",
        },
    }
    assert {k: v for k, v in relayed_content[PRINCIPAL].items() if k != "services"} == unbound
    # A service a bundle cannot route (no credential to inject) holds that principal,
    # named, and no other.
    public = {**UPSTREAM_TEMPLATE, "proxy_services": {"docs": {"upstream": "https://d.example"}}}
    other = _store({"upstream-agent": public}).resolved(assignment)
    assert other is not None
    relayed_content, problems = relayed({PRINCIPAL: unbound}, {PRINCIPAL: other.services})
    assert relayed_content == {}
    assert problems[PRINCIPAL].startswith("unbound bundle: template: proxy_services.docs: ")


def test_the_doctor_says_how_the_machine_treats_unbound_bundles(tmp_path: Path) -> None:
    conf = tmp_path / "etc/bureau/machine.conf"
    checks = BundleChecks(Host(tmp_path))
    (missing,) = checks.unbound()
    assert missing.status is Status.NOT_APPLICABLE
    conf.parent.mkdir(parents=True)
    conf.write_text("BUREAU_FLEET=bureau/fleet/prod\n")
    (refused,) = checks.unbound()
    assert refused.line() == (
        "ok    unbound credential bundles: refused (the default; --allow-unbound-bundles in "
        "BUREAU_LAUNCHER_OPTIONS of /etc/bureau/machine.conf serves them)"
    )
    for options in ("--allow-unbound-bundles", "--log-level debug  --allow-unbound-bundles"):
        conf.write_text(f"BUREAU_LAUNCHER_OPTIONS={options}\n")
        (served,) = checks.unbound()
        assert served.passed
        assert "served (--allow-unbound-bundles" in served.detail
    conf.write_text("BUREAU_LAUNCHER_OPTIONS=--allow-unbound-bundles-not\n")
    assert "refused" in next(iter(checks.unbound())).detail
    conf.write_text("nonsense\n")
    assert not next(iter(checks.unbound())).passed
    # Registered: `bureau machine doctor` runs it, in its place after machine.conf.
    conf.write_text("BUREAU_LAUNCHER_OPTIONS=--allow-unbound-bundles\n")
    report = machine_doctor(
        root=tmp_path, apply_fixes=False, start_services=False, nix_conf_dir=None
    )
    names_in_order = [f.name for f in report.findings]
    at = names_in_order.index("unbound credential bundles")
    assert names_in_order[at - 1] == "file /etc/bureau/machine.conf"
    assert "served" in report.findings[at].detail


# -- m.bureau.machine_config with every field upstream has -------------------------------

# lib/schema/events_machine.go:361-381 (MachineConfig: principals, default_policy,
# bureau_version) and :383-440 (BureauVersion); lib/schema/authorization.go:95-236 (Grant,
# Denial, Allowance, AllowanceDenial, AuthorizationPolicy); lib/schema/events_template.go:
# 115-300 (PrincipalAssignment, every field; template and auto_start without omitempty),
# :335-352 (MatrixPolicy), StartCondition with a ContentMatch whose single "eq" is a bare
# value and any other criterion a $-operator object (lib/schema/match.go:218-229).
UPSTREAM_CONFIG_TEXT = json.dumps(
    {
        "principals": [
            {
                "principal": f"@bureau/fleet/prod/agent/pm:{SERVER}",
                "template": "bureau/template:llm-agent",
                "auto_start": True,
                "labels": {"role": "agent", "team": "iree"},
                "matrix_policy": {"allow_join": True, "allow_invite": True},
                "service_visibility": ["service/stt/*", "service/embedding/**"],
                "authorization": {
                    "grants": [{"actions": ["command/ticket/*"], "targets": ["agent/**"]}],
                    "denials": [{"actions": ["command/credential/**"]}],
                    "allowances": [{"actions": ["observe"], "actors": ["agent/ops"]}],
                    "allowance_denials": [{"actions": ["observe"], "actors": ["agent/x"]}],
                },
                "command_override": ["/usr/bin/agent", "--fast"],
                "environment_override": "/nix/store/abc-env",
                "extra_environment_variables": {"MODEL": "large"},
                "extra_inherits": ["bureau/template:gpu"],
                "required_services_override": ["ticket"],
                "secrets_override": [{"key": "github-token", "file": "gh"}],
                "payload": {"max_tokens": 4096, "nested": {"ratio": 0.25, "list": [1, "a"]}},
                "start_condition": {
                    "event_type": "m.bureau.workspace",
                    "state_key": "",
                    "room_alias": f"#iree/amdgpu:{SERVER}",
                    "content_match": {"status": "active", "count": {"$gte": 2}},
                },
                "restart_policy": "on-failure",
            },
            # Upstream's zero values: no template is "template": "", auto_start false.
            {
                "principal": f"@bureau/fleet/prod/agent/idle:{SERVER}",
                "template": "",
                "auto_start": False,
            },
            # Written by hand: no auto_start at all.
            {
                "principal": f"@bureau/fleet/prod/agent/hand:{SERVER}",
                "template": "bureau/template:x",
            },
        ],
        "default_policy": {
            "grants": [{"actions": ["matrix/join"], "expires_at": "2026-12-31T00:00:00Z"}],
            "allowances": [{"actions": ["observe"], "actors": ["bureau-admin"], "source": "x"}],
        },
        "bureau_version": {
            "daemon_store_path": "/nix/store/aaa-bureau-daemon/bin/bureau-daemon",
            "launcher_store_path": "/nix/store/bbb-bureau-launcher/bin/bureau-launcher",
            "proxy_store_path": "/nix/store/ccc-bureau-proxy/bin/bureau-proxy",
            "log_relay_store_path": "/nix/store/ddd-bureau-log-relay/bin/bureau-log-relay",
            "host_environment_path": "/nix/store/eee-bureau-host-env",
        },
    },
    separators=(",", ":"),
)


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def test_every_upstream_config_field_survives_read_modify_write() -> None:
    content = json.loads(UPSTREAM_CONFIG_TEXT)
    config, invalid = MachineConfig.from_json_each(content)
    assert invalid == []
    pm, idle, hand = config.principals
    assert pm.template == "bureau/template:llm-agent"
    assert pm.auto_start is True
    assert idle.template is None
    assert idle.auto_start is False
    assert hand.auto_start is False  # absent reads as false, as upstream's bool does
    assert without_auto_start(content) == [hand.principal]
    assert set(pm.extra) == {
        "matrix_policy",
        "service_visibility",
        "authorization",
        "environment_override",
        "required_services_override",
        "secrets_override",
        "payload",
        "start_condition",
    }
    # An operator's assign of one principal: that entry changes in the field it sets;
    # everything else, every upstream field included, goes back byte for byte.
    for target, fields in ((idle.principal, {"auto_start": True}), (pm.principal, {})):
        updated = with_entry(content, target, fields)
        original = json.loads(UPSTREAM_CONFIG_TEXT)
        assert _compact(content) == UPSTREAM_CONFIG_TEXT  # the input is left as it was
        for key in ("default_policy", "bureau_version"):
            assert _compact(updated[key]) == _compact(original[key])
        for before, after in zip(original["principals"], updated["principals"], strict=True):
            expected = {**before, **fields} if before["principal"] == target else before
            assert _compact(after) == _compact(expected)
    removed = without_entry(content, idle.principal)
    assert _compact(removed) == _compact(
        {**content, "principals": [content["principals"][0], content["principals"][2]]}
    )
    # Upstream's empty config: a nil slice is written as null.
    assert MachineConfig.from_json({"principals": None}).principals == ()
    added = with_entry({"principals": None, "bureau_version": {"x": 1}}, pm.principal, {})
    assert added == {"principals": [{"principal": pm.principal}], "bureau_version": {"x": 1}}


# -- m.bureau.machine_info and m.bureau.machine_status ------------------------------------

# lib/schema/events_machine.go:179-261: MachineInfo's and CPUInfo's JSON names; those with
# omitempty may be absent, the others are always written.
INFO_ALWAYS = {"principal", "hostname", "kernel_version", "cpu", "memory_total_mb"}
INFO_OMITEMPTY = {"board_vendor", "board_name", "swap_total_mb", "numa_nodes", "gpus", "labels"}
CPU_ALWAYS = {"model", "sockets", "cores_per_socket", "threads_per_core"}


def _host_tree(root: Path) -> tuple[Path, Path]:
    proc, sys_root = root / "proc", root / "sys"
    (proc).mkdir(parents=True)
    (proc / "cpuinfo").write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 7763 64-Core Processor\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 7763 64-Core Processor\n"
    )
    (proc / "meminfo").write_text("MemTotal:  8388608 kB\nSwapTotal:  1048576 kB\n")
    for cpu, (package, core) in enumerate([("0", "0"), ("0", "0"), ("0", "1"), ("0", "1")]):
        topology = sys_root / f"devices/system/cpu/cpu{cpu}/topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(package + "\n")
        (topology / "core_id").write_text(core + "\n")
    (sys_root / "devices/system/cpu/cpu0/topology/thread_siblings_list").write_text("0,1\n")
    (sys_root / "devices/system/cpu/cpufreq").mkdir()  # not a cpuN directory
    cache = sys_root / "devices/system/cpu/cpu0/cache/index3"
    cache.mkdir(parents=True)
    (cache / "size").write_text("32768K\n")
    (sys_root / "devices/system/node/node0").mkdir(parents=True)
    dmi = sys_root / "class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "sys_vendor").write_text("ASUS\n")
    return proc, sys_root


def test_machine_info_has_upstreams_shape(tmp_path: Path) -> None:
    proc, sys_root = _host_tree(tmp_path)
    info = machine_info.probe(MACHINE, {"gpu": "none"}, proc=proc, sys_root=sys_root).to_json()
    assert info["principal"] == MACHINE
    assert info["cpu"] == {
        "model": "AMD EPYC 7763 64-Core Processor",
        "sockets": 1,
        "cores_per_socket": 2,
        "threads_per_core": 2,
        "l3_cache_kb": 32768,
    }
    assert (info["memory_total_mb"], info["swap_total_mb"], info["numa_nodes"]) == (8192, 1024, 1)
    assert info["board_vendor"] == "ASUS"
    assert "board_name" not in info
    assert info["labels"] == {"gpu": "none"}
    assert info["daemon_version"].startswith("bureau ")
    assert set(info) <= INFO_ALWAYS | INFO_OMITEMPTY | {"daemon_version"}
    # Nothing readable: zeros where upstream writes them, the rest absent; never an error.
    bare = machine_info.probe(MACHINE, proc=tmp_path / "none", sys_root=tmp_path / "none")
    assert set(bare.to_json()) == INFO_ALWAYS | {"daemon_version"}
    assert bare.to_json()["cpu"] == {
        "model": "",
        "sockets": 0,
        "cores_per_socket": 0,
        "threads_per_core": 1,
    }
    # This host, as the daemon publishes it: Matrix canonical JSON holds no fractions.
    here = machine_info.probe(MACHINE).to_json()
    assert set(here) >= INFO_ALWAYS
    assert set(here["cpu"]) >= CPU_ALWAYS
    assert here["memory_total_mb"] > 0
    numbers = [*here["cpu"].values(), *here.values()]
    assert not any(isinstance(v, float) for v in numbers)


def test_an_operators_labels_and_unknown_fields_survive_a_restart() -> None:
    """Upstream's `bureau machine label` writes labels into this event, and a newer daemon
    may have written fields we do not know: the next publish keeps both."""
    here = machine_info.probe(MACHINE).to_json()
    before = machine_info.published_info({**here, "labels": {"tier": "prod"}, "future": [1]})
    assert before is not None
    again = machine_info.probe(MACHINE, before.labels, extra=before.extra).to_json()
    assert again["labels"] == {"tier": "prod"}
    assert again["future"] == [1]
    assert machine_info.published_info({**here, "labels": 5}) is None
    assert machine_info.published_info(None) is None


# lib/schema/events_machine.go:27-76: MachineStatus with every optional field upstream's
# daemon may write (gpu_stats :49, last_activity_at :61, transport_address :68, principals
# :75 with idle/starting statuses, gpu_percent and gpu_memory_mb :160-168).
UPSTREAM_STATUS: dict[str, Any] = {
    "principal": MACHINE,
    "cpu_percent": 12,
    "memory_used_mb": 4096,
    "gpu_stats": [
        {
            "pci_slot": "0000:c3:00.0",
            "utilization_percent": 80,
            "vram_used_bytes": 8589934592,
            "temperature_millidegrees": 55000,
            "power_draw_watts": 300,
            "graphics_clock_mhz": 2100,
            "memory_clock_mhz": 1300,
        }
    ],
    "sandboxes": {"running": 1, "idle": 1},
    "uptime_seconds": 86400,
    "last_activity_at": "2026-02-09T18:30:00Z",
    "transport_address": MACHINE,
    "principals": {
        PRINCIPAL: {"cpu_percent": 0, "memory_mb": 12, "gpu_percent": 5, "status": "idle"}
    },
}


def test_upstream_machine_status_is_read_and_ours_has_its_shape(tmp_path: Path) -> None:
    # The one reader of machine_status (`bureau machine list`) takes upstream's as a
    # heartbeat like ours.
    events: list[dict[str, Any]] = [
        {"type": "m.room.member", "state_key": MACHINE, "content": {"membership": "join"}},
        {
            "type": "m.bureau.machine_key",
            "state_key": MACHINE[1:],
            "sender": MACHINE,
            "content": {"algorithm": "age-x25519", "public_key": AGE_KEY},
        },
        {
            "type": "m.bureau.machine_status",
            "state_key": MACHINE[1:],
            "sender": MACHINE,
            "origin_server_ts": 1_770_661_800_000,
            "content": UPSTREAM_STATUS,
        },
    ]
    (record,) = machine_records(events, "bureau/fleet/prod", SERVER)
    assert record.state == "enrolled"
    assert record.last_heartbeat == "2026-02-09T18:30:00Z"
    # Ours: upstream's required fields, and last_activity_at once there was activity.
    (tmp_path / "stat").write_text("cpu 1 0 1 10 0 0 0 0 0 0\n")
    (tmp_path / "meminfo").write_text("MemTotal: 2048 kB\nMemAvailable: 1024 kB\n")
    (tmp_path / "uptime").write_text("12.5 1.0\n")
    sampler = CpuSampler(tmp_path)
    quiet = status_content(MACHINE, [], sampler, 1.0)
    assert "last_activity_at" not in quiet
    required = {"principal", "cpu_percent", "memory_used_mb", "sandboxes", "uptime_seconds"}
    assert required <= set(quiet)
    active = status_content(MACHINE, [], sampler, 1.0, last_activity_at="2026-02-09T18:30:00Z")
    assert active["last_activity_at"] == "2026-02-09T18:30:00Z"
