"""Every queue that the claim+complete drain is run against.

A contender fills a queue in the parent process, then each worker process
opens its own consumer, whose ``step`` claims one item, completes it and
returns the item's number (None once the queue is empty). quantd, the
baseline and dirq keep one file per item; persist-queue, litequeue and
diskcache keep items in an SQLite database.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import quantd
from bench import baseline
from bench.workload import PRODUCER, QUEUE, count_files, new_tree, payload

Step = Callable[[], "int | None"]
# How long an SQLite-based peer waits for another process's lock before it
# raises. Generous, because a load spike on the machine should not fail a run.
SQLITE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Contender:
    """A queue implementation and the mode it is measured in."""

    name: str
    label: str
    # The library calls that claim and complete, and what is fsynced.
    mode: str
    fill: Callable[[Path, int], None]
    open_consumer: Callable[[Path, int], Step]
    remaining: Callable[[Path], int]
    # Why several consumer processes are not supported; None when they are.
    multi_process_unsupported: str | None = None


# -- quantd ----------------------------------------------------------------


def _quantd_fill(root: Path, count: int) -> None:
    tree = new_tree(root, durable=False)
    with quantd.Worker(tree, PRODUCER) as worker:
        for number in range(count):
            worker.push(QUEUE, payload(number))


def _quantd_consumer(root: Path, index: int) -> Step:
    worker = quantd.Worker(quantd.open_tree(root, durable=False), f"converter-{index}")

    def step() -> int | None:
        item = worker.claim(QUEUE)
        if item is None:
            return None
        worker.complete(item)
        return int(item.payload["n"])

    return step


def _quantd_remaining(root: Path) -> int:
    queue_dir = quantd.open_tree(root).queue_dir(QUEUE)
    claims = queue_dir / ".claims"
    held = (
        sum(count_files(holder) for holder in claims.iterdir())
        if claims.exists()
        else 0
    )
    return count_files(queue_dir) + held


# -- baseline --------------------------------------------------------------


def _baseline_fill(root: Path, count: int) -> None:
    queue_dir = baseline.make_tree(root)
    for number in range(count):
        baseline.push(queue_dir, baseline.new_item(payload(number), PRODUCER))


def _baseline_consumer(root: Path, index: int) -> Step:
    queue_dir = root / "queues" / QUEUE
    worker = f"converter-{index}"

    def step() -> int | None:
        item = baseline.claim(queue_dir, worker)
        if item is None:
            return None
        baseline.complete(queue_dir, str(item["id"]))
        return int(item["payload"]["n"])

    return step


def _baseline_remaining(root: Path) -> int:
    return count_files(root / "queues" / QUEUE)


# -- persist-queue ---------------------------------------------------------


def _persistqueue_open(root: Path) -> Any:
    import persistqueue

    queue = persistqueue.SQLiteAckQueue(
        str(root / "persistqueue"), auto_resume=False, timeout=SQLITE_TIMEOUT_S
    )
    # persist-queue opens SQLite in WAL mode with the default synchronous=FULL,
    # an fsync per commit, and has no setting for it; NORMAL matches the
    # not-durable mode every other contender runs in.
    connections: list[Any] = [queue._getter, queue._putter]
    for connection in {id(c): c for c in connections}.values():
        connection.execute("PRAGMA synchronous=NORMAL")
    return queue


def _persistqueue_fill(root: Path, count: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    queue = _persistqueue_open(root)
    for number in range(count):
        queue.put(payload(number))


def _persistqueue_consumer(root: Path, index: int) -> Step:
    from persistqueue.exceptions import Empty

    queue = _persistqueue_open(root)

    def step() -> int | None:
        try:
            item = queue.get(block=False)
        except Empty:
            return None
        queue.ack(item)
        return int(item["n"])

    return step


def _persistqueue_remaining(root: Path) -> int:
    queue = _persistqueue_open(root)
    return int(queue.ready_count() + queue.unack_count())


# -- litequeue -------------------------------------------------------------


def _litequeue_open(root: Path) -> Any:
    from litequeue import LiteQueue

    # sqlite3's default busy timeout of 5 s is too short for 4 processes on
    # a loaded 2-core machine: a waiting pop raised "database is locked".
    return LiteQueue(str(root / "litequeue.sqlite3"), timeout=SQLITE_TIMEOUT_S)


def _litequeue_fill(root: Path, count: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    queue = _litequeue_open(root)
    for number in range(count):
        queue.put(json.dumps(payload(number)))


def _litequeue_consumer(root: Path, index: int) -> Step:
    queue = _litequeue_open(root)

    def step() -> int | None:
        message = queue.pop()
        if message is None:
            return None
        queue.done(message.message_id)
        return int(json.loads(message.data)["n"])

    return step


def _litequeue_remaining(root: Path) -> int:
    queue = _litequeue_open(root)
    row = queue.conn.execute(
        f"SELECT COUNT(*) FROM {queue.table} WHERE done_time IS NULL"
    ).fetchone()
    return int(row[0])


# -- dirq ------------------------------------------------------------------


def _dirq_open(root: Path) -> Any:
    from dirq.QueueSimple import QueueSimple

    return QueueSimple(str(root / "dirq"))


def _dirq_fill(root: Path, count: int) -> None:
    queue = _dirq_open(root)
    for number in range(count):
        queue.add(json.dumps(payload(number)).encode())


def _dirq_consumer(root: Path, index: int) -> Step:
    queue = _dirq_open(root)
    elements = _dirq_elements(queue)

    def step() -> int | None:
        return next(elements, None)

    return step


def _dirq_elements(queue: Any) -> Any:
    """Yield item numbers the way dirq's documented consumer does: iterate,
    lock, read, remove; pass over the queue again until a pass finds none."""
    while True:
        found = False
        for name in queue:
            if not queue.lock(name):
                continue
            data = queue.get(name)
            queue.remove(name)
            found = True
            yield int(json.loads(data)["n"])
        if not found:
            return


def _dirq_remaining(root: Path) -> int:
    return int(_dirq_open(root).count())


# -- diskcache -------------------------------------------------------------


def _diskcache_open(root: Path) -> Any:
    from diskcache import Deque

    # diskcache's own SQLite timeout is already 60 s.
    return Deque(directory=str(root / "diskcache"))


def _diskcache_fill(root: Path, count: int) -> None:
    deque = _diskcache_open(root)
    deque.extend(payload(number) for number in range(count))


def _diskcache_consumer(root: Path, index: int) -> Step:
    deque = _diskcache_open(root)

    def step() -> int | None:
        try:
            item = deque.popleft()
        except IndexError:
            return None
        return int(item["n"])

    return step


def _diskcache_remaining(root: Path) -> int:
    return len(_diskcache_open(root))


CONTENDERS: dict[str, Contender] = {
    contender.name: contender
    for contender in (
        Contender(
            "quantd",
            "quantd",
            "Worker.claim + Worker.complete; tree durable=false (no fsync)",
            _quantd_fill,
            _quantd_consumer,
            _quantd_remaining,
        ),
        Contender(
            "baseline",
            "reference protocol",
            "listdir+sort+rename claim, listdir+move complete; no fsync",
            _baseline_fill,
            _baseline_consumer,
            _baseline_remaining,
        ),
        Contender(
            "persistqueue",
            "persist-queue SQLiteAckQueue",
            "get + ack; SQLite WAL, synchronous=NORMAL (no fsync per commit)",
            _persistqueue_fill,
            _persistqueue_consumer,
            _persistqueue_remaining,
            multi_process_unsupported=(
                "get() selects the next row and marks it taken in two separate "
                "statements, serialised only by a threading.Lock inside one "
                "process, so two processes can take the same row; opening the "
                "queue with the default auto_resume=True also returns every "
                "other process's unacknowledged items to ready"
            ),
        ),
        Contender(
            "litequeue",
            "litequeue",
            "pop + done; SQLite WAL, synchronous=NORMAL (no fsync per commit)",
            _litequeue_fill,
            _litequeue_consumer,
            _litequeue_remaining,
        ),
        Contender(
            "dirq",
            "dirq QueueSimple",
            "iterate + lock (hard link) + get + remove; no fsync",
            _dirq_fill,
            _dirq_consumer,
            _dirq_remaining,
        ),
        Contender(
            "diskcache",
            "diskcache Deque",
            "popleft, which deletes the item: no separate complete, so an item "
            "is lost if its consumer dies; SQLite WAL, synchronous=NORMAL",
            _diskcache_fill,
            _diskcache_consumer,
            _diskcache_remaining,
        ),
    )
}


def environment_note() -> str:
    """Return the versions of the peer libraries, for the report."""
    from importlib.metadata import version

    names = ("persist-queue", "litequeue", "dirq", "diskcache")
    return (
        ", ".join(f"{name} {version(name)}" for name in names)
        + f"; SQLite {_sqlite_version()}"
    )


def _sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version
