"""Recovery: returning a stale claim to pending, or dead-lettering it.

Recovery never races a holder into a duplicate. Its first step is one
rename of the exact claim path into ``.quantd/recovering/``; a holder that
finishes first wins and recovery stops, and a holder that finishes later
gets ClaimLost. The entry's name records where it came from::

    <queue>~<holder>~<pending name>

so a restarted daemon can finish a recovery that a crash interrupted
(:func:`finish_recovering`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantd import faults, fsutil
from quantd.holder import host_name
from quantd.itemfile import BadFile, read_item_file
from quantd.items import ItemStatus, format_time, parse_reference_claim, utc_now
from quantd.liveness import Liveness
from quantd.quarantine import Reason, quarantine
from quantd.transitions import COMMITTED_SUFFIX, DRAFT_SUFFIX, archive, finish_route
from quantd.tree import Tree

REFERENCE_HOLDER = "reference"


@dataclass(frozen=True)
class Outcome:
    """The result of a recovery: ``requeued``, ``dead_lettered``, ``routed``
    (a committed route was finished), ``quarantined`` (the same item was
    already pending) or ``lost_race`` (the holder finished first)."""

    action: str
    item_id: str | None
    attempts: int = 0
    reason: str | None = None


def recover_claim(
    tree: Tree,
    claim: Path,
    queue: str,
    holder: str,
    liveness: Liveness,
    worker: str | None,
) -> Outcome:
    """Take a stale claim away from its holder and return it to pending.

    ``holder`` is the holder key (the claim directory's name) or
    ``reference`` for a reference-protocol claim.
    """
    pending = _pending_name(claim, holder)
    entry = tree.recovering / f"{queue}~{holder}~{pending}"
    try:
        os.rename(claim, entry)
    except FileNotFoundError:
        return Outcome("lost_race", None)
    faults.point("recover.after_take")
    if tree.durable:
        fsutil.fsync_dir(claim.parent)
        fsutil.fsync_dir(tree.recovering)
    detail = {
        "holder": holder,
        "worker": worker,
        "verdict": liveness.verdict.value,
        "reason": liveness.reason,
    }
    _discard_draft(claim)
    return finish_recovering(tree, entry, detail)


def finish_recovering(
    tree: Tree, entry: Path, detail: dict[str, Any] | None = None
) -> Outcome:
    """Finish one entry of ``.quantd/recovering/``: record the recovery in
    the document, then move it back to pending or to ``failed``."""
    queue, holder, pending = entry.name.split("~", 2)
    settings = tree.config.daemon
    try:
        doc = read_item_file(
            entry, settings.max_item_bytes, max_depth=settings.max_json_depth
        )
    except FileNotFoundError:
        return Outcome("lost_race", None)
    except BadFile as error:
        # A claimed file that is not an item (a FIFO, a symlink, bad JSON)
        # must not go back to pending, and is never opened for a blocking
        # read or followed.
        quarantine(tree, entry, error.reason, error.detail, queue=queue)
        return Outcome("quarantined", None, reason=error.reason.value)
    marker = f"{queue}/{holder}/{pending}"
    history = doc.get("history") or []
    done = bool(history) and history[-1].get("claim") == marker
    if not done:
        _record_recovery(tree, entry, doc, marker, detail)
    attempts = int(doc.get("attempts") or 0)
    if attempts >= tree.config.daemon.max_attempts:
        return _dead_letter(tree, entry, doc, attempts)
    return _move_back(tree, entry, queue, pending, str(doc.get("id")), attempts)


def _record_recovery(
    tree: Tree,
    entry: Path,
    doc: dict[str, Any],
    marker: str,
    detail: dict[str, Any] | None,
) -> None:
    doc["attempts"] = int(doc.get("attempts") or 0) + 1
    doc["status"] = ItemStatus.PENDING.value
    doc["claimed_by"] = None
    doc["claimed_at"] = None
    hop: dict[str, Any] = {
        "event": "recovered",
        "at": format_time(utc_now()),
        "claim": marker,
        "by_host": host_name(),
        "by_pid": os.getpid(),
    }
    hop.update(detail or {"reason": "finished after a daemon restart"})
    doc["history"] = [*(doc.get("history") or []), hop]
    doc["last_error"] = f"holder {hop.get('worker') or marker} lost: {hop['reason']}"
    fsutil.replace_file(tree.tmp, entry, fsutil.dump_json(doc), durable=tree.durable)
    faults.point("recover.after_record")


def _move_back(
    tree: Tree,
    entry: Path,
    queue: str,
    pending: str,
    item_id: str | None,
    attempts: int,
) -> Outcome:
    directory = tree.queue_dir(queue)
    try:
        fsutil.rename_noreplace(entry, directory / pending)
    except FileExistsError:
        # The same item is already pending under this name, so this copy
        # would be done twice; which copy is right cannot be decided here.
        quarantine(
            tree,
            entry,
            Reason.DUPLICATE,
            f"an item named {pending} is already pending in {queue}",
            queue=queue,
        )
        return Outcome("quarantined", item_id, attempts, Reason.DUPLICATE.value)
    if tree.durable:
        fsutil.fsync_dir(directory)
        fsutil.fsync_dir(tree.recovering)
    return Outcome("requeued", item_id, attempts)


def _dead_letter(
    tree: Tree, entry: Path, doc: dict[str, Any], attempts: int
) -> Outcome:
    def update(archived: dict[str, Any]) -> None:
        archived["status"] = ItemStatus.DEAD_LETTER.value
        archived["finished_at"] = format_time(utc_now())
        archived["last_error"] = (
            f"dead-lettered after {attempts} attempts; "
            f"last: {archived.get('last_error')}"
        )

    archive(tree, entry, "failed", doc, update)
    return Outcome("dead_lettered", str(doc.get("id")), attempts)


def _pending_name(claim: Path, holder: str) -> str:
    if holder == REFERENCE_HOLDER:
        parsed = parse_reference_claim(claim.name)
        if parsed is None:
            raise ValueError(f"not a reference-protocol claim: {claim.name!r}")
        return parsed.stem + ".json"
    return claim.name


def _discard_draft(claim: Path) -> None:
    """Remove the unpushed draft of a route that never committed.

    A draft is a private temp file of its worker, never an item: without
    its claim it can no longer be committed.
    """
    stem = claim.name.removesuffix(".json")
    with contextlib.suppress(FileNotFoundError):
        (claim.parent / (stem + DRAFT_SUFFIX)).unlink()


def finish_committed_route(tree: Tree, committed: Path, queue: str) -> Outcome:
    """Finish a route whose holder died after committing it."""
    stem = committed.name.removesuffix(COMMITTED_SUFFIX)
    finish_route(tree, committed.parent, stem, queue)
    return Outcome("routed", stem.rpartition("~")[2])
