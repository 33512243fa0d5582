"""The status document, status.json and ``quantd status``, on real trees
with real processes."""

from __future__ import annotations

import grp
import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
import tomli_w

import quantd
from quantd import Worker
from quantd.daemon import status
from quantd.daemon.status import (
    SCHEMA_VERSION,
    DaemonProbe,
    DaemonState,
    build_status,
    daemon_lock_path,
    judge_daemon,
    probe_daemon,
    read_status,
    render_status,
    scan_tree,
    write_status,
)
from quantd.daemon.status_view import format_duration
from quantd.holder import host_name, machine_id
from quantd.items import format_time
from quantd.tree import Tree

COMMAND_TIMEOUT_S = 60.0

HOLD_CLAIM = """
import sys
from quantd import Worker, open_tree

worker = Worker(open_tree(sys.argv[1]), sys.argv[2])
item = worker.claim(["hypotheses"])
print(item.id, flush=True)
sys.stdin.read()
"""

HOLD_DAEMON_LOCK = """
import fcntl, os, sys

fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
print("locked", flush=True)
sys.stdin.read()
"""

REWRITE_STATUS = """
import itertools, sys
from datetime import UTC, datetime
from quantd import open_tree
from quantd.daemon.status import build_status, write_status

tree = open_tree(sys.argv[1], durable=False)
for n in itertools.count():
    events = [{"event": "tick", "n": i, "pad": "x" * (n % 97)} for i in range(n % 40)]
    document = build_status(
        tree, daemon={"pid": 1}, queues={}, holders=[],
        counters={"reconciles": n}, events=events, watcher={},
        now=datetime.now(UTC),
    )
    write_status(tree, document)
    if n == 0:
        print("writing", flush=True)
"""


# -- helpers --------------------------------------------------------------


def make_tree(root: Path, **daemon_settings: Any) -> Tree:
    """Create a tree with the reference pipeline and the given
    ``[daemon]`` settings."""
    created, _ = quantd.init_tree(root)
    config_path = root / "quantd.toml"
    document = tomllib.loads(config_path.read_text())
    document["daemon"].update(daemon_settings)
    config_path.write_text(tomli_w.dumps(document))
    return quantd.open_tree(created.root)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return make_tree(tmp_path / "tree")


class Processes:
    """Python subprocesses of one test, SIGKILLed and reaped at teardown."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(self, code: str, *args: str | Path) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTD_")}
        process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.started.append(process)
        return process

    def first_line(self, process: subprocess.Popen[str]) -> str:
        """Wait for the process's first line of output; fail if it exits
        first. pytest-timeout bounds the wait."""
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line:
            _, stderr = process.communicate(timeout=COMMAND_TIMEOUT_S)
            pytest.fail(f"helper exited {process.returncode}: {stderr}")
        return line

    def kill_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.communicate(timeout=COMMAND_TIMEOUT_S)


@pytest.fixture
def processes() -> Iterator[Processes]:
    group = Processes()
    try:
        yield group
    finally:
        group.kill_all()


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=COMMAND_TIMEOUT_S)


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Map every path under ``root`` to its mode, size and mtime."""
    entries = {}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            entries[path] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return entries


def write_reference_item(queue_dir: Path, item_id: str, priority: str) -> Path:
    """Write an item the way a reference-protocol worker does: ``<id>.json``."""
    path = queue_dir / f"{item_id}.json"
    document = {
        "id": item_id,
        "created_at": "2026-01-26T08:30:00Z",
        "created_by": "researcher-pane-0",
        "priority": priority,
        "status": "pending",
        "claimed_by": None,
        "claimed_at": None,
        "payload": {"title": item_id},
    }
    path.write_text(json.dumps(document))
    return path


def run_status(tree: Tree, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTD_")}
    return subprocess.run(
        [sys.executable, "-m", "quantd", "status", "--root", str(tree.root), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def daemon_document(tree: Tree, pid: int, generated: datetime) -> dict[str, Any]:
    scan = scan_tree(tree, generated)
    return build_status(
        tree,
        daemon={
            "pid": pid,
            "started_at": format_time(generated - timedelta(minutes=5)),
            "last_reconcile_at": format_time(generated),
        },
        queues=scan["queues"],
        holders=scan["holders"],
        counters={"recovered": 2, "routing_violations": {"researcher->good": 1}},
        events=[{"at": format_time(generated), "event": "claim_recovered"}],
        watcher={"mode": "inotify", "alive": True, "restarts": 0},
        now=generated,
    )


# -- status.json ----------------------------------------------------------


@pytest.mark.timeout(180)
def test_status_file_never_torn(tree: Tree, processes: Processes) -> None:
    writer = processes.start(REWRITE_STATUS, tree.root)
    assert processes.first_line(writer) == "writing"
    reads = 0
    versions: set[int] = set()
    deadline = time.monotonic() + 120
    while reads < 5000 or len(versions) < 100:
        assert time.monotonic() < deadline, f"{reads} reads, {len(versions)} versions"
        data = tree.status_path.read_bytes()
        assert data, "status.json was empty"
        document = json.loads(data)
        assert document["schema_version"] == SCHEMA_VERSION
        versions.add(document["counters"]["reconciles"])
        reads += 1
        assert writer.poll() is None, "the writer died"
    assert read_status(tree) is not None


def test_status_file_mode_is_0640(tree: Tree) -> None:
    previous = os.umask(0o077)
    try:
        write_status(tree, daemon_document(tree, os.getpid(), datetime.now(UTC)))
    finally:
        os.umask(previous)

    mode = os.stat(tree.status_path).st_mode & 0o7777
    assert mode == 0o640
    assert not mode & 0o002


def test_status_file_replaces_old_content(tree: Tree) -> None:
    first = datetime.now(UTC)
    write_status(tree, daemon_document(tree, 1, first))
    write_status(tree, daemon_document(tree, 2, first + timedelta(seconds=1)))

    stored = read_status(tree)

    assert stored is not None
    assert stored["daemon"]["pid"] == 2
    assert list(tree.tmp.iterdir()) == []


def test_status_group_applied(tmp_path: Path) -> None:
    # root may give the file any group, so a group other than its own
    # proves the chown; other users can only use their own groups.
    group = grp.getgrgid(os.getgid())
    if os.geteuid() == 0:
        others = [g for g in grp.getgrall() if g.gr_gid != os.getgid()]
        group = others[0] if others else group
    tree = make_tree(tmp_path / "tree", status_group=group.gr_name)

    with structlog.testing.capture_logs() as logs:
        write_status(tree, daemon_document(tree, 1, datetime.now(UTC)))

    info = os.stat(tree.status_path)
    assert info.st_gid == group.gr_gid
    assert info.st_mode & 0o7777 == 0o640
    assert logs == []


def test_missing_status_group_warns_once(tmp_path: Path) -> None:
    missing = f"quantd-no-group-{secrets.token_hex(4)}"
    tree = make_tree(tmp_path / "tree", status_group=missing)

    with structlog.testing.capture_logs() as logs:
        write_status(tree, daemon_document(tree, 1, datetime.now(UTC)))
        write_status(tree, daemon_document(tree, 2, datetime.now(UTC)))

    assert [entry["event"] for entry in logs] == ["status_group_unusable"]
    assert missing in logs[0]["reason"]
    assert os.stat(tree.status_path).st_mode & 0o7777 == 0o640
    assert read_status(tree) is not None


def test_read_status_missing_is_none(tree: Tree) -> None:
    assert read_status(tree) is None


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"generated_at": "x"}'])
def test_read_status_rejects_invalid(tree: Tree, content: bytes) -> None:
    tree.status_path.write_bytes(content)

    with pytest.raises(status.StatusError):
        read_status(tree)


# -- scan_tree ------------------------------------------------------------


@pytest.fixture
def busy_tree(tree: Tree, processes: Processes) -> dict[str, Any]:
    """A tree with pending items of each priority, a claim held by a live
    process, one by a SIGKILLed process, a reference-protocol claim and a
    claim held on another machine."""
    researcher = Worker(tree, "researcher-1")
    for priority, count in (("high", 2), ("medium", 3), ("low", 4)):
        for _ in range(count):
            researcher.push("hypotheses", {"p": priority}, priority=priority)
    Worker(tree, "optimizer-1").push("good", {"sharpe": 2.1}, priority="low")

    live = processes.start(HOLD_CLAIM, tree.root, "backtester-live")
    processes.first_line(live)
    dead = processes.start(HOLD_CLAIM, tree.root, "backtester-dead")
    processes.first_line(dead)
    kill(dead)

    queue_dir = tree.queue_dir("hypotheses")
    write_reference_item(queue_dir, "ref-pending", "high")
    claimed = write_reference_item(queue_dir, "ref-claimed", "low")
    claimed.rename(queue_dir / "ref-claimed.claimed-researcher-ref.json")

    foreign = "12345-67890-0123456789ab"
    assert foreign.rsplit("-", 1)[1] != machine_id()
    medium = sorted(p for p in os.listdir(queue_dir) if p.startswith("1-"))[0]
    holder_dir = tree.claims_dir("hypotheses") / foreign
    holder_dir.mkdir(parents=True)
    (queue_dir / medium).rename(holder_dir / medium)
    record = {"worker": "optimizer-far", "stage": "optimizer", "host": "far-host"}
    (tree.holders / f"{foreign}.json").write_text(json.dumps(record))
    return {"tree": tree, "live": live, "dead": dead, "foreign": foreign}


def holders_by_worker(scan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {holder["worker"]: holder for holder in scan["holders"]}


@pytest.mark.timeout(120)
def test_scan_counts_pending_by_priority(busy_tree: dict[str, Any]) -> None:
    scan = scan_tree(busy_tree["tree"], datetime.now(UTC))

    hypotheses = scan["queues"]["hypotheses"]
    assert hypotheses["kind"] == "queue"
    assert hypotheses["pending"] == {"high": 1, "medium": 2, "low": 4}
    assert hypotheses["claimed"] == 4
    assert hypotheses["oldest_pending_created_at"] == "2026-01-26T08:30:00.000000Z"
    good = scan["queues"]["good"]
    assert good["kind"] == "output"
    assert good["pending"] == {"high": 0, "medium": 0, "low": 1}
    assert scan["queues"]["completed"]["kind"] == "archive"
    assert scan["queues"]["to-convert"]["oldest_pending_created_at"] is None


@pytest.mark.timeout(120)
def test_scan_judges_each_holder(busy_tree: dict[str, Any]) -> None:
    holders = holders_by_worker(scan_tree(busy_tree["tree"], datetime.now(UTC)))

    live = holders["backtester-live"]
    assert live["verdict"] == "alive"
    assert live["pid"] == busy_tree["live"].pid
    assert live["stage"] == "backtester"
    assert live["host"] == host_name()
    assert live["claims"] == 1
    assert live["queues"] == ["hypotheses"]
    dead = holders["backtester-dead"]
    assert dead["verdict"] == "dead"
    assert dead["reason"] == "pid_gone"
    assert dead["pid"] == busy_tree["dead"].pid
    reference = holders["researcher-ref"]
    assert reference["verdict"] == "unknown"
    assert reference["reason"] == "no_pid"
    assert reference["pid"] is None
    assert reference["key"] == "reference"
    foreign = holders["optimizer-far"]
    assert foreign["verdict"] == "unknown"
    assert foreign["reason"] == "other_machine"
    assert foreign["host"] == "far-host"
    assert foreign["key"] == busy_tree["foreign"]
    assert len(holders) == 4


@pytest.mark.timeout(120)
def test_scan_expires_unwatched_leases(busy_tree: dict[str, Any]) -> None:
    later = datetime.now(UTC) + timedelta(hours=2)

    holders = holders_by_worker(scan_tree(busy_tree["tree"], later, lease_s=60))

    assert holders["optimizer-far"]["verdict"] == "expired"
    assert holders["researcher-ref"]["verdict"] == "expired"
    assert holders["backtester-live"]["verdict"] == "alive"


@pytest.mark.timeout(120)
def test_scan_never_changes_tree(busy_tree: dict[str, Any]) -> None:
    tree = busy_tree["tree"]
    before = snapshot(tree.root)

    scan_tree(tree, datetime.now(UTC))

    assert snapshot(tree.root) == before


def test_scan_reference_items_past_read_budget_count_low(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_dir = tree.queue_dir("hypotheses")
    for index in range(3):
        write_reference_item(queue_dir, f"ref-{index}", "high")
    monkeypatch.setattr(status, "MAX_REFERENCE_READS", 1)

    pending = scan_tree(tree, datetime.now(UTC))["queues"]["hypotheses"]["pending"]

    assert pending == {"high": 1, "medium": 0, "low": 2}


def test_scan_counts_archived_items(tree: Tree) -> None:
    researcher = Worker(tree, "researcher-1")
    backtester = Worker(tree, "backtester-1")
    for _ in range(3):
        researcher.push("hypotheses", {})
    backtester.complete(backtester.claim())
    backtester.fail(backtester.claim(), "no edge")

    queues = scan_tree(tree, datetime.now(UTC))["queues"]

    assert queues["completed"]["items"] == 1
    assert queues["failed"]["items"] == 1
    assert queues["hypotheses"]["pending"]["medium"] == 1


# -- liveness of the daemon -----------------------------------------------


def test_probe_without_lock_file(tree: Tree) -> None:
    assert probe_daemon(tree) == DaemonProbe(False, None)
    assert not daemon_lock_path(tree).exists()


@pytest.mark.timeout(120)
def test_probe_sees_held_lock(tree: Tree, processes: Processes) -> None:
    holder = processes.start(HOLD_DAEMON_LOCK, daemon_lock_path(tree))
    processes.first_line(holder)

    assert probe_daemon(tree) == DaemonProbe(True, holder.pid)
    kill(holder)
    assert probe_daemon(tree) == DaemonProbe(False, None)


@pytest.mark.parametrize(
    ("age_s", "expected"),
    [(0, DaemonState.RUNNING), (2.9, DaemonState.RUNNING), (3.1, DaemonState.STALE)],
)
def test_stale_after_three_intervals(
    tmp_path: Path, age_s: float, expected: DaemonState
) -> None:
    tree = make_tree(tmp_path / "tree", status_interval_s=1.0)
    now = datetime.now(UTC)
    document = build_status(
        tree,
        daemon={},
        queues={},
        holders=[],
        counters={},
        events=[],
        watcher={},
        now=now - timedelta(seconds=age_s),
    )

    assert judge_daemon(tree, DaemonProbe(True, 1), document, None, now) == expected


def test_judge_without_lock_is_not_running(tree: Tree) -> None:
    document = daemon_document(tree, 1, datetime.now(UTC))
    probe = DaemonProbe(False, None)

    state = judge_daemon(tree, probe, document, None, datetime.now(UTC))

    assert state == DaemonState.NOT_RUNNING


# -- quantd status --------------------------------------------------------


@pytest.mark.timeout(120)
def test_status_command_without_daemon(tree: Tree) -> None:
    Worker(tree, "researcher-1").push("hypotheses", {}, priority="high")
    before = snapshot(tree.root)

    result = run_status(tree)

    assert result.returncode == 3, result.stderr
    assert "NOT RUNNING" in result.stdout
    assert f"quantd run --root {tree.root}" in result.stdout
    assert "hypotheses" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 100
    assert snapshot(tree.root) == before


@pytest.mark.timeout(120)
def test_status_json_without_daemon(tree: Tree) -> None:
    Worker(tree, "researcher-1").push("hypotheses", {}, priority="high")
    before = snapshot(tree.root)

    result = run_status(tree, "--json")

    assert result.returncode == 3, result.stderr
    document = json.loads(result.stdout)
    assert document["daemon"] is None
    assert document["schema_version"] == SCHEMA_VERSION
    assert document["queues"]["hypotheses"]["pending"]["high"] == 1
    assert snapshot(tree.root) == before


@pytest.fixture
def locked_tree(tree: Tree, processes: Processes) -> tuple[Tree, int]:
    """A tree whose daemon lock is held by a helper process."""
    holder = processes.start(HOLD_DAEMON_LOCK, daemon_lock_path(tree))
    processes.first_line(holder)
    return tree, holder.pid


@pytest.mark.timeout(120)
def test_status_command_with_fresh_status(locked_tree: tuple[Tree, int]) -> None:
    tree, pid = locked_tree
    write_status(tree, daemon_document(tree, pid, datetime.now(UTC)))

    result = run_status(tree)

    assert result.returncode == 0, result.stderr
    assert f"RUNNING: pid {pid}" in result.stdout
    assert "inotify, alive" in result.stdout
    assert "researcher->good 1" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 100


@pytest.mark.timeout(120)
def test_status_json_with_fresh_status(locked_tree: tuple[Tree, int]) -> None:
    tree, pid = locked_tree
    written = daemon_document(tree, pid, datetime.now(UTC))
    write_status(tree, written)
    before = snapshot(tree.root)

    result = run_status(tree, "--json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == written
    assert snapshot(tree.root) == before


@pytest.mark.timeout(120)
def test_status_command_with_stale_status(locked_tree: tuple[Tree, int]) -> None:
    tree, pid = locked_tree
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    write_status(tree, daemon_document(tree, pid, an_hour_ago))

    human = run_status(tree)
    as_json = run_status(tree, "--json")

    assert human.returncode == 3, human.stderr
    assert "STALE" in human.stdout
    assert "may be hung" in human.stdout
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout)["generated_at"] == format_time(an_hour_ago)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("content", [None, b"{not json"])
def test_status_unknown_without_readable_status(
    locked_tree: tuple[Tree, int], content: bytes | None
) -> None:
    tree, pid = locked_tree
    if content is not None:
        tree.status_path.write_bytes(content)

    result = run_status(tree)

    assert result.returncode == 4, result.stderr
    assert "status unknown" in result.stderr
    assert str(pid) in result.stderr


@pytest.mark.timeout(120)
def test_status_after_daemon_killed(tree: Tree, processes: Processes) -> None:
    holder = processes.start(HOLD_DAEMON_LOCK, daemon_lock_path(tree))
    processes.first_line(holder)
    write_status(tree, daemon_document(tree, holder.pid, datetime.now(UTC)))
    kill(holder)

    result = run_status(tree)

    assert result.returncode == 3, result.stderr
    assert "NOT RUNNING" in result.stdout


@pytest.mark.timeout(120)
def test_status_unknown_for_missing_tree(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTD_")}
    result = subprocess.run(
        [sys.executable, "-m", "quantd", "status", "--root", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        env=env,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )

    assert result.returncode == 4
    assert "not found" in result.stderr


# -- the human table ------------------------------------------------------


def test_render_fits_100_columns(tree: Tree) -> None:
    now = datetime.now(UTC)
    holder = {
        "key": "1-2-0123456789ab",
        "worker": "backtester-" + "x" * 120,
        "stage": "backtester",
        "pid": 4_194_303,
        "host": "host-" + "y" * 80,
        "verdict": "unknown",
        "reason": "lease_expired: other_machine",
        "claims": 12,
        "queues": ["hypotheses", "to-backtest", "to-optimize"],
    }
    document = build_status(
        tree,
        daemon={"started_at": format_time(now - timedelta(days=3))},
        queues=scan_tree(tree, now)["queues"],
        holders=[holder],
        counters={"routing_violations": {f"stage{i}->queue{i}": i for i in range(30)}},
        events=[{"at": format_time(now), "event": "e", "detail": "z" * 300}],
        watcher={"mode": "inotify", "alive": True},
        now=now,
    )

    for state in DaemonState:
        text = render_status(document, daemon_state=state, now=now)
        assert max(len(line) for line in text.splitlines()) <= 100, state


def test_render_not_running_says_how_to_start(tree: Tree) -> None:
    now = datetime.now(UTC)
    scan = scan_tree(tree, now)
    document = build_status(
        tree,
        daemon=None,
        queues=scan["queues"],
        holders=[],
        counters={},
        events=[],
        watcher={},
        now=now,
    )

    text = render_status(document, daemon_state="not_running", now=now)

    assert "NOT RUNNING" in text
    assert f"quantd run --root {tree.root}" in text
    assert "systemctl" in text
    assert "counters" not in text


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.5, "<1s"),
        (42, "42s"),
        (185, "3m05s"),
        (7380, "2h03m"),
        (367_200, "4d06h"),
    ],
)
def test_format_duration(seconds: float, expected: str) -> None:
    assert format_duration(seconds) == expected


def test_render_events_skip_empty_fields(tree: Tree) -> None:
    now = datetime.now(UTC)
    event = {"at": "2026-12-04T15:59:34.000000Z", "event": "claim_recovered"}
    event.update({"item_id": "hyp-1", "queue": "hypotheses", "pid": None})
    document = build_status(
        tree,
        daemon={},
        queues={},
        holders=[],
        counters={},
        events=[event],
        watcher={},
        now=now,
    )

    text = render_status(document, daemon_state="running", now=now)

    assert "15:59:34  claim_recovered  item_id=hyp-1 queue=hypotheses" in text
    assert "pid=None" not in text


def test_build_status_keeps_last_events(tree: Tree) -> None:
    events = [{"event": "tick", "n": n} for n in range(100)]

    document = build_status(
        tree,
        daemon={},
        queues={},
        holders=[],
        counters={"recovered": 5},
        events=events,
        watcher={},
        now=datetime.now(UTC),
    )

    assert document["events"] == events[-status.MAX_EVENTS :]
    assert document["counters"]["recovered"] == 5
    assert document["counters"]["routing_violations"] == {}
    assert document["daemon"]["pid"] == os.getpid()
    assert document["watcher"]["restarts"] == 0
