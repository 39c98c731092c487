"""The daemon against a scripted launcher (tests/scripted_launcher.py) and the real
Synapse: a launcher that refuses everything is waited for, and one principal's start that
never ends holds up no other principal's start or stop."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet
from launcher_proc import daemon_argv, service
from machine_helpers import enroll
from processes import echo_upstream
from publisher import Publisher
from scripted_launcher import scripted_launcher

from bureau.wire.credentials import content_digest
from bureau.wire.launcher_protocol import EnsureResult, PrincipalState, StopResult


@pytest.mark.slow
def test_a_launcher_that_refuses_to_list_is_waited_for(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    """A launcher answering every request with a refusal (a wrong --daemon-user, say) is
    treated as absent: the daemon backs off and asks again, and does not exit."""
    machine = enroll(fleet, tmp_path)
    refusal = {"ok": False, "error": "permission denied"}
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
    running: dict[str, str] = {}  # principal -> digest, as the launcher would list them

    def answer(request: dict[str, Any]) -> dict[str, Any]:
        principal = str(request.get("principal"))
        if request["action"] == "list":
            listed = [
                PrincipalState(p, 1, "/s", d, (), (), "", 0, "running").to_json()
                for p, d in sorted(running.items())
            ]
            return {"ok": True, "principals": listed}
        if request["action"] == "ensure":
            if principal == publisher.user_id(hung):
                release.wait(60)
            running[principal] = content_digest(request["credentials"])
            return {"ok": True, **EnsureResult(True, "/s").to_json()}
        running.pop(principal, None)
        return {"ok": True, **StopResult(True).to_json()}

    with echo_upstream() as upstream, scripted_launcher(run_dir, answer) as launcher:
        publisher = Publisher(fleet, machine, upstream)
        argv = daemon_argv(machine.machine.short_name, machine.state_dir, run_dir)
        with service(argv, "connected") as the_daemon:
            for principal in (hung, quick):
                publisher.put(principal, publisher.build(principal, "g1"))
            publisher.assign([hung, quick])

            def asked(action: str, principal: str) -> Any:
                user = publisher.user_id(principal)
                return lambda requests: any(
                    r["action"] == action and r.get("principal") == user for r in requests
                )

            # agent/hung's start is held; agent/quick starts regardless...
            launcher.wait_for(asked("ensure", hung))
            launcher.wait_for(asked("ensure", quick))
            # ...and is stopped regardless, while agent/hung's start still hangs.
            publisher.assign([hung])
            launcher.wait_for(asked("stop", quick))
            assert not release.is_set()
            release.set()
            assert the_daemon.proc.poll() is None
