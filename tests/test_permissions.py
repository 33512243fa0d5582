"""Permissions: who may read status.json and write the queues, and what a
worker or the daemon does with a file it cannot read.

Tests that act as another user run commands as ``nobody`` through
``setpriv``, which needs root; elsewhere they are skipped.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from quantd import Priority, Tree, Worker, init_tree, open_tree
from quantd.items import pending_name, utc_now

DEADLINE_S = 30.0
OTHER_USER = "nobody"


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


def other_user() -> tuple[int, int, str]:
    """Return the uid, gid and group name of the unprivileged test user;
    skip unless this process can act as it."""
    if os.geteuid() != 0:
        pytest.skip("acting as another user through setpriv needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    try:
        user = pwd.getpwnam(OTHER_USER)
    except KeyError:
        pytest.skip(f"no user {OTHER_USER!r} on this host")
    return user.pw_uid, user.pw_gid, grp.getgrgid(user.pw_gid).gr_name


def as_other_user(*command: str, **options: Any) -> subprocess.CompletedProcess[str]:
    uid, gid, _ = other_user()
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            *command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        **options,
    )


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory that every user may traverse: pytest's ``tmp_path`` sits
    under a directory only its owner may enter."""
    path = Path(tempfile.mkdtemp(prefix="quantd-permissions-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def set_daemon_settings(tree: Tree, **settings: Any) -> Tree:
    config_path = tree.root / "quantd.toml"
    document = tomllib.loads(config_path.read_text())
    document.setdefault("daemon", {}).update(settings)
    config_path.write_text(tomli_w.dumps(document))
    return open_tree(tree.root)


def start_daemon(
    tree: Tree, log_path: Path, user: tuple[int, int] | None = None
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "quantd", "run", "--root", str(tree.root)]
    if user is not None:
        uid, gid = user
        command = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        command += [sys.executable, "-m", "quantd", "run", "--root", str(tree.root)]
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=log)


def stop_daemon(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def quarantine_reasons(tree: Tree) -> list[dict[str, Any]]:
    reasons = []
    for entry in sorted(tree.quarantine.iterdir()):
        try:
            reasons.append(json.loads((entry / "reason.json").read_bytes()))
        except FileNotFoundError:
            continue
    return reasons


# -- status.json ---------------------------------------------------------------


@pytest.mark.timeout(90)
def test_status_readable_by_group_only(shared_dir: Path) -> None:
    uid, gid, group = other_user()
    tree, _ = init_tree(shared_dir / "tree")
    tree = set_daemon_settings(tree, status_group=group, status_interval_s=0.5)
    process = start_daemon(tree, shared_dir / "daemon.log")
    try:
        wait_for(tree.status_path.exists, "status.json")
        info = os.stat(tree.status_path)
        assert info.st_uid == os.geteuid()
        assert info.st_gid == gid
        assert mode(tree.status_path) == 0o640
        read = as_other_user("cat", str(tree.status_path))
        assert read.returncode == 0, read.stderr
        assert json.loads(read.stdout)["daemon"]["pid"] == process.pid
        write = as_other_user("sh", "-c", f"echo x >> '{tree.status_path}'")
        assert write.returncode != 0
        # Replacing the file needs write access to the tree root.
        replace = as_other_user(
            "sh", "-c", f"echo '{{}}' > /tmp/x-$$ && mv /tmp/x-$$ '{tree.status_path}'"
        )
        assert replace.returncode != 0
        # Every rewrite keeps the mode and the group.
        first = info.st_ino
        wait_for(lambda: os.stat(tree.status_path).st_ino != first, "a status rewrite")
        assert os.stat(tree.status_path).st_gid == gid
        assert mode(tree.status_path) == 0o640
    finally:
        assert stop_daemon(process) == 0
    assert uid != os.geteuid()


# -- queue directories -------------------------------------------------------


def tree_directories(tree: Tree) -> list[Path]:
    dirs = [tree.root, *tree.all_dirs()]
    for queue in tree.config.queues:
        claims = tree.claims_dir(queue)
        if claims.exists():
            dirs.append(claims)
            dirs += [claims / holder for holder in os.listdir(claims)]
    return dirs


def exercise(tree: Tree) -> None:
    """Push, claim and route, so that claim directories exist too."""
    with Worker(tree, "researcher-perm") as researcher:
        researcher.push("to-convert", {"n": 1})
    with Worker(tree, "converter-perm") as converter:
        item = converter.claim("to-convert")
        assert item is not None
        converter.route(item, "to-backtest", {"n": 1})
    with Worker(tree, "backtester-perm") as backtester:
        assert backtester.claim("to-backtest") is not None


def test_queue_dirs_not_world_writable(tmp_path: Path) -> None:
    tree, _ = init_tree(tmp_path / "tree")
    exercise(tree)
    writable = [str(d) for d in tree_directories(tree) if mode(d) & stat.S_IWOTH]
    assert writable == []


def test_queue_dirs_not_world_writable_under_umask_0(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        tree, _ = init_tree(tmp_path / "tree")
        exercise(tree)
    finally:
        os.umask(previous)
    writable = [str(d) for d in tree_directories(tree) if mode(d) & stat.S_IWOTH]
    assert writable == []


# -- files a worker cannot read -----------------------------------------------


@pytest.fixture
def other_users_tree(shared_dir: Path) -> Tree:
    """A tree owned by the unprivileged test user."""
    uid, gid, _ = other_user()
    tree, _ = init_tree(shared_dir / "tree")
    for directory, dirs, files in os.walk(tree.root):
        os.chown(directory, uid, gid)
        for name in [*dirs, *files]:
            os.chown(os.path.join(directory, name), uid, gid, follow_symlinks=False)
    return tree


def drop_unreadable_item(tree: Tree, queue: str, item_id: str) -> Path:
    """Write a valid item that its owner, the test user, cannot read.

    The name is a quantd pending name: a reference-protocol name
    (``<id>.json``) that cannot be read is skipped for
    ``daemon.write_grace_s``, in case its writer is still writing it.
    """
    uid, gid, _ = other_user()
    name = pending_name(item_id, Priority.HIGH, utc_now())
    # Built beside the tree and renamed in, so nobody sees it half made.
    staged = tree.root.parent / name
    document = {"id": item_id, "priority": "high", "payload": {"n": 1}}
    staged.write_text(json.dumps(document))
    os.chown(staged, uid, gid)
    staged.chmod(0)
    path = tree.queue_dir(queue) / name
    staged.rename(path)
    return path


@pytest.mark.timeout(90)
def test_worker_quarantines_unreadable_item(other_users_tree: Tree) -> None:
    tree = other_users_tree
    path = drop_unreadable_item(tree, "to-convert", "unreadable-1")
    denied = as_other_user("cat", str(path))
    assert denied.returncode != 0, "the test user can read a mode 000 file"
    result = as_other_user(
        sys.executable,
        "-m",
        "quantd",
        "claim",
        "to-convert",
        "--root",
        str(tree.root),
        "--worker",
        "converter-perm",
        "--json",
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 75, result.stderr
    assert not path.exists()
    reasons = quarantine_reasons(tree)
    assert [r["reason"] for r in reasons] == ["unreadable"]
    assert bytes.fromhex(reasons[0]["original_name_hex"]) == path.name.encode()


@pytest.mark.timeout(90)
def test_daemon_quarantines_unreadable_item(
    other_users_tree: Tree, shared_dir: Path
) -> None:
    uid, gid, _ = other_user()
    tree = other_users_tree
    process = start_daemon(tree, shared_dir / "daemon.log", user=(uid, gid))
    try:
        wait_for(tree.status_path.exists, "status.json")
        path = drop_unreadable_item(tree, "to-backtest", "unreadable-2")
        reasons = wait_for(lambda: quarantine_reasons(tree), "a quarantine entry")
        assert [r["reason"] for r in reasons] == ["unreadable"], reasons
        assert not path.exists()
        assert process.poll() is None
    finally:
        code = stop_daemon(process)
    log = (shared_dir / "daemon.log").read_text()
    assert code == 0, log
    assert "Traceback" not in log
