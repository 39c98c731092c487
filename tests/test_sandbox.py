"""Principals in real bubblewrap sandboxes, started by a real launcher: the workload reaches
its service through /run/bureau/proxy.sock and nothing else; its lifecycle follows the
spec, the credentials and the restart policy."""

from __future__ import annotations

from pathlib import Path

from conftest import Fleet
from sandbox_helpers import python_spec, sandboxed

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
        assert result["authorization"] == "Bearer sandbox-canary-1"
        assert result["uid"] >= 2_000_000_000
