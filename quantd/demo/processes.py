"""The demo's child processes: the daemon and the stage workers.

Each child runs in its own session, so a Ctrl-C in the terminal reaches
only the demo, which then stops the children in order. A chaos kill
SIGKILLs a worker's whole process group: the shell converter and the
quantd command it is running.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

STAGES = ("converter", "backtester", "optimizer")
# Environment variables that would point a child at another tree or config.
_CLEARED_ENV = (
    "QUANTD_CONFIG",
    "QUANTD_ROOT",
    "QUANTD_WORKER",
    "QUANTD_STAGE",
    "QUANTD_FAULTS",
)


@dataclass
class Child:
    """A process the demo started."""

    name: str
    stage: str
    kind: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None


class Children:
    """Starts, kills and stops the daemon and the workers of one demo tree.

    ``shell_converters`` of the converters run ``converter.sh``; every
    other worker runs ``python -m quantd.demo.workers``.
    """

    def __init__(self, root: Path, demo_dir: Path, *, work_s: float, seed: int):
        self.root = root
        self.logs = demo_dir / "logs"
        self.scratch = demo_dir / "scratch"
        self.work_s = work_s
        self.seed = seed
        self.daemon: Child | None = None
        self.workers: dict[str, Child] = {}
        self.retired: list[Child] = []
        self._next_index: dict[str, int] = dict.fromkeys(STAGES, 0)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.env = _child_env()

    def start_daemon(self) -> Child:
        """Start ``quantd run`` on the tree, its log in the demo directory."""
        command = [sys.executable, "-m", "quantd", "run", "--root", str(self.root)]
        self.daemon = self._spawn("daemon", "daemon", "daemon", command)
        return self.daemon

    def start_worker(self, stage: str, kind: str) -> Child:
        """Start a worker of ``stage``; ``kind`` is ``python`` or ``shell``."""
        index = self._next_index[stage]
        self._next_index[stage] = index + 1
        name = f"{stage}-{index}"
        if kind == "shell":
            command = [
                "bash",
                str(converter_script()),
                "--worker",
                name,
                "--root",
                str(self.root),
                "--scratch",
                str(self.scratch / name),
                "--work-s",
                str(self.work_s),
            ]
        else:
            command = [
                sys.executable,
                "-m",
                "quantd.demo.workers",
                "--stage",
                stage,
                "--worker",
                name,
                "--root",
                str(self.root),
                "--work-s",
                str(self.work_s),
                "--seed",
                str(self.seed * 1000 + index),
            ]
        child = self._spawn(name, stage, kind, command)
        self.workers[name] = child
        return child

    def _spawn(self, name: str, stage: str, kind: str, command: list[str]) -> Child:
        log_path = self.logs / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        return Child(name, stage, kind, process, log_path)

    def kill(self, name: str) -> Child:
        """SIGKILL a worker's process group and reap it."""
        child = self.workers.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.process.wait()
        self.retired.append(child)
        return child

    def reap_exited(self) -> list[Child]:
        """Forget workers that exited on their own and return them."""
        exited = [c for c in self.workers.values() if not c.running()]
        for child in exited:
            del self.workers[child.name]
            self.retired.append(child)
        return exited

    def stop_all(self, grace_s: float) -> list[str]:
        """SIGTERM every worker, then the daemon; SIGKILL what outlives
        ``grace_s``. Return the names of the children that had to be
        killed. Safe to call more than once."""
        workers = list(self.workers.values())
        for child in workers:
            _signal(child, signal.SIGTERM)
        killed = _wait_or_kill(workers, grace_s)
        self.retired.extend(workers)
        self.workers.clear()
        if self.daemon is not None:
            _signal(self.daemon, signal.SIGTERM)
            killed += _wait_or_kill([self.daemon], grace_s)
        return killed


def converter_script() -> Path:
    """Return the path of the shell converter shipped with the package."""
    resource = importlib.resources.files("quantd.demo") / "converter.sh"
    return Path(str(resource))


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED_ENV}
    env["QUANTD_PYTHON"] = sys.executable
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _signal(child: Child, signum: signal.Signals) -> None:
    # The signal goes to the child alone, not its group: the shell
    # converter must be able to finish the quantd command it is running.
    if child.running():
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signum)


def _wait_or_kill(children: list[Child], grace_s: float) -> list[str]:
    deadline = time.monotonic() + grace_s
    killed = []
    for child in children:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            child.process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            killed.append(child.name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.process.wait()
    return killed
