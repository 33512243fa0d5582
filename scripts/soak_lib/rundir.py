"""The directory of one soak run: the tree, and the driver's records
beside it on the same file system::

    <root>/tree/                     the quantd tree
    <root>/state/run.json            the run id and the seed
    <root>/state/ledgers/            researcher-<slot>.ledger: "<seq> <id>"
                                     for every push that returned
    <root>/state/badfiles.jsonl      every bad file dropped
    <root>/state/staging/            where bad files are built; symlink
                                     targets and hard links stay here
    <root>/state/poison/             one file per worker, named by pid,
                                     that died of a poison item
    <root>/state/logs/               worker events, worker stderr and the
                                     daemon's log
"""

from __future__ import annotations

import contextlib
import json
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from quantd import Tree, init_tree, open_tree
from soak_lib.badfiles import Dropped
from soak_lib.checker import Report, check

# Daemon settings of the soak tree: short enough that a run of a minute
# has many recoveries, dead letters and expired leases.
SOAK_DAEMON_SETTINGS: dict[str, Any] = {
    "reconcile_interval_s": 1.0,
    "lease_s": 3.0,
    "max_attempts": 3,
    "max_item_bytes": 65_536,
    "status_interval_s": 1.0,
    "status_debounce_s": 0.1,
}


# Daemon log events the soak counts; item_dead_lettered is logged as an
# error by design.
DAEMON_EVENTS = (
    "claim_recovered",
    "item_dead_lettered",
    "item_quarantined",
    "route_finished",
    "events_maybe_lost",
    "draft_removed",
    "handler_failed",
)
EXPECTED_ERRORS = ("item_dead_lettered",)


@dataclass(frozen=True)
class RunDirectory:
    """Paths and records of one run."""

    root: Path

    @property
    def tree_root(self) -> Path:
        return self.root / "tree"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def staging(self) -> Path:
        return self.state / "staging"

    @property
    def ledgers(self) -> Path:
        return self.state / "ledgers"

    @property
    def poison(self) -> Path:
        return self.state / "poison"

    def create(self, run_id: str, seed: int) -> Tree:
        """Create the tree with the soak's daemon settings, and the state
        directories; return the tree."""
        for directory in (self.logs, self.staging, self.ledgers, self.poison):
            directory.mkdir(parents=True, exist_ok=True)
        init_tree(self.tree_root)
        config_path = self.tree_root / "quantd.toml"
        document = tomllib.loads(config_path.read_text())
        document.setdefault("daemon", {}).update(SOAK_DAEMON_SETTINGS)
        config_path.write_text(tomli_w.dumps(document))
        run = {"run_id": run_id, "seed": seed}
        (self.state / "run.json").write_text(json.dumps(run))
        return open_tree(self.tree_root)

    def ledger_ids(self) -> set[str]:
        """Return every id whose push a researcher saw return."""
        ids = set()
        for path in self.ledgers.glob("*.ledger"):
            for line in path.read_text().splitlines():
                fields = line.split()
                if len(fields) == 2:
                    ids.add(fields[1])
        return ids

    def record_dropped(self, dropped: Dropped) -> None:
        with open(self.state / "badfiles.jsonl", "a") as record:
            record.write(dropped.to_json() + "\n")

    def dropped(self) -> list[Dropped]:
        with contextlib.suppress(FileNotFoundError):
            lines = (self.state / "badfiles.jsonl").read_text().splitlines()
            return [Dropped.from_json(line) for line in lines]
        return []


def check_saved_run(root: Path) -> tuple[Report, int]:
    """Check the tree of a finished run kept in ``root`` again; return the
    report and the run's seed."""
    run_dir = RunDirectory(root)
    run = json.loads((run_dir.state / "run.json").read_text())
    tree = open_tree(run_dir.tree_root)
    report = check(tree, run["run_id"], run_dir.ledger_ids(), run_dir.dropped())
    return report, int(run["seed"])


@dataclass
class LogSummary:
    """The logs of a run in short: counts of daemon events as
    ``daemon_log:<event>``, daemon error lines, and (item id, error) of
    every ClaimLost a light worker logged."""

    events: Counter[str] = field(default_factory=Counter)
    daemon_errors: list[str] = field(default_factory=list)
    claims_lost: list[tuple[str, str]] = field(default_factory=list)


def read_logs(run_dir: RunDirectory) -> LogSummary:
    summary = LogSummary()
    for line in read_lines(run_dir.logs / "daemon.log"):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        event = str(record.get("event"))
        if event in DAEMON_EVENTS:
            summary.events[f"daemon_log:{event}"] += 1
        if record.get("level") == "error" and event not in EXPECTED_ERRORS:
            summary.daemon_errors.append(line.strip())
    for path in sorted(run_dir.logs.glob("*.events")):
        for line in read_lines(path):
            if '"claim_lost"' in line:
                record = json.loads(line)
                lost = (str(record.get("item_id")), str(record.get("error")))
                summary.claims_lost.append(lost)
    return summary


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
