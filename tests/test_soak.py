"""The chaos soak: a short run with every kind of chaos must find nothing
lost or duplicated, and a deliberately broken worker must make it fail
naming the lost ids. The checker is also tested on hand-made trees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from quantd import Worker, init_tree
from quantd.filestore import new_document
from quantd.items import Priority, pending_name, utc_now
from quantd.transitions import publish

REPO = Path(__file__).resolve().parent.parent
SOAK = REPO / "scripts" / "soak"
sys.path.insert(0, str(REPO / "scripts"))

from soak_lib import badfiles, plan  # noqa: E402
from soak_lib.checker import check  # noqa: E402

SEED = 20261204
RUN = "soak-test"


def run_soak(tmp_path: Path, *options: str, timeout_s: float) -> tuple[int, str, Any]:
    counts_path = tmp_path / "counts.json"
    command = [
        sys.executable,
        str(SOAK),
        "--root",
        str(tmp_path / "run"),
        "--json",
        str(counts_path),
        *options,
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO,
    )
    output = result.stdout + result.stderr
    document = json.loads(counts_path.read_text()) if counts_path.exists() else None
    return result.returncode, output, document


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_short_soak_passes(tmp_path: Path) -> None:
    code, output, document = run_soak(
        tmp_path, "--minutes", "1", "--seed", str(SEED), timeout_s=400
    )
    assert document is not None, output
    assert document["violations"] == [], output
    assert code == 0, output
    counts = document["counts"]
    assert counts["lost"] == 0
    assert counts["duplicated"] == 0
    assert counts["items"] > 0
    assert counts["worker_kills_timing"] > 0, counts
    assert any(k.startswith("fault_kill:") for k in counts), counts
    assert counts.get("fault_kills_daemon", 0) + counts["daemon_kills"] > 0
    assert counts["stops"] > 0, counts
    assert counts["overflows_attempted"] > 0, counts
    assert counts["recoveries"] > 0, counts
    for kind in badfiles.KINDS:
        assert counts.get(f"bad_file:{kind}", 0) > 0, kind
    assert counts["quarantined_bad_files"] == counts["bad_files_dropped"]
    assert counts.get("daemons_hung", 0) == 0
    assert counts["daemon_errors"] == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_archive_before_route_loses_items(tmp_path: Path) -> None:
    code, output, document = run_soak(
        tmp_path,
        "--items",
        "120",
        "--seed",
        str(SEED),
        "--inject-bug",
        "archive-before-route",
        timeout_s=280,
    )
    assert code == 1, output
    assert document is not None, output
    lost = [v for v in document["violations"] if v["kind"] == "lost"]
    assert lost, output
    for violation in lost:
        assert violation["ids"], violation
        assert violation["ids"][0] in output
    assert "VIOLATION lost" in output
    assert f"--seed {SEED}" in output


# -- the checker on hand-made trees ------------------------------------------


def push_root(worker: Worker, seq: int) -> str:
    payload = {"soak": RUN, "seq": seq}
    return worker.push(plan.entry_queue(seq), payload)


def seq_with_path(length: int, terminal: str) -> int:
    """Return the first sequence number whose lineage has ``length`` steps
    and ends with action ``terminal``."""
    for seq in range(10_000):
        path = plan.expected_path(seq)
        shape = (len(path), path[-1][1].action, path[0][0])
        if shape == (length, terminal, "to-convert"):
            return seq
    raise AssertionError("no such sequence number")


def run_lineage(tree_root: Path, seq: int) -> list[str]:
    """Push item ``seq`` and take it through every stage as the plan decides."""
    ids = []
    with Worker(open_tree_at(tree_root), "researcher-t") as researcher:
        ids.append(push_root(researcher, seq))
    for queue, decision in plan.expected_path(seq):
        stage = plan.CONSUMER_OF_QUEUE[queue]
        with Worker(open_tree_at(tree_root), f"{stage}-t") as worker:
            item = worker.claim(queue)
            assert item is not None
            if decision.action == "route":
                assert decision.target is not None
                ids.append(
                    worker.route(item, decision.target, {"soak": RUN, "seq": seq})
                )
            elif decision.action == "complete":
                worker.complete(item)
            else:
                worker.fail(item, plan.fail_reason(seq, queue))
    return ids


def open_tree_at(root: Path) -> Any:
    from quantd import open_tree

    return open_tree(root)


def test_checker_accepts_whole_lineage(tmp_path: Path) -> None:
    tree, _ = init_tree(tmp_path)
    seq = seq_with_path(3, "route")
    ids = run_lineage(tmp_path, seq)
    report = check(tree, RUN, {ids[0]}, [])
    assert report.violations == []
    assert report.counts["items"] == 1
    assert report.counts["successors"] == 3


def test_checker_reports_duplicate_successor(tmp_path: Path) -> None:
    tree, _ = init_tree(tmp_path)
    seq = seq_with_path(3, "route")
    ids = run_lineage(tmp_path, seq)
    original = json.loads(
        next((tmp_path / "queues" / "completed").glob(f"{ids[1]}.json")).read_bytes()
    )
    # A second successor of the root item, as a route that pushed twice
    # would leave.
    twin = new_document(
        {"soak": RUN, "seq": seq},
        priority=Priority.MEDIUM,
        stage="converter",
        worker="converter-t",
        now=utc_now(),
        history=original["history"],
    )
    twin["parent_id"] = ids[0]
    twin["root_id"] = ids[0]
    publish(tree, twin, "to-backtest", prefix="push")
    report = check(tree, RUN, {ids[0]}, [])
    duplicated = [v for v in report.violations if v.kind == "duplicated"]
    assert duplicated
    assert ids[0] in duplicated[0].ids
    assert twin["id"] in duplicated[0].ids


def test_checker_reports_lost_successor(tmp_path: Path) -> None:
    tree, _ = init_tree(tmp_path)
    seq = seq_with_path(3, "route")
    with Worker(tree, "researcher-t") as researcher:
        root = push_root(researcher, seq)
    with Worker(tree, "converter-t") as converter:
        item = converter.claim("to-convert")
        assert item is not None
        converter.complete(item)
    report = check(tree, RUN, {root}, [])
    lost = [v for v in report.violations if v.kind == "lost"]
    assert len(lost) == 1
    assert lost[0].ids[0] == root


def test_checker_reports_unpushed_ledger_id(tmp_path: Path) -> None:
    tree, _ = init_tree(tmp_path)
    report = check(tree, RUN, {"researcher-20261204T000000-0000000000000000"}, [])
    assert [v.kind for v in report.violations] == ["lost"]


def test_checker_reports_changed_quarantine(tmp_path: Path) -> None:
    tree, _ = init_tree(tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    dropped = badfiles.drop(
        "invalid_json",
        "to-convert",
        tree.queue_dir("to-convert"),
        staging,
        0,
        max_item_bytes=tree.config.daemon.max_item_bytes,
        max_json_depth=tree.config.daemon.max_json_depth,
    )
    # A claimer skips an invalid <id>.json until daemon.write_grace_s after
    # its last write, in case its writer is still writing it.
    path = tree.queue_dir("to-convert") / dropped.name.decode()
    past = time.time() - 2 * tree.config.daemon.write_grace_s
    os.utime(path, (past, past))
    with Worker(tree, "converter-t") as converter:
        assert converter.claim("to-convert") is None
    entries = list(tree.quarantine.iterdir())
    assert len(entries) == 1
    assert check(tree, RUN, set(), [dropped]).violations == []
    (entries[0] / "item").write_bytes(b"{}")
    kinds = [v.kind for v in check(tree, RUN, set(), [dropped]).violations]
    assert kinds == ["quarantine_changed"]


def test_checker_reports_bad_file_left_in_queue(tmp_path: Path) -> None:
    tree, _ = init_tree(tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    dropped = badfiles.drop(
        "non_utf8_name",
        "to-convert",
        tree.queue_dir("to-convert"),
        staging,
        0,
        max_item_bytes=tree.config.daemon.max_item_bytes,
        max_json_depth=tree.config.daemon.max_json_depth,
    )
    violations = check(tree, RUN, set(), [dropped]).violations
    assert [v.kind for v in violations] == ["not_quarantined"]
    assert "queues/to-convert" in violations[0].detail


# -- a frozen holder ------------------------------------------------------------


HOLDER_CODE = """
import sys
from quantd import Worker, open_tree
worker = Worker(open_tree(sys.argv[1]), "converter-frozen")
item = worker.claim("to-convert")
print(item.id, flush=True)
sys.stdin.readline()
print(worker.route(item, "to-backtest", {"n": 1}), flush=True)
"""


def wait_until(condition: Any, what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def reconciles(tree: Any) -> int:
    try:
        status = json.loads(tree.status_path.read_bytes())
    except (OSError, ValueError):
        return -1
    return int(status["counters"]["reconciles"])


@pytest.mark.timeout(120)
def test_stopped_holder_keeps_claim(tmp_path: Path) -> None:
    tree, _ = init_tree(tmp_path / "tree")
    config_path = tree.root / "quantd.toml"
    config = config_path.read_text().replace("lease_s = 300.0", "lease_s = 1.0")
    config = config.replace("reconcile_interval_s = 30.0", "reconcile_interval_s = 0.2")
    config = config.replace("status_interval_s = 5.0", "status_interval_s = 0.2")
    config_path.write_text(config)
    tree = open_tree_at(tree.root)
    assert tree.config.daemon.lease_s == 1.0
    with Worker(tree, "researcher-t") as researcher:
        item_id = researcher.push("to-convert", {"n": 1})
    daemon = subprocess.Popen(
        [sys.executable, "-m", "quantd", "run", "--root", str(tree.root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER_CODE, str(tree.root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == item_id
        claims = list(tree.claims_dir("to-convert").glob("*/*.json"))
        assert len(claims) == 1
        os.kill(holder.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        wait_until(lambda: reconciles(tree) >= 0, "status.json")
        first = reconciles(tree)
        # Frozen well past its lease, through several full sweeps.
        wait_until(
            lambda: (
                reconciles(tree) >= first + 5
                and time.monotonic() - stopped_at > 3 * tree.config.daemon.lease_s
            ),
            "sweeps while the holder is stopped",
        )
        assert claims[0].exists()
        assert os.listdir(tree.queue_dir("to-convert")) == [".claims"]
        assert os.listdir(tree.recovering) == []
        assert daemon.poll() is None
        os.kill(holder.pid, signal.SIGCONT)
        holder.stdin.write("\n")
        holder.stdin.flush()
        successor = holder.stdout.readline().strip()
        assert holder.wait(timeout=30) == 0
    finally:
        for process in (holder, daemon):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
                process.wait()
    pending = os.listdir(tree.queue_dir("to-backtest"))
    assert len(pending) == 1
    assert successor in pending[0]
    assert os.listdir(tree.archive_dir("completed")) == [f"{item_id}.json"]
    assert os.listdir(tree.queue_dir("to-convert")) == [".claims"]
    archived = json.loads(
        (tree.archive_dir("completed") / f"{item_id}.json").read_text()
    )
    assert archived["attempts"] == 0


# -- violations the soak found, reproduced one at a time ------------------------


FAIL_CODE = """
import sys
from quantd import Worker, open_tree
worker = Worker(open_tree(sys.argv[1]), "converter-fail")
item = worker.claim("to-convert")
worker.fail(item, "rejected by the test")
"""


@pytest.mark.timeout(60)
def test_fail_killed_after_rename_keeps_reason(tmp_path: Path) -> None:
    tree, _ = init_tree(tmp_path / "tree")
    with Worker(tree, "researcher-t") as researcher:
        item_id = researcher.push("to-convert", {"n": 1})
    environment = {**os.environ, "QUANTD_FAULTS": "failed.after_rename"}
    result = subprocess.run(
        [sys.executable, "-c", FAIL_CODE, str(tree.root)],
        env=environment,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == -signal.SIGKILL
    archived = json.loads((tree.archive_dir("failed") / f"{item_id}.json").read_text())
    assert archived["last_error"] == "rejected by the test"


def test_claim_quarantines_too_deep_item(tmp_path: Path) -> None:
    tree, _ = init_tree(tmp_path / "tree")
    depth = tree.config.daemon.max_json_depth + 16
    nested = '{"a": ' * depth + "0" + "}" * depth
    name = pending_name("too-deep", Priority.HIGH, utc_now())
    path = tree.queue_dir("to-convert") / name
    path.write_text(f'{{"id": "too-deep", "payload": {nested}}}')
    with Worker(tree, "converter-t") as converter:
        assert converter.claim("to-convert") is None
    reasons = [
        json.loads((entry / "reason.json").read_bytes())["reason"]
        for entry in tree.quarantine.iterdir()
    ]
    assert reasons == ["too_deep"]


CLAIM_AND_DIE_CODE = """
import sys
from quantd import Worker, open_tree
worker = Worker(open_tree(sys.argv[1]), "converter-dies")
worker.claim("to-convert")
"""


def claim_and_die(tree: Any) -> None:
    """Let a worker claim the next item of to-convert and die right after
    the claim's rename, before it reads the file."""
    environment = {**os.environ, "QUANTD_FAULTS": "claim.after_rename"}
    result = subprocess.run(
        [sys.executable, "-c", CLAIM_AND_DIE_CODE, str(tree.root)],
        env=environment,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr


def run_daemon_until_quiet(tree: Any, log_path: Path) -> int | None:
    """Start the daemon, wait for its first sweep and for the recovering
    directory to empty, stop it; return its exit code, None if it hung."""
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "quantd", "run", "--root", str(tree.root)],
            stdout=log,
            stderr=log,
        )
    try:
        try:
            wait_until(
                lambda: (
                    b'"daemon_ready"' in log_path.read_bytes()
                    and not os.listdir(tree.recovering)
                ),
                "the daemon's first sweep",
                timeout_s=30,
            )
        except AssertionError:
            return None
        daemon.send_signal(signal.SIGTERM)
        return daemon.wait(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


@pytest.mark.timeout(120)
def test_recovered_fifo_is_quarantined(tmp_path: Path) -> None:
    tree, _ = init_tree(tmp_path / "tree")
    name = pending_name("fifo-item", Priority.HIGH, utc_now())
    os.mkfifo(tree.queue_dir("to-convert") / name)
    claim_and_die(tree)
    assert len(list(tree.claims_dir("to-convert").glob("*/*"))) == 1
    code = run_daemon_until_quiet(tree, tmp_path / "daemon.log")
    assert code == 0, (tmp_path / "daemon.log").read_text()
    reasons = [
        json.loads((entry / "reason.json").read_bytes())["reason"]
        for entry in tree.quarantine.iterdir()
    ]
    assert reasons == ["special_file"]


@pytest.mark.timeout(120)
def test_recovered_symlink_is_quarantined(tmp_path: Path) -> None:
    tree, _ = init_tree(tmp_path / "tree")
    decoy = tmp_path / "decoy.json"
    decoy_bytes = json.dumps({"id": "decoy", "payload": {"decoy": True}}).encode()
    decoy.write_bytes(decoy_bytes)
    name = pending_name("symlink-item", Priority.HIGH, utc_now())
    link = tree.queue_dir("to-convert") / name
    link.symlink_to(decoy)
    claim_and_die(tree)
    code = run_daemon_until_quiet(tree, tmp_path / "daemon.log")
    assert code == 0, (tmp_path / "daemon.log").read_text()
    assert decoy.read_bytes() == decoy_bytes
    entries = list(tree.quarantine.iterdir())
    assert len(entries) == 1
    reason = json.loads((entries[0] / "reason.json").read_bytes())
    assert reason["reason"] == "symlink"
    assert os.readlink(entries[0] / "item") == str(decoy)
    assert os.listdir(tree.queue_dir("to-convert")) == [".claims"]
