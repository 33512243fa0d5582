"""Claim cost against queue depth, for quantd and the baseline.

Each repeat times a fixed number of claims by a new claimer from a queue
that contains at least ``depth`` pending items: the queue is filled to
``depth + claims`` so that it never drops below ``depth``, and topped up
again between repeats. The quantd claimer is a new ``Worker`` each repeat.
Its first claim lists the whole queue and is reported on its own
(``claim_first_ms_depth_*``); the rate counts the claims after it, the
cost a long-running worker pays per claim. Every baseline claim lists the
queue, so its rate covers all its claims. Claims are not completed inside
the timed part.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import quantd
from bench import baseline
from bench.results import Results
from bench.workload import FULL, QUEUE, Sizes, fill_quantd_queue, new_tree, payload

GROUP = "depth"


def depth_label(depth: int) -> str:
    """Return the metric suffix of a depth: ``1k``, ``10k``, ``100k``."""
    return f"{depth // 1000}k" if depth % 1000 == 0 else str(depth)


def measure(results: Results, sizes: Sizes, scratch: Path) -> None:
    """Record claims per second at each depth, for quantd and the baseline."""
    for depth in FULL.depths:
        if depth not in sizes.depths:
            reason = "not measured in quick mode: filling the queue takes too long"
            results.mark_missing(f"claim_per_s_depth_{depth_label(depth)}", reason)
            results.mark_missing(
                f"baseline_claim_per_s_depth_{depth_label(depth)}", reason
            )
    for depth in sizes.depths:
        suffix = depth_label(depth)
        _measure_quantd(results, sizes, scratch / f"depth-quantd-{suffix}", depth)
        _measure_baseline(results, sizes, scratch / f"depth-baseline-{suffix}", depth)


def _measure_quantd(results: Results, sizes: Sizes, root: Path, depth: int) -> None:
    claims = sizes.depth_claims
    tree = new_tree(root, durable=False)
    fill_quantd_queue(tree, 0, depth + claims)
    filled = depth + claims
    suffix = depth_label(depth)
    for repeat in range(sizes.repeats):
        with quantd.Worker(tree, f"converter-{repeat}") as worker:
            started = time.perf_counter()
            first = worker.claim(QUEUE)
            first_s = time.perf_counter() - started
            taken = [first] + [worker.claim(QUEUE) for _ in range(claims - 1)]
            elapsed = time.perf_counter() - started
        numbers = [int(item.payload["n"]) for item in taken if item is not None]
        _check_claims(results, f"quantd claims at depth {depth}", numbers, claims)
        results.add(
            f"claim_per_s_depth_{suffix}",
            (claims - 1) / (elapsed - first_s),
            unit="claims/s",
            group=GROUP,
            label=f"quantd, {claims - 1} claims after the first, {depth:,} pending",
        )
        results.add(
            f"claim_first_ms_depth_{suffix}",
            first_s * 1000,
            unit="ms",
            group=GROUP,
            label=f"quantd, first claim of a new worker, {depth:,} pending",
        )
        fill_quantd_queue(tree, filled, claims)
        filled += claims
    shutil.rmtree(root)


def _measure_baseline(results: Results, sizes: Sizes, root: Path, depth: int) -> None:
    claims = sizes.baseline_depth_claims
    queue_dir = baseline.make_tree(root)
    baseline.fill_direct(queue_dir, 0, depth + claims, payload)
    filled = depth + claims
    suffix = depth_label(depth)
    for _ in range(sizes.repeats):
        started = time.perf_counter()
        taken = [baseline.claim(queue_dir, "converter-0") for _ in range(claims)]
        elapsed = time.perf_counter() - started
        numbers = [int(item["payload"]["n"]) for item in taken if item is not None]
        _check_claims(results, f"baseline claims at depth {depth}", numbers, claims)
        results.add(
            f"baseline_claim_per_s_depth_{suffix}",
            claims / elapsed,
            unit="claims/s",
            group=GROUP,
            label=f"reference protocol, {claims} claims, {depth:,} pending",
        )
        # Completed claims leave the queue directory, so that the next
        # repeat lists the same number of names.
        for item in taken:
            if item is not None:
                baseline.complete(queue_dir, str(item["id"]))
        baseline.fill_direct(queue_dir, filled, claims, payload)
        filled += claims
    shutil.rmtree(root)


def _check_claims(
    results: Results, what: str, numbers: list[int], expected: int
) -> None:
    duplicates = len(numbers) - len(set(numbers))
    if len(numbers) != expected or duplicates:
        results.fail(
            f"{what}: {len(numbers)} of {expected} claims returned an item, "
            f"{duplicates} duplicates"
        )
