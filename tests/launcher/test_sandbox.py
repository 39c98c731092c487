"""Principals in real bubblewrap sandboxes, started by a real launcher: the workload reaches
its service through /run/bureau/proxy.sock and nothing else; its lifecycle follows the
spec, the credentials and the restart policy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from conftest import Fleet
from processes import echo_requests, stars
from sandbox_helpers import python_spec, sandboxed, wait_until

CALL_THROUGH_PROXY = """
import http.client, json, os, socket
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(os.environ["BUREAU_PROXY_SOCKET"])
c = Unix("proxy")
c.request("GET", "/http/api/hello")
seen = json.loads(c.getresponse().read())
auth = seen["headers"].get("authorization")
out = {"authorization": auth, "uid": os.getuid(), "pid": os.getpid()}
with open("/workspace/.r", "w") as f: json.dump(out, f)
os.rename("/workspace/.r", "/workspace/result.json")
"""


def test_workload_calls_its_service_through_the_proxy_socket(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    with sandboxed(fleet, tmp_path, run_dir) as box:
        reply = box.ensure(python_spec(CALL_THROUGH_PROXY))
        assert reply["ok"], (reply, box.launcher.log())
        result = box.result()
        # The token reached the upstream; its echo showed the workload `*`s.
        hello = [r for r in echo_requests(box.upstream) if r["path"] == "/hello"]
        assert [r["headers"]["authorization"] for r in hello] == ["Bearer sandbox-canary-1"]
        assert result["authorization"] == "Bearer " + stars("sandbox-canary-1")
        assert result["uid"] >= 2_000_000_000


WRITE_A_FILE = """
import json, os, stat
with open("/workspace/made", "w") as f: f.write("x")
mode = stat.S_IMODE(os.stat("/workspace/made").st_mode)
with open("/workspace/.r", "w") as f: json.dump({"mode": mode}, f)
os.rename("/workspace/.r", "/workspace/result.json")
"""


def test_a_workload_creates_files_as_its_own_whatever_the_launchers_umask(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    old = os.umask(0)  # the launcher started by hand under umask 000
    try:
        with sandboxed(fleet, tmp_path, run_dir) as box:
            assert box.ensure(python_spec(WRITE_A_FILE))["ok"]
            assert box.result()["mode"] == 0o600
            assert (box.workspace.stat().st_mode & 0o777) == 0o700
    finally:
        os.umask(old)


SLEEP = "import time\nwhile True: time.sleep(60)"


def test_bad_specs_are_refused_in_one_line_and_the_running_workload_is_kept(
    fleet: Fleet, tmp_path: Path, run_dir: Path
) -> None:
    with sandboxed(fleet, tmp_path, run_dir) as box:
        assert box.ensure(python_spec(SLEEP))["ok"]
        running = wait_until(lambda: box.sandbox().get("pid"), what="the workload's pid")
        proxy = box.listed()["pid"]
        state = box.machine.state_dir
        bad: dict[str, dict[str, Any]] = {
            "state dir": {"filesystem": [{"source": str(state), "dest": "/x"}]},
            "run dir": {"filesystem": [{"source": str(run_dir), "dest": "/x"}]},
            "another's socket": {"filesystem": [{"source": str(run_dir / "fleet"), "dest": "/x"}]},
            "workspaces": {"filesystem": [{"source": str(box.sandbox_dir), "dest": "/x"}]},
            "/etc/bureau": {"filesystem": [{"source": "/etc", "dest": "/x"}]},
            "relative": {"filesystem": [{"source": "usr", "dest": "/x"}]},
            "dot-dot": {"filesystem": [{"source": "/usr/../etc", "dest": "/x"}]},
            "device": {"filesystem": [{"source": "/dev/null", "dest": "/x"}]},
            "host network": {"namespaces": {"pid": True, "net": False, "ipc": True, "uts": True}},
            "unknown field": {"privileged": True},
            "secrets": {"secrets": {"TOKEN": "env:TOKEN"}},
            "missing credential": {"required_credentials": ["NOT_IN_THE_BUNDLE"]},
        }
        for what, fields in bad.items():
            reply = box.ensure(python_spec(SLEEP, **fields))
            assert reply["ok"] is False, what
            error = reply["error"]
            assert "\n" not in error, (what, error)
            assert box.principal in error, (what, error)
        assert box.sandbox()["pid"] == running
        assert box.sandbox()["status"] == "running"
        assert box.listed()["pid"] == proxy
        assert "Traceback" not in box.launcher.log()
