"""Disk limits and quantd's push rate, measured in alternation.

The disk limit is the cheapest way to put one file into a directory
atomically: write a new file of an item's size in a temporary directory,
then rename it into the queue directory; the durable limit adds an fsync
of the file before the rename and of the directory after it, which is what
a durable push needs at minimum. Each repeat measures the limit and the push
back to back, so both see the same machine load.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import quantd
from bench.results import Results, check_exactly_once
from bench.workload import PRODUCER, QUEUE, Sizes, item_bytes, new_tree, payload

GROUP = "push"


def measure(results: Results, sizes: Sizes, scratch: Path) -> None:
    """Record the disk limits and the push rates, ``sizes.repeats`` times."""
    data = item_bytes()
    for repeat in range(sizes.repeats):
        work = scratch / f"push-{repeat}"
        for durable in (False, True):
            count = sizes.limit_durable_writes if durable else sizes.limit_writes
            limit = write_rename_rate(work / f"limit-{durable}", data, count, durable)
            pushes = sizes.durable_pushes if durable else sizes.pushes
            rate = push_rate(results, work / f"tree-{durable}", pushes, durable)
            suffix = "_durable" if durable else ""
            mode = "write+fsync+rename+fsync(dir)" if durable else "write+rename"
            results.add(
                f"limit_push{suffix}_per_s",
                limit,
                unit="ops/s",
                group=GROUP,
                label=f"disk limit: {mode}",
            )
            results.add(
                f"push{suffix}_per_s",
                rate,
                unit="ops/s",
                group=GROUP,
                label=f"quantd push, {'durable' if durable else 'not durable'}",
            )
            results.add(
                f"push{suffix}_vs_limit",
                rate / limit,
                unit="ratio",
                group=GROUP,
                label=f"push{suffix} / disk limit, same repeat",
            )
        shutil.rmtree(work)


def write_rename_rate(work: Path, data: bytes, count: int, durable: bool) -> float:
    """Return how many files per second can be written and renamed into a
    directory, with the fsyncs a durable push needs when ``durable``."""
    tmp = work / "tmp"
    queue = work / "queue"
    tmp.mkdir(parents=True)
    queue.mkdir()
    queue_fd = os.open(queue, os.O_RDONLY | os.O_DIRECTORY)
    try:
        started = time.perf_counter()
        for number in range(count):
            temp = tmp / f"{number}.tmp"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            os.write(fd, data)
            if durable:
                os.fsync(fd)
            os.close(fd)
            os.rename(temp, queue / f"{number}.json")
            if durable:
                os.fsync(queue_fd)
        elapsed = time.perf_counter() - started
    finally:
        os.close(queue_fd)
    return count / elapsed


def push_rate(results: Results, root: Path, count: int, durable: bool) -> float:
    """Return quantd's push rate from one producer, and check that every
    pushed item is pending exactly once."""
    tree = new_tree(root, durable=durable)
    with quantd.Worker(tree, PRODUCER) as worker:
        started = time.perf_counter()
        for number in range(count):
            worker.push(QUEUE, payload(number))
        elapsed = time.perf_counter() - started
    what = f"push (durable={durable})"
    check_exactly_once(results, what, set(range(count)), _pending_numbers(tree))
    return count / elapsed


def _pending_numbers(tree: quantd.Tree) -> list[int]:
    directory = tree.queue_dir(QUEUE)
    return [
        int(json.loads(path.read_bytes())["payload"]["n"])
        for path in directory.glob("*.json")
    ]
