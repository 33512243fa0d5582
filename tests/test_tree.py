"""Tree layout: init, open, and the one-file-system check."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import quantd
from quantd import TreeError
from quantd.tree import filesystem_type


def test_init_creates_every_directory(tmp_path: Path) -> None:
    tree, written = quantd.init_tree(tmp_path / "tree")
    assert written
    for directory in tree.all_dirs():
        assert directory.is_dir()
    assert (tree.root / "quantd.toml").is_file()
    assert tree.durable is True
    assert tree.internal == tree.root / ".quantd"


def test_init_is_idempotent(tmp_path: Path) -> None:
    tree, _ = quantd.init_tree(tmp_path / "tree")
    quantd.Worker(tree, "researcher-1").push("hypotheses", {})
    again, written = quantd.init_tree(tree.root)
    assert not written
    assert len(os.listdir(again.queue_dir("hypotheses"))) == 1


def test_open_missing_root(tmp_path: Path) -> None:
    with pytest.raises(TreeError, match="not found: create it with 'quantd init"):
        quantd.open_tree(tmp_path / "absent")


def test_open_missing_directory_names_it(tmp_path: Path) -> None:
    tree, _ = quantd.init_tree(tmp_path / "tree")
    tree.queue_dir("to-convert").rmdir()
    with pytest.raises(TreeError, match=r"queues/to-convert of tree .* is missing"):
        quantd.open_tree(tree.root)


def test_open_durable_override(tmp_path: Path) -> None:
    tree, _ = quantd.init_tree(tmp_path / "tree")
    assert quantd.open_tree(tree.root).durable is True
    assert quantd.open_tree(tree.root, durable=False).durable is False


def test_unknown_queue(tmp_path: Path) -> None:
    tree, _ = quantd.init_tree(tmp_path / "tree")
    with pytest.raises(quantd.QueueNotFound, match="no queue or output named 'x'"):
        tree.queue_dir("x")
    assert tree.queue_dir("good") == tree.root / "output/strategies/good"


def test_filesystem_type_of_root(tmp_path: Path) -> None:
    kind = filesystem_type(tmp_path)
    assert kind is None or isinstance(kind, str)


def _can_mount() -> str | None:
    """Return why a tmpfs cannot be mounted here, or None if it can."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    return None


@pytest.fixture
def tmpfs_queue(tmp_path: Path) -> Iterator[Path]:
    """A tree whose queue 'to-convert' is a separately mounted tmpfs."""
    reason = _can_mount()
    if reason:
        pytest.skip(reason)
    tree, _ = quantd.init_tree(tmp_path / "tree")
    directory = tree.queue_dir("to-convert")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "quantd-test", str(directory)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed: {result.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], timeout=30, check=True)


@pytest.mark.timeout(60)
def test_queue_on_other_file_system_rejected(tmpfs_queue: Path) -> None:
    root = tmpfs_queue.parent.parent
    assert filesystem_type(tmpfs_queue) == "tmpfs"
    with pytest.raises(TreeError) as opened:
        quantd.open_tree(root)
    assert str(tmpfs_queue) in str(opened.value)
    assert "different file system" in str(opened.value)
    with pytest.raises(TreeError, match="different file system"):
        quantd.init_tree(root)


def test_exchange_swaps_and_checks(tmp_path: Path) -> None:
    from quantd.fsutil import exchange

    first = tmp_path / "first"
    second = tmp_path / "second"
    first.write_text("1")
    second.write_text("2")
    assert exchange(first, second) is True
    assert first.read_text() == "2"
    assert second.read_text() == "1"
    with pytest.raises(FileNotFoundError):
        exchange(first, tmp_path / "missing")
    assert first.read_text() == "2"


def test_make_dirs_mode_under_umask_0(tmp_path: Path) -> None:
    from quantd.fsutil import DIR_MODE, make_dirs

    previous = os.umask(0)
    try:
        make_dirs(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(previous)
    for path in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert path.stat().st_mode & 0o777 == DIR_MODE
