"""Read-only views of a demo tree: active claims, terminal items, counters.

Everything here lists directories and reads files. Nothing changes the
tree, so the runner and the live view can call it at any moment while
workers and the daemon run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantd.holder import HolderKey
from quantd.tree import CLAIMS_DIR, Tree

FAILED_ARCHIVE = "failed"


@dataclass(frozen=True)
class ActiveClaim:
    """An item that a worker holds right now."""

    queue: str
    holder: str
    pid: int | None
    worker: str | None
    item_id: str
    title: str
    attempts: int
    path: Path


@dataclass(frozen=True)
class TerminalItem:
    """An item in a place it never leaves: an output, ``failed`` or quarantine."""

    place: str
    path: Path
    doc: dict[str, Any]

    @property
    def item_id(self) -> str:
        return str(self.doc.get("id", ""))

    @property
    def root_id(self) -> str:
        return str(self.doc.get("root_id") or self.doc.get("id", ""))


def read_json(path: Path) -> dict[str, Any] | None:
    """Read a JSON object; None if the file vanished or is not one."""
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def list_names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _title_of(doc: dict[str, Any]) -> str:
    payload = doc.get("payload")
    title = payload.get("title") if isinstance(payload, dict) else None
    return str(title or doc.get("id", "?"))


@dataclass
class TreeObserver:
    """Reads a demo tree; caches what never changes (holder records and
    items that reached a terminal place)."""

    tree: Tree
    _workers: dict[str, str | None] = field(default_factory=dict)
    _terminal: dict[Path, TerminalItem] = field(default_factory=dict)

    def claims(self) -> list[ActiveClaim]:
        """List every item held by a quantd holder, in queue order."""
        found = []
        for queue in self.tree.config.queues:
            claims_dir = self.tree.claims_dir(queue)
            for holder in sorted(list_names(claims_dir)):
                for name in sorted(list_names(claims_dir / holder)):
                    if not name.endswith(".json"):
                        continue
                    path = claims_dir / holder / name
                    doc = read_json(path)
                    if doc is None:
                        continue
                    found.append(self._claim(queue, holder, path, doc))
        return found

    def _claim(
        self, queue: str, holder: str, path: Path, doc: dict[str, Any]
    ) -> ActiveClaim:
        key = HolderKey.parse(holder)
        return ActiveClaim(
            queue=queue,
            holder=holder,
            pid=key.pid if key else None,
            worker=self.worker_of(holder),
            item_id=str(doc.get("id", "?")),
            title=_title_of(doc),
            attempts=int(doc.get("attempts") or 0),
            path=path,
        )

    def worker_of(self, holder: str) -> str | None:
        """Return the worker id that a holder key's record names."""
        if holder not in self._workers:
            record = read_json(self.tree.holders / f"{holder}.json") or {}
            worker = record.get("worker")
            self._workers[holder] = str(worker) if worker else None
        return self._workers[holder]

    def terminal_items(self, *, fresh: bool = False) -> list[TerminalItem]:
        """List every item in an output, in ``failed`` or in quarantine.

        Items already read are reused unless ``fresh``: an archived file is
        rewritten once right after it arrives, so the final accounting reads
        every file again.
        """
        if fresh:
            self._terminal.clear()
        found = []
        for place, path in self._terminal_paths():
            item = self._terminal.get(path)
            if item is None:
                item = self._read_terminal(place, path)
                if item is None:
                    continue
                self._terminal[path] = item
            found.append(item)
        return found

    def _terminal_paths(self) -> Iterator[tuple[str, Path]]:
        for output in self.tree.config.outputs:
            directory = self.tree.queue_dir(output)
            for name in sorted(list_names(directory)):
                if name.endswith(".json") and not name.startswith("."):
                    yield output, directory / name
        failed = self.tree.archive_dir(FAILED_ARCHIVE)
        for name in sorted(list_names(failed)):
            if name.endswith(".json") and not name.startswith("."):
                yield FAILED_ARCHIVE, failed / name
        for entry in sorted(list_names(self.tree.quarantine)):
            yield "quarantine", self.tree.quarantine / entry / "item"

    def _read_terminal(self, place: str, path: Path) -> TerminalItem | None:
        doc = read_json(path)
        if doc is None or "id" not in doc:
            return None
        return TerminalItem(place, path, doc)

    def quarantined(self) -> list[dict[str, Any]]:
        """Return the reason record of every quarantine entry."""
        records = []
        for entry in sorted(list_names(self.tree.quarantine)):
            record = read_json(self.tree.quarantine / entry / "reason.json") or {}
            records.append({"entry": entry, **record})
        return records

    def leftovers(self) -> list[dict[str, Any]]:
        """List items still pending, claimed or being recovered."""
        found = []
        for queue in self.tree.config.queues:
            directory = self.tree.queue_dir(queue)
            for name in list_names(directory):
                if name.endswith(".json") and not name.startswith("."):
                    found.append(self._leftover("pending", queue, directory / name))
            claims_dir = directory / CLAIMS_DIR
            for holder in list_names(claims_dir):
                for name in list_names(claims_dir / holder):
                    state = _claim_state(name)
                    if state is not None:
                        path = claims_dir / holder / name
                        found.append(self._leftover(state, queue, path))
        for name in list_names(self.tree.recovering):
            path = self.tree.recovering / name
            found.append(self._leftover("recovering", name.split("~")[0], path))
        return found

    def _leftover(self, state: str, queue: str, path: Path) -> dict[str, Any]:
        doc = read_json(path) or {}
        return {
            "state": state,
            "queue": queue,
            "path": str(path),
            "item_id": doc.get("id"),
            "root_id": doc.get("root_id") or doc.get("id"),
        }


def _claim_state(name: str) -> str | None:
    if name.endswith(".json"):
        return "claimed"
    if name.endswith(".routed"):
        return "route_committed"
    return None


def daemon_counters(tree: Tree) -> dict[str, Any] | None:
    """Return the counters of status.json, None if no daemon wrote it."""
    document = read_json(tree.status_path)
    if document is None or document.get("daemon") is None:
        return None
    counters = document.get("counters")
    return counters if isinstance(counters, dict) else None
