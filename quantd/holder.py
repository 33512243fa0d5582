"""Process identity of a claim holder.

A claim sits in a directory named by its holder's key,
``<pid>-<start>-<machine>``: the process id, the process's start time and a
hash of the host name and boot id. The key alone tells whether the holder
still runs: on the same machine, the process at ``pid`` must exist, not be a
zombie, and have started at ``start``; a different start means the pid was
reused.
"""

from __future__ import annotations

import functools
import hashlib
import re
import socket
import sys
from dataclasses import dataclass

import psutil

_KEY_PATTERN = re.compile(r"(\d{1,10})-(\d{1,20})-([0-9a-f]{12})")


@functools.cache
def boot_id() -> str:
    """Return an id that changes at every boot of this host."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            return file.read().strip()
    except OSError:
        return f"boot-{int(psutil.boot_time())}"


@functools.cache
def host_name() -> str:
    return socket.gethostname()


@functools.cache
def machine_id() -> str:
    """Return a short hash naming this host and boot."""
    digest = hashlib.sha256(f"{host_name()}\0{boot_id()}".encode())
    return digest.hexdigest()[:12]


def process_start(pid: int) -> int | None:
    """Return a process's start time as an exact integer, None if it is gone.

    On Linux this is the start time in clock ticks since boot, field 22 of
    ``/proc/PID/stat``; elsewhere psutil's creation time in milliseconds.
    Raises PermissionError when the process cannot be inspected.
    """
    if sys.platform.startswith("linux"):
        stat = read_proc_stat(pid)
        return None if stat is None else stat[1]
    try:
        return round(psutil.Process(pid).create_time() * 1000)
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied as error:
        raise PermissionError(f"cannot inspect pid {pid}") from error


def read_proc_stat(pid: int) -> tuple[str, int] | None:
    """Return ``(state, start_ticks)`` from ``/proc/PID/stat``, None if the
    process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            text = file.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name in field 2 may contain spaces and parentheses, so the
    # fields are counted from the last ')'.
    fields = text[text.rfind(")") + 2 :].split()
    return fields[0], int(fields[19])


@dataclass(frozen=True)
class HolderKey:
    """The identity of a process that holds claims."""

    pid: int
    start: int
    machine: str

    def __str__(self) -> str:
        return f"{self.pid}-{self.start}-{self.machine}"

    @property
    def is_local(self) -> bool:
        """Whether the holder ran on this host since its last boot."""
        return self.machine == machine_id()

    @classmethod
    def parse(cls, text: str) -> HolderKey | None:
        match = _KEY_PATTERN.fullmatch(text)
        if match is None:
            return None
        return cls(int(match[1]), int(match[2]), match[3])

    @classmethod
    def for_pid(cls, pid: int) -> HolderKey:
        """Build the key of a running local process.

        Raises ProcessLookupError if no process has this pid.
        """
        start = process_start(pid)
        if start is None:
            raise ProcessLookupError(f"no process with pid {pid}")
        return cls(pid, start, machine_id())
