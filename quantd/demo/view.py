"""Output of ``quantd demo``: a live view on a terminal, log lines
otherwise, and the final summary.

The live view (rich) shows what each worker holds, pending and claimed
counts per queue, outputs so far, recoveries, kills and recent events.
When stdout is not a terminal, each event is one plain line and a progress
line follows every few seconds, so that logs and tests can read it.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from quantd.demo.observe import ActiveClaim
from quantd.demo.processes import STAGES, Child

QUEUES = ("hypotheses", "to-convert", "to-backtest", "to-optimize")
PLACES = ("good", "prop_firm_ready", "rejected", "failed")
MAX_EVENTS = 10
PLAIN_PROGRESS_INTERVAL_S = 5.0


@dataclass(frozen=True)
class DemoInfo:
    """Settings that the view prints before the run starts."""

    root: Path
    created_root: bool
    hypotheses: int
    workers_per_stage: int
    chaos_interval_s: float | None
    daemon: bool
    bad_input: bool
    logs: Path


@dataclass(frozen=True)
class Progress:
    """One observation of the running pipeline.

    ``queues`` is the ``queues`` section of ``scan_tree``. ``recoveries``
    is the daemon's counter, None when no daemon publishes one.
    """

    elapsed_s: float
    accounted: int
    total: int
    places: dict[str, int]
    queues: dict[str, Any]
    claims: list[ActiveClaim]
    workers: list[Child]
    recoveries: int | None
    quarantined: int
    kills: int
    daemon_running: bool | None


class View(Protocol):
    """Receives the demo's progress and prints it."""

    def begin(self, info: DemoInfo) -> None: ...

    def event(self, text: str) -> None: ...

    def update(self, progress: Progress) -> None: ...

    def summary(self, summary: dict[str, Any], *, kept_root: Path | None) -> None: ...

    def close(self) -> None: ...


def make_view(stream: TextIO | None = None) -> View:
    """Return the live view on a terminal, the plain view otherwise."""
    stream = stream or sys.stdout
    if stream.isatty():
        return LiveView(stream)
    return PlainView(stream)


def intro_lines(info: DemoInfo) -> list[str]:
    """Return the lines printed before the run starts."""
    removal = " (new; removed at the end unless --keep)" if info.created_root else ""
    lines = [
        f"quantd demo: tree at {info.root}{removal}",
        f"  watch it from another terminal: quantd status --root {info.root}",
        f"  {info.hypotheses} hypotheses"
        + (
            " plus 2 invalid ones and 1 file that is not an item"
            if info.bad_input
            else ""
        ),
        f"  {info.workers_per_stage} worker(s) per stage; converter-0 (and "
        "its replacements) is the shell script converter.sh, which uses only "
        "the quantd command; the others are Python processes",
        f"  worker and daemon logs: {info.logs}",
    ]
    if info.chaos_interval_s is not None:
        lines.append(
            f"  chaos: one SIGKILL every {info.chaos_interval_s:g} s to a worker "
            "that holds a claim, then a replacement starts"
        )
    if not info.daemon:
        lines.append(
            "  no daemon: workers still make progress, but nothing recovers "
            "the claims of killed workers"
        )
    return lines


def progress_line(progress: Progress) -> str:
    """Return a one-line digest of ``progress``."""
    pending = " ".join(
        f"{queue}={_pending(progress.queues, queue)}" for queue in QUEUES
    )
    places = " ".join(f"{place}={progress.places.get(place, 0)}" for place in PLACES)
    recoveries = "n/a" if progress.recoveries is None else str(progress.recoveries)
    return (
        f"{progress.accounted}/{progress.total} accounted for | pending {pending} "
        f"| claimed {len(progress.claims)} | {places} | recoveries {recoveries} "
        f"| kills {progress.kills} | quarantined {progress.quarantined}"
    )


def _pending(queues: dict[str, Any], queue: str) -> int:
    pending = queues.get(queue, {}).get("pending", {})
    return int(sum(pending.values())) if isinstance(pending, dict) else 0


def summary_lines(summary: dict[str, Any], kept_root: Path | None) -> list[str]:
    """Return the summary's totals as plain lines."""
    places = summary["places"]
    verdict = "every hypothesis accounted for exactly once"
    if not summary["ok"]:
        verdict = "NOT OK"
    lines = [
        f"Summary: {summary['hypotheses']} hypotheses, {summary['accounted']} "
        f"accounted for, {len(summary['lost'])} {_missing_word(summary)}, "
        f"{len(summary['duplicated'])} duplicated: {verdict}",
        "  " + ", ".join(f"{name} {count}" for name, count in places.items()),
        f"  recoveries {summary['recoveries']} (from item histories)"
        + _daemon_recoveries(summary)
        + f", dead letters {summary['dead_lettered']}, kills {len(summary['kills'])}",
        f"  quarantined files {len(summary['quarantined'])}"
        + "".join(
            f"; {q.get('reason')}: {Path(str(q.get('original_path'))).name}"
            for q in summary["quarantined"]
        ),
        f"  time {summary['elapsed_s']:.1f} s, throughput "
        f"{summary['throughput_per_min']:.1f} hypotheses/min",
    ]
    for root_id in summary["lost"]:
        where = [
            f"{left['state']} in {left['queue']}"
            for left in summary["leftovers"]
            if left["root_id"] == root_id
        ]
        label = _missing_word(summary).upper()
        lines.append(f"  {label} {root_id}: " + (", ".join(where) or "found nowhere"))
    for root_id in summary["duplicated"]:
        lines.append(f"  DUPLICATED {root_id}")
    if summary["interrupted"]:
        lines.append("  interrupted before the pipeline finished")
    if summary["timed_out"]:
        lines.append("  timed out before the pipeline finished")
    if kept_root is not None:
        lines.append(f"  tree kept at {kept_root}")
    else:
        lines.append("  tree removed (pass --keep to inspect it)")
    return lines


def _missing_word(summary: dict[str, Any]) -> str:
    """Name hypotheses with no terminal place: lost, or unfinished when
    Ctrl-C stopped the run."""
    return "unfinished" if summary["interrupted"] else "lost"


def _daemon_recoveries(summary: dict[str, Any]) -> str:
    counters = summary.get("daemon_counters")
    if not counters:
        return ""
    return f", daemon counter {counters.get('recovered', 0)}"


def root_cells(
    record: dict[str, Any], missing: str = "lost"
) -> tuple[str, str, str, str]:
    """Return the hypothesis, route, place and result of one summary row;
    ``missing`` names a hypothesis with no terminal place."""
    route = "direct" if record["direct"] else "converted"
    if record["place"]:
        place = record["place"]
    elif record["places"]:
        place = "DUPLICATED: " + ", ".join(record["places"])
    else:
        place = missing.upper()
    result = record.get("headline") or record.get("reason") or ""
    recoveries = record.get("recoveries") or 0
    if recoveries:
        result += f" [recovered {recoveries}x]"
    return str(record["title"]), route, place, result


class PlainView:
    """Log lines for a stdout that is not a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started = time.monotonic()
        self.last_progress = 0.0

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def begin(self, info: DemoInfo) -> None:
        for line in intro_lines(info):
            self._print(line)

    def event(self, text: str) -> None:
        self._print(f"[{time.monotonic() - self.started:6.1f}s] {text}")

    def update(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self.last_progress >= PLAIN_PROGRESS_INTERVAL_S:
            self.last_progress = now
            self.event(progress_line(progress))

    def summary(self, summary: dict[str, Any], *, kept_root: Path | None) -> None:
        for line in summary_lines(summary, kept_root):
            self._print(line)
        for record in summary["roots"]:
            title, route, place, result = root_cells(record, _missing_word(summary))
            self._print(f"  - {title} [{route}] -> {place}: {result}")

    def close(self) -> None:
        pass


class LiveView:
    """A live rich display for a terminal."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console

        self.console = Console(file=stream)
        self.started = time.monotonic()
        self.events: deque[str] = deque(maxlen=MAX_EVENTS)
        self.live: Any = None
        self.progress: Progress | None = None

    def begin(self, info: DemoInfo) -> None:
        from rich.live import Live

        for line in intro_lines(info):
            self.console.print(line, highlight=False, markup=False)
        self.live = Live(self._render(), console=self.console, refresh_per_second=4)
        self.live.start()

    def event(self, text: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:6.1f}s  {text}")
        if self.live is not None:
            self.live.update(self._render())

    def update(self, progress: Progress) -> None:
        self.progress = progress
        if self.live is not None:
            self.live.update(self._render())

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def summary(self, summary: dict[str, Any], *, kept_root: Path | None) -> None:
        from rich.table import Table

        self.close()
        table = Table(title="Where every hypothesis ended", title_justify="left")
        for column in ("hypothesis", "route", "place", "result"):
            table.add_column(column, overflow="fold")
        for record in summary["roots"]:
            cells = root_cells(record, _missing_word(summary))
            table.add_row(*cells, style=_place_style(record["place"]))
        self.console.print(table)
        for line in summary_lines(summary, kept_root):
            alarm = ("  LOST", "  DUPL", "  UNFINISHED")
            style = "bold red" if line.startswith(alarm) else None
            self.console.print(line, style=style, highlight=False, markup=False)

    def _render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.text import Text

        progress = self.progress
        if progress is None:
            return Text("starting workers...")
        header = Text(
            f"{time.monotonic() - self.started:5.1f} s   "
            f"{progress.accounted}/{progress.total} "
            f"hypotheses accounted for   recoveries "
            f"{'n/a' if progress.recoveries is None else progress.recoveries}   "
            f"kills {progress.kills}   quarantined {progress.quarantined}"
            + ("" if progress.daemon_running is not False else "   DAEMON DOWN")
        )
        events = Text("\n".join(self.events) or "no events yet")
        return Group(
            Panel(header, title="quantd demo", title_align="left"),
            _workers_table(progress),
            _queues_table(progress),
            Panel(events, title="events", title_align="left"),
        )


def _workers_table(progress: Progress) -> Any:
    from rich.table import Table

    table = Table(title="workers", title_justify="left", expand=True)
    table.add_column("stage")
    table.add_column("worker")
    table.add_column("pid", justify="right")
    table.add_column("holds", overflow="ellipsis", no_wrap=True)
    by_pid: dict[int | None, list[ActiveClaim]] = {}
    for claim in progress.claims:
        by_pid.setdefault(claim.pid, []).append(claim)
    live_pids = set()
    for stage in STAGES:
        for child in progress.workers:
            if child.stage != stage:
                continue
            live_pids.add(child.pid)
            name = child.name + (" (sh)" if child.kind == "shell" else "")
            claims = by_pid.get(child.pid, [])
            table.add_row(stage, name, str(child.pid), _holds(claims))
    for pid, orphaned in by_pid.items():
        if pid in live_pids:
            continue
        worker = orphaned[0].worker or "?"
        table.add_row(
            "-",
            f"{worker} (dead)",
            str(pid),
            _holds(orphaned) + "  awaiting recovery",
            style="red",
        )
    return table


def _holds(claims: list[ActiveClaim]) -> str:
    if not claims:
        return "idle"
    parts = []
    for claim in claims:
        retry = f" (attempt {claim.attempts + 1})" if claim.attempts else ""
        parts.append(f"{claim.queue}: {claim.title}{retry}")
    return "; ".join(parts)


def _queues_table(progress: Progress) -> Any:
    from rich.table import Table

    table = Table(title="queues and outputs", title_justify="left")
    for queue in QUEUES:
        table.add_column(queue, justify="right")
    for place in PLACES:
        table.add_column(place, justify="right")
    cells = []
    for queue in QUEUES:
        claimed = progress.queues.get(queue, {}).get("claimed", 0)
        cells.append(f"{_pending(progress.queues, queue)} + {claimed} claimed")
    cells += [str(progress.places.get(place, 0)) for place in PLACES]
    table.add_row(*cells)
    return table


def _place_style(place: str | None) -> str | None:
    return {
        "good": "green",
        "prop_firm_ready": "bold green",
        "rejected": "yellow",
        "failed": "red",
    }.get(place or "", "bold red")
