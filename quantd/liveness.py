"""Whether the holder of a claim is still there.

Four verdicts, never confused: ``alive``; ``dead``, proven from the
process table; ``expired``, a lease that ran out without a heartbeat; and
``unknown``, when nothing can be proven. Only dead and expired claims are
recovered.
"""

from __future__ import annotations

import enum
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from quantd.holder import HolderKey, read_proc_stat


class Verdict(enum.StrEnum):
    ALIVE = "alive"
    DEAD = "dead"
    EXPIRED = "expired"
    UNKNOWN = "unknown"

    @property
    def recoverable(self) -> bool:
        return self in (Verdict.DEAD, Verdict.EXPIRED)


@dataclass(frozen=True)
class Liveness:
    """A verdict and how it was reached, such as ``pid_reused``."""

    verdict: Verdict
    reason: str


def check_process(key: HolderKey) -> Liveness:
    """Decide whether the local process named by ``key`` still runs.

    A process that cannot be inspected is ``unknown``, never dead.
    """
    if sys.platform.startswith("linux"):
        return _check_linux(key)
    return _check_psutil(key)


def _check_linux(key: HolderKey) -> Liveness:
    try:
        stat = read_proc_stat(key.pid)
    except OSError as error:
        return Liveness(Verdict.UNKNOWN, f"proc_unreadable: {error.strerror}")
    except (ValueError, IndexError):
        return Liveness(Verdict.UNKNOWN, "proc_unparsable")
    if stat is None:
        return _check_hidden(key.pid)
    state, start = stat
    if start != key.start:
        return Liveness(Verdict.DEAD, "pid_reused")
    if state in ("Z", "X"):
        return Liveness(Verdict.DEAD, "zombie")
    return Liveness(Verdict.ALIVE, "running")


def _check_hidden(pid: int) -> Liveness:
    """Judge a process that ``/proc`` does not list.

    ``/proc`` mounted with ``hidepid`` hides other users' processes, so a
    missing entry proves death only if the kernel also has no such pid.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return Liveness(Verdict.DEAD, "pid_gone")
    except PermissionError:
        # The process exists but belongs to another user.
        pass
    return Liveness(Verdict.UNKNOWN, "proc_hidden")


def _check_psutil(key: HolderKey) -> Liveness:
    try:
        process = psutil.Process(key.pid)
        start = round(process.create_time() * 1000)
        status = process.status()
    except psutil.NoSuchProcess:
        return Liveness(Verdict.DEAD, "pid_gone")
    except psutil.Error as error:
        return Liveness(Verdict.UNKNOWN, f"process_unreadable: {error}")
    if start != key.start:
        return Liveness(Verdict.DEAD, "pid_reused")
    if status == psutil.STATUS_ZOMBIE:
        return Liveness(Verdict.DEAD, "zombie")
    return Liveness(Verdict.ALIVE, "running")


def last_heartbeat(path: Path) -> float | None:
    """Return when a claim was last taken or renewed, in epoch seconds.

    A rename and a heartbeat's ``utime`` both set the file's ctime; the
    later of mtime and ctime is used. None if the file is gone.
    """
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return max(info.st_mtime, info.st_ctime)


def check_lease(path: Path, lease_s: float, now: float, why: str) -> Liveness:
    """Judge a claim whose holder cannot be checked directly, by its lease.

    ``why`` names the reason the process could not be checked, such as
    ``other_machine`` or ``no_pid``.
    """
    renewed = last_heartbeat(path)
    if renewed is None:
        return Liveness(Verdict.UNKNOWN, "claim_vanished")
    if now - renewed > lease_s:
        return Liveness(Verdict.EXPIRED, f"lease_expired: {why}")
    return Liveness(Verdict.UNKNOWN, why)


def check_claim(
    path: Path, key: HolderKey | None, lease_s: float, now: float
) -> Liveness:
    """Judge one claim from what it records: its holder key if it has one,
    else its lease."""
    if key is None:
        return check_lease(path, lease_s, now, "no_pid")
    if not key.is_local:
        return check_lease(path, lease_s, now, "other_machine")
    return check_process(key)
