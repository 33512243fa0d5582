"""The human view of a status document: plain-text tables at most 100
columns wide, for ``quantd status``."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from quantd.items import Priority, parse_time


class DaemonState(enum.StrEnum):
    """The daemon's state as ``quantd status`` determines it."""

    RUNNING = "running"
    STALE = "stale"
    NOT_RUNNING = "not_running"
    UNKNOWN = "unknown"


MAX_WIDTH = 100
EVENT_LINES = 5
_LABEL_WIDTH = 12


def render_status(
    document: dict[str, Any], *, daemon_state: str, now: datetime | None = None
) -> str:
    """Render a status document as plain-text tables at most 100 columns
    wide. ``daemon_state`` is a :class:`DaemonState` value."""
    moment = now or datetime.now(UTC)
    sections = [
        _render_daemon(document, DaemonState(daemon_state), moment),
        _render_queues(document.get("queues") or {}, moment),
        _render_holders(document.get("holders") or []),
    ]
    if document.get("daemon") is not None:
        sections.append(_render_counters(document.get("counters") or {}))
        sections.append(_render_events(document.get("events") or []))
    lines: list[str] = []
    for section in sections:
        if section:
            lines += [*section, ""]
    return "\n".join(_fit(line) for line in lines).rstrip("\n") + "\n"


def _render_daemon(
    document: dict[str, Any], state: DaemonState, now: datetime
) -> list[str]:
    root = document.get("root") or "."
    lines = [f"quantd status of {root}"]
    if state is DaemonState.NOT_RUNNING:
        return [
            *lines,
            _labelled("daemon", "NOT RUNNING, so the counts below were read from the"),
            _labelled("", "tree just now. Start the daemon with one of:"),
            f"  quantd run --root {root}",
            "  systemctl start quantd  (systemctl --user start quantd for a user unit)",
        ]
    if state is DaemonState.UNKNOWN:
        return [
            *lines,
            _labelled("daemon", "UNKNOWN: a process holds the daemon lock, but"),
            _labelled("", "status.json is missing or unreadable. The counts below"),
            _labelled("", "were read from the tree just now."),
        ]
    return [*lines, *_render_health(document, state, now)]


def _render_health(
    document: dict[str, Any], state: DaemonState, now: datetime
) -> list[str]:
    daemon = document.get("daemon") or {}
    description = f"pid {daemon.get('pid')} on {daemon.get('host')}"
    description += f", version {daemon.get('version')}"
    started = _age(daemon.get("started_at"), now)
    if started is not None:
        description += f", up {started}"
    lines = [_labelled("daemon", f"{state.value.upper()}: {description}")]

    generated = document.get("generated_at")
    age = _age(generated, now)
    if state is DaemonState.STALE:
        lines.append(
            _labelled("", f"status.json is {age} old, so the daemon may be hung; the")
        )
        lines.append(_labelled("", "queue and holder counts below were read just now."))
    else:
        lines.append(_labelled("status", f"generated {generated} ({age} ago)"))

    lines.append(_labelled("watcher", _describe_watcher(document, daemon, now)))
    return lines


def _describe_watcher(
    document: dict[str, Any], daemon: dict[str, Any], now: datetime
) -> str:
    watcher = document.get("watcher") or {}
    alive = "alive" if watcher.get("alive") else "NOT ALIVE"
    text = f"{watcher.get('mode') or 'none'}, {alive}"
    text += f", {watcher.get('restarts', 0)} restarts"
    reconciled = _age(daemon.get("last_reconcile_at"), now)
    if reconciled is not None:
        text += f"; last reconcile {reconciled} ago"
    return text


def _render_queues(queues: dict[str, Any], now: datetime) -> list[str]:
    rows: list[list[str]] = []
    archives: list[str] = []
    for name, queue in queues.items():
        if queue.get("kind") == "archive":
            archives.append(f"{name} {queue.get('items', 0)}")
            continue
        pending = queue.get("pending") or {}
        oldest = _age(queue.get("oldest_pending_created_at"), now)
        rows.append(
            [
                name,
                str(queue.get("kind", "")),
                *(str(pending.get(p.value, 0)) for p in Priority),
                str(queue.get("claimed", 0)),
                "-" if oldest is None else oldest,
            ]
        )
    headers = ["QUEUE", "KIND", "HIGH", "MEDIUM", "LOW", "CLAIMED", "OLDEST PENDING"]
    lines = _table(headers, rows, caps=[32, 7, 7, 7, 7, 7, 14], right={2, 3, 4, 5})
    if archives:
        lines.append(_labelled("archives", ", ".join(archives)))
    return lines


def _render_holders(holders: list[dict[str, Any]]) -> list[str]:
    if not holders:
        return ["claim holders: none"]
    rows = [
        [
            str(holder.get("worker") or "?"),
            str(holder.get("stage") or "-"),
            str(holder.get("pid") or "-"),
            str(holder.get("host") or "-"),
            str(holder.get("verdict", "")),
            str(holder.get("reason", "")),
            str(holder.get("claims", 0)),
            ",".join(holder.get("queues") or []),
        ]
        for holder in holders
    ]
    headers = ["WORKER", "STAGE", "PID", "HOST", "VERDICT", "REASON", "CLAIMS"]
    return _table(
        [*headers, "QUEUES"],
        rows,
        caps=[22, 11, 8, 14, 7, 20, 6, 20],
        right={2, 6},
    )


def _render_counters(counters: dict[str, Any]) -> list[str]:
    if not counters:
        return []
    parts = [
        f"{name} {value}"
        for name, value in counters.items()
        if not isinstance(value, dict)
    ]
    lines = _wrap("counters", parts)
    violations = counters.get("routing_violations") or {}
    if violations:
        edges = [f"{edge} {count}" for edge, count in sorted(violations.items())]
        lines += _wrap("violations", edges)
    return lines


def _render_events(events: list[dict[str, Any]]) -> list[str]:
    if not events:
        return []
    lines = ["recent events"]
    for event in events[-EVENT_LINES:]:
        fields = dict(event)
        moment = str(fields.pop("at", fields.pop("timestamp", "")))
        name = str(fields.pop("event", "?"))
        detail = " ".join(
            f"{key}={value}" for key, value in fields.items() if value is not None
        )
        line = f"  {moment[11:19] or '--:--:--'}  {name}  {detail}".rstrip()
        lines.append(_truncate(line, MAX_WIDTH))
    return lines


def _table(
    headers: list[str], rows: list[list[str]], *, caps: list[int], right: set[int]
) -> list[str]:
    widths = []
    for column, header in enumerate(headers):
        longest = max([len(header), *(len(row[column]) for row in rows)])
        widths.append(min(longest, max(caps[column], len(header))))
    lines = []
    for row in [headers, *rows]:
        cells = []
        for column, cell in enumerate(row):
            text = _truncate(cell, widths[column])
            aligned = text.rjust if column in right else text.ljust
            cells.append(aligned(widths[column]))
        lines.append("  ".join(cells).rstrip())
    return lines


def _wrap(label: str, parts: list[str]) -> list[str]:
    lines: list[str] = []
    current = ""
    for part in parts:
        candidate = f"{current}, {part}" if current else part
        if current and _LABEL_WIDTH + len(candidate) > MAX_WIDTH:
            lines.append(_labelled("" if lines else label, current + ","))
            candidate = part
        current = candidate
    lines.append(_labelled("" if lines else label, current))
    return lines


def _labelled(label: str, text: str) -> str:
    return f"{label:<{_LABEL_WIDTH}}{text}"


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 2, 0)] + ".."


def _fit(line: str) -> str:
    return _truncate(line, MAX_WIDTH)


def _age(moment: object, now: datetime) -> str | None:
    if not isinstance(moment, str):
        return None
    try:
        seconds = (now - parse_time(moment)).total_seconds()
    except ValueError:
        return None
    return format_duration(seconds)


def format_duration(seconds: float) -> str:
    """Format a duration compactly: ``42s``, ``3m05s``, ``2h03m``, ``4d06h``."""
    if seconds < 1:
        return "<1s"
    total = int(seconds)
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
