"""Many processes claiming from the same queues at once: every item is
claimed exactly once, and nothing is left behind."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from conftest import ProcessGroup, finish

import quantd
from quantd import Tree, Worker

# Claims until the queues are empty, finishing each item; prints one
# claimed id per line. Waits for the start file so that all workers race.
# argv: root, worker id, start file, operation (complete or route).
CLAIMER = """
import os, sys, time
import quantd
root, worker_id, start, operation = sys.argv[1:5]
tree = quantd.open_tree(root, durable=False)
worker = quantd.Worker(tree, worker_id)
claimed = []
while not os.path.exists(start):
    time.sleep(0.001)
while (item := worker.claim(["hypotheses", "to-backtest"])) is not None:
    claimed.append(item.id)
    if operation == "route":
        worker.route(item, "to-optimize", {"from": item.id})
    else:
        worker.complete(item)
print("\\n".join(claimed), flush=True)
"""

# Pushes COUNT items, then creates the done file. argv: root, worker id,
# count, done file.
PUSHER = """
import sys
import quantd
root, worker_id, count, done = sys.argv[1:5]
tree = quantd.open_tree(root, durable=False)
worker = quantd.Worker(tree, worker_id)
for i in range(int(count)):
    print(worker.push("hypotheses", {"i": i}, priority=("high", "low")[i % 2]))
open(done, "w").close()
"""

# Claims until every done file exists and the queue stays empty.
# argv: root, worker id, done files...
WAITING_CLAIMER = """
import os, sys
import quantd
root, worker_id, *done = sys.argv[1:]
tree = quantd.open_tree(root, durable=False)
worker = quantd.Worker(tree, worker_id)
claimed = []
while True:
    finished = all(os.path.exists(path) for path in done)
    item = worker.claim("hypotheses", wait_s=0.2)
    if item is None:
        if finished:
            break
        continue
    claimed.append(item.id)
    worker.complete(item)
print("\\n".join(claimed), flush=True)
"""


def fill(tree: Tree, count: int) -> set[str]:
    producer = Worker(tree, "researcher-0")
    converter = Worker(tree, "converter-0")
    ids = set()
    for i in range(count):
        priority = ("high", "medium", "low")[i % 3]
        if i % 2:
            ids.add(producer.push("hypotheses", {"i": i}, priority=priority))
        else:
            ids.add(converter.push("to-backtest", {"i": i}, priority=priority))
    return ids


def run_claimers(
    tree: Tree, processes: ProcessGroup, count: int, operation: str, tmp_path: Path
) -> list[list[str]]:
    start = tmp_path / "start"
    started = [
        processes.python(CLAIMER, tree.root, f"backtester-{n}", start, operation)
        for n in range(count)
    ]
    start.touch()
    results = []
    for process in started:
        code, stdout, stderr = finish(process, timeout_s=150)
        assert code == 0, stderr
        results.append(stdout.split())
    return results


def leftovers(tree: Tree, *, skip: str = "") -> list[str]:
    """Every file left in a queue (except ``skip``) or a claim directory."""
    found = []
    for queue in tree.config.queues:
        if queue == skip:
            continue
        directory = tree.queue_dir(queue)
        found += [p.name for p in directory.iterdir() if p.name != ".claims"]
        found += [str(p) for p in directory.glob(".claims/*/*")]
    return found


@pytest.mark.timeout(180)
def test_eight_claimers_take_each_item_once(
    fast_tree: Tree, processes: ProcessGroup, tmp_path: Path
) -> None:
    """8 processes claim 5,000 items from two queues at once and complete
    each. The tree is not durable (nothing is fsynced) to keep the test
    fast; fsync does not change which rename wins."""
    pushed = fill(fast_tree, 5000)
    results = run_claimers(fast_tree, processes, 8, "complete", tmp_path)
    counts = Counter(item_id for claimed in results for item_id in claimed)
    duplicates = [item_id for item_id, n in counts.items() if n > 1]
    assert duplicates == []
    assert set(counts) == pushed
    assert leftovers(fast_tree) == []
    completed = os.listdir(fast_tree.archive_dir("completed"))
    assert len(completed) == 5000
    assert os.listdir(fast_tree.archive_dir("failed")) == []


@pytest.mark.timeout(120)
def test_concurrent_routes_push_one_successor_each(
    fast_tree: Tree, processes: ProcessGroup, tmp_path: Path
) -> None:
    pushed = fill(fast_tree, 600)
    results = run_claimers(fast_tree, processes, 4, "route", tmp_path)
    claimed = [item_id for ids in results for item_id in ids]
    assert sorted(claimed) == sorted(pushed)
    directory = fast_tree.queue_dir("to-optimize")
    parents = Counter(
        json.loads(path.read_bytes())["payload"]["from"]
        for path in directory.glob("*.json")
    )
    assert set(parents) == pushed
    assert max(parents.values()) == 1
    assert leftovers(fast_tree, skip="to-optimize") == []


@pytest.mark.timeout(120)
def test_claimers_race_pushers(
    fast_tree: Tree, processes: ProcessGroup, tmp_path: Path
) -> None:
    """Claimers wait for items while two other processes push them."""
    done = [tmp_path / "done-0", tmp_path / "done-1"]
    pushers = [
        processes.python(PUSHER, fast_tree.root, f"researcher-{n}", 400, done[n])
        for n in range(2)
    ]
    claimers = [
        processes.python(WAITING_CLAIMER, fast_tree.root, f"backtester-{n}", *done)
        for n in range(3)
    ]
    pushed: list[str] = []
    for process in pushers:
        code, stdout, stderr = finish(process, timeout_s=100)
        assert code == 0, stderr
        pushed += stdout.split()
    claimed: list[str] = []
    for process in claimers:
        code, stdout, stderr = finish(process, timeout_s=100)
        assert code == 0, stderr
        claimed += stdout.split()
    assert len(pushed) == 800
    assert sorted(claimed) == sorted(pushed)
    assert leftovers(fast_tree) == []


def test_two_stores_in_one_process(fast_tree: Tree) -> None:
    """Two workers in one process share a holder key but never an item."""
    fill(fast_tree, 50)
    first = quantd.Worker(fast_tree, "backtester-1")
    second = quantd.Worker(fast_tree, "backtester-2")
    seen: list[str] = []
    while True:
        items = [first.claim(), second.claim()]
        live = [i for i in items if i is not None]
        if not live:
            break
        seen += [i.id for i in live]
    assert len(seen) == 50
    assert len(set(seen)) == 50
