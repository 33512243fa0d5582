"""Orchestration of ``quantd demo``.

The demo creates a tree, starts ``quantd run`` and the stage workers as
separate processes, pushes the researcher's hypotheses, watches the tree
until every hypothesis reaches a terminal place (or the timeout passes),
then stops every process and checks the accounting. With chaos on, it
SIGKILLs a worker that holds a claim once per interval and starts a
replacement.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from quantd.demo.accounting import account, headline
from quantd.demo.chaos import Chaos
from quantd.demo.observe import TerminalItem, TreeObserver, daemon_counters
from quantd.demo.processes import STAGES, Child, Children
from quantd.demo.view import DemoInfo, Progress, View
from quantd.errors import QuantdError
from quantd.items import utc_now
from quantd.tree import Tree, init_tree
from quantd.worker import Worker

POLL_INTERVAL_S = 0.25
DAEMON_START_TIMEOUT_S = 20.0
DEMO_DIR = "demo"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class DemoError(QuantdError):
    """The demo cannot start."""


@dataclass(frozen=True)
class DemoOptions:
    """Settings of one demo run; the defaults are those of ``quantd demo``."""

    root: Path | None = None
    hypotheses: int = 12
    workers: int = 2
    chaos: bool = False
    chaos_interval_s: float = 2.0
    seed: int = 7
    keep: bool = False
    summary_json: Path | None = None
    timeout_s: float = 300.0
    work_s: float = 1.5
    bad_input: bool = True
    daemon: bool = True

    @property
    def stop_grace_s(self) -> float:
        """How long a stopping worker may take to finish its item."""
        return 10.0 + 2.0 * self.work_s


@dataclass
class RunState:
    """Progress of one run: pushed hypotheses, kills, events already shown."""

    hypotheses: dict[str, dict[str, Any]] = field(default_factory=dict)
    kills: list[dict[str, Any]] = field(default_factory=list)
    seen_terminal: set[Path] = field(default_factory=set)
    seen_quarantine: set[str] = field(default_factory=set)
    recoveries_seen: int = 0
    daemon_exit_reported: bool = False
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    timed_out: bool = False
    interrupted: bool = False


def prepare_root(requested: Path | None) -> tuple[Path, bool]:
    """Return the tree root and whether the demo created it.

    A requested root must be new or empty, so that the accounting counts
    only this run's items.
    """
    if requested is None:
        return Path(tempfile.mkdtemp(prefix="quantd-demo-")).resolve(), True
    root = requested.absolute()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DemoError(
            f"--root {root} exists and is not an empty directory: pass a new "
            "or empty directory, or omit --root to use a new temporary one"
        )
    root.mkdir(parents=True, exist_ok=True)
    return root, False


class Demo:
    """One run of the demo pipeline."""

    def __init__(self, options: DemoOptions, view: View) -> None:
        self.options = options
        self.view = view
        self.state = RunState()
        self.root, self.created_root = prepare_root(options.root)
        self.tree: Tree | None = None
        self.children: Children | None = None
        self.chaos: Chaos | None = None

    def run(self) -> int:
        """Run the pipeline, print the summary and return the exit code."""
        try:
            try:
                with _signals_interrupt():
                    self._start()
                    self._watch()
            except (Interrupted, KeyboardInterrupt):
                # Shutting down now: a further Ctrl-C must not cut the stop
                # of the children or the summary short.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                self.state.interrupted = True
                self.state.finished_at = time.monotonic()
                self.view.event("interrupted: stopping the workers and the daemon")
            finally:
                self._stop()
        except BaseException:
            self.view.close()
            raise
        if self.tree is None:
            self.view.close()
            return EXIT_INTERRUPTED
        return self._finish(self._summarise(self.tree))

    # -- start ------------------------------------------------------------

    def _start(self) -> None:
        options = self.options
        self.tree, _ = init_tree(self.root)
        self.children = Children(
            self.root, self.root / DEMO_DIR, work_s=options.work_s, seed=options.seed
        )
        self.view.begin(self._info())
        if options.daemon:
            self._start_daemon(self.tree, self.children)
        for stage in STAGES:
            for index in range(options.workers):
                kind = "shell" if stage == "converter" and index == 0 else "python"
                child = self.children.start_worker(stage, kind)
                self.view.event(f"started {_describe(child)}")
        if options.chaos:
            self.chaos = Chaos(
                options.chaos_interval_s,
                self.tree.config.daemon.max_attempts,
                options.seed,
            )
        self._push_hypotheses(self.tree)

    def _info(self) -> DemoInfo:
        options = self.options
        return DemoInfo(
            root=self.root,
            created_root=self.created_root,
            hypotheses=options.hypotheses,
            workers_per_stage=options.workers,
            chaos_interval_s=options.chaos_interval_s if options.chaos else None,
            daemon=options.daemon,
            bad_input=options.bad_input,
            logs=self.root / DEMO_DIR / "logs",
        )

    def _start_daemon(self, tree: Tree, children: Children) -> None:
        daemon = children.start_daemon()
        deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
        while daemon_counters(tree) is None:
            if not daemon.running():
                raise DemoError(
                    f"'quantd run' exited with status {daemon.process.returncode} "
                    f"at start; see {daemon.log_path}:\n{_tail(daemon.log_path)}"
                )
            if time.monotonic() > deadline:
                raise DemoError(
                    f"'quantd run' wrote no {tree.status_path} within "
                    f"{DAEMON_START_TIMEOUT_S:.0f} s; see {daemon.log_path}"
                )
            time.sleep(0.05)
        self.view.event(f"started daemon 'quantd run' (pid {daemon.pid})")

    def _push_hypotheses(self, tree: Tree) -> None:
        from quantd.demo.research import propose_hypotheses

        proposals = propose_hypotheses(self.options.hypotheses, self.options.seed)
        if self.options.bad_input:
            proposals += invalid_hypotheses(self.options.seed)
        with Worker(tree, "researcher-0", stage="researcher") as researcher:
            for hypothesis in proposals:
                queue = "hypotheses" if hypothesis.get("direct") else "to-convert"
                root_id = researcher.push(
                    queue, hypothesis, priority=str(hypothesis["priority"])
                )
                self.state.hypotheses[root_id] = hypothesis
        if self.options.bad_input:
            write_junk_file(tree, "to-convert")
        direct = sum(1 for h in proposals if h.get("direct"))
        self.state.started_at = time.monotonic()
        self.view.event(
            f"researcher-0 pushed {len(proposals)} hypotheses: {direct} into "
            f"hypotheses/ (direct), {len(proposals) - direct} into to-convert/"
        )

    # -- watch ------------------------------------------------------------

    def _watch(self) -> None:
        assert self.tree is not None and self.children is not None
        observer = TreeObserver(self.tree)
        deadline = self.state.started_at + self.options.timeout_s
        while True:
            now = time.monotonic()
            claims = observer.claims()
            accounted = self._note_terminals(observer.terminal_items())
            self._note_recoveries(self.tree)
            self._note_quarantine(observer)
            self._note_exits(self.children)
            if self.chaos is not None and self.chaos.due(now):
                self._kill_one(self.chaos, claims, now)
                claims = observer.claims()
            self.view.update(self._progress(observer, claims, accounted))
            if accounted >= len(self.state.hypotheses) and not observer.leftovers():
                self.state.finished_at = time.monotonic()
                return
            if now > deadline:
                self.state.timed_out = True
                self.state.finished_at = now
                self.view.event(
                    f"timed out after {self.options.timeout_s:.0f} s with "
                    f"{len(self.state.hypotheses) - accounted} hypotheses "
                    "not accounted for"
                )
                return
            time.sleep(POLL_INTERVAL_S)

    def _note_terminals(self, terminals: list[TerminalItem]) -> int:
        accounted: set[str] = set()
        for item in terminals:
            hypothesis = self.state.hypotheses.get(item.root_id)
            if hypothesis is not None:
                accounted.add(item.root_id)
            if item.path in self.state.seen_terminal:
                continue
            self.state.seen_terminal.add(item.path)
            title = (hypothesis or {}).get("title") or item.item_id
            self.view.event(_terminal_message(item, str(title)))
        return len(accounted)

    def _note_quarantine(self, observer: TreeObserver) -> None:
        for record in observer.quarantined():
            # The entry directory appears before its reason.json is written.
            if record["entry"] in self.state.seen_quarantine or "reason" not in record:
                continue
            self.state.seen_quarantine.add(record["entry"])
            name = Path(str(record.get("original_path"))).name
            self.view.event(
                f"quarantined {name} from {record.get('queue')}: "
                f"{record.get('reason')} ({record.get('detail')})"
            )

    def _note_recoveries(self, tree: Tree) -> None:
        counters = daemon_counters(tree)
        if counters is None:
            return
        recovered = int(counters.get("recovered") or 0)
        if recovered > self.state.recoveries_seen:
            new = recovered - self.state.recoveries_seen
            self.state.recoveries_seen = recovered
            self.view.event(
                f"daemon recovered {new} stale claim(s), {recovered} so far"
            )

    def _note_exits(self, children: Children) -> None:
        for child in children.reap_exited():
            self.view.event(
                f"{child.name} exited on its own with status "
                f"{child.process.returncode}; see {child.log_path}"
            )
            replacement = children.start_worker(child.stage, child.kind)
            self.view.event(f"started {_describe(replacement)} in its place")
        daemon = children.daemon
        if daemon and not daemon.running() and not self.state.daemon_exit_reported:
            self.state.daemon_exit_reported = True
            self.view.event(
                f"daemon exited with status {daemon.process.returncode}: "
                f"stale claims are no longer recovered; see {daemon.log_path}"
            )

    def _kill_one(self, chaos: Chaos, claims: list[Any], now: float) -> None:
        assert self.children is not None
        victim = chaos.choose(claims, self.children.workers)
        # The worker may have finished that item since the listing, and its
        # next claim may be one that this kill would dead-letter.
        if victim is None or not victim.claim.path.exists():
            return
        child = self.children.kill(victim.child.name)
        chaos.killed(victim, now)
        self.state.kills.append(
            {
                "worker": child.name,
                "stage": child.stage,
                "kind": child.kind,
                "pid": child.pid,
                "item_id": victim.claim.item_id,
                "title": victim.claim.title,
                "at_s": round(now - self.state.started_at, 2),
            }
        )
        replacement = self.children.start_worker(child.stage, child.kind)
        self.view.event(
            f"chaos: SIGKILL {child.name} (pid {child.pid}) while it held "
            f"'{victim.claim.title}'; started {replacement.name}"
        )

    def _progress(
        self, observer: TreeObserver, claims: list[Any], accounted: int
    ) -> Progress:
        from quantd.daemon.status import scan_tree

        assert self.tree is not None and self.children is not None
        counters = daemon_counters(self.tree)
        places = {place: 0 for place in ("good", "prop_firm_ready", "rejected")}
        places["failed"] = 0
        for item in observer.terminal_items():
            places[item.place] = places.get(item.place, 0) + 1
        return Progress(
            elapsed_s=time.monotonic() - self.state.started_at,
            accounted=accounted,
            total=len(self.state.hypotheses),
            places=places,
            queues=scan_tree(self.tree, utc_now())["queues"],
            claims=claims,
            workers=list(self.children.workers.values()),
            recoveries=None if counters is None else int(counters["recovered"]),
            quarantined=len(observer.quarantined()),
            kills=len(self.state.kills),
            daemon_running=(
                self.children.daemon.running() if self.children.daemon else None
            ),
        )

    # -- stop and summarise -----------------------------------------------

    def _stop(self) -> None:
        if self.children is None:
            return
        with _signals_ignored():
            killed = self.children.stop_all(self.options.stop_grace_s)
        for name in killed:
            self.view.event(f"{name} did not stop within the grace time; killed")

    def _summarise(self, tree: Tree) -> dict[str, Any]:
        finished = self.state.finished_at or time.monotonic()
        summary = account(
            TreeObserver(tree),
            self.state.hypotheses,
            kills=self.state.kills,
            daemon_counters=daemon_counters(tree),
            elapsed_s=finished - self.state.started_at,
            interrupted=self.state.interrupted,
            timed_out=self.state.timed_out,
        )
        summary["processes"] = self._process_records()
        summary["options"] = {
            "hypotheses": self.options.hypotheses,
            "workers_per_stage": self.options.workers,
            "chaos": self.options.chaos,
            "chaos_interval_s": self.options.chaos_interval_s,
            "seed": self.options.seed,
            "work_s": self.options.work_s,
            "bad_input": self.options.bad_input,
            "daemon": self.options.daemon,
        }
        return summary

    def _process_records(self) -> list[dict[str, Any]]:
        if self.children is None:
            return []
        children = list(self.children.retired)
        if self.children.daemon is not None:
            children.append(self.children.daemon)
        return [
            {
                "name": child.name,
                "stage": child.stage,
                "kind": child.kind,
                "pid": child.pid,
                "returncode": child.process.poll(),
            }
            for child in children
        ]

    def _finish(self, summary: dict[str, Any]) -> int:
        if self.options.summary_json is not None:
            path = self.options.summary_json
            path.write_text(json.dumps(summary, indent=2) + "\n")
        remove = self.created_root and not self.options.keep and summary["ok"]
        summary_root = None if remove else self.root
        self.view.summary(summary, kept_root=summary_root)
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)
        if self.state.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_OK if summary["ok"] else EXIT_FAILED


def invalid_hypotheses(seed: int) -> list[dict[str, Any]]:
    """Return hypotheses that a stage must fail with a reason: markets with
    no bundled data (caught by the converter) and an unknown strategy
    family sent straight to the backtester."""
    return [
        {
            "kind": "hypothesis",
            "id": f"hyp-{seed}-invalid-markets",
            "title": "RSI divergence on ES, NQ (no bundled data)",
            "family": "rsi_reversion",
            "hypothesis": "Index futures revert after RSI extremes.",
            "parameter_ranges": {
                "rsi_period": [7, 14],
                "oversold": [20, 30],
                "overbought": [70, 80],
            },
            "markets": ["ES", "NQ"],
            "priority": "medium",
            "direct": False,
        },
        {
            "kind": "hypothesis",
            "id": f"hyp-{seed}-invalid-family",
            "title": "Moon phase timing on GOOG (unknown family)",
            "family": "moon_phase",
            "hypothesis": "Prices rise in the week after a full moon.",
            "parameter_ranges": {"lag_days": [1, 7]},
            "markets": ["GOOG"],
            "priority": "low",
            "direct": True,
        },
    ]


def write_junk_file(tree: Tree, queue: str) -> Path:
    """Drop a file that is not an item into ``queue``, written under a
    temp name and renamed, as a careless producer might. A claimer or the
    daemon quarantines it."""
    target = tree.queue_dir(queue) / "researcher-notes.json"
    temp = tree.tmp / "researcher-notes.tmp"
    temp.write_text("notes: try a volatility filter next\n")
    os.rename(temp, target)
    return target


def _describe(child: Child) -> str:
    kind = "shell script" if child.kind == "shell" else "Python"
    return f"{child.name} ({kind}, pid {child.pid})"


def _terminal_message(item: TerminalItem, title: str) -> str:
    if item.place == "failed":
        reason = item.doc.get("last_error") or "reason not recorded yet"
        return f"failed: '{title}': {reason}"
    if item.place == "quarantine":
        return f"quarantined: '{title}'"
    payload = item.doc.get("payload")
    line = headline(payload) if isinstance(payload, dict) else ""
    return f"{item.place}: '{title}'" + (f" ({line})" if line else "")


def _tail(path: Path, lines: int = 10) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM arrived: stop the children and summarise."""


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Turn Ctrl-C and SIGTERM into Interrupted, so that the demo always
    stops its children.

    Python's own KeyboardInterrupt is not used: under load, an interrupted
    run that had handled it and returned 130 was sometimes still killed by
    SIGINT while the interpreter shut down (exit status -2).
    """
    previous = {
        signum: signal.signal(signum, _raise_interrupt)
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while the children are being stopped."""
    previous = {
        signum: signal.signal(signum, signal.SIG_IGN)
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
