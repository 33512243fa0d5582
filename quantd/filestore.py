"""The worker-side queue operations on a tree of directories.

Every state change is one rename inside the tree:

* push: write under ``.quantd/tmp``, then rename into the queue.
* claim: rename ``<queue>/<name>`` to ``<queue>/.claims/<holder>/<name>``.
  The holder directory's name records the claiming process, so the claim
  and the record of who holds it appear in one step.
* complete and fail: swap the document with its outcome into the claim,
  then rename the claim into an archive (:func:`quantd.transitions.archive`).
* route: write the successor as a draft ``<name>.next`` beside the claim,
  commit by renaming the claim to ``<name>.routed``, push the draft, then
  archive the committed claim. The commit rename either wins against a
  concurrent recovery or raises :class:`ClaimLost`; after it, anyone can
  finish the route (:func:`quantd.transitions.finish_route`) and the draft
  is pushed once.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quantd import faults, fsutil
from quantd.config import Stage
from quantd.errors import ClaimLost, InvalidItem, QuantdError, RoutingError
from quantd.holder import HolderKey, host_name
from quantd.itemfile import BadFile, read_item_file
from quantd.items import (
    Item,
    ItemStatus,
    PendingName,
    Priority,
    SortKey,
    format_time,
    key_from_document,
    new_id,
    parse_pending_name,
    utc_now,
)
from quantd.liveness import Verdict, check_process
from quantd.quarantine import Reason, quarantine
from quantd.transitions import (
    COMMITTED_SUFFIX,
    DRAFT_SUFFIX,
    archive,
    encode_new,
    finish_route,
    publish,
    unlink_quietly,
)
from quantd.tree import CLAIMS_DIR, Tree
from quantd.waiting import DirectoryWaiter

# A listing of a queue is reused while the directory is unchanged. When
# other processes change it, it is listed again, but at most this often,
# so that concurrent claimers do not each list a large queue per claim.
RELIST_MIN_INTERVAL_S = 0.02
# NOTE: a listing is always refreshed after this age. A push that lands in
# the same mtime tick as a listing can wait this long behind lower
# priorities; it is never lost.
RELIST_MAX_AGE_S = 1.0
# After a claim is lost to another claimer, the next try picks among this
# many of the oldest entries of the best priority.
CONTENDED_SPREAD = 8
# Parsed file names kept between listings; the cache is emptied when full.
MAX_PARSED_NAMES = 200_000


@dataclass(frozen=True)
class Holder:
    """The worker a claim is held for, and the process that holds it."""

    worker: str
    stage: Stage | None
    key: HolderKey

    def record(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "stage": self.stage.name if self.stage else None,
            "host": host_name(),
            "pid": self.key.pid,
            "start": self.key.start,
            "machine": self.key.machine,
            "created_at": format_time(utc_now()),
        }


# A listed pending item: (priority rank, creation time, file name, stem).
# A plain tuple, because sorting thousands of dataclass keys per listing
# is several times slower.
_Entry = tuple[int, str, str, str]


@dataclass
class _Listing:
    entries: list[_Entry] = field(default_factory=list)
    mtime_ns: int = -1
    listed_at: float = 0.0
    cost_s: float = 0.0
    stale: bool = True


class FileStore:
    """Queue operations on one tree; safe to use from many processes."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self._listings: dict[str, _Listing] = {}
        self._reference_keys: dict[tuple[str, str], SortKey] = {}
        self._parsed_names: dict[str, PendingName | None] = {}
        self._holder_dirs: set[Path] = set()
        self._holder_records: set[HolderKey] = set()
        self._waiter: DirectoryWaiter | None = None

    # -- push ---------------------------------------------------------

    def push(
        self,
        queue: str,
        payload: Mapping[str, Any],
        *,
        priority: Priority | str = Priority.MEDIUM,
        stage: Stage | None,
        worker: str,
    ) -> str:
        """Push a new item into ``queue`` and return its id.

        Raises RoutingError, before touching the disk, when ``stage`` has
        no edge to ``queue``. Raises InvalidItem when the item exceeds
        daemon.max_item_bytes or daemon.max_json_depth, or contains NaN or
        Infinity. Raises QuantdError when the file system is full. Nothing
        is pushed in any of these cases.
        """
        check_edge(self.tree, stage, queue, worker)
        now = utc_now()
        assert stage is not None
        doc = new_document(
            payload,
            priority=Priority.parse(priority),
            stage=stage.name,
            worker=worker,
            now=now,
            history=[_hop("pushed", now, worker, stage.name, queue=queue)],
        )
        data = encode_new(self.tree, doc)
        try:
            publish(self.tree, doc, queue, prefix="push", data=data)
        except OSError as error:
            if error.errno in _DISK_FULL:
                raise _disk_full(error, self.tree, f"push into {queue!r}") from error
            raise
        return str(doc["id"])

    # -- claim --------------------------------------------------------

    def claim(
        self, queues: Iterable[str], holder: Holder, *, wait_s: float | None = None
    ) -> Item | None:
        """Claim the next item from ``queues``: highest priority first,
        then oldest. With ``wait_s``, wait that long for one to arrive.

        Raises RoutingError, before touching the disk, when the holder's
        stage does not consume one of ``queues``. When the holder is
        another process, such as the shell that ran
        ``quantd claim``, raises QuantdError as soon as that process has
        exited: a claim held for a dead process would only be recovered.
        """
        names = list(queues)
        dirs = [self.tree.queue_dir(q) for q in names]
        for name in names:
            check_consumes(holder, name)
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while True:
            if deadline is not None:
                self._ensure_waiter().arm(dirs)
            check_holder_running(holder)
            item = self._claim_once(names, holder)
            if item is not None or deadline is None:
                return item
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self._ensure_waiter().wait(remaining):
                for name in names:
                    self._listings.setdefault(name, _Listing()).stale = True

    def _ensure_waiter(self) -> DirectoryWaiter:
        if self._waiter is None:
            self._waiter = DirectoryWaiter()
        return self._waiter

    def _claim_once(self, queues: list[str], holder: Holder) -> Item | None:
        # Refreshing before every attempt matters when other processes
        # took every listed item: the exhausted listing is read again, so
        # None means that a fresh listing of every queue was empty.
        lost = 0
        while True:
            for name in queues:
                self._refresh(name)
            heads = [
                (self._listings[q].entries[-1], q)
                for q in queues
                if self._listings[q].entries
            ]
            if not heads:
                return None
            _, queue = min(heads)
            entries = self._listings[queue].entries
            index = _spread(entries) if lost else len(entries) - 1
            _, _, pending, stem = entries.pop(index)
            item = self._take(queue, pending, stem, holder)
            if item is not None:
                return item
            lost += 1

    def _take(self, queue: str, name: str, stem: str, holder: Holder) -> Item | None:
        queue_dir = self.tree.queue_dir(queue)
        holder_dir = self._holder_dir(queue, holder)
        target = holder_dir / name
        try:
            os.rename(queue_dir / name, target)
        except FileNotFoundError:
            if not holder_dir.is_dir():
                self._holder_dirs.discard(holder_dir)
            return None
        faults.point("claim.after_rename")
        if self.tree.durable:
            fsutil.fsync_dir(queue_dir)
            fsutil.fsync_dir(holder_dir)
        try:
            settings = self.tree.config.daemon
            doc = read_item_file(
                target, settings.max_item_bytes, max_depth=settings.max_json_depth
            )
        except BadFile as error:
            quarantine(self.tree, target, error.reason, error.detail, queue=queue)
            return None
        name_id = stem.rpartition("~")[2]
        if doc["id"] != name_id:
            # Finishing by id looks the claim up by its file name, so such
            # a claim could never be completed through the command line.
            detail = (
                f"the file name gives id {name_id!r} but the document's id "
                f"is {doc['id']!r}"
            )
            quarantine(self.tree, target, Reason.INVALID_ITEM, detail, queue=queue)
            return None
        now = utc_now()
        doc["status"] = ItemStatus.IN_PROGRESS.value
        doc["claimed_by"] = holder.worker
        doc["claimed_at"] = format_time(now)
        return Item(doc, queue, target)

    def _holder_dir(self, queue: str, holder: Holder) -> Path:
        path = self.tree.claims_dir(queue) / str(holder.key)
        if path not in self._holder_dirs:
            self._write_holder_record(holder)
            fsutil.make_dirs(path)
            if self.tree.durable:
                # A claim renamed into a new directory is durable only
                # once the directory's own entry is.
                fsutil.fsync_dir(path.parent)
                fsutil.fsync_dir(path.parent.parent)
            self._holder_dirs.add(path)
        return path

    def _write_holder_record(self, holder: Holder) -> None:
        if holder.key in self._holder_records:
            return
        path = self.tree.holders / f"{holder.key}.json"
        data = fsutil.dump_json(holder.record())
        fsutil.replace_file(self.tree.tmp, path, data, durable=self.tree.durable)
        self._holder_records.add(holder.key)

    def _refresh(self, queue: str) -> None:
        listing = self._listings.setdefault(queue, _Listing())
        queue_dir = self.tree.queue_dir(queue)
        mtime_ns = _mtime_ns(queue_dir)
        age = time.monotonic() - listing.listed_at
        changed = mtime_ns != listing.mtime_ns
        # An exhausted listing is always refreshed: the directory's mtime
        # can miss a push in the same clock tick, and reusing the listing
        # would report an empty queue while an item waits.
        fresh = bool(listing.entries) and not listing.stale
        fresh = fresh and age < RELIST_MAX_AGE_S
        # While other claimers change the directory, a large queue is
        # listed again only after ten times its last listing's duration, so
        # listing takes roughly a tenth of a busy claimer's time.
        interval = max(RELIST_MIN_INTERVAL_S, 10 * listing.cost_s)
        if fresh and (not changed or age < interval):
            return
        self._list(queue, queue_dir, listing, mtime_ns)

    def _list(self, queue: str, queue_dir: Path, listing: _Listing, mtime: int) -> None:
        started = time.monotonic()
        entries: list[_Entry] = []
        with os.scandir(queue_dir) as scan:
            for entry in scan:
                name = entry.name
                if name in self._parsed_names:
                    parsed = self._parsed_names[name]
                else:
                    parsed = parse_pending_name(name)
                    self._remember_name(name, parsed)
                if parsed is None:
                    continue
                key = parsed.key or self._reference_key(queue, entry)
                if key is not None:
                    entries.append((key.rank, key.created, entry.name, parsed.stem))
        entries.sort(reverse=True)
        listing.entries = entries
        listing.mtime_ns = mtime
        listing.listed_at = time.monotonic()
        listing.cost_s = listing.listed_at - started
        listing.stale = False

    def _remember_name(self, name: str, parsed: PendingName | None) -> None:
        """Cache a parsed file name: parsing is most of the cost of listing
        a large queue, and most names outlive several listings."""
        if len(self._parsed_names) >= MAX_PARSED_NAMES:
            self._parsed_names.clear()
        self._parsed_names[name] = parsed

    def _reference_key(self, queue: str, entry: os.DirEntry[str]) -> SortKey | None:
        """Order a reference-protocol item, whose name has no sort key, by
        its content; read once per file, then cached."""
        cached = self._reference_keys.get((queue, entry.name))
        if cached is not None:
            return cached
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None
        modified = datetime.fromtimestamp(info.st_mtime, UTC)
        fallback = modified.strftime("%Y%m%dT%H%M%S%f")
        key = SortKey(2, fallback)
        try:
            if stat.S_ISREG(info.st_mode):
                limit = self.tree.config.daemon.max_item_bytes
                key = key_from_document(
                    read_item_file(Path(entry.path), limit), fallback
                )
        except FileNotFoundError:
            return None
        except (BadFile, OSError):
            # A worker that writes <id>.json in place, not through a
            # rename, shows an invalid file for a moment: it is skipped,
            # not cached, until its last write is daemon.write_grace_s old.
            age_s = time.time() - info.st_mtime
            if age_s < self.tree.config.daemon.write_grace_s:
                return None
        if len(self._reference_keys) > 100_000:
            self._reference_keys.clear()
        self._reference_keys[(queue, entry.name)] = key
        return key

    # -- complete and fail --------------------------------------------

    def complete(self, item: Item, holder: Holder) -> None:
        """Archive a claimed item in ``completed``.

        Raises RoutingError when the holder's stage does not consume the
        item's queue, and ClaimLost when the claim was taken away.
        """
        check_consumes(holder, item.queue)
        now = utc_now()
        hop = _hop(
            "completed", now, holder.worker, _stage_name(holder), queue=item.queue
        )
        try:
            archive(
                self.tree,
                item.path,
                "completed",
                item.doc,
                _finish(ItemStatus.COMPLETED, hop),
            )
        except ClaimLost:
            raise claim_lost(item, holder) from None

    def fail(self, item: Item, holder: Holder, reason: str) -> None:
        """Archive a claimed item in ``failed`` with ``reason``; raises as
        :meth:`complete` does."""
        check_consumes(holder, item.queue)
        now = utc_now()
        hop = _hop("failed", now, holder.worker, _stage_name(holder), queue=item.queue)
        hop["reason"] = reason

        def update(doc: dict[str, Any]) -> None:
            _finish(ItemStatus.FAILED, hop)(doc)
            doc["last_error"] = reason

        try:
            archive(self.tree, item.path, "failed", item.doc, update)
        except ClaimLost:
            raise claim_lost(item, holder) from None

    # -- route --------------------------------------------------------

    def route(
        self,
        item: Item,
        holder: Holder,
        target: str,
        payload: Mapping[str, Any],
        *,
        priority: Priority | str | None = None,
    ) -> str:
        """Finish a claimed item by pushing its successor into ``target``.

        Returns the successor's id. Raises RoutingError when the holder's
        stage does not consume the item's queue or has no edge to
        ``target``, InvalidItem when the successor
        breaks a limit as in :meth:`push`, and ClaimLost when the claim was
        taken away. In each case nothing was pushed.
        """
        check_consumes(holder, item.queue)
        check_edge(self.tree, holder.stage, target, holder.worker)
        self.tree.queue_dir(target)
        holder_dir = item.path.parent
        if holder_dir.parent.name != CLAIMS_DIR:
            raise QuantdError(
                f"item {item.id!r} at {item.path} was claimed by a "
                "reference-protocol worker, which route cannot commit; "
                "complete or fail it, and push the successor separately"
            )
        assert holder.stage is not None
        now = utc_now()
        hop = _hop("routed", now, holder.worker, holder.stage.name, queue=item.queue)
        hop.update({"to": target, "item_id": item.id, "pid": holder.key.pid})
        successor = new_document(
            payload,
            priority=Priority.parse(priority) if priority else item.priority,
            stage=holder.stage.name,
            worker=holder.worker,
            now=now,
            history=[*item.history, hop],
        )
        successor["parent_id"] = item.id
        successor["root_id"] = item.root_id
        stem = item.path.name[: -len(".json")]
        draft = holder_dir / (stem + DRAFT_SUFFIX)
        data = encode_new(self.tree, successor)
        try:
            fsutil.replace_file(self.tree.tmp, draft, data, durable=self.tree.durable)
        except OSError as error:
            if error.errno in _DISK_FULL:
                action = f"route of item {item.id!r}"
                raise _disk_full(error, self.tree, action) from error
            raise
        faults.point("route.after_draft")
        try:
            os.rename(item.path, holder_dir / (stem + COMMITTED_SUFFIX))
        except FileNotFoundError:
            unlink_quietly(draft)
            raise claim_lost(item, holder) from None
        faults.point("route.after_commit")
        if self.tree.durable:
            fsutil.fsync_dir(holder_dir)
        try:
            finish_route(self.tree, holder_dir, stem, item.queue)
        except OSError as error:
            if error.errno not in _DISK_FULL:
                raise
            raise QuantdError(
                f"route of item {item.id!r} was committed, but pushing its "
                f"successor {successor['id']!r} failed: {error.strerror} in tree "
                f"{self.tree.root}; do not route it again: the daemon's next "
                "sweep, or quantd.transitions.finish_route, pushes it exactly once"
            ) from error
        return str(successor["id"])

    # -- heartbeat ----------------------------------------------------

    def heartbeat(self, items: Iterable[Item]) -> list[Item]:
        """Renew the lease of each claim; return the claims that were lost."""
        lost = []
        for item in items:
            try:
                os.utime(item.path)
            except FileNotFoundError:
                lost.append(item)
        return lost

    def close(self) -> None:
        if self._waiter is not None:
            self._waiter.close()
            self._waiter = None


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _disk_full(error: OSError, tree: Tree, action: str) -> QuantdError:
    """Describe a full file system as a QuantdError saying nothing changed."""
    return QuantdError(
        f"{action} failed: {error.strerror} in tree {tree.root}; nothing "
        "changed, so free space on its file system and try again"
    )


def check_consumes(holder: Holder, queue: str) -> None:
    """Raise RoutingError unless the holder's stage consumes ``queue``.

    A worker without a stage may claim from any queue it names.
    """
    stage = holder.stage
    if stage is None or queue in stage.consumes:
        return
    allowed = ", ".join(stage.consumes) or "no queue"
    raise RoutingError(
        f"stage {stage.name!r} of worker {holder.worker!r} does not consume "
        f"queue {queue!r}: the routing graph allows {allowed}; add the queue "
        f"to stages.{stage.name}.consumes in the config if it is intended"
    )


def check_holder_running(holder: Holder) -> None:
    """Raise QuantdError if the holder is another process that has exited.

    Reads /proc on Linux, so it is cheap enough to run before every claim
    attempt. A process that cannot be inspected counts as running.
    """
    if holder.key.pid == os.getpid():
        return
    liveness = check_process(holder.key)
    if liveness.verdict is Verdict.DEAD:
        raise QuantdError(
            f"the process that would hold the claim, pid {holder.key.pid}, "
            f"has exited ({liveness.reason}); nothing was claimed. Claims are "
            "held for the process that runs quantd claim, or for --pid, which "
            "must outlive the work on the item"
        )


def check_edge(tree: Tree, stage: Stage | None, target: str, worker: str) -> None:
    """Raise RoutingError unless ``stage`` may produce into ``target``, and
    QueueNotFound if no queue or output has that name."""
    tree.queue_dir(target)
    if stage is None:
        raise RoutingError(
            f"worker {worker!r} has no stage: it matches no stage's 'workers' "
            f"pattern ({worker_patterns(tree)}); pass a stage (--stage or "
            "$QUANTD_STAGE), or name the worker to match a pattern"
        )
    if target not in stage.produces:
        allowed = ", ".join(stage.produces) or "nothing"
        raise RoutingError(
            f"stage {stage.name!r} may not produce into {target!r}: the "
            f"routing graph allows {allowed}; add the edge to "
            f"stages.{stage.name}.produces in the config if it is intended"
        )


def worker_patterns(tree: Tree) -> str:
    """Describe each stage's 'workers' patterns, as in
    ``researcher: researcher-*; converter: converter-*``."""
    stages = tree.config.stages.values()
    described = [f"{s.name}: {', '.join(s.workers) or 'none'}" for s in stages]
    return "; ".join(described)


def new_document(
    payload: Mapping[str, Any],
    *,
    priority: Priority,
    stage: str,
    worker: str,
    now: datetime,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """Build the document of a new pending item."""
    if not isinstance(payload, Mapping):
        raise InvalidItem(
            f"invalid payload: must be a JSON object (a dict), "
            f"got {type(payload).__name__}"
        )
    return {
        "id": new_id(stage, now),
        "created_at": format_time(now),
        "created_by": worker,
        "priority": priority.value,
        "status": ItemStatus.PENDING.value,
        "claimed_by": None,
        "claimed_at": None,
        "payload": dict(payload),
        "stage": stage,
        "attempts": 0,
        "history": history,
        "last_error": None,
    }


def claim_lost(item: Item, holder: Holder) -> ClaimLost:
    return ClaimLost(
        f"worker {holder.worker!r} no longer holds item {item.id!r} from queue "
        f"{item.queue!r}: the claim was recovered as stale or finished by "
        "another process; do not repeat its side effects"
    )


def _finish(
    status: ItemStatus, hop: dict[str, Any]
) -> Callable[[dict[str, Any]], None]:
    def update(doc: dict[str, Any]) -> None:
        doc["status"] = status.value
        doc["finished_at"] = hop["at"]
        doc["history"] = [*(doc.get("history") or []), hop]

    return update


def _hop(
    event: str, now: datetime, worker: str, stage: str | None, *, queue: str
) -> dict[str, Any]:
    return {
        "event": event,
        "at": format_time(now),
        "queue": queue,
        "worker": worker,
        "stage": stage,
        "host": host_name(),
    }


def _stage_name(holder: Holder) -> str | None:
    return holder.stage.name if holder.stage else None


def _spread(entries: list[_Entry]) -> int:
    """Pick the index of the next candidate after a claim was lost to
    another claimer.

    Claimers that walk the same listing from its head collide on every
    item. After a collision, a random one of the oldest few entries of the
    best priority is tried instead, so claim order stays priority first
    and roughly oldest first.
    """
    last = len(entries) - 1
    rank = entries[last][0]
    width = 1
    while width < CONTENDED_SPREAD and width <= last:
        if entries[last - width][0] != rank:
            break
        width += 1
    return last - random.randrange(width)


def _mtime_ns(path: Path) -> int:
    return os.stat(path).st_mtime_ns
