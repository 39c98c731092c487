"""The doctor's report of how this machine treats unbound credential bundles (upstream
Bureau's, which carry no binding): refused, the default, or served, when
``BUREAU_LAUNCHER_OPTIONS`` in machine.conf holds ``--allow-unbound-bundles`` (the
launcher's unit passes that variable as words of its command line, as systemd splits an
unquoted ``$VARIABLE``). Either is a choice, not a fault: the check says which."""

from __future__ import annotations

from collections.abc import Iterator

from bureau.doctor.findings import Finding, fail, not_applicable, ok
from bureau.doctor.host_checks import MACHINE_CONF
from bureau.errors import InputError
from bureau.files import parse_env
from bureau.host import Host

FLAG = "--allow-unbound-bundles"
VARIABLE = "BUREAU_LAUNCHER_OPTIONS"
NAME = "unbound credential bundles"


def unbound_allowed(conf_text: str, where: str) -> bool:
    """Whether machine.conf's launcher options allow unbound bundles. Pure."""
    options = parse_env(conf_text, where).get(VARIABLE, "")
    return FLAG in options.split()


class BundleChecks:
    def __init__(self, host: Host) -> None:
        self.host = host

    def unbound(self) -> Iterator[Finding]:
        try:
            text = self.host.path(MACHINE_CONF).read_text()
        except FileNotFoundError:
            yield not_applicable(NAME, f"no {MACHINE_CONF} yet (the launcher refuses them)")
            return
        try:
            allowed = unbound_allowed(text, str(MACHINE_CONF))
        except InputError as exc:
            yield fail(NAME, str(exc), f"correct {MACHINE_CONF}")
            return
        if allowed:
            yield ok(
                NAME,
                f"served ({FLAG} in {VARIABLE}): upstream-written bundles run, routed by their "
                "templates as the daemon relays them",
            )
        else:
            yield ok(
                NAME,
                f"refused (the default; {FLAG} in {VARIABLE} of {MACHINE_CONF} serves them)",
            )
