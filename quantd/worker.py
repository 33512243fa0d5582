"""The worker-facing API: one object per worker process."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from quantd.config import Stage
from quantd.errors import ClaimLost, ConfigError, QuantdError
from quantd.filestore import FileStore, Holder, worker_patterns
from quantd.holder import HolderKey
from quantd.itemfile import read_item_file
from quantd.items import (
    Item,
    ItemStatus,
    Priority,
    parse_reference_claim,
    validate_id,
)
from quantd.store import Store
from quantd.tree import CLAIMS_DIR, Tree, open_tree

WORKER_ENV = "QUANTD_WORKER"
STAGE_ENV = "QUANTD_STAGE"


class Worker:
    """A worker: pushes, claims and finishes items in one tree.

    ``worker`` is this worker's id (default ``$QUANTD_WORKER``); its stage
    comes from ``stage`` (default ``$QUANTD_STAGE``) or from the config's
    worker patterns. Claims are held for process ``pid``, this process by
    default; a short-lived command can hold them for its caller instead.
    """

    def __init__(
        self,
        tree: Tree | None = None,
        worker: str | None = None,
        *,
        stage: str | None = None,
        pid: int | None = None,
        store: Store | None = None,
    ) -> None:
        self.tree = tree or open_tree()
        self.worker = _resolve_worker(worker)
        self.stage = _resolve_stage(self.tree, self.worker, stage)
        self.holder = Holder(self.worker, self.stage, _holder_key(pid))
        self.store: Store = store or FileStore(self.tree)
        self._held: dict[str, Item] = {}

    def __enter__(self) -> Worker:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the background watcher that :meth:`claim` may have started."""
        self.store.close()

    def push(
        self,
        queue: str,
        payload: Mapping[str, Any],
        *,
        priority: Priority | str = Priority.MEDIUM,
    ) -> str:
        """Push a new item into ``queue`` and return its id."""
        return self.store.push(
            queue, payload, priority=priority, stage=self.stage, worker=self.worker
        )

    def claim(
        self, queues: Iterable[str] | str | None = None, *, wait_s: float | None = None
    ) -> Item | None:
        """Claim the next item, or return None if there is none.

        ``queues`` defaults to the queues this worker's stage consumes.
        With ``wait_s``, block up to that many seconds for an item.
        """
        names = self.queues_to_claim(queues)
        item = self.store.claim(names, self.holder, wait_s=wait_s)
        if item is not None:
            self._held[item.id] = item
        return item

    def complete(self, item: Item) -> None:
        """Archive a claimed item as done."""
        self._finish(item, lambda: self.store.complete(item, self.holder))

    def fail(self, item: Item, reason: str) -> None:
        """Archive a claimed item as failed, recording ``reason``."""
        self._finish(item, lambda: self.store.fail(item, self.holder, reason))

    def route(
        self,
        item: Item,
        target: str,
        payload: Mapping[str, Any],
        *,
        priority: Priority | str | None = None,
    ) -> str:
        """Finish a claimed item by pushing its successor into ``target``;
        return the successor's id."""
        successor: list[str] = []

        def act() -> None:
            successor.append(
                self.store.route(item, self.holder, target, payload, priority=priority)
            )

        self._finish(item, act)
        return successor[0]

    def heartbeat(self) -> list[Item]:
        """Renew the lease of every claim this worker holds; return and
        forget the claims that were lost."""
        lost = self.store.heartbeat(list(self._held.values()))
        for item in lost:
            self._held.pop(item.id, None)
        return lost

    def find_claim(self, item_id: str) -> Item:
        """Find this worker's claim on ``item_id`` by exact id.

        Looks in the holder's claim directories, then at reference-protocol
        claims named for this worker. Raises InvalidId for an id that is
        not valid and ClaimLost if there is no claim.
        """
        validate_id(item_id)
        if item_id in self._held:
            return self._held[item_id]
        limit = self.tree.config.daemon.max_item_bytes
        for queue in self.tree.config.queues:
            for path in self._candidate_claims(queue, item_id):
                doc = read_item_file(path, limit)
                doc["status"] = ItemStatus.IN_PROGRESS.value
                doc.setdefault("claimed_by", self.worker)
                return Item(doc, queue, path)
        raise ClaimLost(
            f"worker {self.worker!r} holds no claim on item {item_id!r} under "
            f"holder pid {self.holder.key.pid}: it was never claimed for that "
            "process, was finished, or was recovered because the process that "
            "claimed it died. quantd claim holds claims for its parent process, "
            "so a wrapper such as timeout becomes the holder and exits; pass "
            "--pid $$ to claim and finish for the shell, or use the same "
            "--worker and --pid as the claim"
        )

    def _candidate_claims(self, queue: str, item_id: str) -> list[Path]:
        queue_dir = self.tree.queue_dir(queue)
        holder_dir = queue_dir / CLAIMS_DIR / str(self.holder.key)
        found = []
        for directory, own in ((holder_dir, True), (queue_dir, False)):
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            for name in names:
                if own and name.endswith(".json"):
                    if name[:-5].rpartition("~")[2] == item_id:
                        found.append(directory / name)
                elif not own:
                    parsed = parse_reference_claim(name)
                    if (
                        parsed
                        and parsed.item_id == item_id
                        and parsed.worker == self.worker
                    ):
                        found.append(directory / name)
        return found

    def queues_to_claim(self, queues: Iterable[str] | str | None) -> list[str]:
        """Return the queues :meth:`claim` looks in for ``queues``."""
        if isinstance(queues, str):
            return [queues]
        if queues is not None:
            return list(queues)
        if self.stage is None:
            raise QuantdError(
                f"worker {self.worker!r} has no stage: it matches no stage's "
                f"'workers' pattern ({worker_patterns(self.tree)}); name the "
                "queues to claim from, pass a stage (--stage or "
                "$QUANTD_STAGE), or name the worker to match a pattern"
            )
        if not self.stage.consumes:
            raise QuantdError(
                f"stage {self.stage.name!r} of worker {self.worker!r} consumes "
                "no queue: claim with a worker of a stage that consumes one"
            )
        return list(self.stage.consumes)

    def _finish(self, item: Item, act: Any) -> None:
        try:
            act()
        except ClaimLost:
            self._held.pop(item.id, None)
            raise
        self._held.pop(item.id, None)


def _resolve_worker(worker: str | None) -> str:
    resolved = worker or os.environ.get(WORKER_ENV)
    if not resolved:
        raise QuantdError(
            f"no worker id: pass one (--worker) or set {WORKER_ENV}, "
            "for example 'converter-pane-0'"
        )
    if len(resolved) > 128 or not resolved.isprintable():
        raise QuantdError(
            f"invalid worker id {resolved[:40]!r}: use at most 128 printable characters"
        )
    return resolved


def _holder_key(pid: int | None) -> HolderKey:
    if pid is None:
        return HolderKey.for_pid(os.getpid())
    if pid <= 0:
        raise QuantdError(f"invalid pid {pid}: must be a positive process id")
    try:
        return HolderKey.for_pid(pid)
    except ProcessLookupError:
        raise QuantdError(
            f"no process with pid {pid}: claims are held for a running "
            "process; pass the pid of the worker itself, such as --pid $$ "
            "in a shell script"
        ) from None
    except PermissionError as error:
        raise QuantdError(f"cannot inspect pid {pid}: {error}") from None


def _resolve_stage(tree: Tree, worker: str, stage: str | None) -> Stage | None:
    name = stage or os.environ.get(STAGE_ENV)
    if name:
        found = tree.config.stages.get(name)
        if found is None:
            known = ", ".join(tree.config.stages)
            raise ConfigError(f"unknown stage {name!r}; the config defines {known}")
        return found
    return tree.config.stage_for_worker(worker)
