"""End-to-end recovery: a real ``quantd run`` and real workers, killed with
SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ProcessGroup
from daemon_support import (
    Daemons,
    claim_by_hand,
    configure,
    pending_files,
    read_json,
    wait_for,
)

import quantd
from quantd.holder import HolderKey, machine_id, process_start
from quantd.tree import Tree

CLAIM_AND_SLEEP = """
import sys, time, quantd
tree = quantd.open_tree(sys.argv[1])
worker = quantd.Worker(tree, "converter-1")
item = worker.claim("to-convert")
print(item.id if item else "none", flush=True)
time.sleep(600)
"""

CLAIM_IN_CHILD = """
import os, sys, time, quantd
tree = quantd.open_tree(sys.argv[1])
if os.fork() == 0:
    item = quantd.Worker(tree, "converter-1").claim("to-convert")
    print(item.id if item else "none", flush=True)
    os._exit(0)
time.sleep(600)
"""

CLAIM_ALL_THEN_COMPLETE = """
import json, os, sys, time, quantd
tree = quantd.open_tree(sys.argv[1])
worker = quantd.Worker(tree, "converter-1", pid=int(sys.argv[2]))
items = []
while (item := worker.claim("to-convert")) is not None:
    items.append(item)
print(len(items), flush=True)
while not os.path.exists(sys.argv[3]):
    time.sleep(0.001)
results = {}
for item in items:
    try:
        worker.complete(item)
        results[item.id] = "completed"
    except quantd.ClaimLost:
        results[item.id] = "lost"
print(json.dumps(results), flush=True)
"""

CLAIM_AND_ROUTE = """
import sys, quantd
tree = quantd.open_tree(sys.argv[1])
worker = quantd.Worker(tree, "converter-1")
item = worker.claim("to-convert")
print(item.id, flush=True)
worker.route(item, "to-backtest", {"converted": True})
"""


@pytest.fixture
def slow_sweep_tree(tmp_path: Path) -> Tree:
    """A tree whose periodic sweep never runs during a test, so only
    events and pidfds can trigger a recovery."""
    root = tmp_path / "tree"
    quantd.init_tree(root)
    return configure(root, reconcile_interval_s=3600.0, status_debounce_s=0.05)


def push(tree: Tree, count: int = 1, **fields: Any) -> list[str]:
    ids = []
    with quantd.Worker(tree, "researcher-1") as worker:
        for n in range(count):
            ids.append(worker.push("to-convert", {"n": n}))
    if fields:
        for path in pending_files(tree, "to-convert"):
            doc = read_json(path)
            doc.update(fields)
            path.write_text(json.dumps(doc))
    return ids


def pending_doc(tree: Tree, item_id: str, queue: str = "to-convert") -> Any:
    for path in pending_files(tree, queue):
        if path.name.endswith(f"~{item_id}.json"):
            return read_json(path)
    return None


def recovered_doc(tree: Tree, item_id: str) -> Any:
    doc = pending_doc(tree, item_id)
    return doc if doc and doc.get("attempts") == 1 else None


def dead_key() -> HolderKey:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    key = HolderKey.for_pid(process.pid)
    process.wait(timeout=60)
    return key


def status(tree: Tree) -> Any:
    try:
        return read_json(tree.status_path)
    except (FileNotFoundError, ValueError):
        return None


def watched_holders(tree: Tree) -> int:
    document = status(tree)
    return int(document["daemon"].get("watched_holders", 0)) if document else 0


@pytest.mark.timeout(120)
def test_killed_worker_recovered_by_pidfd(
    slow_sweep_tree: Tree, daemons: Daemons, processes: ProcessGroup
) -> None:
    tree = slow_sweep_tree
    [item_id] = push(tree)
    daemon = daemons.start(tree.root)
    worker = processes.python(CLAIM_AND_SLEEP, tree.root)
    assert worker.stdout is not None
    assert worker.stdout.readline().strip() == item_id
    wait_for(lambda: watched_holders(tree) == 1, what="the holder's pidfd")

    worker.send_signal(signal.SIGKILL)

    doc = wait_for(lambda: recovered_doc(tree, item_id), what="recovery")
    hop = doc["history"][-1]
    assert hop["event"] == "recovered"
    assert hop["worker"] == "converter-1"
    assert hop["verdict"] == "dead"
    recovered = wait_for(lambda: daemon.event("claim_recovered", item_id=item_id))
    assert recovered["pid"] == worker.pid
    assert recovered["attempts"] == 1
    wait_for(
        lambda: not list(tree.claims_dir("to-convert").iterdir()),
        what="the removed claim directory",
    )


@pytest.mark.timeout(120)
def test_zombie_holder_recovered(
    slow_sweep_tree: Tree, daemons: Daemons, processes: ProcessGroup
) -> None:
    tree = slow_sweep_tree
    [item_id] = push(tree)
    daemons.start(tree.root)

    parent = processes.python(CLAIM_IN_CHILD, tree.root)
    assert parent.stdout is not None
    assert parent.stdout.readline().strip() == item_id

    doc = wait_for(lambda: recovered_doc(tree, item_id), what="recovery")
    assert doc["history"][-1]["reason"] == "zombie"
    assert parent.poll() is None


@pytest.mark.timeout(120)
def test_reused_pid_recovered(slow_sweep_tree: Tree, daemons: Daemons) -> None:
    tree = slow_sweep_tree
    [item_id] = push(tree)
    daemons.start(tree.root)
    start = process_start(os.getpid())
    assert start is not None
    key = HolderKey(os.getpid(), start + 1, machine_id())

    [pending] = pending_files(tree, "to-convert")
    claim_by_hand(tree, "to-convert", pending, key)

    doc = wait_for(lambda: recovered_doc(tree, item_id), what="recovery")
    assert doc["history"][-1]["reason"] == "pid_reused"


@pytest.mark.timeout(120)
def test_foreign_claim_waits_for_lease(tmp_path: Path, daemons: Daemons) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    tree = configure(root, lease_s=2.0, reconcile_interval_s=3600.0)
    [item_id] = push(tree)
    daemon = daemons.start(root)
    key = HolderKey(4242, 1, "0123456789ab")

    [pending] = pending_files(tree, "to-convert")
    claim = claim_by_hand(tree, "to-convert", pending, key)
    claimed_at = max(os.stat(claim).st_mtime, os.stat(claim).st_ctime)
    wait_for(lambda: (status(tree) or {}).get("holders"), what="the holder in status")
    [holder] = status(tree)["holders"]
    assert holder["verdict"] == "unknown"
    assert holder["reason"] == "other_machine"

    doc = wait_for(lambda: recovered_doc(tree, item_id), what="lease expiry")
    assert doc["history"][-1]["reason"] == "lease_expired: other_machine"
    record = wait_for(lambda: daemon.event("claim_recovered", item_id=item_id))
    recovered_at = quantd.items.parse_time(record["timestamp"]).timestamp()
    assert recovered_at >= claimed_at + 2.0


@pytest.mark.timeout(180)
def test_recovery_races_completing_worker(
    slow_sweep_tree: Tree, daemons: Daemons, processes: ProcessGroup, tmp_path: Path
) -> None:
    tree = slow_sweep_tree
    ids = push(tree, 40)
    daemons.start(tree.root)
    holder = processes.python("import time; time.sleep(600)")
    go = tmp_path / "go"
    worker = processes.python(CLAIM_ALL_THEN_COMPLETE, tree.root, holder.pid, go)
    assert worker.stdout is not None
    assert worker.stdout.readline().strip() == "40"

    go.touch()
    holder.send_signal(signal.SIGKILL)
    results = json.loads(worker.stdout.readline())

    completed_dir = tree.archive_dir("completed")

    def settled() -> bool:
        done = {p.name.removesuffix(".json") for p in completed_dir.iterdir()}
        back = {read_json(p)["id"] for p in pending_files(tree, "to-convert")}
        return len(done) + len(back) == len(ids)

    wait_for(settled, what="every item completed or recovered")
    completed = sorted(p.name.removesuffix(".json") for p in completed_dir.iterdir())
    requeued = sorted(read_json(p)["id"] for p in pending_files(tree, "to-convert"))
    assert sorted(completed + requeued) == sorted(ids)
    assert sorted(i for i, r in results.items() if r == "completed") == completed
    assert sorted(i for i, r in results.items() if r == "lost") == requeued
    for path in pending_files(tree, "to-convert"):
        assert read_json(path)["attempts"] == 1


@pytest.mark.timeout(120)
def test_dead_letter_after_max_attempts(
    slow_sweep_tree: Tree, daemons: Daemons, processes: ProcessGroup
) -> None:
    tree = slow_sweep_tree
    [item_id] = push(tree, attempts=2)
    daemon = daemons.start(tree.root)
    worker = processes.python(CLAIM_AND_SLEEP, tree.root)
    assert worker.stdout is not None
    assert worker.stdout.readline().strip() == item_id

    worker.send_signal(signal.SIGKILL)

    archived = tree.archive_dir("failed") / f"{item_id}.json"
    wait_for(archived.exists, what="the dead letter")
    doc = wait_for(
        lambda: read_json(archived).get("finished_at") and read_json(archived)
    )
    assert doc["status"] == "dead_letter"
    assert doc["attempts"] == 3
    assert pending_files(tree, "to-convert") == []
    wait_for(lambda: daemon.event("item_dead_lettered", item_id=item_id))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("fault", ["recover.after_take", "recover.after_record"])
def test_daemon_killed_during_recovery(
    fault: str, slow_sweep_tree: Tree, daemons: Daemons
) -> None:
    tree = slow_sweep_tree
    [item_id] = push(tree)
    [pending] = pending_files(tree, "to-convert")
    claim_by_hand(tree, "to-convert", pending, dead_key())

    first = daemons.start(tree.root, {"QUANTD_FAULTS": fault}, ready=False)
    assert first.process.wait(timeout=60) == -signal.SIGKILL
    assert len(os.listdir(tree.recovering)) == 1
    daemons.start(tree.root)

    doc = wait_for(lambda: pending_doc(tree, item_id), what="the finished recovery")
    assert doc["attempts"] == 1
    assert [h["event"] for h in doc["history"]].count("recovered") == 1
    assert os.listdir(tree.recovering) == []


@pytest.mark.timeout(120)
def test_committed_route_finished_by_daemon(
    slow_sweep_tree: Tree, daemons: Daemons, processes: ProcessGroup
) -> None:
    tree = slow_sweep_tree
    [item_id] = push(tree)
    daemon = daemons.start(tree.root)

    worker = processes.python(
        CLAIM_AND_ROUTE, tree.root, env={"QUANTD_FAULTS": "route.after_commit"}
    )
    assert worker.wait(timeout=60) == -signal.SIGKILL

    archived = tree.archive_dir("completed") / f"{item_id}.json"
    wait_for(archived.exists, what="the archived parent")
    wait_for(lambda: daemon.event("route_finished", item_id=item_id))
    [successor] = pending_files(tree, "to-backtest")
    assert read_json(successor)["parent_id"] == item_id
    assert pending_files(tree, "to-convert") == []
    wait_for(
        lambda: not list(tree.claims_dir("to-convert").iterdir()),
        what="the removed claim directory",
    )
