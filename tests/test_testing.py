"""The quantd.testing helpers, used as a user testing a worker would."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import quantd
from quantd.testing import (
    archived_items,
    claimed_items,
    drain,
    pending_items,
    push_item,
    reference_config_document,
    run_worker,
    temp_tree,
    worker_env,
)

CONVERTER = textwrap.dedent(
    """
    import quantd
    with quantd.Worker() as worker:
        while (item := worker.claim()) is not None:
            if item.payload.get("broken"):
                worker.fail(item, "cannot convert")
            else:
                worker.route(item, "to-backtest", {"code": item.payload["title"]})
    """
)


def test_temp_tree_is_removed_and_not_durable() -> None:
    with temp_tree() as tree:
        root = tree.root
        assert tree.durable is False
        assert tree.queue_dir("hypotheses").is_dir()
        assert tree.config.stages == quantd.reference_config().stages
    assert not root.exists()


def test_temp_tree_durable() -> None:
    with temp_tree(durable=True) as tree:
        assert tree.durable is True


def test_temp_tree_with_config_document() -> None:
    document = reference_config_document()
    document["queues"]["extra"] = "queues/extra"
    document["stages"]["researcher"]["produces"].append("extra")
    with temp_tree(document) as tree:
        assert tree.queue_dir("extra").is_dir()
        assert tree.config.source is not None
        item_id = quantd.Worker(tree, "researcher-1").push("extra", {})
        assert [d["id"] for d in pending_items(tree, "extra")] == [item_id]


def test_temp_tree_with_config_file(tmp_path: Path) -> None:
    config = Path(__file__).parent.parent / "config" / "quantd.toml"
    with temp_tree(config) as tree:
        assert tree.config.source == config


def test_push_item_and_readers() -> None:
    with temp_tree() as tree:
        low = push_item(tree, "to-convert", {"n": 1}, priority="low")
        high = push_item(tree, "to-convert", {"n": 2}, priority="high")
        pending = pending_items(tree, "to-convert")
        assert [d["id"] for d in pending] == [high, low]
        assert pending[0]["stage"] == "researcher"
        worker = quantd.Worker(tree, "converter-1")
        item = worker.claim()
        assert item is not None
        assert [d["id"] for d in claimed_items(tree, "to-convert")] == [high]
        worker.fail(item, "x")
        assert [d["id"] for d in archived_items(tree, "failed")] == [high]
        assert [d["id"] for d in drain(tree, "to-convert")] == [low]
        assert pending_items(tree, "to-convert") == []
        assert [d["id"] for d in archived_items(tree, "completed")] == [low]


def test_push_item_into_output_without_producer_stage() -> None:
    document = reference_config_document()
    document["outputs"]["orphan"] = "output/orphan"
    with temp_tree(document) as tree:
        push_item(tree, "orphan", {})
        (doc,) = pending_items(tree, "orphan")
        assert doc["stage"] == "testing"


@pytest.mark.timeout(120)
def test_run_worker_against_temp_tree() -> None:
    with temp_tree() as tree:
        push_item(tree, "to-convert", {"title": "RSI"}, priority="high")
        push_item(tree, "to-convert", {"title": "MACD", "broken": True})
        result = run_worker(
            [sys.executable, "-c", CONVERTER], tree, worker="converter-0"
        )
        assert result.returncode == 0, result.stderr
        assert [d["payload"] for d in pending_items(tree, "to-backtest")] == [
            {"code": "RSI"}
        ]
        assert [d["last_error"] for d in archived_items(tree, "failed")] == [
            "cannot convert"
        ]
        assert [d["status"] for d in archived_items(tree, "completed")] == ["routed"]


@pytest.mark.timeout(60)
def test_run_worker_timeout_kills_session() -> None:
    with temp_tree() as tree:
        marker = tree.root / "grandchild.pid"
        script = f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(marker)!r}, "w").write(str(child.pid))
        time.sleep(60)
        """
        started = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired):
            run_worker(
                [sys.executable, "-c", textwrap.dedent(script)], tree, timeout_s=2
            )
        assert time.monotonic() - started < 30
        grandchild = int(marker.read_text())
        deadline = time.monotonic() + 10
        while Path(f"/proc/{grandchild}").exists():
            stat = Path(f"/proc/{grandchild}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                break
            assert time.monotonic() < deadline, "grandchild still running"
            time.sleep(0.05)


def test_worker_env() -> None:
    with temp_tree() as tree:
        env = worker_env(tree, "converter-0", "converter")
        assert env["QUANTD_ROOT"] == str(tree.root)
        assert env["QUANTD_CONFIG"] == str(tree.config.source)
        assert env["QUANTD_WORKER"] == "converter-0"
        assert env["QUANTD_STAGE"] == "converter"
