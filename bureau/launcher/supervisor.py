"""The launcher's principals: decrypt a credentials event, start a proxy with the plaintext
on its stdin, watch it, restart it when it dies, swap it without downtime when the
credentials change, adopt the survivors of an earlier launcher.

Plaintext exists only between decryption and the write to the new proxy's stdin. What the
launcher keeps per principal is the event content (public: it is in Matrix) so that it can
decrypt again to restart a proxy. Socket paths belong to the launcher: a proxy binds a
fresh temporary path, and once it answers "READY" the launcher renames that path over the
principal's, so a client connecting at any moment reaches an old or a new proxy, never
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bureau import age_keys, names
from bureau.credentials_event import (
    CredentialsEvent,
    content_digest,
    open_plaintext,
    parse_rfc3339,
    rfc3339_now,
)
from bureau.errors import BureauError, InputError
from bureau.files import atomic_write, make_dirs, read_private_json
from bureau.launcher.spawner import Spawner, SpawnError
from bureau.proxy_payload import ProxyPayload
from bureau.secret import Secret

READY_TIMEOUT = 20.0
SUN_PATH_MAX = 107
DRAIN_TIMEOUT = 15.0
BACKOFF_CAP = 30.0
STABLE_SECONDS = 60.0
POLL_SECONDS = 1.0  # watching a proxy without a pidfd
# What a proxy inherits: no notify socket, no credentials directory, nothing else. The
# journal variables let its logs reach the journal with their fields.
_CHILD_ENV = (
    "PATH",
    "LANG",
    "LC_ALL",
    "BUREAU_LOG_LEVEL",
    "JOURNAL_STREAM",
    "BUREAU_JOURNAL_SOCKET",
)


def _deliver(fd: int, payload: bytes) -> None:
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
    except BrokenPipeError:
        pass  # a proxy that died says so by its status
    finally:
        os.close(fd)


def _ready_line(fd: int) -> bytes:
    line = b""
    try:
        while not line.endswith(b"\n") and len(line) < 256:
            chunk = os.read(fd, 256)
            if not chunk:
                break
            line += chunk
    finally:
        os.close(fd)  # the proxy writes nothing after READY
    return line


def _reap(pid: int) -> str:
    """Wait for a proxy that is our child (forked for us, or reparented to us as the
    subreaper) and describe how it ended."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return "status unknown"
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"signal {signal.Signals(number).name}"
        except ValueError:  # real-time signals have no name
            return f"signal {number}"
    return f"status {os.waitstatus_to_exitcode(status)}"


class LauncherError(Exception):
    """A request the launcher refuses; the message is one line and holds no secret."""


@dataclass
class Proxy:
    principal: str
    pid: int
    start_time: int | None
    socket: Path
    digest: str
    content: dict[str, Any]
    started_at: float
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    retiring: bool = False
    restarts: int = 0
    crash_streak: int = 0

    def describe(self) -> dict[str, Any]:
        event = self.content
        return {
            "principal": self.principal,
            "pid": self.pid,
            "socket": str(self.socket),
            "digest": self.digest,
            "keys": list(event.get("keys", [])),
            "services": sorted(event.get("services", {})),
            "started_at": rfc3339_now_from(self.started_at),
            "restarts": self.restarts,
            "status": "restarting" if self.exited.is_set() else "running",
        }


def rfc3339_now_from(epoch: float) -> str:
    return rfc3339_now(datetime.fromtimestamp(epoch, UTC))


def _proxy_pids_under(run_dir: Path) -> list[int]:
    """Our own processes titled ``bureau-proxy --socket PATH`` with PATH in run_dir."""
    found = []
    prefix = os.fsencode(run_dir) + b"/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Status, not the directory's owner: /proc of a non-dumpable process (every
            # proxy) belongs to root whoever runs it.
            status = (entry / "status").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        uid_line = next((ln for ln in status.splitlines() if ln.startswith("Uid:")), "")
        if uid_line.split()[1:2] != [str(os.getuid())]:
            continue
        if argv[:2] == [b"bureau-proxy", b"--socket"] and argv[2:3] and argv[2].startswith(prefix):
            found.append(int(entry.name))
    return found


def process_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else int(fields[19])


class Supervisor:
    def __init__(
        self,
        *,
        machine_user: str,
        secret_key: Secret,
        run_dir: Path,
        log: Any,
        tasks: asyncio.TaskGroup,
    ) -> None:
        self._machine_user = machine_user
        machine_localpart, self._server = names.parse_user_id(machine_user)
        self._fleet = names.fleet_of_entity(machine_localpart)
        self._key = secret_key
        self._run_dir = run_dir
        self._state_dir = run_dir / "launcher" / "proxies"
        self._log = log
        self._tasks = tasks
        env = {k: v for k, v in os.environ.items() if k in _CHILD_ENV}
        self._spawner = Spawner(env)
        self._spawner.start()
        self._proxies: dict[str, Proxy] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # -- requests ------------------------------------------------------------------------

    def close(self) -> None:
        """The template goes; the proxies stay for the next launcher to adopt."""
        self._spawner.close()

    def status(self) -> dict[str, Any]:
        running = sum(1 for p in self._proxies.values() if not p.exited.is_set())
        return {"machine": self._machine_user, "principals": len(self._proxies), "running": running}

    def list(self) -> list[dict[str, Any]]:
        return [self._proxies[p].describe() for p in sorted(self._proxies)]

    async def ensure(self, principal: str, content: dict[str, Any]) -> dict[str, Any]:
        self._check_principal(principal)
        event = self._check_event(principal, content)
        digest = content_digest(content)
        async with self._lock(principal):
            current = self._proxies.get(principal)
            if current is not None and current.digest == digest and not current.exited.is_set():
                return {"changed": False, "socket": str(current.socket)}
            new = await self._launch(principal, event, content, digest)
            if current is not None:
                new.restarts = current.restarts
                await self._retire(current)
            self._install(new)
        self._log.info(
            "proxy started" if current is None else "proxy replaced (credentials changed)",
            principal=principal,
            pid=new.pid,
            keys=list(event.keys),
        )
        return {"changed": True, "socket": str(new.socket)}

    async def stop(self, principal: str) -> dict[str, Any]:
        # Any name of this fleet may be stopped: one that could never run is not running.
        runnable = self._check_principal(principal, to_run=False)
        async with self._lock(principal):
            current = self._proxies.pop(principal, None)
            if current is not None:
                await self._retire(current)
            if runnable:
                with contextlib.suppress(FileNotFoundError):
                    self._socket_path(principal).unlink()
            with contextlib.suppress(FileNotFoundError):
                self._state_file(principal).unlink()
        if current is not None:
            self._log.info("proxy stopped", principal=principal)
        return {"stopped": current is not None}

    # -- validation ----------------------------------------------------------------------

    def _check_principal(self, principal: str, *, to_run: bool = True) -> bool:
        """Refuses what is not a principal of this fleet; False (with ``to_run`` unset)
        for a name that could never have a proxy socket of its own."""
        try:
            localpart, server = names.parse_user_id(principal)
            names.validate_localpart(localpart)
            fleet = names.fleet_of_entity(localpart)
        except names.InvalidName as exc:
            raise LauncherError(f"principal: {exc}") from None
        if server != self._server or fleet != self._fleet:
            raise LauncherError(f"principal {principal} is not in this machine's fleet")
        if localpart.split("/")[3] == "machine":
            raise LauncherError(f"principal {principal} is a machine")
        try:
            names.check_socket_name(localpart)
        except names.InvalidName as exc:
            if to_run:
                raise LauncherError(f"principal: {exc}") from None
            return False
        return True

    def _check_event(self, principal: str, content: dict[str, Any]) -> CredentialsEvent:
        try:
            event = CredentialsEvent.from_json(content, f"credentials for {principal}")
        except InputError as exc:
            raise LauncherError(str(exc)) from None
        if event.principal != principal:
            raise LauncherError(f"credentials are for {event.principal}, not {principal}")
        if self._machine_user not in event.encrypted_for:
            raise LauncherError(f"credentials for {principal} are not encrypted for this machine")
        if event.expires_at and parse_rfc3339(event.expires_at).timestamp() <= time.time():
            raise LauncherError(f"credentials for {principal} expired at {event.expires_at}")
        return event

    def _open(self, principal: str, event: CredentialsEvent) -> bytes:
        """Decrypt and build the proxy's payload; the plaintext lives only in here."""
        try:
            plaintext = age_keys.decrypt(event.ciphertext, self._key)
        except age_keys.DecryptFailed as exc:
            raise LauncherError(f"credentials for {principal}: {exc}") from None
        try:
            credentials = open_plaintext(plaintext, event, f"credentials for {principal}")
        except InputError as exc:
            raise LauncherError(str(exc)) from None
        finally:
            del plaintext
        return ProxyPayload(principal, event.services, credentials, event.expires_at).to_bytes()

    # -- processes -----------------------------------------------------------------------

    def _lock(self, principal: str) -> asyncio.Lock:
        return self._locks.setdefault(principal, asyncio.Lock())

    def _socket_path(self, principal: str) -> Path:
        localpart, _ = names.parse_user_id(principal)
        return self._run_dir / names.proxy_socket_relpath(localpart)

    def _state_file(self, principal: str) -> Path:
        return self._state_dir / (hashlib.sha256(principal.encode()).hexdigest()[:32] + ".json")

    async def _launch(
        self, principal: str, event: CredentialsEvent, content: dict[str, Any], digest: str
    ) -> Proxy:
        final = self._socket_path(principal)
        # The temporary name adds 10 bytes; sun_path holds 107 and a NUL.
        if len(os.fsencode(final)) + 10 > SUN_PATH_MAX:
            raise LauncherError(
                f"socket path {final} is too long for a Unix socket; use a shorter --run-dir"
            )
        try:
            make_dirs(final.parent, 0o755)
        except OSError as exc:
            raise LauncherError(
                f"proxy socket directory for {principal}: {exc.strerror or type(exc).__name__}"
                f" ({exc.filename})"
            ) from None
        payload = self._open(principal, event)
        temp = final.with_name(f".{final.name}.{secrets.token_hex(4)}")
        # Forked by the template in its own session (a signal to the launcher's group must
        # not reach it) and outliving this launcher, to be adopted by the next one.
        argv = ["--socket", str(temp), "--machine", self._machine_user]
        try:
            spawned = await asyncio.to_thread(self._spawner.spawn, argv)
        except SpawnError as exc:
            raise LauncherError(f"proxy for {principal}: {exc}") from None
        pid = spawned.pid
        reaped = None
        try:
            await asyncio.to_thread(_deliver, spawned.stdin, payload)
            del payload
            async with asyncio.timeout(READY_TIMEOUT):
                line = await asyncio.to_thread(_ready_line, spawned.stdout)
            if not line.startswith(b"READY"):
                reaped = await asyncio.to_thread(_reap, pid)
                raise LauncherError(f"proxy for {principal} exited with {reaped} at start")
            temp.rename(final)
        except BaseException:
            if reaped is None:  # once reaped, the pid may already be someone else's
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                await asyncio.to_thread(_reap, pid)
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        proxy = Proxy(principal, pid, process_start_time(pid), final, digest, content, time.time())
        self._tasks.create_task(self._watch(proxy))
        return proxy

    def _install(self, proxy: Proxy) -> None:
        """The proxy is the principal's from now on. Its adoption record is written for
        the next launcher; a record that cannot be written (a full or unsafe run dir) is
        logged, not raised: the proxy serves, and the next launcher, finding no record,
        stops it and the daemon has it started again."""
        self._proxies[proxy.principal] = proxy
        try:
            self._write_record(proxy)
        except (BureauError, OSError) as exc:
            self._log.error(
                "could not record the proxy for adoption", principal=proxy.principal, error=str(exc)
            )

    def _write_record(self, proxy: Proxy) -> None:
        make_dirs(self._state_dir, 0o700)
        record = {
            "principal": proxy.principal,
            "pid": proxy.pid,
            "start_time": proxy.start_time,
            "digest": proxy.digest,
            "content": proxy.content,
            "started_at": proxy.started_at,
        }
        atomic_write(self._state_file(proxy.principal), json.dumps(record).encode(), 0o600)

    async def _watch(self, proxy: Proxy) -> None:
        """Wait for the proxy to exit (a pidfd works for children and adopted processes
        alike), reap it if it is our child, and restart it unless it was retired."""
        try:
            fd = os.pidfd_open(proxy.pid)
        except ProcessLookupError:
            proxy.exited.set()
            how = "status unknown"
        except OSError as exc:  # EMFILE, say: watched by polling instead
            self._log.warning(
                "watching a proxy by polling", principal=proxy.principal, error=str(exc)
            )
            alive = proxy.start_time is not None
            while alive and process_start_time(proxy.pid) == proxy.start_time:
                await asyncio.sleep(POLL_SECONDS)
            proxy.exited.set()
            how = _reap(proxy.pid)
        else:
            loop = asyncio.get_running_loop()
            loop.add_reader(fd, proxy.exited.set)
            try:
                await proxy.exited.wait()
            finally:
                loop.remove_reader(fd)
                os.close(fd)
            how = _reap(proxy.pid)  # it has exited: this does not block
        await self._exited(proxy, how)

    async def _exited(self, proxy: Proxy, how: str) -> None:
        if proxy.retiring:
            return
        self._log.warning("proxy exited; restarting", principal=proxy.principal, exit=how)
        streak = 0 if time.time() - proxy.started_at > STABLE_SECONDS else proxy.crash_streak + 1
        delay = min(2.0 ** (streak - 1), BACKOFF_CAP) if streak else 0.0
        while True:
            await asyncio.sleep(delay)
            async with self._lock(proxy.principal):
                if self._proxies.get(proxy.principal) is not proxy:
                    return  # stopped or replaced meanwhile
                try:
                    event = self._check_event(proxy.principal, proxy.content)
                    new = await self._launch(proxy.principal, event, proxy.content, proxy.digest)
                except Exception as exc:  # this task must live to retry
                    # Whatever went wrong, this watcher keeps trying: an exception leaving
                    # it would end the launcher's task group, and every principal with it.
                    error = str(exc) if isinstance(exc, LauncherError) else type(exc).__name__
                    self._log.error("restart failed", principal=proxy.principal, error=error)
                    delay = min(max(delay * 2, 1.0), BACKOFF_CAP)
                    continue
                new.restarts, new.crash_streak = proxy.restarts + 1, streak
                self._install(new)
            self._log.info("proxy restarted", principal=proxy.principal, pid=new.pid)
            return

    async def _retire(self, proxy: Proxy) -> None:
        """SIGTERM: the proxy stops accepting and drains; SIGKILL if it overstays."""
        proxy.retiring = True
        if proxy.exited.is_set():
            return  # gone, and perhaps reaped: its pid may be someone else's by now
        with contextlib.suppress(ProcessLookupError):
            os.kill(proxy.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await proxy.exited.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proxy.pid, signal.SIGKILL)
            await proxy.exited.wait()

    # -- adoption ------------------------------------------------------------------------

    async def adopt(self) -> None:
        """Take over the proxies an earlier launcher left running; start again those that
        died with it. A proxy that launcher was still starting when it died (killed between
        spawning and installing it) was never reachable: it is stopped, and its temporary
        socket removed."""
        if self._state_dir.is_dir():
            await self._adopt_recorded()
        adopted = {p.pid for p in self._proxies.values()}
        for pid in _proxy_pids_under(self._run_dir):
            if pid not in adopted:
                self._log.warning("stopping a proxy that was never installed", pid=pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        # A temporary socket is renamed away once its proxy is installed: any left now
        # belonged to a start that never finished.
        proxies = self._run_dir / "fleet"
        if proxies.is_dir():
            for path in proxies.rglob(".*.proxy.sock.*"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    async def _adopt_recorded(self) -> None:
        for path in sorted(self._state_dir.glob("*.json")):
            try:
                # Strict: a record decides which pid the launcher adopts and signals.
                record: Any = read_private_json(path, strict=True)
                principal, content = str(record["principal"]), dict(record["content"])
                pid, start_time = int(record["pid"]), record["start_time"]
                alive = start_time is not None and process_start_time(pid) == start_time
                proxy = Proxy(
                    principal,
                    pid,
                    start_time,
                    self._socket_path(principal),  # refuses a name that can no longer run
                    str(record["digest"]),
                    content,
                    float(record.get("started_at", time.time())),
                )
            except (InputError, names.InvalidName, OSError, ValueError, KeyError, TypeError):
                # Its proxy, if it runs, is stopped below as one this launcher did not adopt.
                self._log.warning("ignoring unusable proxy record", path=str(path))
                path.unlink()
                continue
            if alive:
                self._proxies[principal] = proxy
                self._tasks.create_task(self._watch(proxy))
                self._log.info("adopted running proxy", principal=principal, pid=pid)
                continue
            try:
                await self.ensure(principal, content)
            except Exception as exc:  # one record must not stop the others
                error = str(exc) if isinstance(exc, LauncherError) else type(exc).__name__
                self._log.error("could not recreate proxy", principal=principal, error=error)
                path.unlink()
