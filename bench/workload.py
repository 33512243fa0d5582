"""Sizes of a run, the payload every contender moves, and fast tree fills."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import quantd
from quantd import filestore, fsutil
from quantd.items import Priority, pending_name, utc_now

QUEUE = "to-convert"
PRODUCER = "researcher-0"


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does; ``quick`` keeps a run short."""

    repeats: int
    limit_writes: int
    limit_durable_writes: int
    pushes: int
    durable_pushes: int
    drain_items: int
    depths: tuple[int, ...]
    depth_claims: int
    # The baseline lists the whole queue on every claim, so at depth it
    # times fewer claims to keep the run short; the rate is per claim.
    baseline_depth_claims: int
    handoffs: int
    # Hand-offs to a claimer that has claimed nothing for longer than the
    # watcher's 0.5 s grouping delay for moves out of a watched directory.
    idle_handoffs: int
    idle_cpu_s: float
    recovery_victims: int
    status_samples: int
    # Pending items of the tree the daemon's footprint is measured on; 0
    # leaves the footprint out.
    daemon_tree_items: int
    # Longer than the daemon's 30 s periodic reconcile, so that one falls
    # inside the window.
    daemon_idle_s: float


FULL = Sizes(
    repeats=3,
    limit_writes=3000,
    limit_durable_writes=300,
    pushes=3000,
    durable_pushes=300,
    drain_items=10_000,
    depths=(1_000, 10_000, 100_000),
    depth_claims=500,
    baseline_depth_claims=100,
    handoffs=50,
    idle_handoffs=10,
    idle_cpu_s=3.0,
    recovery_victims=15,
    status_samples=10,
    daemon_tree_items=100_000,
    daemon_idle_s=35.0,
)

QUICK = Sizes(
    repeats=1,
    limit_writes=500,
    limit_durable_writes=50,
    pushes=500,
    durable_pushes=50,
    drain_items=400,
    # Filling a queue of 100,000 files takes longer than the whole quick run.
    depths=(1_000, 10_000),
    depth_claims=100,
    baseline_depth_claims=10,
    handoffs=20,
    idle_handoffs=2,
    idle_cpu_s=1.0,
    recovery_victims=3,
    status_samples=3,
    daemon_tree_items=0,
    daemon_idle_s=0.0,
)


def payload(number: int) -> dict[str, Any]:
    """Return the payload of item ``number``: a small research hypothesis."""
    return {
        "n": number,
        "title": "RSI divergence on index futures",
        "hypothesis": "Bullish RSI divergence on the 15-minute chart " * 4,
        "markets": ["ES", "NQ"],
    }


def new_tree(root: Path, *, durable: bool) -> quantd.Tree:
    """Create a tree with the reference configuration at ``root``."""
    quantd.init_tree(root)
    return quantd.open_tree(root, durable=durable)


def item_bytes() -> bytes:
    """Return the encoded document of one pushed item, for sizing raw writes."""
    now = utc_now()
    document = filestore.new_document(
        payload(0),
        priority=Priority.MEDIUM,
        stage="researcher",
        worker=PRODUCER,
        now=now,
        history=[
            {
                "event": "pushed",
                "at": "2026-01-01T00:00:00.000000Z",
                "queue": QUEUE,
                "worker": PRODUCER,
                "stage": "researcher",
                "host": "bench-host",
            }
        ],
    )
    return fsutil.dump_json(document)


def fill_quantd_queue(tree: quantd.Tree, first: int, count: int) -> None:
    """Write ``count`` pending items numbered from ``first`` straight into
    the queue directory.

    Only for building deep queues quickly: each file gets the name and
    content a push would give it, but without the temporary file and the
    rename, so it is never used where pushes are what is measured.
    """
    directory = tree.queue_dir(QUEUE)
    for number in range(first, first + count):
        now = utc_now()
        document = filestore.new_document(
            payload(number),
            priority=Priority.MEDIUM,
            stage="researcher",
            worker=PRODUCER,
            now=now,
            history=[],
        )
        name = pending_name(str(document["id"]), Priority.MEDIUM, now)
        _write_new(directory / name, fsutil.dump_json(document))


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def count_files(directory: Path, suffix: str = ".json") -> int:
    """Count the entries of ``directory`` whose names end with ``suffix``."""
    with os.scandir(directory) as scan:
        return sum(1 for entry in scan if entry.name.endswith(suffix))
