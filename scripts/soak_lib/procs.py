"""The processes of a soak run: light workers and the daemon."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from quantd.holder import read_proc_stat

SCRIPTS_DIR = Path(__file__).resolve().parent.parent
# How long a process may take to exit after SIGTERM, generous for a
# loaded machine.
STOP_TIMEOUT_S = 60.0


@dataclass
class Proc:
    """One process the driver started, and what the driver did to it."""

    name: str
    role: str
    slot: int
    popen: subprocess.Popen[bytes]
    faults: str | None
    stderr_path: Path
    started_at: float = field(default_factory=time.monotonic)
    killed: bool = False
    terminated: bool = False
    stopped: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the process; a no-op if it already exited."""
        self.killed = True
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self.stopped = True
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.stopped = False
        self._signal(signal.SIGCONT)

    def terminate(self) -> None:
        self.terminated = True
        if self.stopped:
            self.resume()
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signum)

    def wait_stopped(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Wait for the process to exit after :meth:`terminate`; SIGKILL it
        past ``timeout_s``. Return its exit code."""
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.popen.wait()

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def spawn(
    name: str,
    role: str,
    slot: int,
    argv: list[str],
    *,
    faults: str | None,
    stderr_path: Path,
) -> Proc:
    """Start a process with ``QUANTD_FAULTS`` set to ``faults`` (or unset)."""
    env = dict(os.environ)
    env.pop("QUANTD_FAULTS", None)
    if faults:
        env["QUANTD_FAULTS"] = faults
    python_path = [str(SCRIPTS_DIR), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in python_path if p)
    stderr = open(stderr_path, "ab")  # noqa: SIM115 - handed to the child
    try:
        popen = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            env=env,
            start_new_session=True,
        )
    finally:
        stderr.close()
    return Proc(name, role, slot, popen, faults, stderr_path)


def wait_until_stopped(pid: int, timeout_s: float = 2.0) -> bool:
    """Wait until ``pid`` is in the stopped state, because SIGSTOP is
    delivered asynchronously; return whether it got there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stat = read_proc_stat(pid)
        if stat is None:
            return False
        if stat[0] == "T":
            return True
        time.sleep(0.001)
    return False
