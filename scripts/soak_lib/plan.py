"""The light workers' decision for each soak item, made from its sequence
number alone, so the checker can tell where every lineage must end."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

RESEARCHER = "researcher"
# The stage that consumes each queue of the reference configuration.
CONSUMER_OF_QUEUE = {
    "hypotheses": "backtester",
    "to-convert": "converter",
    "to-backtest": "backtester",
    "to-optimize": "optimizer",
}
CONSUMER_STAGES = ("converter", "backtester", "optimizer")
BUCKETS = ("good", "prop_firm_ready", "rejected")
PRIORITIES = ("high", "medium", "low")
# One converter item in this many fails, one backtester item in this many
# is completed without a successor.
CONVERTER_FAIL_EVERY = 23
BACKTESTER_COMPLETE_EVERY = 19
# One item in this many is poison: every worker that claims it dies, so
# recovery returns it until it is dead-lettered.
POISON_EVERY = 151


@dataclass(frozen=True)
class Decision:
    """A stage's action on an item: ``route`` to ``target``, ``complete``,
    ``fail`` or ``poison``."""

    action: str
    target: str | None = None


def draw(seq: int, salt: str) -> int:
    """Return a stable pseudo-random number for an item and a salt."""
    digest = hashlib.sha256(f"{seq}:{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def entry_queue(seq: int) -> str:
    """Return the queue the researcher pushes item ``seq`` into."""
    return "hypotheses" if draw(seq, "entry") % 4 == 0 else "to-convert"


def priority(seq: int) -> str:
    return PRIORITIES[draw(seq, "priority") % len(PRIORITIES)]


def decide(seq: int, queue: str) -> Decision:
    """Return what the stage consuming ``queue`` does with item ``seq``:
    ``route``, ``complete``, ``fail``, or ``poison`` (the worker dies)."""
    if queue == entry_queue(seq) and draw(seq, "poison") % POISON_EVERY == 0:
        return Decision("poison")
    if queue == "to-convert":
        if draw(seq, "converter") % CONVERTER_FAIL_EVERY == 0:
            return Decision("fail")
        return Decision("route", "to-backtest")
    if queue in ("hypotheses", "to-backtest"):
        if draw(seq, "backtester") % BACKTESTER_COMPLETE_EVERY == 0:
            return Decision("complete")
        return Decision("route", "to-optimize")
    if queue == "to-optimize":
        return Decision("route", BUCKETS[draw(seq, "optimizer") % len(BUCKETS)])
    raise ValueError(f"no soak stage consumes queue {queue!r}")


def expected_path(seq: int) -> list[tuple[str, Decision]]:
    """Return every (queue, decision) a lineage passes through, in order.

    The last decision is a complete, a fail, a poison, or a route into an
    output.
    """
    path = []
    queue = entry_queue(seq)
    while True:
        decision = decide(seq, queue)
        path.append((queue, decision))
        if decision.action != "route" or decision.target in BUCKETS:
            return path
        assert decision.target is not None
        queue = decision.target


def fail_reason(seq: int, queue: str) -> str:
    return f"soak: stage {CONSUMER_OF_QUEUE[queue]} rejected item seq {seq}"
