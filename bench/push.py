"""Disk limits and quantd's push rate, measured in alternation.

The disk limit is the cheapest way to put one file into a directory
atomically: write a new file of an item's size in a temporary directory,
then rename it into the queue directory. The durable limit adds an fsync
of the file before the rename and of the directory after it, which is what
a durable push needs at minimum. Each repeat alternates small chunks of
limit writes and pushes and adds up the time of each, so that both see the
same machine load even when it changes within seconds.
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
CHUNKS = 10


def measure(results: Results, sizes: Sizes, scratch: Path) -> None:
    """Record the disk limits and the push rates, ``sizes.repeats`` times."""
    for repeat in range(sizes.repeats):
        work = scratch / f"push-{repeat}"
        for durable in (False, True):
            writes = sizes.limit_durable_writes if durable else sizes.limit_writes
            pushes = sizes.durable_pushes if durable else sizes.pushes
            limit, rate = _alternate(
                results, work / str(durable), writes, pushes, durable
            )
            _record(results, durable, limit, rate)
        shutil.rmtree(work)


def _alternate(
    results: Results, work: Path, writes: int, pushes: int, durable: bool
) -> tuple[float, float]:
    """Return the limit's and the push's rates, measured in alternating
    chunks, and check that every pushed item is pending exactly once."""
    limit = RawWriter(work / "raw", item_bytes(), durable)
    tree = new_tree(work / "tree", durable=durable)
    limit_s = push_s = 0.0
    with quantd.Worker(tree, PRODUCER) as worker:
        for chunk in range(CHUNKS):
            limit_s += limit.write(writes // CHUNKS)
            first = chunk * (pushes // CHUNKS)
            started = time.perf_counter()
            for number in range(first, first + pushes // CHUNKS):
                worker.push(QUEUE, payload(number))
            push_s += time.perf_counter() - started
    limit.close()
    total = CHUNKS * (pushes // CHUNKS)
    what = f"push (durable={durable})"
    check_exactly_once(results, what, set(range(total)), _pending_numbers(tree))
    return CHUNKS * (writes // CHUNKS) / limit_s, total / push_s


def _record(results: Results, durable: bool, limit: float, rate: float) -> None:
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


class RawWriter:
    """Writes files and renames them into a directory, as fast as Python
    can issue the system calls, with the fsyncs of a durable push when
    ``durable``."""

    def __init__(self, work: Path, data: bytes, durable: bool) -> None:
        self.tmp = work / "tmp"
        self.queue = work / "queue"
        self.tmp.mkdir(parents=True)
        self.queue.mkdir()
        self.data = data
        self.durable = durable
        self.written = 0
        self._queue_fd = os.open(self.queue, os.O_RDONLY | os.O_DIRECTORY)

    def write(self, count: int) -> float:
        """Write and rename ``count`` files; return the seconds it took."""
        started = time.perf_counter()
        for number in range(self.written, self.written + count):
            temp = self.tmp / f"{number}.tmp"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            os.write(fd, self.data)
            if self.durable:
                os.fsync(fd)
            os.close(fd)
            os.rename(temp, self.queue / f"{number}.json")
            if self.durable:
                os.fsync(self._queue_fd)
        self.written += count
        return time.perf_counter() - started

    def close(self) -> None:
        os.close(self._queue_fd)


def _pending_numbers(tree: quantd.Tree) -> list[int]:
    directory = tree.queue_dir(QUEUE)
    return [
        int(json.loads(path.read_bytes())["payload"]["n"])
        for path in directory.glob("*.json")
    ]
