"""Workers written against the reference queue protocol keep working next
to quantd: their items are claimed in priority order, their claims are
never taken, and quantd can finish them by exact id.

REFERENCE_WORKER below behaves as the reference protocol describes:
push writes ``tempfile.mkstemp(suffix=".json", dir=<queue>)`` and moves
it to ``<id>.json``; claim renames ``<name>.json`` to
``<name>.claimed-<worker>.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import ProcessGroup, finish, run_quantd, write_reference_item

import quantd
from quantd import Tree, Worker
from quantd.cli import EXIT_CLAIM_LOST

REFERENCE_WORKER = """
import json, os, shutil, sys, tempfile
from datetime import datetime

def push(queue_dir, item):
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    item["id"] = f"{item['type']}-{stamp}"
    item["created_at"] = datetime.now().isoformat()
    item["status"] = "pending"
    fd, temp = tempfile.mkstemp(suffix=".json", dir=queue_dir)
    with os.fdopen(fd, "w") as file:
        json.dump(item, file, indent=2)
    shutil.move(temp, os.path.join(queue_dir, item["id"] + ".json"))
    return item["id"]

def claim(queue_dir, worker):
    names = sorted(
        n for n in os.listdir(queue_dir) if n.endswith(".json") and ".claimed" not in n
    )
    for name in names:
        claimed = name.replace(".json", f".claimed-{worker}.json")
        try:
            os.rename(os.path.join(queue_dir, name), os.path.join(queue_dir, claimed))
        except FileNotFoundError:
            continue
        with open(os.path.join(queue_dir, claimed)) as file:
            return json.load(file)["id"]
    return None

command, queue_dir = sys.argv[1], sys.argv[2]
if command == "push":
    for priority in sys.argv[3:]:
        print(push(queue_dir, {
            "type": "hyp",
            "created_by": "researcher-pane-0",
            "priority": priority,
            "claimed_by": None,
            "claimed_at": None,
            "payload": {"title": "RSI divergence", "markets": ["ES", "NQ"]},
        }), flush=True)
else:
    print(claim(queue_dir, sys.argv[3]))
"""


def reference(
    processes: ProcessGroup, command: str, queue_dir: Path, *args: str
) -> list[str]:
    code, stdout, stderr = finish(
        processes.python(REFERENCE_WORKER, command, queue_dir, *args)
    )
    assert code == 0, stderr
    return stdout.split()


def test_reference_items_claimed_in_priority_order(
    tree: Tree, processes: ProcessGroup
) -> None:
    queue = tree.queue_dir("hypotheses")
    ids = reference(processes, "push", queue, "low", "high", "medium", "high")
    assert all(
        "stage" not in json.loads((queue / f"{i}.json").read_text()) for i in ids
    )
    worker = Worker(tree, "backtester-1")
    claimed = []
    while (item := worker.claim("hypotheses")) is not None:
        claimed.append(item)
    assert [i.id for i in claimed] == [ids[1], ids[3], ids[2], ids[0]]
    worker.complete(claimed[0])
    successor = worker.route(claimed[1], "to-optimize", {"next": 1})
    worker.fail(claimed[2], "no data")
    done = json.loads((tree.archive_dir("completed") / f"{ids[1]}.json").read_text())
    assert done["status"] == "completed"
    assert done["payload"]["markets"] == ["ES", "NQ"]
    routed = Worker(tree, "optimizer-1").claim()
    assert routed is not None
    assert routed.id == successor
    assert routed.doc["parent_id"] == ids[3]
    assert routed.root_id == ids[3]


def test_reference_temp_file_is_not_claimed(tree: Tree) -> None:
    """A reference push's half-written ``tmpXXXXXXXX.json`` is left to its
    writer; the item is claimable once the writer moved it."""
    queue = tree.queue_dir("hypotheses")
    temp = queue / "tmp3k_9zq1x.json"
    temp.write_text('{"id": "hyp-1", "payl')
    worker = Worker(tree, "backtester-1")
    assert worker.claim() is None
    assert temp.exists()
    write_reference_item(queue, "hyp-1", name=temp.name)
    assert worker.claim() is None
    os.rename(temp, queue / "hyp-1.json")
    item = worker.claim()
    assert item is not None
    assert item.id == "hyp-1"
    assert os.listdir(tree.quarantine) == []


def test_reference_claim_is_not_claimable(tree: Tree) -> None:
    queue = tree.queue_dir("hypotheses")
    write_reference_item(queue, "hyp-1", name="hyp-1.claimed-backtester-pane-0.json")
    assert Worker(tree, "backtester-1").claim() is None
    assert os.listdir(queue) == ["hyp-1.claimed-backtester-pane-0.json"]


@pytest.mark.parametrize("operation", ["complete", "fail"])
def test_finish_reference_claim_by_exact_id(tree: Tree, operation: str) -> None:
    queue = tree.queue_dir("hypotheses")
    write_reference_item(queue, "hyp-1", name="hyp-1.claimed-backtester-pane-0.json")
    write_reference_item(queue, "hyp-10", name="hyp-10.claimed-backtester-pane-0.json")
    write_reference_item(queue, "hyp-1", name="hyp-1.claimed-other-pane.json")
    common = ["--root", tree.root, "--worker", "backtester-pane-0"]
    extra = ["--reason", "broken"] if operation == "fail" else []
    result = run_quantd(operation, "hyp-1", *common, *extra)
    assert result.returncode == 0, result.stderr
    archive = "completed" if operation == "complete" else "failed"
    (archived,) = tree.archive_dir(archive).iterdir()
    assert archived.name == "hyp-1.json"
    doc = json.loads(archived.read_text())
    assert doc["status"] == ("completed" if operation == "complete" else "failed")
    assert sorted(os.listdir(queue)) == [
        "hyp-1.claimed-other-pane.json",
        "hyp-10.claimed-backtester-pane-0.json",
    ]
    again = run_quantd(operation, "hyp-1", *common, *extra)
    assert again.returncode == EXIT_CLAIM_LOST


def test_reference_worker_claims_quantd_items(
    tree: Tree, processes: ProcessGroup
) -> None:
    """A reference worker takes quantd's items in priority order, because
    quantd names sort that way, and quantd can finish its claim."""
    producer = Worker(tree, "researcher-1")
    low = producer.push("hypotheses", {}, priority="low")
    high = producer.push("hypotheses", {}, priority="high")
    queue = tree.queue_dir("hypotheses")
    assert reference(processes, "claim", queue, "backtester-pane-0") == [high]
    (claim,) = [n for n in os.listdir(queue) if ".claimed-" in n]
    assert claim.endswith(f"~{high}.claimed-backtester-pane-0.json")
    item = Worker(tree, "backtester-2").claim()
    assert item is not None
    assert item.id == low
    result = run_quantd(
        "complete", high, "--root", tree.root, "--worker", "backtester-pane-0"
    )
    assert result.returncode == 0, result.stderr
    assert (tree.archive_dir("completed") / f"{high}.json").exists()


def test_reference_item_without_priority_is_low(tree: Tree) -> None:
    queue = tree.queue_dir("hypotheses")
    write_reference_item(queue, "hyp-none", priority=None)
    medium = Worker(tree, "researcher-1").push("hypotheses", {}, priority="medium")
    worker = Worker(tree, "backtester-1")
    first = worker.claim()
    second = worker.claim()
    assert first is not None and second is not None
    assert [first.id, second.id] == [medium, "hyp-none"]
    assert second.priority is quantd.Priority.LOW


def test_route_reference_claim_rejected(tree: Tree) -> None:
    """route cannot commit a reference claim; it says so with exit 1, not
    the lost-claim code, and pushes nothing."""
    queue = tree.queue_dir("hypotheses")
    claim = "hyp-1.claimed-backtester-pane-0.json"
    write_reference_item(queue, "hyp-1", name=claim)
    result = run_quantd(
        "route",
        "hyp-1",
        "to-optimize",
        "--root",
        tree.root,
        "--worker",
        "backtester-pane-0",
        input="{}",
    )
    assert result.returncode == 1
    assert "reference-protocol worker" in result.stderr
    assert os.listdir(queue) == [claim]
    assert os.listdir(tree.queue_dir("to-optimize")) == []
