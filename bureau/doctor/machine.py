"""`bureau machine doctor`: the checks in the order their fixes depend on each other (the
user before the directories it owns, bubblewrap installed before sandboxes are tried, the
key's owner and mode before it is read, what the launcher keeps in the run dir before the
launcher is started, everything in place before the services start, the services before
their sockets)."""

from __future__ import annotations

from pathlib import Path

from bureau.doctor.bundle_checks import BundleChecks
from bureau.doctor.findings import Check, Report, examine
from bureau.doctor.host_checks import HostChecks
from bureau.doctor.machine_checks import MachineChecks
from bureau.doctor.run_dir_checks import RunDirChecks
from bureau.doctor.sandbox_checks import SandboxChecks
from bureau.doctor.signing_checks import SigningChecks
from bureau.host import Host
from bureau.wire.signing import PublicKey


def machine_doctor(
    *,
    root: Path,
    apply_fixes: bool,
    start_services: bool,
    nix_conf_dir: str | None,
    operator_key: PublicKey | None = None,
) -> Report:
    host = Host(root)
    local = HostChecks(host, start_services=start_services)
    remote = MachineChecks(host, nix_conf_dir, start_services=start_services)
    run_dir = RunDirChecks(host)
    sandboxes = SandboxChecks(host)
    bundles = BundleChecks(host)
    signing = SigningChecks(host, operator_key)
    checks: list[Check] = [
        local.user,
        local.operators_group,
        local.directories,
        local.binaries,
        sandboxes.programs,
        sandboxes.user_namespaces,
        sandboxes.uid_map,
        local.units,
        local.enabled,
        local.private_files,
        local.machine_key,
        local.machine_conf,
        bundles.unbound,
        signing.unsigned,
        signing.operator_keys,
        run_dir.entries,
        remote.session,
        remote.published_key,
        remote.substituter,
        remote.fleet_profile,
        local.active,
        remote.sockets,
    ]
    return examine(checks, apply_fixes)
