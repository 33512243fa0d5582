"""A light soak worker: claims, does a tiny computation, routes.

Run as ``python -m soak_lib.worker`` by the soak driver. The researcher
pushes new items, each with a sequence number, and appends ``<seq> <id>``
to its ledger once the push returned. Other stages decide what to do from
the sequence number (see :mod:`soak_lib.plan`). Every outcome is logged as
one JSON line, so the driver can count them after the run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from quantd import ClaimLost, Item, Worker, faults, open_tree
from quantd.filestore import new_document
from quantd.items import Priority, format_time, utc_now
from quantd.transitions import publish
from soak_lib import plan

BUG_ARCHIVE_BEFORE_ROUTE = "archive-before-route"
# Fault point of the deliberately broken route: between archiving the
# claim and pushing its successor.
BUG_FAULT_POINT = "soak.after_archive"
CLAIM_WAIT_S = 0.5
BACKLOG_POLL_S = 0.05


class _Stop:
    requested = False


def _request_stop(signum: int, frame: FrameType | None) -> None:
    _Stop.requested = True


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _request_stop)
    tree = open_tree(args.root)
    log = open(args.log, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    rng = random.Random(f"{args.worker}:{os.getpid()}")
    _log(log, "worker_started", pid=os.getpid(), faults=os.environ.get("QUANTD_FAULTS"))
    with Worker(tree, args.worker) as worker:
        if worker.stage is None:
            raise SystemExit(f"worker id {args.worker!r} matches no stage")
        if worker.stage.name == plan.RESEARCHER:
            _run_researcher(worker, args, log)
        else:
            _run_consumer(worker, args, log, rng)
    _log(log, "worker_stopped", pid=os.getpid())
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="soak_lib.worker")
    parser.add_argument("--root", required=True)
    parser.add_argument("--worker", required=True, help="worker id")
    parser.add_argument("--log", required=True, help="JSON-lines event log")
    parser.add_argument("--run", required=True, help="soak run id, put in payloads")
    parser.add_argument("--work-ms", type=float, default=20.0)
    parser.add_argument("--bug", choices=[BUG_ARCHIVE_BEFORE_ROUTE])
    parser.add_argument(
        "--poison-dir", help="where to leave a mark before dying of a poison item"
    )
    # Researcher only: which sequence numbers to push.
    parser.add_argument("--ledger")
    parser.add_argument("--first-seq", type=int, default=0)
    parser.add_argument("--seq-step", type=int, default=1)
    parser.add_argument("--items", type=int, help="push sequence numbers below this")
    parser.add_argument("--until", type=float, help="stop pushing at this epoch time")
    parser.add_argument(
        "--backlog",
        type=int,
        default=40,
        help="pause pushing while the target queue contains this many entries",
    )
    return parser.parse_args(argv)


def _log(log: TextIO, event: str, **fields: Any) -> None:
    record = {"event": event, "at": time.time(), **fields}
    log.write(json.dumps(record) + "\n")


# -- researcher ------------------------------------------------------------


def _run_researcher(worker: Worker, args: argparse.Namespace, log: TextIO) -> None:
    ledger_path = Path(args.ledger)
    done = _ledger_seqs(ledger_path)
    with open(ledger_path, "a", buffering=1) as ledger:
        seq = args.first_seq
        while not _Stop.requested:
            if args.items is not None and seq >= args.items:
                break
            if args.until is not None and time.time() >= args.until:
                break
            if seq in done:
                seq += args.seq_step
                continue
            queue = plan.entry_queue(seq)
            if _backlog(worker, queue) >= args.backlog:
                time.sleep(BACKLOG_POLL_S)
                continue
            payload = {"soak": args.run, "seq": seq, "title": f"hypothesis {seq}"}
            item_id = worker.push(queue, payload, priority=plan.priority(seq))
            ledger.write(f"{seq} {item_id}\n")
            _log(log, "pushed", seq=seq, item_id=item_id, queue=queue)
            seq += args.seq_step
    _log(log, "researcher_done", next_seq=seq)


def _ledger_seqs(path: Path) -> set[int]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return set()
    # A line cut short by a kill has no id; its push is not acknowledged.
    return {int(line.split()[0]) for line in lines if len(line.split()) == 2}


def _backlog(worker: Worker, queue: str) -> int:
    try:
        return len(os.listdir(worker.tree.queue_dir(queue)))
    except FileNotFoundError:
        return 0


# -- consuming stages ------------------------------------------------------


def _run_consumer(
    worker: Worker, args: argparse.Namespace, log: TextIO, rng: random.Random
) -> None:
    while not _Stop.requested:
        item = worker.claim(wait_s=CLAIM_WAIT_S)
        if item is None:
            continue
        _log(log, "claimed", item_id=item.id, queue=item.queue)
        try:
            _process(worker, item, args, log, rng)
        except ClaimLost as error:
            _log(log, "claim_lost", item_id=item.id, queue=item.queue, error=str(error))


def _process(
    worker: Worker,
    item: Item,
    args: argparse.Namespace,
    log: TextIO,
    rng: random.Random,
) -> None:
    seq = item.payload.get("seq")
    if item.payload.get("soak") != args.run or not isinstance(seq, int):
        worker.fail(item, "soak: not an item of this soak run")
        _log(log, "failed_foreign", item_id=item.id, queue=item.queue)
        return
    value = _compute(item)
    time.sleep(rng.uniform(0, args.work_ms) / 1000)
    decision = plan.decide(seq, item.queue)
    if decision.action == "poison":
        _log(log, "poisoned", item_id=item.id, seq=seq)
        if args.poison_dir:
            (Path(args.poison_dir) / str(os.getpid())).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    if decision.action == "fail":
        worker.fail(item, plan.fail_reason(seq, item.queue))
        _log(log, "failed", item_id=item.id, seq=seq)
        return
    if decision.action == "complete":
        worker.complete(item)
        _log(log, "completed", item_id=item.id, seq=seq)
        return
    assert decision.target is not None
    payload = {"soak": args.run, "seq": seq, "value": value}
    if args.bug == BUG_ARCHIVE_BEFORE_ROUTE:
        successor = _route_archive_first(worker, item, decision.target, payload)
    else:
        successor = worker.route(item, decision.target, payload)
    _log(log, "routed", item_id=item.id, seq=seq, successor=successor)


def _compute(item: Item) -> str:
    """Stand in for research work: a few hundred hashes of the payload."""
    digest = json.dumps(item.payload, sort_keys=True).encode()
    for _ in range(200):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:16]


def _route_archive_first(
    worker: Worker, item: Item, target: str, payload: dict[str, Any]
) -> str:
    """Route the wrong way round, for the soak's self-test: archive the
    claim first, then push the successor as a separate step. A kill in
    between loses the successor."""
    worker.complete(item)
    faults.point(BUG_FAULT_POINT)
    assert worker.stage is not None
    now = utc_now()
    hop = {
        "event": "routed",
        "at": format_time(now),
        "queue": item.queue,
        "worker": worker.worker,
        "stage": worker.stage.name,
        "to": target,
        "item_id": item.id,
        "pid": os.getpid(),
    }
    successor = new_document(
        payload,
        priority=Priority(item.priority),
        stage=worker.stage.name,
        worker=worker.worker,
        now=now,
        history=[*item.history, hop],
    )
    successor["parent_id"] = item.id
    successor["root_id"] = item.root_id
    publish(worker.tree, successor, target, prefix="push")
    return str(successor["id"])


if __name__ == "__main__":
    sys.exit(main())
