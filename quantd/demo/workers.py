"""Worker processes of the demo pipeline, one per process.

Run as ``python -m quantd.demo.workers --stage STAGE --worker ID --root DIR``.
A converter turns a hypothesis into a strategy spec, a backtester runs the
spec's default parameters, and an optimizer grid-searches the parameters and
routes the result to the output named by its verdict. A payload that the
research functions reject is failed with their message; the worker goes on.

SIGTERM or SIGINT stops the worker: it finishes the item it holds,
then exits with status 0.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import structlog

from quantd.errors import ClaimLost, QuantdError
from quantd.items import Item
from quantd.tree import open_tree
from quantd.worker import Worker

STAGES = ("converter", "backtester", "optimizer")
VERDICT_OUTPUTS = ("good", "prop_firm_ready", "rejected")
# How long one claim waits for an item before the stop flag is checked again.
CLAIM_WAIT_S = 1.0
# Errors that the research functions raise for a malformed payload.
BAD_INPUT_ERRORS = (ValueError, KeyError, TypeError)

_logger = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Outcome:
    """Destination of a processed item: ``target`` and the successor's payload."""

    target: str
    payload: dict[str, Any]


def convert(payload: Mapping[str, Any]) -> Outcome:
    """Convert a hypothesis into a strategy spec for the backtester."""
    from quantd.demo.research import convert_hypothesis

    return Outcome("to-backtest", convert_hypothesis(payload))


def backtest(payload: Mapping[str, Any]) -> Outcome:
    """Backtest a spec (or a direct hypothesis) for the optimizer."""
    from quantd.demo.research import backtest_spec

    return Outcome("to-optimize", backtest_spec(payload))


def optimize(payload: Mapping[str, Any]) -> Outcome:
    """Optimise and judge a strategy; its verdict names the output."""
    from quantd.demo.research import optimize_strategy

    result = optimize_strategy(payload)
    verdict = result.get("verdict")
    if verdict not in VERDICT_OUTPUTS:
        raise ValueError(
            f"optimizer returned verdict {verdict!r}, expected one of "
            f"{', '.join(VERDICT_OUTPUTS)}"
        )
    return Outcome(str(verdict), result)


STAGE_FUNCTIONS: dict[str, Callable[[Mapping[str, Any]], Outcome]] = {
    "converter": convert,
    "backtester": backtest,
    "optimizer": optimize,
}


class StopFlag:
    """Set by SIGTERM or SIGINT; the worker loop checks it between items."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name


def process_item(
    worker: Worker,
    item: Item,
    work: Callable[[Mapping[str, Any]], Outcome],
    min_work_s: float,
) -> str:
    """Process one claimed item and finish it; return what happened.

    The result is ``routed``, ``failed`` or ``claim_lost``. The item is held
    for at least ``min_work_s`` seconds, so that the pipeline's flow is
    visible and a kill can catch a worker while it holds a claim.
    """
    started = time.monotonic()
    log = _logger.bind(item_id=item.id, queue=item.queue, worker=worker.worker)
    log.info("item_claimed", title=item.payload.get("title"), attempts=item.attempts)
    try:
        outcome: Outcome | None = work(item.payload)
        reason = None
    except BAD_INPUT_ERRORS as error:
        outcome = None
        reason = f"invalid payload: {type(error).__name__}: {error}"
    remaining_s = min_work_s - (time.monotonic() - started)
    if remaining_s > 0:
        time.sleep(remaining_s)
    try:
        if outcome is None:
            assert reason is not None
            worker.fail(item, reason)
            log.warning("item_failed", reason=reason)
            return "failed"
        successor = worker.route(item, outcome.target, outcome.payload)
    except ClaimLost as error:
        log.warning("claim_lost", reason=str(error))
        return "claim_lost"
    log.info("item_routed", to=outcome.target, successor_id=successor)
    return "routed"


def run_worker(
    worker: Worker,
    stop: StopFlag,
    *,
    work_s: float,
    seed: int | None,
) -> int:
    """Claim and process items until ``stop`` is requested."""
    assert worker.stage is not None
    work = STAGE_FUNCTIONS[worker.stage.name]
    rng = random.Random(seed)
    processed = 0
    while not stop.requested:
        item = worker.claim(wait_s=CLAIM_WAIT_S)
        if item is None:
            continue
        # Each item takes between half and one and a half times work_s.
        min_work_s = work_s * rng.uniform(0.5, 1.5)
        process_item(worker, item, work, min_work_s)
        processed += 1
    return processed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m quantd.demo.workers",
        description="Run one worker of the demo pipeline until SIGTERM.",
    )
    parser.add_argument("--stage", required=True, choices=STAGES)
    parser.add_argument("--worker", required=True, help="worker id, e.g. optimizer-0")
    parser.add_argument("--root", required=True, help="tree root directory")
    parser.add_argument(
        "--work-s",
        type=float,
        default=0.0,
        help="minimum seconds to hold each item, on average (default: 0)",
    )
    parser.add_argument("--seed", type=int, help="seed of the work-time jitter")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one worker; return the exit status."""
    from quantd import logs

    args = build_parser().parse_args(argv)
    logs.configure(json_lines=True)
    stop = StopFlag()
    stop.install()
    log = _logger.bind(worker=args.worker, stage=args.stage)
    try:
        tree = open_tree(args.root)
        with Worker(tree, args.worker, stage=args.stage) as worker:
            log.info("worker_started", pid=worker.holder.key.pid, root=str(tree.root))
            processed = run_worker(worker, stop, work_s=args.work_s, seed=args.seed)
    except QuantdError as error:
        log.error("worker_failed", reason=str(error))
        return 1
    log.info("worker_stopped", processed=processed, signal=stop.signal_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
