"""systemd's readiness protocol (sd_notify(3)), spoken directly.

The service manager passes a datagram socket in ``$NOTIFY_SOCKET``: a file
path, or a name in Linux's abstract namespace written with a leading
``@``. Each message is ``KEY=VALUE`` lines. With no socket set, as when
the daemon runs outside systemd, every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import structlog

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"


class Notifier:
    """Send state changes to the service manager.

    ``socket_path`` defaults to ``$NOTIFY_SOCKET``. A send that fails with
    OSError is logged once per kind of error and not raised, because a lost
    notification must not stop the daemon.
    """

    def __init__(self, socket_path: str | None = None) -> None:
        path = (
            socket_path
            if socket_path is not None
            else os.environ.get(NOTIFY_SOCKET_ENV)
        )
        self.address = _parse_address(path) if path else None
        self._socket: socket.socket | None = None
        self._failures: set[str] = set()

    @property
    def enabled(self) -> bool:
        """Whether a notification socket is configured."""
        return self.address is not None

    def send(self, **fields: str) -> None:
        """Send one message of ``KEY=VALUE`` lines, such as
        ``send(READY="1", STATUS="serving")``."""
        if self.address is None or not fields:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(message.encode(), self.address)
        except OSError as error:
            self._log_failure(error)

    def ready(self) -> None:
        """Tell the service manager that start-up is complete."""
        self.send(READY="1")

    def status(self, text: str) -> None:
        """Set the one-line status that ``systemctl status`` shows."""
        self.send(STATUS=" ".join(text.split()))

    def watchdog(self) -> None:
        """Renew the watchdog timer (``WatchdogSec=``)."""
        self.send(WATCHDOG="1")

    def stopping(self) -> None:
        """Tell the service manager that shutdown has begun."""
        self.send(STOPPING="1")

    def reloading(self) -> None:
        """Tell the service manager that a reload has begun.

        ``MONOTONIC_USEC`` goes with ``RELOADING=1`` so that the service
        manager can match the reload to its request, as sd_notify(3)
        describes for ``Type=notify-reload`` (systemd 253 and later). Send
        :meth:`ready` when the reload is done.
        """
        now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(RELOADING="1", MONOTONIC_USEC=str(now_us))

    def watchdog_interval_s(self) -> float | None:
        """Return the watchdog timeout in seconds, None when no watchdog is
        set for this process.

        Send :meth:`watchdog` at least every half of it, as sd_watchdog_enabled(3)
        recommends.
        """
        return watchdog_interval_s()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _log_failure(self, error: OSError) -> None:
        kind = type(error).__name__
        if kind in self._failures:
            return
        self._failures.add(kind)
        _log().warning(
            "notify_failed",
            socket=os.fsdecode(self.address or b""),
            error=str(error),
            reason="the service manager did not receive a notification; "
            "later failures of this kind are not logged",
        )


def _parse_address(path: str) -> bytes | None:
    """Convert ``$NOTIFY_SOCKET`` to a socket address; None if unusable."""
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    if path.startswith("/"):
        return path.encode()
    _log().warning(
        "notify_socket_unsupported",
        socket=path,
        reason="only absolute paths and '@' abstract names are supported; "
        "notifications are disabled",
    )
    return None


def watchdog_interval_s() -> float | None:
    """Read ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID`` as sd_watchdog_enabled(3)
    does: None unless the watchdog is set and meant for this process."""
    usec = os.environ.get(WATCHDOG_USEC_ENV, "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = os.environ.get(WATCHDOG_PID_ENV)
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000


def _log() -> Any:
    # A fresh logger per call: with cache_logger_on_first_use, a logger
    # kept at module level would keep the configuration of its first use.
    return structlog.get_logger(__name__)
