"""Claim+complete throughput: worker processes drain a filled queue.

The parent fills the queue, starts the workers (multiprocessing, spawn) and
waits until every one has opened its consumer; then it releases them at
once and the clock runs until the last worker finds the queue empty. Each
worker returns the numbers of the items it consumed, and the run checks
that every item was consumed exactly once and nothing is left.
"""

from __future__ import annotations

import multiprocessing
import queue
import shutil
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from bench.contenders import CONTENDERS, Contender
from bench.results import Results, check_exactly_once
from bench.workload import Sizes

# Generous bounds: a worker that hangs fails the run instead of blocking it.
START_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class DrainRun:
    """One drain: how long it took and what each worker consumed."""

    elapsed_s: float
    consumed: list[int]
    remaining: int


def drain(contender: Contender, root: Path, workers: int, count: int) -> DrainRun:
    """Fill ``contender``'s queue with ``count`` items and drain it with
    ``workers`` processes; ``root`` must not exist."""
    contender.fill(root, count)
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    reports: Any = context.Queue()
    processes = [
        context.Process(
            target=_worker_main,
            args=(contender.name, str(root), index, start, reports),
            daemon=True,
        )
        for index in range(workers)
    ]
    try:
        for process in processes:
            process.start()
        collect(reports, processes, START_TIMEOUT_S)
        started = time.monotonic()
        start.set()
        outcomes = collect(reports, processes, DRAIN_TIMEOUT_S)
        for process in processes:
            process.join(timeout=START_TIMEOUT_S)
    finally:
        stop(processes)
    finished = max(outcome[0] for outcome in outcomes)
    consumed = [number for outcome in outcomes for number in outcome[1]]
    return DrainRun(finished - started, consumed, contender.remaining(root))


def collect(
    reports: Any, processes: Sequence[BaseProcess], timeout_s: float
) -> list[Any]:
    """Return one report from each process, raising RuntimeError if a
    process reports an error, exits without a report, or times out."""
    deadline = time.monotonic() + timeout_s
    outcomes: list[Any] = []
    while len(outcomes) < len(processes):
        try:
            kind, value = reports.get(timeout=0.5)
        except queue.Empty:
            dead = [p.pid for p in processes if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"worker processes {dead} exited early") from None
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"workers did not report within {timeout_s} s"
                ) from None
            continue
        if kind == "error":
            raise RuntimeError(f"a worker process failed:\n{value}")
        outcomes.append(value)
    return outcomes


def stop(processes: Sequence[BaseProcess]) -> None:
    """Kill and reap every process that is still running."""
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join(timeout=START_TIMEOUT_S)


def _worker_main(name: str, root: str, index: int, start: Event, reports: Any) -> None:
    try:
        step = CONTENDERS[name].open_consumer(Path(root), index)
        reports.put(("ready", index))
        if not start.wait(timeout=START_TIMEOUT_S):
            raise RuntimeError("the start signal never came")
        consumed = []
        while (number := step()) is not None:
            consumed.append(number)
        reports.put(("done", (time.monotonic(), consumed)))
    except BaseException:
        reports.put(("error", traceback.format_exc()))


def measure_drain(
    results: Results,
    contender: Contender,
    scratch: Path,
    workers: int,
    count: int,
) -> float | None:
    """Run one drain and check it; return its rate, or None after
    recording a failure when a worker process failed."""
    root = scratch / f"drain-{contender.name}-{workers}w"
    what = f"{contender.label}, {workers} workers"
    try:
        run = drain(contender, root, workers, count)
    except RuntimeError as error:
        last_line = str(error).strip().splitlines()[-1]
        results.fail(f"{what}: a worker process failed: {last_line}")
        return None
    finally:
        shutil.rmtree(root, ignore_errors=True)
    check_exactly_once(results, what, set(range(count)), run.consumed)
    if run.remaining:
        results.fail(f"{what}: {run.remaining} items left in the queue after the drain")
    return count / run.elapsed_s


GROUP = "claim+complete"


def measure(results: Results, sizes: Sizes, scratch: Path) -> None:
    """Record claim+complete rates: quantd with 1 and 4 workers, then the
    baseline and every peer with 4 workers, in each repeat back to back."""
    count = sizes.drain_items
    for _ in range(sizes.repeats):
        quantd_1w = measure_drain(results, CONTENDERS["quantd"], scratch, 1, count)
        _add(results, "claim_complete_per_s_1w", quantd_1w, "quantd, 1 worker", count)
        quantd_4w = measure_drain(results, CONTENDERS["quantd"], scratch, 4, count)
        _add(results, "claim_complete_per_s_4w", quantd_4w, "quantd, 4 workers", count)
        for contender in CONTENDERS.values():
            if contender.name != "quantd":
                _measure_other(results, contender, scratch, count, quantd_4w)


def _measure_other(
    results: Results,
    contender: Contender,
    scratch: Path,
    count: int,
    quantd_4w: float | None,
) -> None:
    is_baseline = contender.name == "baseline"
    prefix = "baseline_" if is_baseline else f"peer_{contender.name}_"
    name_4w = f"{prefix}claim_complete_per_s_4w"
    if contender.multi_process_unsupported is not None:
        reason = f"not supported: {contender.multi_process_unsupported}"
        results.mark_missing(name_4w, reason)
        rate = measure_drain(results, contender, scratch, 1, count)
        name_1w = f"{prefix}claim_complete_per_s_1w"
        _add(results, name_1w, rate, f"{contender.label}, 1 worker", count)
        return
    rate = measure_drain(results, contender, scratch, 4, count)
    _add(results, name_4w, rate, f"{contender.label}, 4 workers", count)
    if rate is None or quantd_4w is None:
        return
    results.add(
        f"claim_complete_4w_quantd_vs_{contender.name}",
        quantd_4w / rate,
        unit="ratio",
        group=GROUP,
        label=f"quantd / {contender.label}, 4 workers, same repeat",
    )


def _add(
    results: Results, name: str, rate: float | None, label: str, count: int
) -> None:
    if rate is None:
        return
    results.add(
        name, rate, unit="items/s", group=GROUP, label=f"{label}, {count:,} items"
    )
