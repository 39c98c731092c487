"""Escape attempts from inside a principal's sandbox, each of which must fail.

One real launcher runs two principals. Alpha's sandbox is a probe that makes every attempt
below in turn and records each outcome (an errno name, or what it got) in its result; beta
has a proxy and a sandbox of its own, whose processes and socket are among the targets.
Each test reads one attempt's outcome from that shared run (one launcher and one probe
serve the module: a few seconds, not a few seconds a test). Where a failure alone would
prove nothing (a sandbox whose loopback is broken refuses everything) the same run holds a
positive control: loopback works, its own abstract socket connects, its proxy socket
carries the injected credential (the upstream receives it, its echo shows the workload
`*`s), it can signal itself, write to /workspace and /tmp, and the credential search finds
the credential's form once the probe writes it.

The canary credential values are never spelled whole in the probe's source, which the
sandbox can read in its own /proc/self/cmdline.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import Fleet, RunningHub, make_fleet
from launcher_proc import template_of
from machine_helpers import credentials_event, provision_credentials, services_file
from processes import echo_authorizations, launcher_call
from sandbox_helpers import Sandboxed, python_spec, sandboxed, wait_until, workspace_of

BETA = "agent/beta"
CANARY = "sandbox-canary-"  # alpha's secret is CANARY + "1" (sandbox_helpers), beta's "2"

# The probe. FACTS_JSON is replaced by what the host knows (ports, paths, pids); it writes
# /workspace/result.json last. An attempt's outcome is {"ok": true, "value": ...} or
# {"ok": false, "errno": "ENOENT", "error": "..."}.
PROBE = r"""
import ctypes, errno, fcntl, http.client, json, os, signal, socket, stat, subprocess, termios

FACTS = json.loads(FACTS_JSON)
NEEDLE = ("sandbox-" "canary-").encode()  # never whole in this source: it is in our argv
SYSTEM = {"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64"}
out = {"self_pid": os.getpid(), "uid": os.getuid()}
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]


def attempt(action):
    try:
        return {"ok": True, "value": action()}
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        return {"ok": False, "errno": name, "error": str(exc)}


def check(result):
    if result == -1:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))
    return result


def read(path):
    with open(path, "rb") as f:
        return f.read()


def search(roots):
    # NEEDLE in the environment, in every /proc/PID/{cmdline,environ} readable, and in the
    # files under ROOTS (under 1 MiB each; in the system binds, the host's 5 GB /usr, only
    # files changed since the test began: where anything the host wrote in the run is).
    found, files, unreadable = [], 0, []
    for key, value in os.environ.items():
        if NEEDLE in f"{key}={value}".encode():
            found.append(f"environ {key}")
    for pid in sorted(n for n in os.listdir("/proc") if n.isdigit()):
        for part in ("cmdline", "environ"):
            try:
                if NEEDLE in read(f"/proc/{pid}/{part}"):
                    found.append(f"/proc/{pid}/{part}")
            except OSError:
                unreadable.append(f"/proc/{pid}/{part}")
    for root in roots:
        for directory, _, names in os.walk(root):
            for name in names:
                path = os.path.join(directory, name)
                try:
                    info = os.lstat(path)
                    if not stat.S_ISREG(info.st_mode) or info.st_size > 1 << 20:
                        continue
                    if root in SYSTEM and max(info.st_mtime, info.st_ctime) < FACTS["since"]:
                        continue
                    data = read(path)
                except OSError:
                    continue
                files += 1
                if NEEDLE in data:
                    found.append(path)
    return {"found": found, "files": files, "roots": roots, "unreadable": unreadable}


# -- credentials: searched first, before the proxy call brings one into this process ------
out["canary"] = search(sorted("/" + n for n in os.listdir("/") if n not in ("proc", "sys", "dev")))


# -- network -------------------------------------------------------------------------------
def tcp(port):
    with socket.create_connection(("127.0.0.1", port), timeout=3):
        return "connected"


listener = socket.create_server(("127.0.0.1", 0))
out["tcp_control"] = attempt(lambda: tcp(listener.getsockname()[1]))
out["tcp_hub"] = attempt(lambda: tcp(FACTS["hub_port"]))
out["tcp_upstream"] = attempt(lambda: tcp(FACTS["upstream_port"]))
out["if_nameindex"] = sorted(name for _, name in socket.if_nameindex())
lines = read("/proc/net/dev").decode().splitlines()[2:]
out["proc_net_dev"] = sorted(line.split(":")[0].strip() for line in lines)


def unix(address):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(3)
        s.connect(address)
        return "connected"


own = socket.socket(socket.AF_UNIX)
own.bind("\0bureau-own-" + str(os.getpid()))
own.listen()
out["abstract_control"] = attempt(lambda: unix(own.getsockname()))
out["abstract_host"] = attempt(lambda: unix("\0" + FACTS["abstract"]))

# -- the host's files and sockets ----------------------------------------------------------
out["read"] = {p: attempt(lambda p=p: len(read(p))) for p in FACTS["files"]}
out["connect"] = {p: attempt(lambda p=p: unix(p)) for p in FACTS["sockets"]}
out["run"] = sorted(os.listdir("/run"))
out["list_run_bureau"] = attempt(lambda: sorted(os.listdir("/run/bureau")))
out["proxy_sock_is_socket"] = stat.S_ISSOCK(os.stat("/run/bureau/proxy.sock").st_mode)


# -- processes -----------------------------------------------------------------------------
def name_of(pid):
    try:
        return read(f"/proc/{pid}/cmdline").split(b"\0")[0].decode(errors="replace")
    except OSError as exc:
        return str(exc)


out["proc"] = {p: name_of(p) for p in sorted(n for n in os.listdir("/proc") if n.isdigit())}
out["kill"] = {str(p): attempt(lambda p=p: os.kill(p, signal.SIGKILL)) for p in FACTS["pids"]}
out["kill_control"] = attempt(lambda: os.kill(os.getpid(), 0))


def ptrace_attach(pid):
    check(libc.ptrace(16, pid, None, None))  # PTRACE_ATTACH
    os.waitpid(pid, 0x40000000)  # __WALL: until it stops
    check(libc.ptrace(17, pid, None, None))  # PTRACE_DETACH
    return "attached"


out["ptrace_pid1"] = attempt(lambda: ptrace_attach(1))
out["ptrace_host"] = {str(p): attempt(lambda p=p: ptrace_attach(p)) for p in FACTS["pids"]}

# -- privileges ----------------------------------------------------------------------------
os.makedirs("/tmp/mnt", exist_ok=True)
out["mount"] = attempt(lambda: check(libc.mount(b"tmpfs", b"/tmp/mnt", b"tmpfs", 0, None)))


def in_child(action):
    # ACTION's outcome in a forked child: what succeeds there leaves this process as it was.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, json.dumps(attempt(action)).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def userns_mount():
    check(libc.unshare(0x10000000 | 0x00020000))  # CLONE_NEWUSER | CLONE_NEWNS
    check(libc.mount(b"tmpfs", b"/tmp/mnt", b"tmpfs", 0, None))
    return "mounted, in a user namespace of its own"


out["unshare_user"] = in_child(userns_mount)
status = dict(line.split(":", 1) for line in read("/proc/self/status").decode().splitlines())
out["status"] = {k: v.strip() for k, v in status.items() if k.startswith(("Cap", "NoNew"))}
out["setuid_present"] = sorted(
    path
    for directory in ("/usr/bin", "/usr/sbin")
    for path in (os.path.join(directory, n) for n in os.listdir(directory))
    if os.path.isfile(path) and os.stat(path).st_mode & stat.S_ISUID
)
mounts = [line.split() for line in read("/proc/self/mountinfo").decode().splitlines()]
out["mount_options"] = {m[4]: m[5].split(",") for m in mounts}


def run(*argv):
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    return {"rc": done.returncode, "stdout": done.stdout.decode(), "stderr": done.stderr.decode()}


out["setuid_id"] = attempt(lambda: run(FACTS["setuid_copy"], "-u"))
out["setuid_su"] = attempt(lambda: run("/usr/bin/su", "root", "-c", "id -u"))


# -- the terminal --------------------------------------------------------------------------
def sti(fd):
    fcntl.ioctl(fd, termios.TIOCSTI, b"x")
    return "injected"


def sti_tty():
    fd = os.open("/dev/tty", os.O_RDWR)
    try:
        return sti(fd)
    finally:
        os.close(fd)


out["tiocsti"] = {str(fd): attempt(lambda fd=fd: sti(fd)) for fd in (0, 1, 2)}
out["tiocsti_tty"] = attempt(sti_tty)
out["session"] = {"sid": os.getsid(0), "pid": os.getpid()}


# -- writing -------------------------------------------------------------------------------
def create(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    os.unlink(path)
    return "created"


for d in ("/", "/usr", "/etc", "/run", "/run/bureau", "/workspace", "/tmp"):
    out["write " + d] = attempt(lambda d=d: create(os.path.join(d, "escape")))
out["mkdir /etc"] = attempt(lambda: os.mkdir("/etc"))
out["unlink proxy.sock"] = attempt(lambda: os.unlink("/run/bureau/proxy.sock"))


# -- the way out that is meant to work, last ----------------------------------------------
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(os.environ["BUREAU_PROXY_SOCKET"])


def through_proxy():
    c = Unix("proxy", timeout=10)
    c.request("GET", "/http/api/hello")
    reply = c.getresponse()
    echoed = json.loads(reply.read())["headers"].get("authorization", "")
    # The proxy cleans the upstream's echo: the workload sees `*`s the credential's length.
    injected = echoed == "Bearer " + "*" * len(NEEDLE.decode() + "1")
    # The search's own control: the credential's form, written to /tmp, is found there.
    with open("/tmp/echoed", "w") as f:
        f.write("Bearer " + NEEDLE.decode() + "1")
    return {"status": reply.status, "injected": injected, "found": search(["/tmp"])["found"]}


out["proxy_control"] = attempt(through_proxy)
with open("/workspace/.result", "w") as f:
    json.dump(out, f)
os.rename("/workspace/.result", "/workspace/result.json")
"""

ASLEEP = "import time\ntime.sleep(600)\n"


@dataclass(frozen=True)
class Probed:
    box: Sandboxed
    beta: str
    facts: dict[str, Any]
    result: dict[str, Any]
    host_pids: dict[str, int]  # what each target is: its pid as the host sees it
    abstract: str  # the host's abstract socket, without its leading NUL
    socket_dir: Path  # alpha's /run/bureau on the host

    def __getitem__(self, key: str) -> Any:
        return self.result[key]


def failed(outcome: dict[str, Any], *errnos: str) -> bool:
    """The attempt failed, and with one of ``errnos`` when any are given."""
    return not outcome["ok"] and (not errnos or outcome["errno"] in errnos)


def module_fleet(hub: RunningHub, tmp: Path) -> Fleet:
    """What conftest's function-scoped ``fleet`` makes, made once for this module."""
    return make_fleet(hub, tmp)


def listed(box: Sandboxed, principal: str) -> dict[str, Any]:
    reply = launcher_call(box.launcher.socket, {"action": "list"})
    (item,) = [p for p in reply["principals"] if p["principal"] == principal]
    return dict(item)


def start_beta(box: Sandboxed, tmp: Path) -> str:
    """A second principal with a proxy and a sleeping sandbox: targets for alpha."""
    services = services_file(tmp, box.upstream, "beta-services.json")
    done = provision_credentials(box.fleet, box.machine, BETA, services, f"TOKEN={CANARY}2\n")
    assert done.returncode == 0, done.stderr
    beta = f"@{box.fleet.name}/{BETA}:{box.fleet.hub.server_name}"
    request = {
        "action": "ensure",
        "principal": beta,
        "credentials": credentials_event(box.fleet, box.machine, BETA),
        "sandbox": python_spec(ASLEEP),
    }
    reply = launcher_call(box.launcher.socket, request)
    assert reply["ok"], (reply, box.launcher.log())
    wait_until(
        lambda: (listed(box, beta).get("sandbox") or {}).get("pid"),
        what=f"beta's sandbox running\n{box.launcher.log()}",
    )
    return beta


def plant_setuid_copy(box: Sandboxed) -> str:
    """A root-owned setuid copy of id(1) in alpha's workspace, put there before the
    launcher makes the workspace alpha's (it changes the directory, not what is in it)."""
    workspace = workspace_of(box.sandbox_dir, box.principal)
    workspace.mkdir(mode=0o700)
    copy = workspace / "setuid-id"
    shutil.copy("/usr/bin/id", copy)
    os.chown(copy, 0, 0)
    copy.chmod(0o4755)
    return "/workspace/" + copy.name


@pytest.fixture(scope="module")
def probed(hub: RunningHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Probed]:
    since = time.time() - 1
    tmp = tmp_path_factory.mktemp("escapes")
    fleet = module_fleet(hub, tmp)
    run_dir = Path(tempfile.mkdtemp(prefix="bureau-run-", dir="/tmp"))
    abstract = f"bureau-test-{secrets.token_hex(8)}"
    host_socket = socket.socket(socket.AF_UNIX)
    try:
        host_socket.bind("\0" + abstract)
        host_socket.listen()
        # Uids of its own: launchers of tests running beside this one hand out the default
        # range, and a sandbox's uid must be its principal's alone.
        low = 2_010_000_000 + secrets.randbelow(1_000_000) * 16
        with sandboxed(fleet, tmp, run_dir, "--sandbox-uids", f"{low}-{low + 15}") as box:
            beta = start_beta(box, tmp)
            (beta_record,) = (run_dir / "launcher" / "sandboxes").glob("*.json")
            # Alpha's proxy first, without a sandbox: its pid is one more to aim at.
            reply = box.ensure(None)
            assert reply["ok"], (reply, box.launcher.log())
            launcher_pid = box.launcher.main_pid()
            host_pids = {
                "the launcher": launcher_pid,
                "the proxy template": template_of(launcher_pid),
                "alpha's proxy": int(listed(box, box.principal)["pid"]),
                "beta's proxy": int(listed(box, beta)["pid"]),
                "beta's sandbox": int(json.loads(beta_record.read_text())["pid"]),
                "beta's workload": int(listed(box, beta)["sandbox"]["pid"]),
                "the test": os.getpid(),
            }
            state = box.machine.state_dir
            facts = {
                "since": since,
                "hub_port": urlsplit(fleet.hub.url).port,
                "upstream_port": urlsplit(box.upstream).port,
                "abstract": abstract,
                "files": [
                    *map(str, sorted(state.glob("machine-key.*"))),
                    str(state / "session.json"),
                    "/etc/shadow",
                ],
                "sockets": [
                    str(box.launcher.socket),
                    listed(box, beta)["socket"],
                    listed(box, box.principal)["socket"],
                ],
                "pids": sorted(host_pids.values()),
                "setuid_copy": plant_setuid_copy(box),
            }
            code = PROBE.replace("FACTS_JSON", repr(json.dumps(facts)))
            assert CANARY not in code
            reply = box.ensure(python_spec(code))
            assert reply["ok"], (reply, box.launcher.log())
            result = box.result()
            socket_dir = run_dir / "sandbox" / box.workspace.name  # keyed as the workspace
            try:
                yield Probed(box, beta, facts, result, host_pids, abstract, socket_dir)
            finally:
                # Sandboxes outlive their launcher, and beta's sleeps: stopped while the
                # launcher runs, not left to the clean-up after it.
                for principal in (beta, box.principal):
                    launcher_call(box.launcher.socket, {"action": "stop", "principal": principal})
    finally:
        host_socket.close()
        shutil.rmtree(run_dir, ignore_errors=True)


# -- network ---------------------------------------------------------------------------------


def host_connects(port: int | None) -> bool:
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        return True


@pytest.mark.slow
def test_tcp_to_the_hubs_port_is_refused(probed: Probed) -> None:
    assert host_connects(probed.facts["hub_port"])  # it listens, on the host
    assert probed["tcp_control"]["ok"], probed["tcp_control"]  # loopback works inside
    assert failed(probed["tcp_hub"], "ECONNREFUSED"), probed["tcp_hub"]


def test_tcp_to_the_upstreams_port_is_refused(probed: Probed) -> None:
    assert host_connects(probed.facts["upstream_port"])
    assert probed["tcp_control"]["ok"], probed["tcp_control"]
    assert failed(probed["tcp_upstream"], "ECONNREFUSED"), probed["tcp_upstream"]
    # ...while the same upstream is reached through the proxy socket, credential injected.
    assert probed["proxy_control"]["ok"], probed["proxy_control"]
    assert probed["proxy_control"]["value"]["status"] == 200
    assert probed["proxy_control"]["value"]["injected"]
    assert f"Bearer {CANARY}1" in echo_authorizations()  # what the upstream received


def test_no_network_interface_but_loopback(probed: Probed) -> None:
    assert probed["if_nameindex"] == ["lo"]
    assert probed["proc_net_dev"] == ["lo"]


def test_the_hosts_abstract_unix_socket_is_unreachable(probed: Probed) -> None:
    with socket.socket(socket.AF_UNIX) as s:  # it listens, on the host
        s.connect("\0" + probed.abstract)
    assert probed["abstract_control"]["ok"], probed["abstract_control"]
    assert failed(probed["abstract_host"], "ECONNREFUSED"), probed["abstract_host"]


# -- the host's files and sockets ------------------------------------------------------------


@pytest.mark.parametrize("name", ["machine-key.txt", "machine-key.pub", "session.json"])
def test_the_machines_state_is_not_in_the_sandbox(probed: Probed, name: str) -> None:
    path = probed.box.machine.state_dir / name
    assert path.is_file()
    outcome = probed["read"][str(path)]
    assert failed(outcome, "ENOENT"), outcome


def test_etc_shadow_is_unreadable(probed: Probed) -> None:
    outcome = probed["read"]["/etc/shadow"]
    assert failed(outcome, "ENOENT", "EACCES"), outcome


def test_the_launcher_socket_is_not_in_the_sandbox(probed: Probed) -> None:
    path = probed.box.launcher.socket
    assert stat.S_ISSOCK(path.stat().st_mode)
    outcome = probed["connect"][str(path)]
    assert failed(outcome, "ENOENT"), outcome


@pytest.mark.parametrize("whose", ["beta", "alpha"])
def test_proxy_sockets_host_paths_are_not_in_the_sandbox(probed: Probed, whose: str) -> None:
    principal = probed.beta if whose == "beta" else probed.box.principal
    path = listed(probed.box, principal)["socket"]
    assert stat.S_ISSOCK(Path(path).stat().st_mode)
    outcome = probed["connect"][path]
    assert failed(outcome, "ENOENT"), outcome
    assert probed["proxy_control"]["ok"], probed["proxy_control"]  # its own, at its place


def test_run_holds_its_proxy_socket_and_nothing_else(probed: Probed) -> None:
    assert probed["run"] == ["bureau"]
    assert probed["proxy_sock_is_socket"]
    listing = probed["list_run_bureau"]
    assert failed(listing, "EACCES") or listing["value"] == ["proxy.sock"], listing
    mounted = sorted(p.name for p in probed.socket_dir.iterdir())  # what it sees there
    assert mounted == ["proxy.sock"]


# -- processes -------------------------------------------------------------------------------


def test_only_its_own_processes_are_visible(probed: Probed) -> None:
    assert probed["self_pid"] == 2
    assert probed["proc"] == {"1": "bwrap", "2": "/usr/bin/python3"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_signalling_host_processes_fails_with_esrch(probed: Probed) -> None:
    assert probed["kill_control"]["ok"], probed["kill_control"]
    for what, pid in probed.host_pids.items():
        outcome = probed["kill"][str(pid)]
        assert failed(outcome, "ESRCH"), (what, outcome)
    gone = [what for what, pid in probed.host_pids.items() if not alive(pid)]
    assert gone == [], probed.box.launcher.log()


def test_ptrace_of_host_processes_fails(probed: Probed) -> None:
    for what, pid in probed.host_pids.items():
        outcome = probed["ptrace_host"][str(pid)]
        # EPERM from the sandbox's seccomp filter; without it, ESRCH (not in its pid
        # namespace: test_signalling_host_processes_fails_with_esrch shows that alone).
        assert failed(outcome, "EPERM", "ESRCH"), (what, outcome)


def test_ptrace_of_its_own_pid_1_fails(probed: Probed) -> None:
    """bwrap's init runs as the workload's uid: only the sandbox's seccomp filter
    (launcher/seccomp.py, bwrap --seccomp) keeps the workload from tracing it."""
    assert failed(probed["ptrace_pid1"], "EPERM"), probed["ptrace_pid1"]


# -- privileges ------------------------------------------------------------------------------


def test_mount_fails_with_eperm(probed: Probed) -> None:
    assert failed(probed["mount"], "EPERM"), probed["mount"]


def test_no_nested_user_namespace(probed: Probed) -> None:
    """The way to capabilities (and so mount) without setuid: --disable-userns."""
    assert failed(probed["unshare_user"], "ENOSPC", "EPERM"), probed["unshare_user"]


def test_no_capabilities_and_no_new_privileges(probed: Probed) -> None:
    status = probed["status"]
    assert status["NoNewPrivs"] == "1"
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[name], 16) == 0, (name, status[name])


def test_a_setuid_root_binary_runs_as_the_sandbox_uid(probed: Probed) -> None:
    """A root-owned setuid id(1) the host put in its workspace, and su(1) from /usr."""
    assert probed["uid"] >= 2_000_000_000
    assert "/usr/bin/su" in probed["setuid_present"]  # the bit is there to ignore
    assert "nosuid" in probed["mount_options"]["/usr"]
    assert "nosuid" in probed["mount_options"]["/workspace"]
    ran = probed["setuid_id"]
    assert ran["ok"], ran
    assert ran["value"]["stdout"].split() == [str(probed["uid"])], ran
    su = probed["setuid_su"]["value"]
    assert su["rc"] != 0, su
    assert "0" not in su["stdout"].split(), su


# -- the terminal ----------------------------------------------------------------------------


def test_tiocsti_fails(probed: Probed) -> None:
    for fd, outcome in probed["tiocsti"].items():
        assert failed(outcome, "ENOTTY", "EIO", "EPERM"), (fd, outcome)
    # A session of its own (bwrap --new-session): no controlling terminal to push input
    # into, and a session leader inside the sandbox (outside its pid namespace it reads 0).
    assert failed(probed["tiocsti_tty"], "ENXIO"), probed["tiocsti_tty"]
    assert str(probed["session"]["sid"]) in probed["proc"], probed["session"]


# -- writing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("directory", "errnos"),
    [
        ("/", ("EROFS",)),
        ("/usr", ("EROFS",)),
        ("/etc", ("ENOENT",)),  # not there, and / is read-only (below)
        ("/run", ("EROFS",)),
        ("/run/bureau", ("EROFS",)),
    ],
)
def test_writing_outside_workspace_and_tmp_fails(
    probed: Probed, directory: str, errnos: tuple[str, ...]
) -> None:
    outcome = probed["write " + directory]
    assert failed(outcome, *errnos), outcome
    if directory == "/etc":
        assert failed(probed["mkdir /etc"], "EROFS"), probed["mkdir /etc"]
    if directory == "/run/bureau":
        unlinked = probed["unlink proxy.sock"]
        assert failed(unlinked, "EROFS"), unlinked
    # The control: its own two places take writes.
    assert probed["write /workspace"]["ok"], probed["write /workspace"]
    assert probed["write /tmp"]["ok"], probed["write /tmp"]


# -- credentials -----------------------------------------------------------------------------


def test_no_credential_value_in_environment_argv_proc_or_files(probed: Probed) -> None:
    searched = probed["canary"]
    assert searched["found"] == [], searched
    roots = {"/run", "/tmp", "/usr", "/workspace"}  # noqa: S108 -- inside the sandbox
    assert roots <= set(searched["roots"]), searched
    assert "/proc/1/environ" not in searched["unreadable"], searched
    assert "/proc/2/environ" not in searched["unreadable"], searched
    # The control: the search finds the credential's form once the probe writes it (the
    # upstream's echo of it reaches the sandbox only as `*`s).
    control = probed["proxy_control"]
    assert control["ok"], control
    assert control["value"]["found"] == ["/tmp/echoed"], control  # noqa: S108 -- ditto
