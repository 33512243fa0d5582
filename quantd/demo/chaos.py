"""Chaos for the demo: SIGKILL a worker while it holds a claim.

At most one kill per interval. The victim is drawn at random among the
workers that hold a claim right now. A claim whose item has already been
recovered ``max_attempts - 1`` times is spared, because one more loss would
dead-letter it: chaos shows recovery, and dead letters in the demo come only
from invalid input. Kinds of worker (shell or Python) that have not been
killed yet go first, so the shell converter is killed early whenever it
holds a claim.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from quantd.demo.observe import ActiveClaim
from quantd.demo.processes import Child


@dataclass(frozen=True)
class Victim:
    """A worker chosen for a kill and the claim it holds."""

    child: Child
    claim: ActiveClaim


class Chaos:
    """Decides when to kill and whom."""

    def __init__(self, interval_s: float, max_attempts: int, seed: int) -> None:
        self.interval_s = interval_s
        self.max_attempts = max_attempts
        self.rng = random.Random(seed)
        self.next_kill_at: float | None = None
        self.killed_kinds: set[str] = set()

    def due(self, now: float) -> bool:
        """Return whether the next kill may happen at monotonic time ``now``."""
        if self.next_kill_at is None:
            self.next_kill_at = now + self.interval_s
        return now >= self.next_kill_at

    def choose(
        self, claims: list[ActiveClaim], workers: dict[str, Child]
    ) -> Victim | None:
        """Pick a running worker that holds a claim chaos may interrupt."""
        by_pid = {child.pid: child for child in workers.values() if child.running()}
        candidates = [
            Victim(by_pid[claim.pid], claim)
            for claim in claims
            if claim.pid in by_pid and claim.attempts < self.max_attempts - 1
        ]
        if not candidates:
            return None
        fresh = [v for v in candidates if v.child.kind not in self.killed_kinds]
        return self.rng.choice(fresh or candidates)

    def killed(self, victim: Victim, now: float) -> None:
        """Record a kill and schedule the next one an interval later."""
        self.killed_kinds.add(victim.child.kind)
        self.next_kill_at = now + self.interval_s
