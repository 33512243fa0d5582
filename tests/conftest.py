"""Shared fixtures and process helpers for the quantd test suite.

Import the helpers by name from other test files::

    from conftest import run_quantd, wait_until, write_reference_item
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_support import Daemons

import quantd
from quantd.tree import Tree

PYTHON = sys.executable
# Generous bound for one short quantd command; a hang fails the test
# instead of blocking the suite.
COMMAND_TIMEOUT_S = 60.0


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    """A fresh tree with the reference configuration under ``tmp_path/tree``."""
    created, _ = quantd.init_tree(tmp_path / "tree")
    return created


@pytest.fixture
def fast_tree(tmp_path: Path) -> Tree:
    """Like ``tree``, but with ``durable=False``: nothing is fsynced."""
    created, _ = quantd.init_tree(tmp_path / "tree")
    return quantd.open_tree(created.root, durable=False)


def quantd_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return this process's environment without quantd's own variables
    (``QUANTD_*``), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTD_")}
    env.update(extra or {})
    return env


def run_quantd(
    *args: str | Path,
    input: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = COMMAND_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m quantd ARGS`` and return its result; never raises on a
    non-zero exit.

    ``env`` is added to the environment with every ``QUANTD_*`` variable
    removed. The command is killed after ``timeout_s``
    (subprocess.TimeoutExpired).
    """
    return subprocess.run(
        [PYTHON, "-m", "quantd", *map(str, args)],
        input=input,
        capture_output=True,
        text=True,
        env=quantd_env(env),
        cwd=cwd,
        timeout=timeout_s,
        check=False,
    )


class ProcessGroup:
    """Processes started by one test; each is SIGKILLed at teardown."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[str]] = []

    def python(
        self,
        code: str,
        *args: str | Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[str]:
        """Start ``python -c CODE ARGS`` with stdout and stderr piped.

        ``code`` is dedented; ``env`` is added to an environment without
        ``QUANTD_*`` variables.
        """
        process = subprocess.Popen(
            [PYTHON, "-c", textwrap.dedent(code), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=quantd_env(env),
            cwd=cwd,
        )
        self.processes.append(process)
        return process

    def command(
        self, argv: list[str | Path], env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start any command with stdout and stderr piped."""
        process = subprocess.Popen(
            [str(a) for a in argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=quantd_env(env),
        )
        self.processes.append(process)
        return process

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def processes() -> Iterator[ProcessGroup]:
    """A :class:`ProcessGroup`; every process still running at teardown is
    SIGKILLed and reaped."""
    group = ProcessGroup()
    try:
        yield group
    finally:
        group.kill_all()


def finish(
    process: subprocess.Popen[str], timeout_s: float = COMMAND_TIMEOUT_S
) -> tuple[int, str, str]:
    """Wait for a process started by :class:`ProcessGroup`; return its exit
    code, stdout and stderr. Negative codes are signals (-9 is SIGKILL)."""
    stdout, stderr = process.communicate(timeout=timeout_s)
    return process.returncode, stdout, stderr


def wait_until(
    condition: Callable[[], object], timeout_s: float = 30.0, interval_s: float = 0.01
) -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s: {condition}")
        time.sleep(interval_s)


def write_reference_item(
    queue_dir: Path,
    item_id: str,
    *,
    priority: str | None = "medium",
    created_at: str = "2026-01-26T08:30:00Z",
    name: str | bytes | None = None,
    **fields: object,
) -> Path:
    """Write an item the way a reference-protocol worker does: a plain
    ``<id>.json`` in the queue with the reference schema, no ``stage``.

    ``name`` overrides the file name (bytes for names that are not UTF-8);
    ``fields`` are added to the document. ``priority=None`` leaves the
    field out.
    """
    doc: dict[str, object] = {
        "id": item_id,
        "created_at": created_at,
        "created_by": "researcher-pane-0",
        "status": "pending",
        "claimed_by": None,
        "claimed_at": None,
        "payload": {"title": f"hypothesis {item_id}"},
    }
    if priority is not None:
        doc["priority"] = priority
    doc.update(fields)
    file_name = name if name is not None else f"{item_id}.json"
    path = os.path.join(os.fsencode(queue_dir), os.fsencode(file_name))
    with open(path, "w") as file:
        json.dump(doc, file, indent=2)
    return Path(os.fsdecode(path))


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    """Daemon subprocesses of a test, all SIGKILLed at teardown."""
    started = Daemons(tmp_path)
    try:
        yield started
    finally:
        started.kill_all()
