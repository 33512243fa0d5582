"""sd_notify messages over real unix datagram sockets."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from quantd.daemon.notify import Notifier, watchdog_interval_s

# sockaddr_un's sun_path is 108 bytes on Linux, its terminating NUL
# included.
MAX_SOCKET_PATH = 107
RECEIVE_TIMEOUT_S = 30.0


def bind_receiver(address: str | bytes) -> socket.socket:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.settimeout(RECEIVE_TIMEOUT_S)
    receiver.bind(address)
    return receiver


def receive(receiver: socket.socket) -> dict[str, str]:
    message = receiver.recv(4096).decode()
    return dict(line.split("=", 1) for line in message.splitlines())


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "notify.sock"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        pytest.skip(f"temporary directory too long for a socket path: {path}")
    yield path


@pytest.fixture
def receiver(socket_path: Path) -> Iterator[socket.socket]:
    bound = bind_receiver(str(socket_path))
    try:
        yield bound
    finally:
        bound.close()


def test_ready_reaches_path_socket(socket_path: Path, receiver: socket.socket) -> None:
    notifier = Notifier(str(socket_path))

    notifier.ready()

    assert notifier.enabled
    assert receive(receiver) == {"READY": "1"}
    notifier.close()


def test_every_state_reaches_socket(socket_path: Path, receiver: socket.socket) -> None:
    notifier = Notifier(str(socket_path))

    notifier.ready()
    notifier.status("reconciling\n3 queues")
    notifier.watchdog()
    notifier.reloading()
    notifier.stopping()
    notifier.send(STATUS="custom", ERRNO="5")

    assert receive(receiver) == {"READY": "1"}
    assert receive(receiver) == {"STATUS": "reconciling 3 queues"}
    assert receive(receiver) == {"WATCHDOG": "1"}
    reloading = receive(receiver)
    assert reloading["RELOADING"] == "1"
    assert reloading["MONOTONIC_USEC"].isdigit()
    assert receive(receiver) == {"STOPPING": "1"}
    assert receive(receiver) == {"STATUS": "custom", "ERRNO": "5"}
    notifier.close()


def test_reloading_sends_current_monotonic_time(
    socket_path: Path, receiver: socket.socket
) -> None:
    notifier = Notifier(str(socket_path))
    before_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    notifier.reloading()

    sent_us = int(receive(receiver)["MONOTONIC_USEC"])
    after_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before_us <= sent_us <= after_us
    notifier.close()


def test_abstract_socket_receives_ready() -> None:
    name = f"quantd-test-{os.getpid()}-{secrets.token_hex(6)}"
    receiver = bind_receiver(b"\0" + name.encode())
    try:
        notifier = Notifier("@" + name)
        notifier.ready()
        notifier.watchdog()

        assert receive(receiver) == {"READY": "1"}
        assert receive(receiver) == {"WATCHDOG": "1"}
        notifier.close()
    finally:
        receiver.close()


def test_notify_socket_from_environment(
    socket_path: Path, receiver: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(socket_path))
    notifier = Notifier()

    notifier.stopping()

    assert receive(receiver) == {"STOPPING": "1"}
    notifier.close()


@pytest.mark.timeout(60)
def test_child_process_notifies_through_environment(
    socket_path: Path, receiver: socket.socket
) -> None:
    """A separate process, started the way systemd starts the daemon, with
    only $NOTIFY_SOCKET to find the socket."""
    code = "from quantd.daemon.notify import Notifier; n = Notifier(); n.ready()"
    env = {**os.environ, "NOTIFY_SOCKET": str(socket_path)}

    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)

    assert receive(receiver) == {"READY": "1"}


def test_unset_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()

    with structlog.testing.capture_logs() as logs:
        notifier.ready()
        notifier.status("idle")
        notifier.watchdog()
        notifier.reloading()
        notifier.stopping()

    assert not notifier.enabled
    assert logs == []


def test_missing_socket_is_logged_once(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "absent.sock"))

    with structlog.testing.capture_logs() as logs:
        notifier.ready()
        notifier.watchdog()

    assert [entry["event"] for entry in logs] == ["notify_failed"]
    assert logs[0]["log_level"] == "warning"
    notifier.close()


def test_relative_socket_is_rejected() -> None:
    with structlog.testing.capture_logs() as logs:
        notifier = Notifier("relative/notify.sock")
        notifier.ready()

    assert not notifier.enabled
    assert [entry["event"] for entry in logs] == ["notify_socket_unsupported"]


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", "self", 30.0),
        ("30000000", None, 30.0),
        ("2500000", "self", 2.5),
        ("30000000", "other", None),
        ("0", "self", None),
        ("abc", "self", None),
        (None, "self", None),
    ],
)
def test_watchdog_interval_from_environment(
    monkeypatch: pytest.MonkeyPatch,
    usec: str | None,
    pid: str | None,
    expected: float | None,
) -> None:
    if usec is None:
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        own = str(os.getpid())
        monkeypatch.setenv("WATCHDOG_PID", own if pid == "self" else own + "0")

    assert watchdog_interval_s() == expected
    assert Notifier(None).watchdog_interval_s() == expected
