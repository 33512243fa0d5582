"""Push, claim, complete, fail and route on one tree, in one process
unless a test says otherwise."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ProcessGroup, finish, write_reference_item

import quantd
from quantd import ClaimLost, Item, RoutingError, Tree, Worker
from quantd.liveness import Liveness, Verdict
from quantd.recovery import recover_claim
from quantd.tree import CLAIMS_DIR


def researcher(tree: Tree) -> Worker:
    return Worker(tree, "researcher-1")


def backtester(tree: Tree) -> Worker:
    return Worker(tree, "backtester-1")


def backdate(path: Path) -> None:
    """Set a file's times an hour back, past daemon.write_grace_s."""
    old = time.time() - 3600
    os.utime(path, (old, old))


def pending_names(tree: Tree, queue: str) -> list[str]:
    return sorted(n for n in os.listdir(tree.queue_dir(queue)) if not n.startswith("."))


def claim_files(tree: Tree, queue: str) -> list[Path]:
    claims = tree.claims_dir(queue)
    if not claims.exists():
        return []
    return [p for holder in claims.iterdir() for p in holder.iterdir()]


def archived(tree: Tree, name: str) -> dict[str, dict[str, Any]]:
    directory = tree.archive_dir(name)
    return {p.name: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def quarantined_reasons(tree: Tree) -> list[str]:
    return sorted(
        json.loads((entry / "reason.json").read_text())["reason"]
        for entry in tree.quarantine.iterdir()
    )


# -- order ---------------------------------------------------------------


def test_claim_order_priority_then_fifo_across_queues(tree: Tree) -> None:
    """High before medium before low; oldest first within a priority,
    whichever of the claimed queues an item waits in."""
    producer = researcher(tree)
    pushed: list[tuple[str, str]] = []
    plan = [
        ("hypotheses", "low"),
        ("to-convert", "medium"),
        ("hypotheses", "high"),
        ("to-convert", "low"),
        ("to-convert", "high"),
        ("hypotheses", "medium"),
        ("hypotheses", "high"),
        ("to-convert", "medium"),
        ("hypotheses", "low"),
    ]
    for queue, priority in plan:
        pushed.append((producer.push(queue, {"q": queue}, priority=priority), priority))
    rank = {"high": 0, "medium": 1, "low": 2}
    ranked = sorted(
        (rank[priority], index, item_id)
        for index, (item_id, priority) in enumerate(pushed)
    )
    expected = [item_id for _, _, item_id in ranked]
    # No stage consumes both queues, so the claimer has no stage.
    claimer = Worker(tree, "anyone")
    claimed = []
    while (item := claimer.claim(["hypotheses", "to-convert"])) is not None:
        claimed.append(item.id)
        claimer.complete(item)
    assert claimed == expected


def test_claim_order_mixes_reference_items(tree: Tree) -> None:
    """Reference items are ordered by the priority and time inside them."""
    queue = tree.queue_dir("hypotheses")
    write_reference_item(
        queue, "ref-low", priority="low", created_at="2020-01-01T00:00:00Z"
    )
    write_reference_item(
        queue, "ref-high-new", priority="high", created_at="2099-01-01T00:00:00Z"
    )
    write_reference_item(
        queue, "ref-high-old", priority="high", created_at="2020-01-01T00:00:00Z"
    )
    write_reference_item(queue, "ref-none", priority=None)
    middle = researcher(tree).push("hypotheses", {}, priority="medium")
    worker = backtester(tree)
    order = []
    while (item := worker.claim("hypotheses")) is not None:
        order.append(item.id)
    assert order == ["ref-high-old", "ref-high-new", middle, "ref-low", "ref-none"]


def test_claim_empty_returns_none(tree: Tree) -> None:
    assert backtester(tree).claim() is None


def test_claim_right_after_push(tree: Tree) -> None:
    """A claim that found the queue empty still sees a push made at once
    afterwards, even within the directory's mtime resolution."""
    consumer = backtester(tree)
    producer = researcher(tree)
    for _ in range(20):
        assert consumer.claim() is None
        producer.push("hypotheses", {})
        item = consumer.claim()
        assert item is not None
        consumer.complete(item)


def test_claim_after_others_took_listed_items(tree: Tree) -> None:
    """A cached listing whose entries were all claimed elsewhere is read
    again, so an item pushed meanwhile is found, not reported missing."""
    producer = researcher(tree)
    for _ in range(5):
        producer.push("hypotheses", {})
    first = Worker(tree, "backtester-1")
    other = Worker(tree, "backtester-2")
    assert first.claim() is not None
    while other.claim() is not None:
        pass
    late = producer.push("hypotheses", {"late": True})
    item = first.claim()
    assert item is not None
    assert item.id == late


# -- complete, fail, route ------------------------------------------------


def test_push_claim_complete(tree: Tree) -> None:
    item_id = researcher(tree).push("hypotheses", {"title": "RSI"}, priority="high")
    worker = backtester(tree)
    item = worker.claim()
    assert item is not None
    assert item.id == item_id
    assert item.payload == {"title": "RSI"}
    assert item.doc["status"] == "in_progress"
    assert item.doc["claimed_by"] == "backtester-1"
    assert item.path.parent.parent.name == CLAIMS_DIR
    assert item.path.parent.name == str(worker.holder.key)
    worker.complete(item)
    done = archived(tree, "completed")[f"{item_id}.json"]
    assert done["status"] == "completed"
    assert done["finished_at"]
    assert [hop["event"] for hop in done["history"]] == ["pushed", "completed"]
    assert pending_names(tree, "hypotheses") == []
    assert claim_files(tree, "hypotheses") == []


def test_fail_records_reason(tree: Tree) -> None:
    item_id = researcher(tree).push("hypotheses", {})
    worker = backtester(tree)
    item = worker.claim()
    assert item is not None
    worker.fail(item, "no data for ES")
    failed = archived(tree, "failed")[f"{item_id}.json"]
    assert failed["status"] == "failed"
    assert failed["last_error"] == "no data for ES"
    assert failed["history"][-1]["reason"] == "no data for ES"
    assert claim_files(tree, "hypotheses") == []


def test_route_pushes_successor_once(tree: Tree) -> None:
    parent_id = researcher(tree).push("hypotheses", {"n": 1}, priority="high")
    worker = backtester(tree)
    item = worker.claim()
    assert item is not None
    successor_id = worker.route(item, "to-optimize", {"n": 2})
    names = pending_names(tree, "to-optimize")
    assert len(names) == 1
    assert names[0].endswith(f"~{successor_id}.json")
    successor = json.loads((tree.queue_dir("to-optimize") / names[0]).read_text())
    assert successor["parent_id"] == parent_id
    assert successor["root_id"] == parent_id
    assert successor["priority"] == "high"
    assert successor["stage"] == "backtester"
    assert successor["payload"] == {"n": 2}
    assert [hop["event"] for hop in successor["history"]] == ["pushed", "routed"]
    parent = archived(tree, "completed")[f"{parent_id}.json"]
    assert parent["status"] == "routed"
    assert parent["successor_id"] == successor_id
    assert parent["routed_to"] == "to-optimize"
    assert os.listdir(item.path.parent) == []


def test_route_keeps_root_id_along_lineage(tree: Tree) -> None:
    root_id = researcher(tree).push("to-convert", {})
    converter = Worker(tree, "converter-1")
    first = converter.claim()
    assert first is not None
    converter.route(first, "to-backtest", {})
    tester = backtester(tree)
    second = tester.claim("to-backtest")
    assert second is not None
    assert second.root_id == root_id
    tester.route(second, "to-optimize", {})
    optimizer = Worker(tree, "optimizer-1")
    third = optimizer.claim()
    assert third is not None
    assert third.root_id == root_id
    assert third.doc["parent_id"] == second.id
    optimizer.route(third, "good", {"sharpe": 2.1})
    assert len(pending_names(tree, "good")) == 1


def test_route_without_edge_raises_and_keeps_claim(tree: Tree) -> None:
    researcher(tree).push("hypotheses", {})
    worker = backtester(tree)
    item = worker.claim()
    assert item is not None
    with pytest.raises(RoutingError, match="may not produce into 'good'"):
        worker.route(item, "good", {})
    assert item.path.exists()
    assert pending_names(tree, "good") == []


def test_push_without_edge_raises(tree: Tree) -> None:
    with pytest.raises(RoutingError):
        backtester(tree).push("hypotheses", {})
    with pytest.raises(RoutingError, match="has no stage"):
        Worker(tree, "nobody").push("hypotheses", {})
    assert pending_names(tree, "hypotheses") == []


def test_push_rejects_non_object_payload(tree: Tree) -> None:
    with pytest.raises(quantd.InvalidItem):
        researcher(tree).push("hypotheses", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(quantd.InvalidItem, match="not JSON-serialisable"):
        researcher(tree).push("hypotheses", {"x": object()})
    assert pending_names(tree, "hypotheses") == []
    assert os.listdir(tree.tmp) == []


# -- exact ids -------------------------------------------------------------


def test_exact_id_completion(tree: Tree) -> None:
    queue = tree.queue_dir("hypotheses")
    write_reference_item(queue, "hyp-1", priority="high")
    write_reference_item(queue, "hyp-10", priority="high")
    worker = backtester(tree)
    assert worker.claim() is not None
    assert worker.claim() is not None
    fresh = backtester(tree)
    fresh.complete(fresh.find_claim("hyp-1"))
    assert list(archived(tree, "completed")) == ["hyp-1.json"]
    remaining = [p.name for p in claim_files(tree, "hypotheses")]
    assert remaining == ["hyp-10.json"]
    with pytest.raises(ClaimLost):
        fresh.find_claim("hyp")


# -- hostile files ---------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        b"...json",
        b".hidden.json",
        b"ctl\x01.json",
        b"new\nline.json",
        b"bad\xff\xfe.json",
        b"a" * 201 + b".json",
        b"a b.json",
        b"x.claimed-w.json",
    ],
    ids=repr,
)
def test_claim_skips_hostile_names(tree: Tree, name: bytes) -> None:
    queue = tree.queue_dir("hypotheses")
    write_reference_item(queue, "placeholder", name=name)
    good = researcher(tree).push("hypotheses", {})
    worker = backtester(tree)
    item = worker.claim()
    assert item is not None
    assert item.id == good
    assert worker.claim() is None
    assert name in os.listdir(os.fsencode(queue))


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "..", ".hidden", "x\x00y", 7])
def test_claim_quarantines_hostile_document_id(tree: Tree, bad_id: object) -> None:
    """A valid file name whose document carries a hostile id is moved to
    quarantine, never used to build a path."""
    path = write_reference_item(tree.queue_dir("hypotheses"), "fine", id=bad_id)
    backdate(path)
    worker = backtester(tree)
    assert worker.claim() is None
    assert quarantined_reasons(tree) == ["invalid_item"]
    assert os.listdir(tree.archive_dir("completed")) == []


def _make_special(queue: Path, kind: str) -> None:
    path = queue / "1-20200101T000000000000~special.json"
    if kind == "directory":
        path.mkdir()
        (path / "inner.json").write_text("{}")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        os.symlink("/etc/hostname", path)
    elif kind == "dangling_symlink":
        os.symlink(queue / "missing", path)
    elif kind == "socket":
        # A bound socket's path is too long for AF_UNIX here; mknod makes
        # the same kind of directory entry.
        os.mknod(path, 0o600 | stat.S_IFSOCK)
    elif kind == "hard_link":
        other = queue.parent / "elsewhere.json"
        other.write_text(json.dumps({"id": "special", "payload": {}}))
        os.link(other, path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "invalid_json":
        path.write_text("{not json")
    elif kind == "deep_json":
        path.write_text("[" * 100_000 + "]" * 100_000)


SPECIAL_REASONS = {
    "directory": "directory",
    "fifo": "special_file",
    "symlink": "symlink",
    "dangling_symlink": "symlink",
    "socket": "special_file",
    "hard_link": "hard_link",
    "empty": "empty_file",
    "invalid_json": "invalid_json",
    "deep_json": "too_deep",
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", sorted(SPECIAL_REASONS))
def test_claim_quarantines_special_files(tree: Tree, kind: str) -> None:
    """A claim never hangs (a FIFO is never opened for blocking reads) and
    never crashes; what it took is quarantined with a reason."""
    _make_special(tree.queue_dir("hypotheses"), kind)
    good = researcher(tree).push("hypotheses", {}, priority="low")
    worker = backtester(tree)
    item = worker.claim()
    assert item is not None
    assert item.id == good
    assert quarantined_reasons(tree) == [SPECIAL_REASONS[kind]]
    assert pending_names(tree, "hypotheses") == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink", "socket"])
def test_claim_survives_special_reference_names(tree: Tree, kind: str) -> None:
    """The same special files under reference names (``x.json``), whose
    priority would be read from the content."""
    queue = tree.queue_dir("hypotheses")
    _make_special(queue, kind)
    os.rename(queue / "1-20200101T000000000000~special.json", queue / "x.json")
    good = researcher(tree).push("hypotheses", {}, priority="low")
    worker = backtester(tree)
    claimed = [worker.claim(), worker.claim()]
    assert [i.id for i in claimed if i is not None] == [good]
    assert quarantined_reasons(tree) == [SPECIAL_REASONS[kind]]


def test_claim_quarantines_too_large(tmp_path: Path) -> None:
    config = tmp_path / "small.toml"
    text = quantd.config.tomli_w.dumps(quantd.config._reference_document())
    config.write_text(text.replace("max_item_bytes = 1048576", "max_item_bytes = 100"))
    tree, _ = quantd.init_tree(tmp_path / "tree", config)
    path = write_reference_item(tree.queue_dir("hypotheses"), "big", blob="x" * 200)
    backdate(path)
    assert backtester(tree).claim() is None
    assert quarantined_reasons(tree) == ["too_large"]


# -- unknown fields --------------------------------------------------------


UNKNOWN = {"type": "hypothesis", "custom": {"nested": [1, "two", None]}}


def _unknown_item(tree: Tree) -> None:
    write_reference_item(tree.queue_dir("hypotheses"), "u-1", **UNKNOWN)


def _assert_unknown(doc: dict[str, Any]) -> None:
    for key, value in UNKNOWN.items():
        assert doc[key] == value


def test_unknown_fields_kept_through_claim_and_complete(tree: Tree) -> None:
    _unknown_item(tree)
    worker = backtester(tree)
    item = worker.claim()
    assert item is not None
    _assert_unknown(item.doc)
    worker.complete(item)
    _assert_unknown(archived(tree, "completed")["u-1.json"])


def test_unknown_fields_kept_through_fail(tree: Tree) -> None:
    _unknown_item(tree)
    worker = backtester(tree)
    item = worker.claim()
    assert item is not None
    worker.fail(item, "broken")
    _assert_unknown(archived(tree, "failed")["u-1.json"])


def test_unknown_fields_kept_through_route(tree: Tree) -> None:
    _unknown_item(tree)
    worker = backtester(tree)
    item = worker.claim()
    assert item is not None
    worker.route(item, "to-optimize", {})
    _assert_unknown(archived(tree, "completed")["u-1.json"])


def test_unknown_fields_kept_through_recovery(tree: Tree) -> None:
    _unknown_item(tree)
    worker = backtester(tree)
    item = worker.claim()
    assert item is not None
    outcome = recover_claim(
        tree,
        item.path,
        "hypotheses",
        item.path.parent.name,
        Liveness(Verdict.DEAD, "pid_gone"),
        worker.worker,
    )
    assert outcome.action == "requeued"
    again = backtester(tree).claim()
    assert again is not None
    assert again.attempts == 1
    _assert_unknown(again.doc)


# -- lost claims -----------------------------------------------------------


def _claimed(tree: Tree) -> tuple[Worker, Item]:
    researcher(tree).push("hypotheses", {"v": 1})
    worker = backtester(tree)
    item = worker.claim()
    assert item is not None
    return worker, item


def _take_away(tree: Tree, item: Item, how: str) -> None:
    if how == "moved":
        os.rename(item.path, tree.recovering / "taken.json")
    else:
        outcome = recover_claim(
            tree,
            item.path,
            item.queue,
            item.path.parent.name,
            Liveness(Verdict.DEAD, "pid_gone"),
            "backtester-1",
        )
        assert outcome.action == "requeued"


def _snapshot(tree: Tree) -> dict[str, bytes]:
    files = {}
    for path in sorted(tree.root.rglob("*")):
        if path.is_file() and tree.holders not in path.parents:
            files[str(path.relative_to(tree.root))] = path.read_bytes()
    return files


@pytest.mark.parametrize("how", ["moved", "recovered"])
@pytest.mark.parametrize("operation", ["complete", "fail", "route"])
def test_lost_claim_raises_and_writes_nothing(
    tree: Tree, how: str, operation: str
) -> None:
    worker, item = _claimed(tree)
    _take_away(tree, item, how)
    before = _snapshot(tree)
    with pytest.raises(ClaimLost, match="no longer holds"):
        if operation == "complete":
            worker.complete(item)
        elif operation == "fail":
            worker.fail(item, "late")
        else:
            worker.route(item, "to-optimize", {})
    assert _snapshot(tree) == before
    assert pending_names(tree, "to-optimize") == []
    assert os.listdir(tree.archive_dir("completed")) == []
    assert os.listdir(tree.archive_dir("failed")) == []
    assert os.listdir(tree.tmp) == []


def test_lost_claim_dropped_from_heartbeat(tree: Tree) -> None:
    worker, item = _claimed(tree)
    assert worker.heartbeat() == []
    _take_away(tree, item, "moved")
    assert [i.id for i in worker.heartbeat()] == [item.id]
    assert worker.heartbeat() == []


def test_find_claim_missing_raises(tree: Tree) -> None:
    with pytest.raises(ClaimLost, match="holds no claim on item 'nope'"):
        backtester(tree).find_claim("nope")


# -- waiting ---------------------------------------------------------------


PUSH_LATER = """
import sys, time
import quantd
time.sleep(float(sys.argv[2]))
tree = quantd.open_tree(sys.argv[1])
print(quantd.Worker(tree, "researcher-9").push("hypotheses", {}), flush=True)
"""


@pytest.mark.timeout(60)
def test_claim_wait_wakes_on_push_from_other_process(
    tree: Tree, processes: ProcessGroup
) -> None:
    worker = backtester(tree)
    process = processes.python(PUSH_LATER, tree.root, "0.5")
    started = time.monotonic()
    item = worker.claim(wait_s=30)
    elapsed = time.monotonic() - started
    code, stdout, stderr = finish(process)
    assert code == 0, stderr
    assert item is not None
    assert item.id == stdout.strip()
    assert elapsed < 5
    worker.close()


@pytest.mark.timeout(30)
def test_claim_wait_times_out(tree: Tree) -> None:
    with backtester(tree) as worker:
        started = time.monotonic()
        assert worker.claim(wait_s=0.5) is None
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 5


# -- durability ------------------------------------------------------------


@pytest.mark.parametrize("durable", [True, False])
def test_round_trip_durable_and_not(tree: Tree, durable: bool) -> None:
    opened = quantd.open_tree(tree.root, durable=durable)
    assert opened.durable is durable
    producer = researcher(opened)
    worker = backtester(opened)
    ids = [producer.push("hypotheses", {"i": i}) for i in range(3)]
    first = worker.claim()
    second = worker.claim()
    third = worker.claim()
    assert first is not None
    assert second is not None
    assert third is not None
    worker.complete(first)
    worker.fail(second, "x")
    successor = worker.route(third, "to-optimize", {})
    assert sorted(archived(opened, "completed")) == sorted(
        [f"{ids[0]}.json", f"{ids[2]}.json"]
    )
    assert list(archived(opened, "failed")) == [f"{ids[1]}.json"]
    assert pending_names(opened, "to-optimize")[0].endswith(f"~{successor}.json")
    assert os.listdir(opened.tmp) == []


def test_claim_skips_young_invalid_reference_file(tree: Tree) -> None:
    """A reference-named file still being written in place is left alone
    until daemon.write_grace_s after its last write, then quarantined."""
    path = tree.queue_dir("hypotheses") / "hyp-1.json"
    path.write_text('{"id": "hyp-1", "pay')
    worker = backtester(tree)
    assert worker.claim() is None
    assert path.exists()
    assert quarantined_reasons(tree) == []
    path.write_text('{"id": "hyp-1", "payload": {}}')
    item = worker.claim()
    assert item is not None
    assert item.id == "hyp-1"
    broken = tree.queue_dir("hypotheses") / "hyp-2.json"
    broken.write_text("{")
    assert worker.claim() is None
    backdate(broken)
    assert worker.claim() is None
    assert quarantined_reasons(tree) == ["invalid_json"]


def test_claim_quarantines_id_not_matching_name(tree: Tree) -> None:
    write_reference_item(tree.queue_dir("hypotheses"), "hyp-2", name="hyp-1.json")
    assert backtester(tree).claim() is None
    assert quarantined_reasons(tree) == ["invalid_item"]


def test_recovery_quarantines_copy_already_pending(tree: Tree) -> None:
    worker, item = _claimed(tree)
    pending = tree.queue_dir(item.queue) / item.path.name
    claimed_bytes = item.path.read_bytes()
    pending.write_bytes(claimed_bytes)

    outcome = recover_claim(
        tree,
        item.path,
        item.queue,
        item.path.parent.name,
        Liveness(Verdict.DEAD, "pid_gone"),
        worker.worker,
    )

    assert outcome.action == "quarantined"
    assert pending.read_bytes() == claimed_bytes
    [entry] = list(tree.quarantine.iterdir())
    reason = json.loads((entry / "reason.json").read_text())
    assert reason["reason"] == "duplicate"
    assert json.loads((entry / "item").read_bytes())["id"] == item.id
    assert not list(tree.recovering.iterdir())


# -- limits on new items ---------------------------------------------------


def _nested(levels: int) -> dict[str, Any]:
    """Return a payload whose containers nest ``levels`` deep."""
    payload: dict[str, Any] = {}
    for _ in range(levels - 1):
        payload = {"a": payload}
    return payload


def _no_files_written(tree: Tree) -> None:
    assert pending_names(tree, "hypotheses") == []
    assert pending_names(tree, "to-optimize") == []
    assert os.listdir(tree.tmp) == []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"blob": "x" * 1_048_576}, r"limit daemon\.max_item_bytes \(1048576"),
        (_nested(64), r"limit daemon\.max_json_depth \(64"),
        (_nested(100_000), r"limit daemon\.max_json_depth \(64"),
        ({"sharpe": float("nan")}, "NaN and Infinity are not JSON"),
        ({"sharpe": float("inf")}, "NaN and Infinity are not JSON"),
    ],
    ids=["too-large", "too-deep", "very-deep", "nan", "infinity"],
)
def test_push_and_route_reject_what_claim_quarantines(
    tree: Tree, payload: dict[str, Any], message: str
) -> None:
    with pytest.raises(quantd.InvalidItem, match=message):
        researcher(tree).push("hypotheses", payload)
    _no_files_written(tree)

    worker, item = _claimed(tree)
    before = _snapshot(tree)
    with pytest.raises(quantd.InvalidItem, match=message):
        worker.route(item, "to-optimize", payload)
    assert _snapshot(tree) == before
    assert pending_names(tree, "to-optimize") == []
    assert item.path.exists()


def test_push_at_depth_limit_claimable(tree: Tree) -> None:
    """The item document adds one level around the payload, so a payload
    of 63 levels gives an item of exactly daemon.max_json_depth (64)."""
    item_id = researcher(tree).push("hypotheses", _nested(63))
    item = backtester(tree).claim()
    assert item is not None
    assert item.id == item_id
    assert quarantined_reasons(tree) == []


@pytest.mark.timeout(60)
def test_claim_for_exited_holder_raises(tree: Tree) -> None:
    holder = subprocess.Popen(["sleep", "60"])
    try:
        worker = Worker(tree, "backtester-1", pid=holder.pid)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    researcher(tree).push("hypotheses", {"v": 1})
    with pytest.raises(quantd.QuantdError, match=f"pid {holder.pid}, has exited"):
        worker.claim(wait_s=30)
    (name,) = pending_names(tree, "hypotheses")
    document = json.loads((tree.queue_dir("hypotheses") / name).read_bytes())
    assert document["attempts"] == 0
    assert claim_files(tree, "hypotheses") == []


# -- consuming side of the routing graph ------------------------------------


def test_claim_from_unconsumed_queue_raises(tree: Tree) -> None:
    researcher(tree).push("to-convert", {"v": 1})
    before = _snapshot(tree)
    with pytest.raises(RoutingError) as raised:
        backtester(tree).claim("to-convert")
    message = str(raised.value)
    assert "stage 'backtester'" in message
    assert "queue 'to-convert'" in message
    assert "allows hypotheses, to-backtest" in message
    assert _snapshot(tree) == before
    assert not tree.claims_dir("to-convert").exists()


def test_claim_without_stage_from_named_queue(tree: Tree) -> None:
    researcher(tree).push("to-convert", {"v": 1})
    worker = Worker(tree, "unstaged-1")
    assert worker.stage is None
    item = worker.claim("to-convert")
    assert item is not None
    worker.complete(item)
    assert len(archived(tree, "completed")) == 1


@pytest.mark.parametrize("operation", ["complete", "fail", "route"])
def test_finish_claim_from_unconsumed_queue_raises(tree: Tree, operation: str) -> None:
    researcher(tree).push("to-convert", {"v": 1})
    item = Worker(tree, "converter-1").claim()
    assert item is not None
    other = Worker(tree, "backtester-1", stage="backtester")
    before = _snapshot(tree)
    with pytest.raises(RoutingError, match="does not consume queue 'to-convert'"):
        if operation == "complete":
            other.complete(item)
        elif operation == "fail":
            other.fail(item, "wrong stage")
        else:
            other.route(item, "to-optimize", {"v": 2})
    assert _snapshot(tree) == before
    assert item.path.exists()
