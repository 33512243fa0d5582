"""A full disk: push and route fail without leaving anything half-written
in a queue, and the daemon keeps running and reports the errors.

The tree sits on a 2 MiB tmpfs that the test mounts, which needs root
(CAP_SYS_ADMIN); elsewhere the tests are skipped.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from quantd import QuantdError, Tree, Worker, init_tree
from quantd.items import validate_document

FILL_CHUNK_BYTES = 64 * 1024
# strerror of ENOSPC on Linux, as the daemon logs it.
DISK_FULL = "No space left on device"
DEADLINE_S = 30.0


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    """Poll ``condition`` until it returns a true value or the deadline
    passes."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {DEADLINE_S} s waiting for {what}")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted at ``tmp_path/fs``, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


@pytest.fixture
def small_tree(small_fs: Path) -> Tree:
    tree, _ = init_tree(small_fs / "tree")
    return tree


class Filler:
    """A file that takes every free block of a file system until freed."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "filler"

    def fill(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (FILL_CHUNK_BYTES, 4096, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError as error:
                    assert error.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def free(self) -> None:
        self.path.unlink(missing_ok=True)


@pytest.fixture
def filler(small_fs: Path) -> Iterator[Filler]:
    made = Filler(small_fs)
    try:
        yield made
    finally:
        made.free()


def queue_entries(tree: Tree) -> dict[str, list[str]]:
    """Return the visible entries of every queue and output."""
    found = {}
    for name in tree.config.targets():
        directory = tree.queue_dir(name)
        found[name] = sorted(n for n in os.listdir(directory) if n != ".claims")
    return found


def assert_all_items_whole(tree: Tree) -> None:
    """Every file a claimer or reader can see is a complete, valid item."""
    for name in tree.config.targets():
        directory = tree.queue_dir(name)
        for entry in os.listdir(directory):
            if entry == ".claims":
                continue
            validate_document(json.loads((directory / entry).read_bytes()))
    for name in tree.config.archives:
        for entry in os.listdir(tree.archive_dir(name)):
            data = (tree.archive_dir(name) / entry).read_bytes()
            validate_document(json.loads(data))


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is, or was caused by, ENOSPC."""
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        current = current.__cause__ or current.__context__
    return False


# -- push, route and complete ---------------------------------------------------


@pytest.mark.timeout(60)
def test_push_on_full_disk_leaves_nothing(small_tree: Tree, filler: Filler) -> None:
    with Worker(small_tree, "researcher-df") as researcher:
        kept = researcher.push("to-convert", {"n": 1})
        before = queue_entries(small_tree)
        filler.fill()
        with pytest.raises(Exception) as raised:
            researcher.push("to-convert", {"n": 2})
        assert is_disk_full(raised.value), repr(raised.value)
        assert queue_entries(small_tree) == before
        assert os.listdir(small_tree.tmp) == []
        assert_all_items_whole(small_tree)
        filler.free()
        pushed = researcher.push("to-convert", {"n": 3})
    entries = queue_entries(small_tree)["to-convert"]
    assert len(entries) == 2
    assert any(kept in name for name in entries)
    assert any(pushed in name for name in entries)


@pytest.mark.timeout(60)
def test_push_on_full_disk_raises_quantd_error(
    small_tree: Tree, filler: Filler
) -> None:
    with Worker(small_tree, "researcher-df") as researcher:
        filler.fill()
        with pytest.raises(QuantdError, match="space"):
            researcher.push("to-convert", {"n": 1})


@pytest.mark.timeout(60)
def test_route_on_full_disk_keeps_claim(small_tree: Tree, filler: Filler) -> None:
    with Worker(small_tree, "researcher-df") as researcher:
        researcher.push("to-convert", {"n": 1})
    with Worker(small_tree, "converter-df") as converter:
        item = converter.claim("to-convert")
        assert item is not None
        filler.fill()
        with pytest.raises(Exception) as raised:
            converter.route(item, "to-backtest", {"n": 1})
        assert is_disk_full(raised.value), repr(raised.value)
        assert item.path.is_file()
        assert sorted(os.listdir(item.path.parent)) == [item.path.name]
        assert queue_entries(small_tree)["to-backtest"] == []
        assert os.listdir(small_tree.tmp) == []
        assert_all_items_whole(small_tree)
        filler.free()
        successor = converter.route(item, "to-backtest", {"n": 1})
    entries = queue_entries(small_tree)["to-backtest"]
    assert len(entries) == 1
    assert successor in entries[0]
    assert (small_tree.archive_dir("completed") / f"{item.id}.json").is_file()


@pytest.mark.timeout(60)
def test_route_on_full_disk_raises_quantd_error(
    small_tree: Tree, filler: Filler
) -> None:
    with Worker(small_tree, "researcher-df") as researcher:
        researcher.push("to-convert", {"n": 1})
    with Worker(small_tree, "converter-df") as converter:
        item = converter.claim("to-convert")
        assert item is not None
        filler.fill()
        with pytest.raises(QuantdError, match="space"):
            converter.route(item, "to-backtest", {"n": 1})


@pytest.mark.timeout(60)
def test_push_command_on_full_disk(small_tree: Tree, filler: Filler) -> None:
    filler.fill()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantd",
            "push",
            "to-convert",
            "--root",
            str(small_tree.root),
            "--worker",
            "researcher-df",
        ],
        input='{"n": 1}',
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert DISK_FULL in result.stderr
    assert queue_entries(small_tree)["to-convert"] == []


@pytest.mark.timeout(60)
def test_complete_on_full_disk_archives_whole_item(
    small_tree: Tree, filler: Filler
) -> None:
    with Worker(small_tree, "researcher-df") as researcher:
        researcher.push("to-convert", {"n": 1})
    with Worker(small_tree, "converter-df") as converter:
        item = converter.claim("to-convert")
        assert item is not None
        filler.fill()
        try:
            converter.complete(item)
        except Exception as error:
            assert is_disk_full(error), repr(error)
    # Whatever complete reported, the item is in exactly one place and
    # every visible file is whole.
    archived = small_tree.archive_dir("completed") / f"{item.id}.json"
    assert archived.is_file() != item.path.exists()
    assert_all_items_whole(small_tree)


@pytest.mark.timeout(60)
def test_complete_on_full_disk_reports_outcome(
    small_tree: Tree, filler: Filler
) -> None:
    with Worker(small_tree, "researcher-df") as researcher:
        researcher.push("to-convert", {"n": 1})
    with Worker(small_tree, "converter-df") as converter:
        item = converter.claim("to-convert")
        assert item is not None
        filler.fill()
        raised = False
        try:
            converter.complete(item)
        except OSError:
            raised = True
    # A complete that raised must leave the claim held, so the caller can
    # retry; one that archived must not raise.
    archived = small_tree.archive_dir("completed") / f"{item.id}.json"
    assert raised == item.path.exists()
    assert not raised or not archived.exists()


# -- the daemon ------------------------------------------------------------


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    log: Path

    def logged(self, text: str) -> bool:
        return text.encode() in self.log.read_bytes()


@pytest.fixture
def daemon(small_tree: Tree, tmp_path: Path) -> Iterator[Daemon]:
    log_path = tmp_path / "daemon.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "quantd", "run", "--root", str(small_tree.root)],
        stdout=log,
        stderr=log,
    )
    try:
        wait_for(small_tree.status_path.exists, "the daemon's first status.json")
        yield Daemon(process, log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def spawn_holder(tree: Tree, queue: str) -> subprocess.Popen[str]:
    """Start a process that claims one item from ``queue`` and waits."""
    code = (
        "import sys, time\n"
        "from quantd import Worker, open_tree\n"
        "worker = Worker(open_tree(sys.argv[1]), 'converter-holder')\n"
        "item = worker.claim(sys.argv[2])\n"
        "print(item.id if item else '', flush=True)\n"
        "time.sleep(600)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(tree.root), queue],
        stdout=subprocess.PIPE,
        text=True,
    )


def read_status(tree: Tree) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads(tree.status_path.read_bytes())
    except (OSError, ValueError):
        return None
    return document


def status_with_errors(tree: Tree) -> dict[str, Any] | None:
    status = read_status(tree)
    return status if status and status["counters"]["errors"] > 0 else None


@pytest.mark.timeout(120)
def test_daemon_survives_full_disk(
    small_tree: Tree, filler: Filler, daemon: Daemon
) -> None:
    with Worker(small_tree, "researcher-df") as researcher:
        item_id = researcher.push("to-convert", {"n": 1})
    holder = spawn_holder(small_tree, "to-convert")
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == item_id
        filler.fill()
        # The holder dies while the disk is full: recovering its claim
        # needs a rewrite that cannot be written.
        holder.kill()
        holder.wait()
        wait_for(lambda: daemon.logged(DISK_FULL), "the daemon to hit the full disk")
        assert daemon.process.poll() is None
        assert_all_items_whole(small_tree)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        filler.free()
    status = wait_for(lambda: status_with_errors(small_tree), "errors in status")
    assert daemon.process.poll() is None
    assert any(e["event"] == "handler_failed" for e in status["events"])
    # Once there is space again, the claim is recovered: nothing is lost.
    pending = wait_for(
        lambda: queue_entries(small_tree)["to-convert"], "the recovered item"
    )
    assert len(pending) == 1
    assert item_id in pending[0]
    doc = json.loads((small_tree.queue_dir("to-convert") / pending[0]).read_bytes())
    assert doc["attempts"] == 1


@pytest.mark.timeout(120)
def test_daemon_status_names_disk_full(
    small_tree: Tree, filler: Filler, daemon: Daemon
) -> None:
    filler.fill()
    wait_for(lambda: daemon.logged(DISK_FULL), "the daemon to hit the full disk")
    filler.free()
    status = wait_for(lambda: status_with_errors(small_tree), "errors in status")
    assert DISK_FULL in json.dumps(status["events"])
