"""Fault injection: kill this process at a named step, for crash tests.

Set ``QUANTD_FAULTS`` to a comma-separated list of step names, such as
``route.after_commit``; the process SIGKILLs itself when it reaches one.
``name@N`` fires on the N-th time the step is reached. Unset, every check
is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

FAULTS_ENV = "QUANTD_FAULTS"


def _parse(text: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = entry.partition("@")
        points[name] = int(count) if count else 1
    return points


_points = _parse(os.environ.get(FAULTS_ENV, ""))
_hits: dict[str, int] = {}


def point(name: str) -> None:
    """Kill this process with SIGKILL if ``name`` is an armed fault."""
    if not _points or name not in _points:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == _points[name]:
        os.kill(os.getpid(), signal.SIGKILL)


def reload() -> None:
    """Re-read ``QUANTD_FAULTS``, for processes that set it after import."""
    global _points
    _points = _parse(os.environ.get(FAULTS_ENV, ""))
    _hits.clear()
