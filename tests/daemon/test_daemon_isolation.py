"""The daemon against a scripted launcher (tests/scripted_launcher.py) and the real
Synapse: a launcher that refuses everything is waited for, and one principal's start that
never ends holds up no other principal's start or stop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Fleet
from launcher_proc import daemon_argv, service
from machine_helpers import enroll
from processes import echo_upstream
from publisher import Publisher
from scripted_launcher import scripted_launcher

from bureau.wire.launcher_protocol import (
    Answer,
    EnsureRequest,
    EnsureResult,
    Listing,
    ListRequest,
    PrincipalState,
    Refusal,
    Request,
    StopRequest,
    StopResult,
)
from bureau.wire.names import PrincipalRef


@pytest.mark.slow
def test_a_launcher_that_refuses_to_list_is_waited_for(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    """A launcher answering every request with a refusal (a wrong --daemon-user, say) is
    treated as absent: the daemon backs off and asks again, and does not exit."""
    machine = enroll(fleet, tmp_path)
    refusal = Refusal("permission denied")
    with scripted_launcher(run_dir, lambda _: refusal) as launcher:
        argv = daemon_argv(machine.machine.short_name, machine.state_dir, run_dir)
        with service(argv, "launcher refused to list its principals") as the_daemon:
            marker = the_daemon.wait_for("launcher unavailable; will retry")
            the_daemon.wait_for("launcher unavailable; will retry", start=marker + 1)
            assert the_daemon.proc.poll() is None
        assert len(launcher.requests) >= 2


def test_a_start_that_never_ends_holds_up_no_other_principal(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    machine = enroll(fleet, tmp_path)
    hung, quick = "agent/hung", "agent/quick"
    release = threading.Event()
    # principal -> digest, as the launcher would list them
    running: dict[PrincipalRef, str] = {}

    def answer(request: Request) -> Answer | Refusal:
        if isinstance(request, ListRequest):
            return Listing(
                tuple(
                    PrincipalState(p, 1, "/s", d, (), (), "", 0, "running")
                    for p, d in sorted(running.items())
                )
            )
        if isinstance(request, EnsureRequest):
            if request.principal.user_id == publisher.user_id(hung):
                release.wait(60)
            running[request.principal] = request.credentials.digest
            return EnsureResult(True, "/s")
        assert isinstance(request, StopRequest), request
        running.pop(request.principal, None)
        return StopResult(True)

    with echo_upstream() as upstream, scripted_launcher(run_dir, answer) as launcher:
        publisher = Publisher(fleet, machine, upstream)
        argv = daemon_argv(machine.machine.short_name, machine.state_dir, run_dir)
        with service(argv, "connected") as the_daemon:
            for principal in (hung, quick):
                publisher.put(principal, publisher.build(principal, "g1"))
            publisher.assign([hung, quick])

            def asked(kind: type[Request], principal: str) -> Callable[[list[Request]], bool]:
                user = PrincipalRef.from_user_id(publisher.user_id(principal))
                return lambda requests: any(
                    isinstance(r, kind) and getattr(r, "principal", None) == user for r in requests
                )

            # agent/hung's start is held; agent/quick starts regardless...
            launcher.wait_for(asked(EnsureRequest, hung))
            launcher.wait_for(asked(EnsureRequest, quick))
            # ...and is stopped regardless, while agent/hung's start still hangs.
            publisher.assign([hung])
            launcher.wait_for(asked(StopRequest, quick))
            assert not release.is_set()
            release.set()
            assert the_daemon.proc.poll() is None
