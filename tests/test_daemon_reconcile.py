"""In-process tests of Reconciler: real files, the time passed in, no sleeps
and no daemon process."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_support import (
    claim_by_hand,
    configure,
    pending_files,
    quarantine_entries,
    read_json,
)

import quantd
from quantd.daemon.holders import HolderRegistry
from quantd.daemon.journal import Journal
from quantd.daemon.reconcile import Reconciler
from quantd.holder import HolderKey, machine_id, process_start
from quantd.itemfile import nested_deeper_than
from quantd.transitions import COMMITTED_SUFFIX, DRAFT_SUFFIX
from quantd.tree import CLAIMS_DIR, Tree

LATER_S = 3600.0


@pytest.fixture
def small_tree(tmp_path: Path) -> Tree:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    return configure(
        root,
        max_item_bytes=20_000,
        max_json_depth=8,
        lease_s=30.0,
        max_attempts=3,
        write_grace_s=5.0,
    )


@pytest.fixture
def reconciler(small_tree: Tree) -> Iterator[Reconciler]:
    selector = selectors.DefaultSelector()
    registry = HolderRegistry(selector)
    try:
        yield Reconciler(small_tree, registry, Journal())
    finally:
        registry.close()
        selector.close()


def push(tree: Tree, queue: str = "to-convert", **payload: object) -> Path:
    with quantd.Worker(tree, "researcher-1") as worker:
        worker.push(queue, payload or {"n": 1})
    return pending_files(tree, queue)[-1]


def dead_key() -> HolderKey:
    """Return the key of a local process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    key = HolderKey.for_pid(process.pid)
    process.wait(timeout=60)
    return key


def only_entry(tree: Tree) -> Path:
    entries = quarantine_entries(tree)
    assert len(entries) == 1, entries
    return entries[0]


# -- bad input ------------------------------------------------------------


def _write(name: str | bytes, data: bytes) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        path = os.path.join(os.fsencode(directory), os.fsencode(name))
        with open(path, "wb") as file:
            file.write(data)
        return Path(os.fsdecode(path))

    return make


def _nested(depth: int) -> bytes:
    inner = "[" * depth + "]" * depth
    return f'{{"id": "deep-1", "payload": {{"x": {inner}}}}}'.encode()


def _symlink(directory: Path) -> Path:
    target = directory.parent.parent / "target.json"
    target.write_bytes(b'{"id": "t1", "payload": {}}')
    link = directory / "t1.json"
    link.symlink_to(target)
    return link


def _directory(directory: Path) -> Path:
    path = directory / "d1.json"
    path.mkdir()
    (path / "inside").write_bytes(b"x")
    return path


def _fifo(directory: Path) -> Path:
    path = directory / "f1.json"
    os.mkfifo(path)
    return path


def _hard_link(directory: Path) -> Path:
    other = directory.parent.parent / "other-name"
    other.write_bytes(b'{"id": "h1", "payload": {}}')
    path = directory / "h1.json"
    os.link(other, path)
    return path


BAD_INPUTS = {
    "invalid_json": (_write("a1.json", b'{"id": "a1", '), "invalid_json"),
    "empty": (_write("a2.json", b""), "empty_file"),
    "wrong_schema": (_write("a3.json", b'{"id": "a3", "payload": []}'), "invalid_item"),
    "not_object": (_write("a4.json", b"[1, 2]"), "invalid_item"),
    "too_large": (
        _write("a5.json", b'{"id": "a5", "payload": {"x": "' + b"y" * 30_000 + b'"}}'),
        "too_large",
    ),
    "too_deep": (_write("a6.json", _nested(20)), "too_deep"),
    "past_recursion_limit": (_write("a7.json", _nested(5000)), "too_deep"),
    "symlink": (_symlink, "symlink"),
    "directory": (_directory, "directory"),
    "fifo": (_fifo, "special_file"),
    "hard_link": (_hard_link, "hard_link"),
    "non_utf8_name": (
        _write(b"bad-\xff.json", b'{"id": "b1", "payload": {}}'),
        "bad_name",
    ),
    "control_char_name": (
        _write("bad\x07.json", b'{"id": "b2", "payload": {}}'),
        "bad_name",
    ),
    "not_an_item_name": (_write("notes.txt", b"hello"), "bad_name"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_quarantined(
    case: str, small_tree: Tree, reconciler: Reconciler
) -> None:
    make, reason = BAD_INPUTS[case]
    directory = small_tree.queue_dir("to-convert")
    path = make(directory)
    before = os.lstat(path)
    data = None if path.is_symlink() or not path.is_file() else path.read_bytes()

    reconciler.reconcile(time.time() + LATER_S)

    assert not os.path.lexists(path)
    entry = only_entry(small_tree)
    record = read_json(entry / "reason.json")
    assert record["reason"] == reason
    assert record["queue"] == "to-convert"
    moved = entry / "item"
    assert os.lstat(moved).st_ino == before.st_ino
    if data is not None:
        assert moved.read_bytes() == data
    assert reconciler._journal.counters["quarantined"] == 1


def test_symlink_target_untouched(small_tree: Tree, reconciler: Reconciler) -> None:
    link = _symlink(small_tree.queue_dir("to-convert"))
    target = link.resolve()
    content = target.read_bytes()

    reconciler.reconcile(time.time() + LATER_S)

    assert target.read_bytes() == content
    assert (only_entry(small_tree) / "item").is_symlink()


@pytest.mark.parametrize(
    ("name", "reason"),
    [("hyp-1.json", "invalid_json"), ("tmpab12cd34.json", "bad_name")],
)
def test_unfinished_file_waits_for_grace(
    name: str, reason: str, small_tree: Tree, reconciler: Reconciler
) -> None:
    path = _write(name, b'{"id": "hyp-1", "pay')(small_tree.queue_dir("to-convert"))
    now = time.time()

    reconciler.reconcile(now)

    assert path.exists()
    due = reconciler.next_due()
    assert due is not None
    assert reconciler.take_due(now) == []
    for due_path in reconciler.take_due(due):
        reconciler.reconcile_path(due_path, due)
    assert not path.exists()
    assert read_json(only_entry(small_tree) / "reason.json")["reason"] == reason


def test_valid_items_untouched(small_tree: Tree, reconciler: Reconciler) -> None:
    pushed = push(small_tree)
    reference = _write(
        "ref-1.json", b'{"id": "ref-1", "type": "hypothesis", "payload": {}}'
    )(small_tree.queue_dir("to-convert"))

    reconciler.reconcile(time.time() + LATER_S)
    reconciler.reconcile(time.time() + LATER_S)

    assert pushed.exists()
    assert reference.exists()
    assert quarantine_entries(small_tree) == []


def test_files_added_without_events_found(
    small_tree: Tree, reconciler: Reconciler
) -> None:
    reconciler.reconcile(time.time())
    directory = small_tree.queue_dir("to-backtest")
    bad = _write("late.json", b"not json")(directory)

    reconciler.reconcile(time.time() + LATER_S)

    assert not bad.exists()
    assert len(quarantine_entries(small_tree)) == 1


# -- routing --------------------------------------------------------------


def test_routing_violation_by_stage(small_tree: Tree, reconciler: Reconciler) -> None:
    path = _write("r1.json", b'{"id": "r1", "stage": "optimizer", "payload": {}}')(
        small_tree.queue_dir("to-convert")
    )

    reconciler.reconcile(time.time())

    assert not path.exists()
    record = read_json(only_entry(small_tree) / "reason.json")
    assert record["reason"] == "routing_violation"
    assert record["edge"] == "optimizer->to-convert"
    violations = reconciler._journal.counters["routing_violations"]
    assert violations == {"optimizer->to-convert": 1}


def test_routing_violation_by_worker(small_tree: Tree, reconciler: Reconciler) -> None:
    path = _write(
        "r2.json", b'{"id": "r2", "created_by": "converter-7", "payload": {}}'
    )(small_tree.queue_dir("hypotheses"))

    reconciler.reconcile(time.time())

    assert not path.exists()
    record = read_json(only_entry(small_tree) / "reason.json")
    assert record["edge"] == "converter->hypotheses"


def test_unknown_stage_is_violation(small_tree: Tree, reconciler: Reconciler) -> None:
    _write("r3.json", b'{"id": "r3", "stage": "nobody", "payload": {}}')(
        small_tree.queue_dir("to-convert")
    )

    reconciler.reconcile(time.time())

    assert read_json(only_entry(small_tree) / "reason.json")["reason"] == (
        "routing_violation"
    )


def test_allowed_edge_kept(small_tree: Tree, reconciler: Reconciler) -> None:
    path = _write(
        "r4.json", b'{"id": "r4", "created_by": "converter-7", "payload": {}}'
    )(small_tree.queue_dir("to-backtest"))

    reconciler.reconcile(time.time())

    assert path.exists()


# -- claims ---------------------------------------------------------------


def test_dead_holder_recovered(small_tree: Tree, reconciler: Reconciler) -> None:
    key = dead_key()
    claim = claim_by_hand(small_tree, "to-convert", push(small_tree), key)

    reconciler.reconcile(time.time())

    assert not claim.exists()
    assert not claim.parent.exists()
    [pending] = pending_files(small_tree, "to-convert")
    doc = read_json(pending)
    assert doc["attempts"] == 1
    assert doc["history"][-1]["event"] == "recovered"
    assert doc["history"][-1]["reason"] == "pid_gone"
    assert reconciler._journal.counters["recovered"] == 1


def test_pid_reuse_recovered(small_tree: Tree, reconciler: Reconciler) -> None:
    start = process_start(os.getpid())
    assert start is not None
    key = HolderKey(os.getpid(), start + 1, machine_id())
    claim_by_hand(small_tree, "to-convert", push(small_tree), key)

    reconciler.reconcile(time.time())

    [pending] = pending_files(small_tree, "to-convert")
    assert read_json(pending)["history"][-1]["reason"] == "pid_reused"


def test_live_holder_kept(small_tree: Tree, reconciler: Reconciler) -> None:
    key = HolderKey.for_pid(os.getpid())
    claim = claim_by_hand(small_tree, "to-convert", push(small_tree), key)

    reconciler.reconcile(time.time() + LATER_S)
    reconciler.reconcile_path(claim, time.time())
    reconciler.reconcile_path(claim.parent, time.time())

    assert claim.exists()
    [view] = reconciler.holders()
    assert view["verdict"] == "alive"
    assert view["claims"] == 1
    assert view["queues"] == ["to-convert"]


def test_foreign_claim_waits_for_lease(
    small_tree: Tree, reconciler: Reconciler
) -> None:
    key = HolderKey(4242, 1, "0123456789ab")
    claim = claim_by_hand(small_tree, "to-convert", push(small_tree), key)
    now = time.time()

    reconciler.reconcile(now)

    assert claim.exists()
    [view] = reconciler.holders()
    assert view["verdict"] == "unknown"
    assert view["reason"] == "other_machine"
    due = reconciler.next_due()
    assert due is not None
    assert due >= now + 29

    for path in reconciler.take_due(due):
        reconciler.reconcile_path(path, due)

    assert not claim.exists()
    [pending] = pending_files(small_tree, "to-convert")
    doc = read_json(pending)
    assert doc["attempts"] == 1
    assert doc["history"][-1]["verdict"] == "expired"


def test_reference_claim_waits_for_lease(
    small_tree: Tree, reconciler: Reconciler
) -> None:
    directory = small_tree.queue_dir("to-convert")
    claim = _write("ref-2.claimed-converter-1.json", b'{"id": "ref-2", "payload": {}}')(
        directory
    )
    now = time.time()

    reconciler.reconcile(now)
    assert claim.exists()

    reconciler.reconcile(now + 31)

    assert not claim.exists()
    doc = read_json(directory / "ref-2.json")
    assert doc["attempts"] == 1
    assert doc["history"][-1]["worker"] == "converter-1"


def test_dead_letter_at_max_attempts(small_tree: Tree, reconciler: Reconciler) -> None:
    pending = push(small_tree)
    doc = read_json(pending)
    doc["attempts"] = 2
    pending.write_text(json.dumps(doc))
    claim_by_hand(small_tree, "to-convert", pending, dead_key())

    reconciler.reconcile(time.time())

    assert pending_files(small_tree, "to-convert") == []
    archived = read_json(small_tree.archive_dir("failed") / f"{doc['id']}.json")
    assert archived["status"] == "dead_letter"
    assert archived["attempts"] == 3
    assert reconciler._journal.counters["dead_lettered"] == 1


def test_committed_route_finished_once(
    small_tree: Tree, reconciler: Reconciler
) -> None:
    key = dead_key()
    claim = claim_by_hand(small_tree, "to-convert", push(small_tree), key)
    stem = claim.name.removesuffix(".json")
    successor = {
        "id": "converter-20260101T000000-00000000000000aa",
        "created_at": "2026-01-01T00:00:00Z",
        "created_by": "converter-1",
        "priority": "medium",
        "stage": "converter",
        "payload": {},
        "history": [{"event": "routed", "to": "to-backtest"}],
    }
    (claim.parent / (stem + DRAFT_SUFFIX)).write_text(json.dumps(successor))
    os.rename(claim, claim.parent / (stem + COMMITTED_SUFFIX))

    reconciler.reconcile(time.time())
    reconciler.reconcile(time.time())

    [pushed] = pending_files(small_tree, "to-backtest")
    assert read_json(pushed)["id"] == successor["id"]
    assert pending_files(small_tree, "to-convert") == []
    assert len(list(small_tree.archive_dir("completed").iterdir())) == 1
    assert not claim.parent.exists()


def test_old_route_of_live_holder_finished(
    small_tree: Tree, reconciler: Reconciler
) -> None:
    key = HolderKey.for_pid(os.getpid())
    claim = claim_by_hand(small_tree, "to-convert", push(small_tree), key)
    stem = claim.name.removesuffix(".json")
    draft = claim.parent / (stem + DRAFT_SUFFIX)
    draft.write_text(
        json.dumps(
            {
                "id": "converter-20260101T000000-00000000000000bb",
                "created_at": "2026-01-01T00:00:00Z",
                "priority": "low",
                "stage": "converter",
                "payload": {},
                "history": [{"event": "routed", "to": "to-backtest"}],
            }
        )
    )
    os.rename(claim, claim.parent / (stem + COMMITTED_SUFFIX))
    now = time.time()

    reconciler.reconcile(now)
    assert pending_files(small_tree, "to-backtest") == []

    reconciler.reconcile(now + 10)
    assert len(pending_files(small_tree, "to-backtest")) == 1
    assert claim.parent.exists()


def test_orphan_draft_removed(small_tree: Tree, reconciler: Reconciler) -> None:
    key = dead_key()
    holder_dir = small_tree.claims_dir("to-convert") / str(key)
    holder_dir.mkdir(parents=True)
    (holder_dir / f"0-20260101T000000000000~x1{DRAFT_SUFFIX}").write_text("{}")

    reconciler.reconcile(time.time())

    assert not holder_dir.exists()


def test_interrupted_recovery_counted_once(
    small_tree: Tree, reconciler: Reconciler
) -> None:
    key = dead_key()
    claim = claim_by_hand(small_tree, "to-convert", push(small_tree), key)
    entry = small_tree.recovering / f"to-convert~{key}~{claim.name}"
    os.rename(claim, entry)

    reconciler.finish_recovering()
    [pending] = pending_files(small_tree, "to-convert")
    assert read_json(pending)["attempts"] == 1
    # Crash after the record, before the move back: the hop is there.
    os.rename(pending, entry)
    reconciler.reconcile(time.time())

    [pending] = pending_files(small_tree, "to-convert")
    doc = read_json(pending)
    assert doc["attempts"] == 1
    assert [h["event"] for h in doc["history"]].count("recovered") == 1
    assert os.listdir(small_tree.recovering) == []


def test_handler_error_does_not_stop_others(
    small_tree: Tree, reconciler: Reconciler
) -> None:
    # An entry naming a queue the config lacks cannot be moved back.
    pending = push(small_tree)
    stray = small_tree.recovering / f"gone~{dead_key()}~{pending.name}"
    os.rename(pending, stray)
    bad = _write("zz.json", b"{")(small_tree.queue_dir("to-convert"))

    reconciler.reconcile(time.time() + LATER_S)

    assert stray.exists()
    assert not bad.exists()
    assert reconciler._journal.counters["errors"] == 1
    assert reconciler._journal.events[0]["event"] == "handler_failed"


def test_claims_dir_not_quarantined(small_tree: Tree, reconciler: Reconciler) -> None:
    claims = small_tree.claims_dir("to-convert")
    claims.mkdir()

    reconciler.reconcile(time.time() + LATER_S)

    assert claims.is_dir()
    assert (small_tree.queue_dir("to-convert") / CLAIMS_DIR).exists()
    assert quarantine_entries(small_tree) == []


def test_nesting_depth() -> None:
    assert not nested_deeper_than(1, 0)
    assert nested_deeper_than({}, 0)
    assert not nested_deeper_than({}, 1)
    assert not nested_deeper_than({"a": [1, {"b": []}]}, 4)
    assert nested_deeper_than({"a": [1, {"b": []}]}, 3)


def test_checked_cache_reloaded(small_tree: Tree, reconciler: Reconciler) -> None:
    push(small_tree)
    push(small_tree)
    reconciler.reconcile(time.time())
    reconciler.save_checked()
    restarted = Reconciler(small_tree, reconciler._registry, Journal())

    assert restarted.load_checked() == 2
    summary = restarted.reconcile(time.time())
    assert summary["valid"] == 2


def test_checked_cache_corrupt_ignored(
    small_tree: Tree, reconciler: Reconciler
) -> None:
    (small_tree.internal / "checked.json").write_bytes(b'{"checks": "0", "entr')

    assert reconciler.load_checked() == 0
    push(small_tree)
    assert reconciler.reconcile(time.time())["valid"] == 1


def test_checked_cache_dropped_on_new_settings(
    small_tree: Tree, reconciler: Reconciler
) -> None:
    push(small_tree)
    reconciler.reconcile(time.time())
    reconciler.save_checked()
    changed = configure(small_tree.root, max_json_depth=2)
    restarted = Reconciler(changed, reconciler._registry, Journal())

    assert restarted.load_checked() == 0


def test_foreign_orphan_draft_removed_after_lease(
    small_tree: Tree, reconciler: Reconciler
) -> None:
    holder_dir = small_tree.claims_dir("to-convert") / "4242-1-0123456789ab"
    holder_dir.mkdir(parents=True)
    draft = holder_dir / f"0-20260101T000000000000~x2{DRAFT_SUFFIX}"
    draft.write_text("{}")
    now = time.time()

    reconciler.reconcile(now)
    assert draft.exists()

    reconciler.reconcile(now + 31)
    assert not draft.exists()


def test_abandoned_temp_files_removed(small_tree: Tree, reconciler: Reconciler) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    abandoned = small_tree.tmp / f"w-{dead.pid}-{'a' * 12}.tmp"
    abandoned.write_bytes(b'{"half": ')
    live = small_tree.tmp / f"w-{os.getpid()}-{'b' * 12}.tmp"
    live.write_bytes(b'{"half": ')
    other = small_tree.tmp / "notes.txt"
    other.write_bytes(b"kept")
    now = time.time()

    reconciler.reconcile(now)
    assert abandoned.exists(), "a fresh temp file must be left to its writer"

    reconciler.reconcile(now + 3600)
    assert not abandoned.exists()
    assert live.exists()
    assert other.read_bytes() == b"kept"


def test_name_and_id_mismatch_quarantined(
    small_tree: Tree, reconciler: Reconciler
) -> None:
    path = small_tree.queue_dir("to-convert") / "mismatch.json"
    content = json.dumps({"id": "other-id", "payload": {}}).encode()
    path.write_bytes(content)

    reconciler.reconcile(time.time())

    entry = only_entry(small_tree)
    reason = json.loads((entry / "reason.json").read_bytes())
    assert reason["reason"] == "invalid_item"
    assert "'mismatch'" in reason["detail"]
    assert (entry / "item").read_bytes() == content
