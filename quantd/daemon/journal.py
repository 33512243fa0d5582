"""The daemon's record of its actions: counters, recent events and log
lines.

Every outcome goes through :meth:`Journal.record`, which logs it, keeps it
among the last events for the status file, and rate-limits repeats of the
same event on the same path.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import structlog

from quantd.items import format_time, utc_now

MAX_EVENTS = 50
# The same event on the same path is logged at most once per this many
# seconds. Repeats in between are counted and reported with the next line.
REPEAT_INTERVAL_S = 60.0
_EVENT_FIELDS = (
    "item_id",
    "queue",
    "worker",
    "pid",
    "reason",
    "path",
    "where",
    "error",
)

log = structlog.get_logger("quantd.daemon")


class Journal:
    """Counters and recent events of one daemon process."""

    def __init__(self) -> None:
        self.counters: dict[str, Any] = {
            "recovered": 0,
            "dead_lettered": 0,
            "quarantined": 0,
            "routes_finished": 0,
            "routing_violations": {},
            "reconciles": 0,
            "watcher_restarts": 0,
            "overflows_suspected": 0,
            "errors": 0,
        }
        self.events: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=MAX_EVENTS
        )
        self.changed = False
        self._last_logged: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def count(self, name: str, by: int = 1) -> None:
        self.counters[name] = int(self.counters.get(name, 0)) + by
        self.changed = True

    def count_violation(self, edge: str) -> None:
        violations: dict[str, int] = self.counters["routing_violations"]
        violations[edge] = violations.get(edge, 0) + 1
        self.changed = True

    def record(self, event: str, level: str = "info", **fields: Any) -> None:
        """Log ``event`` and keep it among the recent events."""
        self.events.append(
            {
                "at": format_time(utc_now()),
                "event": event,
                **{name: fields.get(name) for name in _EVENT_FIELDS},
            }
        )
        self.changed = True
        self.log(event, level, **fields)

    def log(self, event: str, level: str = "info", **fields: Any) -> None:
        """Log ``event``, rate-limiting repeats on the same ``path``."""
        path = fields.get("path")
        if path is not None:
            key = (event, str(path))
            now = time.monotonic()
            last = self._last_logged.get(key)
            if last is not None and now - last < REPEAT_INTERVAL_S:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            if len(self._last_logged) > 10_000:
                self._last_logged.clear()
            self._last_logged[key] = now
            repeats = self._suppressed.pop(key, 0)
            if repeats:
                fields["repeats_suppressed"] = repeats
        getattr(log, level)(event, **fields)

    def failed(self, where: str, error: BaseException, **fields: Any) -> None:
        """Count and log an error that a handler caught and did not raise."""
        self.count("errors")
        self.record(
            "handler_failed",
            "error",
            where=where,
            error=f"{type(error).__name__}: {error}",
            **fields,
        )
