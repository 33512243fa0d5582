"""The daemon's lifecycle: one per tree, signals, reloads, the watcher, and
bad input end to end."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_support import (
    Daemons,
    configure,
    quarantine_entries,
    read_json,
    reasons,
    wait_for,
)

import quantd
from quantd.daemon.service import Daemon, sweep_interval_s
from quantd.tree import Tree


@pytest.fixture
def quick_tree(tmp_path: Path) -> Tree:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    return configure(
        root, write_grace_s=0.2, status_debounce_s=0.05, reconcile_interval_s=3600.0
    )


@pytest.fixture
def in_process(quick_tree: Tree) -> Iterator[Daemon]:
    """A Daemon object driven by the test, without its lock or signals."""
    daemon = Daemon(str(quick_tree.root))
    try:
        yield daemon
    finally:
        daemon.watcher.stop()
        daemon.close()


@pytest.mark.timeout(120)
def test_second_daemon_exits(quick_tree: Tree, daemons: Daemons) -> None:
    first = daemons.start(quick_tree.root)

    second = daemons.start(quick_tree.root, ready=False)

    assert second.process.wait(timeout=60) == 1
    assert f"pid {first.pid}" in second.text()
    assert first.process.poll() is None


@pytest.mark.timeout(120)
def test_sigterm_writes_final_status(quick_tree: Tree, daemons: Daemons) -> None:
    daemon = daemons.start(quick_tree.root)

    assert daemon.stop() == 0

    document = read_json(quick_tree.status_path)
    assert document["daemon"]["pid"] == daemon.pid
    assert document["daemon"]["state"] == "stopped"
    assert daemon.event("daemon_stopping") is not None
    assert daemon.event("daemon_stopped") is not None


@pytest.mark.timeout(120)
def test_sighup_broken_config_kept(quick_tree: Tree, daemons: Daemons) -> None:
    daemon = daemons.start(quick_tree.root)
    config = quick_tree.root / "quantd.toml"
    good = config.read_text()
    config.write_text("[daemon\nbroken")

    daemon.signal(signal.SIGHUP)

    wait_for(lambda: daemon.event("config_reload_failed"), what="reload failure")
    assert daemon.process.poll() is None
    bad = quick_tree.queue_dir("to-convert") / "junk.json"
    bad.write_bytes(b"{")
    wait_for(lambda: not bad.exists(), what="quarantine after a failed reload")

    config.write_text(good)
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: daemon.event("config_reloaded"), what="reload")
    # The sweep interval is an hour, so only the new watcher can see this.
    late = quick_tree.queue_dir("to-convert") / "late.json"
    late.write_bytes(b"{")
    wait_for(lambda: not late.exists(), what="quarantine after a reload")
    assert daemon.stop() == 0


@pytest.mark.timeout(120)
def test_bad_input_quarantined_end_to_end(
    quick_tree: Tree, daemons: Daemons, tmp_path: Path
) -> None:
    daemons.start(quick_tree.root)
    directory = quick_tree.queue_dir("to-backtest")
    target = tmp_path / "target.json"
    target.write_bytes(b'{"id": "t1", "payload": {}}')
    cases = {
        "a.json": b"{not json",
        "b.json": b'{"id": "b", "payload": 3}',
        "c.json": b"",
        "v.json": b'{"id": "v", "stage": "researcher", "payload": {}}',
    }
    for name, data in cases.items():
        (directory / name).write_bytes(data)
    (directory / "link.json").symlink_to(target)
    os.mkfifo(directory / "pipe.json")
    (directory / "sub").mkdir()
    with open(os.path.join(os.fsencode(directory), b"\xfe.json"), "wb") as file:
        file.write(b"{}")

    wait_for(lambda: len(os.listdir(directory)) == 0, what="an empty queue")

    assert sorted(reasons(quick_tree)) == sorted(
        [
            "invalid_json",
            "invalid_item",
            "empty_file",
            "routing_violation",
            "symlink",
            "special_file",
            "directory",
            "bad_name",
        ]
    )
    for entry in quarantine_entries(quick_tree):
        record = read_json(entry / "reason.json")
        name = os.fsdecode(bytes.fromhex(record["original_name_hex"]))
        if name in cases:
            assert (entry / "item").read_bytes() == cases[name]
    assert target.read_bytes() == b'{"id": "t1", "payload": {}}'
    assert os.listdir(directory) == []


def test_dead_observer_restarted(in_process: Daemon, quick_tree: Tree) -> None:
    now = time.time()
    in_process.start(now)
    observer = in_process.watcher.observer
    observer.stop()
    observer.join(timeout=30)
    bad = quick_tree.queue_dir("to-convert") / "missed.json"
    bad.write_bytes(b"{")

    in_process.step([], now + 1)

    assert not bad.exists()
    assert in_process.journal.counters["watcher_restarts"] == 1
    assert in_process.watcher.info()["alive"] is True


def test_dropped_events_caught_by_sweep(in_process: Daemon, quick_tree: Tree) -> None:
    now = time.time()
    in_process.start(now)
    bad = quick_tree.queue_dir("to-convert") / "missed.json"
    bad.write_bytes(b"{")
    wait_for(lambda: in_process.watcher._batch.events, what="the event")
    in_process.watcher.drain()

    in_process.step([], now + 1)
    assert bad.exists()

    interval = quick_tree.config.daemon.reconcile_interval_s
    in_process.step([], now + interval + 1)
    assert not bad.exists()


def test_event_burst_triggers_full_sweep(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    tree = configure(root, event_burst_limit=5)
    daemon = Daemon(str(root))
    try:
        now = time.time()
        daemon.start(now)
        directory = tree.queue_dir("to-convert")
        for n in range(10):
            (directory / f"x{n}.json").write_bytes(b"{}")
        wait_for(lambda: daemon.watcher._batch.events > 5, what="a burst")

        daemon.step([], now + 60)

        assert daemon.journal.counters["overflows_suspected"] == 1
        assert len(quarantine_entries(tree)) == 10
    finally:
        daemon.watcher.stop()
        daemon.close()


@pytest.mark.timeout(120)
def test_notify_ready_watchdog_stopping(
    quick_tree: Tree, daemons: Daemons, tmp_path: Path
) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(60)
        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"}
        daemon = daemons.start(quick_tree.root, env)

        seen: list[str] = []

        def received(prefix: str) -> str:
            while not any(m.startswith(prefix) for m in seen):
                seen.extend(server.recv(4096).decode().splitlines())
            return next(m for m in seen if m.startswith(prefix))

        assert received("READY=") == "READY=1"
        assert received("STATUS=").startswith("STATUS=running")
        assert received("WATCHDOG=") == "WATCHDOG=1"
        assert daemon.stop() == 0
        assert received("STOPPING=") == "STOPPING=1"
    assert seen.index("READY=1") < seen.index("STOPPING=1")


@pytest.mark.timeout(120)
def test_status_follows_changes(tmp_path: Path, daemons: Daemons) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    # With an hour between periodic writes, only a change can trigger one.
    tree = configure(root, status_interval_s=3600.0, status_debounce_s=0.05)
    daemons.start(root)

    with quantd.Worker(tree, "researcher-1") as worker:
        worker.push("to-convert", {"n": 1})

    def pending() -> int:
        queues = read_json(tree.status_path)["queues"]
        return int(queues["to-convert"]["pending"]["medium"])

    wait_for(lambda: pending() == 1, what="status.json showing the push")


@pytest.mark.timeout(120)
def test_status_shows_push_after_quiet(tmp_path: Path, daemons: Daemons) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    # Periodic writes are a minute apart, so a push seen within 5 s was
    # written because of the change, not by the heartbeat.
    tree = configure(root, status_interval_s=60.0, reconcile_interval_s=3600.0)
    daemon = daemons.start(root)
    wait_for(tree.status_path.exists, what="the first status.json")
    sweep = daemon.event("reconcile_finished")
    assert sweep is not None
    assert sweep["interval_s"] == 3600.0
    assert read_json(tree.status_path)["daemon"]["reconcile_interval_s"] == 3600.0

    def pending() -> int:
        queues = read_json(tree.status_path)["queues"]
        return int(queues["to-convert"]["pending"]["medium"])

    with quantd.Worker(tree, "researcher-1") as worker:
        worker.push("to-convert", {"n": 1})
        wait_for(lambda: pending() == 1, 5.0, "status.json showing the first push")
        # Pushes inside one debounce window share the write at its end.
        worker.push("to-convert", {"n": 2})
        worker.push("to-convert", {"n": 3})
        wait_for(lambda: pending() == 3, 5.0, "status.json showing later pushes")


@pytest.mark.timeout(120)
def test_heartbeat_reuses_last_scan(tmp_path: Path, daemons: Daemons) -> None:
    root = tmp_path / "tree"
    quantd.init_tree(root)
    tree = configure(
        root, status_interval_s=0.2, status_debounce_s=0.05, reconcile_interval_s=3600.0
    )
    daemons.start(root)
    first = wait_for(
        lambda: tree.status_path.exists() and read_json(tree.status_path),
        what="the first status.json",
    )

    def later_than(previous: dict[str, Any]) -> dict[str, Any] | None:
        document = read_json(tree.status_path)
        if document["generated_at"] == previous["generated_at"]:
            return None
        return document

    second = wait_for(lambda: later_than(first), what="a heartbeat write")
    third = wait_for(lambda: later_than(second), what="another heartbeat write")
    assert first["daemon"]["scanned_at"] is not None
    assert second["daemon"]["scanned_at"] == first["daemon"]["scanned_at"]
    assert third["daemon"]["scanned_at"] == first["daemon"]["scanned_at"]
    assert third["queues"] == first["queues"]

    with quantd.Worker(tree, "researcher-1") as worker:
        worker.push("to-convert", {"n": 1})

    def rescanned() -> dict[str, Any] | None:
        document = read_json(tree.status_path)
        if document["daemon"]["scanned_at"] == first["daemon"]["scanned_at"]:
            return None
        return document

    after = wait_for(rescanned, what="a rescan after the push")
    assert after["queues"]["to-convert"]["pending"]["medium"] == 1


def test_sweep_interval_grows_with_cost() -> None:
    assert sweep_interval_s(30.0, 0.1, healthy=True) == 30.0
    assert sweep_interval_s(30.0, 0.5, healthy=True) == 50.0
    assert sweep_interval_s(30.0, 2.0, healthy=True) == 200.0
    assert sweep_interval_s(30.0, 60.0, healthy=True) == 300.0


def test_sweep_interval_configured_when_unhealthy() -> None:
    assert sweep_interval_s(30.0, 2.0, healthy=False) == 30.0
    assert sweep_interval_s(30.0, 0.1, healthy=False) == 30.0


def test_sweep_interval_published(in_process: Daemon, quick_tree: Tree) -> None:
    now = time.time()
    in_process.start(now)

    document = read_json(quick_tree.status_path)
    configured = quick_tree.config.daemon.reconcile_interval_s
    assert document["daemon"]["reconcile_interval_s"] == configured
    summary = in_process.full_reconcile(now)
    assert summary["interval_s"] == configured
    assert in_process._next_reconcile == now + configured


def test_status_leading_edge_then_coalesced(
    in_process: Daemon, quick_tree: Tree
) -> None:
    now = time.time()
    in_process.start(now)
    started_scan = read_json(quick_tree.status_path)["daemon"]["scanned_at"]

    def push_and_wait(n: int) -> None:
        with quantd.Worker(quick_tree, "researcher-1") as worker:
            worker.push("to-convert", {"n": n})
        wait_for(lambda: in_process.watcher._batch.events, what="the push event")

    # Ten seconds after the last scan the first change is written at once.
    push_and_wait(1)
    in_process.step([], now + 10)
    first = read_json(quick_tree.status_path)
    assert first["daemon"]["scanned_at"] != started_scan
    assert first["queues"]["to-convert"]["pending"]["medium"] == 1

    # A change right after that scan waits for the end of the window.
    push_and_wait(2)
    in_process.step([], now + 10.001)
    due = in_process._status_due
    assert due is not None
    assert due > now + 10.001
    held = read_json(quick_tree.status_path)
    assert held["daemon"]["scanned_at"] == first["daemon"]["scanned_at"]

    in_process.step([], due)
    second = read_json(quick_tree.status_path)
    assert second["daemon"]["scanned_at"] != first["daemon"]["scanned_at"]
    assert second["queues"]["to-convert"]["pending"]["medium"] == 2
    assert in_process._status_due is None
