"""Logs for journalctl: when stderr is the journal, every entry goes to a listener that
speaks the journal's native protocol, with the fields `journalctl BUREAU_PRINCIPAL=...`
filters on. The encoder is checked against the protocol's framing; the processes are
checked end to end with a real datagram listener standing in for journald."""

from __future__ import annotations

import io
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from conftest import BIN, Fleet
from journal_listener import Listener
from launcher_proc import kill_proxies_under
from machine_helpers import (
    assign,
    enroll,
    provision_credentials,
    proxy_socket,
    served_token,
    services_file,
)
from processes import echo_upstream

from bureau import journal, log
from bureau.secret import Secret

PRINCIPAL = "agent/alpha"


def test_encoding_is_the_native_protocol() -> None:
    data = journal.encode([("MESSAGE", "one line"), ("BUREAU_ERROR", "two\nlines")])
    assert data == (
        b"MESSAGE=one line\n" + b"BUREAU_ERROR\n" + struct.pack("<Q", 9) + b"two\nlines\n"
    )
    assert journal.decode(data) == [("MESSAGE", "one line"), ("BUREAU_ERROR", "two\nlines")]


def test_field_names_fit_the_journal_alphabet() -> None:
    assert journal.field_name("principal") == "BUREAU_PRINCIPAL"
    assert journal.field_name("retry-in.s") == "BUREAU_RETRY_IN_S"
    assert len(journal.field_name("x" * 100)) == 64


@pytest.fixture
def listener(run_dir: Path) -> Iterator[Listener]:
    the_listener = Listener(run_dir / "journal.sock")
    try:
        yield the_listener
    finally:
        the_listener.sock.close()


def test_renderer_sends_fields_and_redacts_secrets(listener: Listener, tmp_path: Path) -> None:
    stderr = (tmp_path / "stderr").open("w")
    st = os.fstat(stderr.fileno())
    os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    os.environ[journal.SOCKET_ENV] = str(listener.sock.getsockname())
    log.configure("debug", stream=stderr, identifier="bureau-test")
    logger = log.get("bureau-test").bind(machine="@m:x", principal="@p:x")
    logger.warning("refused", token=Secret("canary-journal-1"), reason="bad\nthing")
    logger.info("large", blob="z" * 300_000)  # beyond a datagram: sent as a memfd
    entry = listener.wait_for(BUREAU_EVENT="refused")
    assert entry["PRIORITY"] == "4"
    assert entry["SYSLOG_IDENTIFIER"] == "bureau-test"
    assert entry["BUREAU_PRINCIPAL"] == "@p:x"
    assert entry["BUREAU_MACHINE"] == "@m:x"
    assert entry["BUREAU_TOKEN"] == "<redacted>"
    assert entry["BUREAU_REASON"] == "bad\nthing"
    assert entry["CODE_FUNC"] == "test_renderer_sends_fields_and_redacts_secrets"
    assert entry["CODE_FILE"].endswith("test_journal.py")
    assert entry["CODE_LINE"].isdigit()
    assert entry["MESSAGE"].startswith("refused ")
    assert listener.wait_for(BUREAU_EVENT="large")["BUREAU_BLOB"] == "z" * 300_000
    assert "canary-journal-1" not in str(listener.entries)
    stderr.close()
    assert (tmp_path / "stderr").read_text() == ""  # nothing went the unstructured way


def test_a_stream_that_is_not_the_journal_gets_json(tmp_path: Path) -> None:
    os.environ["JOURNAL_STREAM"] = "1:1"  # inherited, but stderr was redirected since
    out = io.StringIO()
    with (tmp_path / "f").open("w") as stream:
        assert not log.stderr_is_journal(stream)
    log.configure("info", stream=out)
    structlog.get_logger().info("hello", principal="@p:x")
    assert '"principal": "@p:x"' in out.getvalue()


@pytest.mark.slow
def test_processes_log_to_the_journal_by_principal(
    fleet: Fleet, tmp_path: Path, run_dir: Path, listener: Listener
) -> None:
    """`journalctl -u bureau-daemon BUREAU_PRINCIPAL=@...`: the daemon's and the proxy's
    entries about one principal carry its ID, and no credential appears anywhere."""
    machine = enroll(fleet, tmp_path)
    name, state = machine.machine.short_name, machine.state_dir
    stderr_path = tmp_path / "stderr"
    stderr = stderr_path.open("w")
    st = os.fstat(stderr.fileno())
    env = {
        **os.environ,
        "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
        journal.SOCKET_ENV: str(listener.sock.getsockname()),
        "BUREAU_LOG_LEVEL": "debug",
    }
    common = ["--machine-name", name, "--state-dir", str(state), "--run-dir", str(run_dir)]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with echo_upstream() as upstream:
            services = services_file(tmp_path, upstream)
            assign(fleet, machine)
            result = provision_credentials(
                fleet, machine, PRINCIPAL, services, "TOKEN=journal-canary-2\n"
            )
            assert result.returncode == 0
            processes.append(
                subprocess.Popen([BIN / "bureau-launcher", *common], stderr=stderr, env=env)
            )
            listener.wait_for(SYSLOG_IDENTIFIER="bureau-launcher", BUREAU_EVENT="launcher serving")
            processes.append(
                subprocess.Popen([BIN / "bureau-daemon", *common], stderr=stderr, env=env)
            )
            principal = f"@{fleet.name}/{PRINCIPAL}:{fleet.hub.server_name}"
            running = listener.wait_for(
                SYSLOG_IDENTIFIER="bureau-daemon", BUREAU_EVENT="principal running"
            )
            assert running["BUREAU_PRINCIPAL"] == principal
            assert running["BUREAU_MACHINE"] == machine.machine.user_id
            assert running["PRIORITY"] == "6"
            serving = listener.wait_for(SYSLOG_IDENTIFIER="bureau-proxy")
            assert serving["BUREAU_PRINCIPAL"] == principal
            assert serving["BUREAU_MACHINE"] == machine.machine.user_id
            started = listener.wait_for(
                SYSLOG_IDENTIFIER="bureau-launcher", BUREAU_EVENT="proxy started"
            )
            assert started["BUREAU_PRINCIPAL"] == principal
            assert served_token(proxy_socket(run_dir)) == "Bearer journal-canary-2"
            # Everything about the principal, as `journalctl BUREAU_PRINCIPAL=...` would list.
            story = [e for e in listener.drain() if e.get("BUREAU_PRINCIPAL") == principal]
            assert {e["SYSLOG_IDENTIFIER"] for e in story} >= {
                "bureau-daemon",
                "bureau-launcher",
                "bureau-proxy",
            }
    finally:
        for proc in reversed(processes):
            proc.terminate()
            proc.wait(timeout=30)
        kill_proxies_under(run_dir)
        stderr.close()
    everything = str(listener.drain()) + stderr_path.read_text()
    assert "journal-canary-2" not in everything
