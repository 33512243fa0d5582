"""Helpers for the daemon tests: a real ``quantd run`` as a subprocess, its
log lines, the tree's config, and claims made by hand."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from quantd.holder import HolderKey
from quantd.tree import Tree, open_tree

PYTHON = sys.executable
# Generous: a loaded CI machine may take seconds to start Python.
READY_TIMEOUT_S = 60.0


def configure(root: Path, **daemon: object) -> Tree:
    """Set ``[daemon]`` keys in the tree's quantd.toml and reopen the tree."""
    path = root / "quantd.toml"
    document = tomllib.loads(path.read_text())
    document.setdefault("daemon", {}).update(daemon)
    path.write_text(tomli_w.dumps(document))
    return open_tree(root)


def daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTD_")}
    env.pop("NOTIFY_SOCKET", None)
    env.update(extra or {})
    return env


class DaemonProcess:
    """One ``python -m quantd run --root ROOT`` with its log in a file."""

    def __init__(self, root: Path, log_path: Path, env: dict[str, str] | None) -> None:
        self.root = root
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [PYTHON, "-m", "quantd", "run", "--root", str(root)],
            stdout=self._log,
            stderr=self._log,
            env=daemon_env(env),
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until this daemon logs ``daemon_ready``; fail if it exits."""
        wait_for(
            lambda: self.process.poll() is not None or self.event("daemon_ready"),
            timeout_s,
            "daemon_ready",
        )
        if self.process.poll() is not None:
            pytest.fail(f"daemon exited with {self.process.returncode}: {self.text()}")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and name in (None, record.get("event")):
                found.append(record)
        return found

    def event(self, name: str, **fields: object) -> dict[str, Any] | None:
        for record in self.events(name):
            if all(record.get(k) == v for k, v in fields.items()):
                return record
        return None

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM the daemon and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._log.close()


class Daemons:
    """Starts daemons for one test and kills every one at teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[DaemonProcess] = []

    def start(
        self, root: Path, env: dict[str, str] | None = None, *, ready: bool = True
    ) -> DaemonProcess:
        log_path = self.directory / f"daemon-{len(self.started)}.log"
        daemon = DaemonProcess(root, log_path, env)
        self.started.append(daemon)
        if ready:
            daemon.wait_ready()
        return daemon

    def kill_all(self) -> None:
        for daemon in self.started:
            daemon.kill()


def wait_for(
    condition: Callable[[], object], timeout_s: float = 60.0, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something true, and return it."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {timeout_s} s waiting for {what or condition}"
            )
        time.sleep(0.02)


def pending_files(tree: Tree, queue: str) -> list[Path]:
    directory = tree.queue_dir(queue)
    return sorted(p for p in directory.iterdir() if p.name.endswith(".json"))


def read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def claim_by_hand(tree: Tree, queue: str, item: Path, key: HolderKey) -> Path:
    """Move a pending item into a claim directory of ``key``, as a claim by
    that holder would.

    The claim directory is filled outside the queue and renamed into
    place, so that a running daemon never sees it empty: it would remove
    the empty directory of a dead holder.
    """
    scratch = tree.tmp / f"claim-{key}"
    scratch.mkdir()
    os.rename(item, scratch / item.name)
    claims = tree.claims_dir(queue)
    claims.mkdir(exist_ok=True)
    holder_dir = claims / str(key)
    if holder_dir.exists():
        os.rename(scratch / item.name, holder_dir / item.name)
        scratch.rmdir()
    else:
        os.rename(scratch, holder_dir)
    return holder_dir / item.name


def quarantine_entries(tree: Tree) -> list[Path]:
    return sorted(p for p in tree.quarantine.iterdir() if p.is_dir())


def reasons(tree: Tree) -> list[str]:
    return [read_json(e / "reason.json")["reason"] for e in quarantine_entries(tree)]
