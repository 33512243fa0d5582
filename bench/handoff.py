"""Hand-off latency: from a push to the return of a claimer that was
already waiting in ``Worker.claim(wait_s=...)`` in another process.

The claimer process first waits on an empty queue while the parent reads
its CPU time (psutil) over ``idle_cpu_s``; then the parent pushes one item
at a time, each after the claimer has gone back to waiting, and the
claimer reports the ``time.monotonic()`` at which its claim returned.
CLOCK_MONOTONIC is shared by all processes on Linux, so the two clocks
compare directly.
"""

from __future__ import annotations

import multiprocessing
import random
import shutil
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

import psutil

import quantd
from bench.drain import stop
from bench.results import Results, check_exactly_once, percentile
from bench.workload import PRODUCER, QUEUE, Sizes, new_tree, payload

GROUP = "handoff"
# Long enough that a claim never times out while the parent is measuring.
CLAIM_WAIT_S = 120.0
REPLY_TIMEOUT_S = 60.0
# Pause before each busy hand-off, so that the claimer is back inside its
# wait; a random part keeps pushes out of step with any periodic wake-up.
PAUSE_MIN_S = 0.005
PAUSE_RANDOM_S = 0.010
# Pause before an idle hand-off. watchdog 7.1 delays the event of a move out
# of a watched directory (such as the claimer's own last claim) by 0.5 s
# while it looks for a matching move into one, and events queued behind it
# wait too; this pause is longer than that delay.
IDLE_PAUSE_S = 0.6
# Time for the claimer to settle into its wait before its CPU is read.
SETTLE_S = 0.5


def measure(results: Results, sizes: Sizes, scratch: Path) -> None:
    """Record hand-off latency percentiles and the waiting claimer's CPU use."""
    for repeat in range(sizes.repeats):
        root = scratch / f"handoff-{repeat}"
        latencies_ms, idle_ms, cpu_pct = _run(results, root, sizes)
        results.add(
            "handoff_ms_p50",
            percentile(latencies_ms, 0.50),
            unit="ms",
            group=GROUP,
            label=f"push -> waiting claimer returns, median of {len(latencies_ms)}",
        )
        results.add(
            "handoff_ms_p99",
            percentile(latencies_ms, 0.99),
            unit="ms",
            group=GROUP,
            label=f"push -> waiting claimer returns, p99 of {len(latencies_ms)}",
        )
        results.add(
            "handoff_ms_p50_idle",
            percentile(idle_ms, 0.50),
            unit="ms",
            group=GROUP,
            label=f"the same, {IDLE_PAUSE_S} s after the last claim, "
            f"median of {len(idle_ms)}",
        )
        results.add(
            "waiting_claimer_cpu_pct",
            cpu_pct,
            unit="% of a core",
            group=GROUP,
            label=f"claimer blocked in claim(wait_s), over {sizes.idle_cpu_s:g} s",
        )
        shutil.rmtree(root)


def _run(
    results: Results, root: Path, sizes: Sizes
) -> tuple[list[float], list[float], float]:
    """Return the busy and the idle hand-off latencies, and the CPU use."""
    tree = new_tree(root, durable=False)
    # The first push ends the CPU measurement's wait; it is not timed.
    pauses = [0.0]
    pauses += [
        PAUSE_MIN_S + random.random() * PAUSE_RANDOM_S for _ in range(sizes.handoffs)
    ]
    pauses += [IDLE_PAUSE_S] * sizes.idle_handoffs
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    claimer = context.Process(
        target=_claimer_main, args=(str(root), len(pauses), child_end), daemon=True
    )
    claimer.start()
    try:
        with quantd.Worker(tree, PRODUCER) as producer:
            _expect(parent_end, "waiting")
            time.sleep(SETTLE_S)
            cpu_pct = _cpu_percent(claimer.pid, sizes.idle_cpu_s)
            latencies_ms, numbers = _hand_off(producer, parent_end, pauses)
        claimer.join(timeout=REPLY_TIMEOUT_S)
    finally:
        stop([claimer])
    check_exactly_once(results, "hand-off", set(range(len(pauses))), numbers)
    busy_end = 1 + sizes.handoffs
    return latencies_ms[1:busy_end], latencies_ms[busy_end:], cpu_pct


def _cpu_percent(pid: int | None, seconds: float) -> float:
    process = psutil.Process(pid)
    before = process.cpu_times()
    started = time.monotonic()
    time.sleep(seconds)
    after = process.cpu_times()
    elapsed = time.monotonic() - started
    used = (after.user - before.user) + (after.system - before.system)
    return 100.0 * used / elapsed


def _hand_off(
    producer: quantd.Worker, channel: Connection, pauses: list[float]
) -> tuple[list[float], list[int]]:
    latencies_ms: list[float] = []
    numbers: list[int] = []
    for number, pause_s in enumerate(pauses):
        if number:
            _expect(channel, "waiting")
            time.sleep(pause_s)
        pushed_at = time.monotonic()
        producer.push(QUEUE, payload(number))
        claimed, returned_at = _expect(channel, "claimed")
        latencies_ms.append((returned_at - pushed_at) * 1000)
        numbers.append(claimed)
    return latencies_ms, numbers


def _expect(channel: Connection, kind: str) -> tuple[int, float]:
    if not channel.poll(REPLY_TIMEOUT_S):
        raise RuntimeError(
            f"the claimer sent no {kind!r} message in {REPLY_TIMEOUT_S} s"
        )
    message = channel.recv()
    if message[0] == "error":
        raise RuntimeError(f"the claimer failed:\n{message[1]}")
    if message[0] != kind:
        raise RuntimeError(f"the claimer sent {message[0]!r}, expected {kind!r}")
    return message[1], message[2]


def _claimer_main(root: str, count: int, channel: Connection) -> None:
    try:
        tree = quantd.open_tree(root, durable=False)
        with quantd.Worker(tree, "converter-0") as worker:
            for _ in range(count):
                channel.send(("waiting", 0, 0.0))
                item = worker.claim(QUEUE, wait_s=CLAIM_WAIT_S)
                returned_at = time.monotonic()
                if item is None:
                    raise RuntimeError(f"claim(wait_s={CLAIM_WAIT_S}) timed out")
                worker.complete(item)
                channel.send(("claimed", int(item.payload["n"]), returned_at))
    except BaseException:
        channel.send(("error", traceback.format_exc(), 0.0))
