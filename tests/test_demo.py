"""Tests of ``quantd demo``: whole pipeline runs as subprocesses with the
real daemon, real worker processes and real SIGKILLs, plus the accounting
check on hand-made trees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import quantd
from quantd.demo.accounting import account
from quantd.demo.observe import TreeObserver

RUN_TIMEOUT_S = 170


class DemoRun:
    """A ``quantd demo`` subprocess in its own session."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.root = tmp_path / "tree"
        self.summary_path = tmp_path / "summary.json"
        self.output_path = tmp_path / "output.txt"
        command = [
            sys.executable,
            "-m",
            "quantd",
            "demo",
            "--root",
            str(self.root),
            "--summary-json",
            str(self.summary_path),
            *args,
        ]
        self.output = open(self.output_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self, timeout_s: float = RUN_TIMEOUT_S) -> int:
        return self.process.wait(timeout=timeout_s)

    def text(self) -> str:
        return self.output_path.read_text(errors="replace")

    def summary(self) -> dict[str, Any]:
        assert self.summary_path.exists(), f"no summary; output:\n{self.text()}"
        document: dict[str, Any] = json.loads(self.summary_path.read_text())
        return document

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.output.close()


@pytest.fixture
def demo_runs(tmp_path: Path) -> Iterator[list[DemoRun]]:
    runs: list[DemoRun] = []
    try:
        yield runs
    finally:
        for run in runs:
            run.kill()
            _kill_leftover_children(run)


def _kill_leftover_children(run: DemoRun) -> None:
    """SIGKILL any worker or daemon that the demo failed to stop."""
    if not run.summary_path.exists():
        return
    for record in json.loads(run.summary_path.read_text()).get("processes", []):
        if _running(record["pid"]):
            os.killpg(record["pid"], signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as file:
            state = file.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _assert_accounted(summary: dict[str, Any], expected_roots: int) -> None:
    assert summary["lost"] == []
    assert summary["duplicated"] == []
    assert summary["unexpected"] == []
    assert summary["leftovers"] == []
    assert summary["hypotheses"] == expected_roots
    assert summary["accounted"] == expected_roots
    assert len(summary["roots"]) == expected_roots
    for record in summary["roots"]:
        assert len(record["places"]) == 1, record
    assert summary["ok"] is True


def _assert_children_stopped(summary: dict[str, Any]) -> None:
    assert summary["processes"], "the summary lists no processes"
    for record in summary["processes"]:
        assert record["returncode"] is not None, record
        assert not _running(record["pid"]), record


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_small_run_accounts_every_root(
    tmp_path: Path, demo_runs: list[DemoRun]
) -> None:
    run = DemoRun(tmp_path, "--hypotheses", "3", "--workers", "1", "--work-s", "0.2")
    demo_runs.append(run)

    status = run.wait()

    assert status == 0, run.text()
    summary = run.summary()
    # Three proposed hypotheses plus the two invalid ones.
    _assert_accounted(summary, 5)
    _assert_children_stopped(summary)
    places = {r["hypothesis_id"]: r["place"] for r in summary["roots"]}
    assert places["hyp-7-invalid-markets"] == "failed"
    assert places["hyp-7-invalid-family"] == "failed"
    reasons = {r["hypothesis_id"]: r["reason"] for r in summary["roots"]}
    assert "unknown markets" in reasons["hyp-7-invalid-markets"]
    assert "unknown family" in reasons["hyp-7-invalid-family"]
    for record in summary["roots"]:
        if record["place"] != "failed":
            assert record["place"] in ("good", "prop_firm_ready", "rejected")
            assert record["verdict"] == record["place"]
            assert "out of sample" in record["headline"]
    assert [q["reason"] for q in summary["quarantined"]] == ["invalid_json"]
    assert summary["kills"] == []
    assert summary["recoveries"] == 0
    assert summary["daemon_counters"] is not None
    assert run.root.is_dir(), "a --root given by the user must never be removed"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_converted_items_pass_shell_worker(
    tmp_path: Path, demo_runs: list[DemoRun]
) -> None:
    run = DemoRun(
        tmp_path,
        *("--hypotheses", "3", "--workers", "1", "--work-s", "0"),
        "--no-bad-input",
    )
    demo_runs.append(run)

    status = run.wait()

    assert status == 0, run.text()
    summary = run.summary()
    _assert_accounted(summary, 3)
    kinds = {p["name"]: p["kind"] for p in summary["processes"]}
    assert kinds["converter-0"] == "shell"
    converted = [r for r in summary["roots"] if not r["direct"]]
    assert converted, "seed 7 proposes at least one hypothesis to convert"
    for record in converted:
        assert record["workers"][0] == "converter-0", record


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_chaos_recovers_without_loss(
    tmp_path: Path, demo_runs: list[DemoRun]
) -> None:
    run = DemoRun(
        tmp_path,
        *("--hypotheses", "6", "--workers", "2", "--work-s", "1"),
        *("--chaos", "--chaos-interval-s", "1", "--timeout-s", "150"),
    )
    demo_runs.append(run)

    status = run.wait()

    assert status == 0, run.text()
    summary = run.summary()
    _assert_accounted(summary, 8)
    _assert_children_stopped(summary)
    assert len(summary["kills"]) > 0
    assert summary["recoveries"] > 0
    assert summary["daemon_counters"]["recovered"] >= summary["recoveries"]
    assert summary["dead_lettered"] == 0
    killed = {kill["worker"] for kill in summary["kills"]}
    exits = {p["name"]: p["returncode"] for p in summary["processes"]}
    for worker in killed:
        assert exits[worker] == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_interrupt_stops_every_process(
    tmp_path: Path, demo_runs: list[DemoRun]
) -> None:
    run = DemoRun(tmp_path, "--hypotheses", "20", "--workers", "1", "--work-s", "2")
    demo_runs.append(run)
    deadline = time.monotonic() + 60
    while "pushed" not in run.text():
        assert run.process.poll() is None, run.text()
        assert time.monotonic() < deadline, run.text()
        time.sleep(0.1)

    run.process.send_signal(signal.SIGINT)
    status = run.wait()

    assert status == 130, run.text()
    summary = run.summary()
    assert summary["interrupted"] is True
    assert summary["ok"] is False
    _assert_children_stopped(summary)


@pytest.mark.timeout(60)
def test_demo_rejects_nonempty_root(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "keep.txt").write_text("user data\n")

    result = subprocess.run(
        [sys.executable, "-m", "quantd", "demo", "--root", str(tmp_path / "tree")],
        capture_output=True,
        text=True,
        timeout=50,
    )

    assert result.returncode == 1
    assert "not an empty directory" in result.stderr
    assert (tmp_path / "tree" / "keep.txt").read_text() == "user data\n"


# -- the accounting check on hand-made trees ------------------------------


def _finish_lineage(tree: quantd.Tree, root_id: str, output: str) -> None:
    """Route one claimed item through the stages into ``output``."""
    hops = (
        ("converter-9", "to-convert", "to-backtest"),
        ("backtester-9", "to-backtest", "to-optimize"),
        ("optimizer-9", "to-optimize", output),
    )
    for worker_id, queue, target in hops:
        with quantd.Worker(tree, worker_id) as worker:
            item = worker.claim(queue)
            assert item is not None and item.root_id == root_id
            worker.route(item, target, {"title": "t", "verdict": output})


def _account(tree: quantd.Tree, roots: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return account(
        TreeObserver(tree),
        roots,
        kills=[],
        daemon_counters=None,
        elapsed_s=1.0,
        interrupted=False,
        timed_out=False,
    )


def test_account_finds_lost_and_duplicated(tmp_path: Path) -> None:
    tree, _ = quantd.init_tree(tmp_path)
    with quantd.Worker(tree, "researcher-9") as researcher:
        done = researcher.push("to-convert", {"title": "done"})
        pending = researcher.push("to-convert", {"title": "pending"})
    _finish_lineage(tree, done, "good")
    # A second terminal item for the same root: a duplicate.
    with quantd.Worker(tree, "optimizer-9") as optimizer:
        duplicate = optimizer.push("rejected", {"title": "again"})
    path = next(tree.queue_dir("rejected").glob(f"*{duplicate}.json"))
    document = json.loads(path.read_text())
    document["root_id"] = done
    path.write_text(json.dumps(document))

    summary = _account(tree, {done: {"title": "done"}, pending: {"title": "p"}})

    assert summary["lost"] == [pending]
    assert summary["duplicated"] == [done]
    assert summary["ok"] is False
    assert [left["root_id"] for left in summary["leftovers"]] == [pending]
    assert summary["leftovers"][0]["state"] == "pending"


def test_account_counts_failed_root_once(tmp_path: Path) -> None:
    tree, _ = quantd.init_tree(tmp_path)
    with quantd.Worker(tree, "researcher-9") as researcher:
        root = researcher.push("to-convert", {"title": "bad"})
    with quantd.Worker(tree, "converter-9") as converter:
        item = converter.claim()
        assert item is not None
        converter.fail(item, "invalid payload: no markets")

    summary = _account(tree, {root: {"title": "bad"}})

    assert summary["ok"] is True
    assert summary["places"]["failed"] == 1
    assert summary["roots"][0]["reason"] == "invalid payload: no markets"
    assert summary["roots"][0]["workers"] == ["converter-9"]
