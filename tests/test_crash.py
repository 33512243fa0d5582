"""A worker SIGKILLed at each step of push, claim, complete, fail, route and
recovery: afterwards every item is in exactly one place, nothing is lost,
and a route's successor appears at most once, and exactly once after its
commit.

The kill is real: ``QUANTD_FAULTS`` makes the worker subprocess send
itself SIGKILL at the named step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import ProcessGroup, finish

from quantd import Tree, Worker
from quantd.faults import FAULTS_ENV
from quantd.holder import HolderKey
from quantd.liveness import Liveness, Verdict, check_process
from quantd.recovery import (
    finish_committed_route,
    finish_recovering,
    recover_claim,
)
from quantd.transitions import COMMITTED_SUFFIX, DRAFT_SUFFIX, finish_route
from quantd.tree import CLAIMS_DIR

# Runs one operation in a fresh process. argv: root, operation.
WORKER = """
import sys
import quantd
tree = quantd.open_tree(sys.argv[1])
operation = sys.argv[2]
if operation == "push":
    print(quantd.Worker(tree, "researcher-1").push("hypotheses", {"n": 1}))
else:
    worker = quantd.Worker(tree, "backtester-1")
    item = worker.claim("hypotheses")
    assert item is not None, "nothing to claim"
    if operation == "complete":
        worker.complete(item)
    elif operation == "fail":
        worker.fail(item, "boom")
    elif operation == "route":
        print(worker.route(item, "to-optimize", {"next": True}))
print("finished", flush=True)
"""

# Recovers every claim of dead holders in the hypotheses queue.
# argv: root.
RECOVERER = """
import sys
import quantd
from quantd.liveness import Liveness, Verdict
from quantd.recovery import recover_claim
tree = quantd.open_tree(sys.argv[1])
claims = tree.claims_dir("hypotheses")
for holder in claims.iterdir():
    for claim in holder.glob("*.json"):
        recover_claim(
            tree, claim, "hypotheses", holder.name,
            Liveness(Verdict.DEAD, "pid_gone"), "backtester-1",
        )
print("finished", flush=True)
"""

PUSH_STEPS = ["push.after_write", "push.after_rename"]
CLAIM_STEPS = ["claim.after_rename"]
ROUTE_STEPS = ["route.after_draft", "route.after_commit", "route.after_push"]
RECOVER_STEPS = ["recover.after_take", "recover.after_record"]


def run_killed(processes: ProcessGroup, code: str, step: str, *args: str | Path) -> str:
    """Run ``code`` with the fault ``step`` armed; assert it was SIGKILLed
    and return what it printed."""
    process = processes.python(code, *args, env={FAULTS_ENV: step})
    returncode, stdout, stderr = finish(process)
    assert returncode == -9, f"expected SIGKILL at {step}: {returncode} {stderr}"
    assert "finished" not in stdout
    return stdout


def run_ok(processes: ProcessGroup, code: str, *args: str | Path) -> str:
    returncode, stdout, stderr = finish(processes.python(code, *args))
    assert returncode == 0, stderr
    return stdout


def places(tree: Tree, item_id: str) -> list[tuple[str, Path]]:
    """Every place in the tree that holds a copy of ``item_id``."""
    found: list[tuple[str, Path]] = []
    for queue in tree.config.targets():
        directory = tree.queue_dir(queue)
        for path in directory.glob("*.json"):
            if _id_of(path) == item_id:
                found.append((f"pending:{queue}", path))
        for path in directory.glob(f"{CLAIMS_DIR}/*/*"):
            if path.suffix == DRAFT_SUFFIX:
                continue
            if _id_of(path) == item_id:
                found.append((f"claimed:{queue}", path))
    for archive in tree.config.archives:
        for path in tree.archive_dir(archive).glob("*.json"):
            if _id_of(path) == item_id:
                found.append((f"archived:{archive}", path))
    for path in tree.recovering.iterdir():
        if _id_of(path) == item_id:
            found.append(("recovering", path))
    return found


def _id_of(path: Path) -> str | None:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return doc.get("id") if isinstance(doc, dict) else None


def only_place(tree: Tree, item_id: str) -> tuple[str, Path]:
    found = places(tree, item_id)
    assert len(found) == 1, f"{item_id} is in {len(found)} places: {found}"
    return found[0]


def ids_in(tree: Tree, queue: str) -> list[str]:
    return [
        doc_id
        for path in sorted(tree.queue_dir(queue).glob("*.json"))
        if (doc_id := _id_of(path)) is not None
    ]


def holder_dirs(tree: Tree, queue: str) -> list[Path]:
    claims = tree.claims_dir(queue)
    return sorted(claims.iterdir()) if claims.exists() else []


def sweep(tree: Tree) -> None:
    """Recover what dead holders left in every queue, as the daemon's
    reconcile does, through the public recovery functions."""
    for queue in tree.config.targets():
        for holder_dir in holder_dirs(tree, queue):
            key = HolderKey.parse(holder_dir.name)
            assert key is not None
            liveness = check_process(key)
            assert liveness.verdict is Verdict.DEAD
            for path in sorted(holder_dir.iterdir()):
                if path.name.endswith(COMMITTED_SUFFIX):
                    finish_committed_route(tree, path, queue)
                elif path.name.endswith(".json"):
                    recover_claim(tree, path, queue, holder_dir.name, liveness, None)
            for draft in holder_dir.glob(f"*{DRAFT_SUFFIX}"):
                draft.unlink()
    for entry in sorted(tree.recovering.iterdir()):
        finish_recovering(tree, entry)


def seed(tree: Tree) -> str:
    return Worker(tree, "researcher-0").push("hypotheses", {"n": 0})


# -- push ----------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("step", PUSH_STEPS)
def test_push_killed(tree: Tree, processes: ProcessGroup, step: str) -> None:
    run_killed(processes, WORKER, step, tree.root, "push")
    pending = list(tree.queue_dir("hypotheses").iterdir())
    temps = list(tree.tmp.iterdir())
    if step == "push.after_write":
        assert pending == []
        assert len(temps) == 1
        doc = json.loads(temps[0].read_bytes())
        assert doc["payload"] == {"n": 1}
    else:
        assert temps == []
        assert len(pending) == 1
        doc = json.loads(pending[0].read_bytes())
        assert doc["payload"] == {"n": 1}
        only_place(tree, doc["id"])
        item = Worker(tree, "backtester-9").claim()
        assert item is not None
        assert item.id == doc["id"]


# -- claim ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_claim_killed(tree: Tree, processes: ProcessGroup) -> None:
    item_id = seed(tree)
    run_killed(processes, WORKER, "claim.after_rename", tree.root, "claim")
    where, path = only_place(tree, item_id)
    assert where == "claimed:hypotheses"
    key = HolderKey.parse(path.parent.name)
    assert key is not None
    assert check_process(key).verdict is Verdict.DEAD
    sweep(tree)
    where, _ = only_place(tree, item_id)
    assert where == "pending:hypotheses"
    item = Worker(tree, "backtester-9").claim()
    assert item is not None
    assert item.id == item_id
    assert item.attempts == 1


# -- complete and fail ---------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("step", "operation", "archive"),
    [
        ("completed.after_rename", "complete", "completed"),
        ("failed.after_rename", "fail", "failed"),
    ],
)
def test_finish_killed(
    tree: Tree, processes: ProcessGroup, step: str, operation: str, archive: str
) -> None:
    item_id = seed(tree)
    run_killed(processes, WORKER, step, tree.root, operation)
    where, path = only_place(tree, item_id)
    assert where == f"archived:{archive}"
    assert path.name == f"{item_id}.json"
    doc = json.loads(path.read_bytes())
    assert doc["payload"] == {"n": 0}
    assert doc["status"] == ("completed" if operation == "complete" else "failed")
    assert doc["history"][-1]["event"] == doc["status"]
    if operation == "fail":
        assert doc["last_error"] == "boom"
    sweep(tree)
    assert only_place(tree, item_id)[0] == f"archived:{archive}"
    assert Worker(tree, "backtester-9").claim() is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("step", "operation"),
    [("completed.after_record", "complete"), ("failed.after_record", "fail")],
)
def test_finish_killed_before_commit(
    tree: Tree, processes: ProcessGroup, step: str, operation: str
) -> None:
    """Killed after the outcome was swapped into the claim but before the
    claim moved: nothing is archived, and recovery returns the item."""
    item_id = seed(tree)
    run_killed(processes, WORKER, step, tree.root, operation)
    where, _ = only_place(tree, item_id)
    assert where == "claimed:hypotheses"
    assert os.listdir(tree.tmp) == []
    sweep(tree)
    where, path = only_place(tree, item_id)
    assert where == "pending:hypotheses"
    assert json.loads(path.read_bytes())["status"] == "pending"
    item = Worker(tree, "backtester-9").claim()
    assert item is not None
    assert item.attempts == 1


# -- route ---------------------------------------------------------------


def _successors(tree: Tree, parent_id: str) -> list[dict[str, Any]]:
    found = []
    for queue in tree.config.targets():
        for path in tree.queue_dir(queue).glob("*.json"):
            doc = json.loads(path.read_bytes())
            if doc.get("parent_id") == parent_id:
                found.append(doc)
    return found


@pytest.mark.timeout(60)
@pytest.mark.parametrize("step", ROUTE_STEPS)
@pytest.mark.parametrize("finisher", ["finish_route", "recovery"])
def test_route_killed(
    tree: Tree, processes: ProcessGroup, step: str, finisher: str
) -> None:
    item_id = seed(tree)
    run_killed(processes, WORKER, step, tree.root, "route")
    (holder_dir,) = holder_dirs(tree, "hypotheses")
    stem = next(p.stem for p in holder_dir.iterdir())
    names = sorted(p.name for p in holder_dir.iterdir())
    committed = step != "route.after_draft"
    successors = _successors(tree, item_id)
    where, _ = only_place(tree, item_id)
    assert where == "claimed:hypotheses"
    if not committed:
        assert names == [f"{stem}.json", f"{stem}{DRAFT_SUFFIX}"]
        assert successors == []
    elif step == "route.after_commit":
        assert names == [f"{stem}{DRAFT_SUFFIX}", f"{stem}{COMMITTED_SUFFIX}"]
        assert successors == []
    else:
        assert names == [f"{stem}{COMMITTED_SUFFIX}"]
        assert len(successors) == 1

    if finisher == "finish_route" and committed:
        finish_route(tree, holder_dir, stem, "hypotheses")
        finish_route(tree, holder_dir, stem, "hypotheses")
    else:
        sweep(tree)
        sweep(tree)

    where, path = only_place(tree, item_id)
    successors = _successors(tree, item_id)
    if committed:
        assert where == "archived:completed"
        assert len(successors) == 1
        assert successors[0]["payload"] == {"next": True}
        assert ids_in(tree, "to-optimize") == [successors[0]["id"]]
        archived = json.loads(path.read_bytes())
        assert archived["status"] == "routed"
        assert os.listdir(holder_dir) == []
    else:
        assert where == "pending:hypotheses"
        assert successors == []
        assert ids_in(tree, "to-optimize") == []
        assert os.listdir(holder_dir) == []


@pytest.mark.timeout(60)
def test_route_after_recovery_pushes_nothing(
    tree: Tree, processes: ProcessGroup
) -> None:
    """The route dies before its commit and is recovered; a second worker
    then routes the item once."""
    item_id = seed(tree)
    run_killed(processes, WORKER, "route.after_draft", tree.root, "route")
    sweep(tree)
    second = run_ok(processes, WORKER, tree.root, "route")
    successor_id = second.split()[0]
    assert [d["id"] for d in _successors(tree, item_id)] == [successor_id]
    assert only_place(tree, item_id)[0] == "archived:completed"


# -- recovery ------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("step", RECOVER_STEPS)
def test_recovery_killed(tree: Tree, processes: ProcessGroup, step: str) -> None:
    """A recovery killed midway is finished once: the item returns to
    pending with one attempt counted, not two."""
    item_id = seed(tree)
    run_killed(processes, WORKER, "claim.after_rename", tree.root, "claim")
    run_killed(processes, RECOVERER, step, tree.root)
    where, _ = only_place(tree, item_id)
    assert where == "recovering"
    sweep(tree)
    where, _ = only_place(tree, item_id)
    assert where == "pending:hypotheses"
    item = Worker(tree, "backtester-9").claim()
    assert item is not None
    assert item.attempts == 1
    recovered = [h for h in item.history if h["event"] == "recovered"]
    assert len(recovered) == 1


@pytest.mark.timeout(60)
def test_holder_alive_is_not_dead(tree: Tree) -> None:
    """The sweep's liveness check sees this process as alive."""
    seed(tree)
    item = Worker(tree, "backtester-1").claim()
    assert item is not None
    key = HolderKey.parse(item.path.parent.name)
    assert key is not None
    assert check_process(key) == Liveness(Verdict.ALIVE, "running")
