"""State changes shared by workers and the daemon: publishing a pending
item, archiving a claim with its outcome, and finishing a committed route.

A route is committed by renaming the claim ``<stem>.json`` to
``<stem>.routed`` beside its draft successor ``<stem>.next``; after that,
:func:`finish_route` can be called by anyone, any number of times.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from quantd import faults, fsutil
from quantd.errors import ClaimLost, InvalidItem
from quantd.itemfile import nested_deeper_than
from quantd.items import (
    ItemStatus,
    Priority,
    format_time,
    parse_time,
    pending_name,
    utc_now,
)
from quantd.tree import Tree

DRAFT_SUFFIX = ".next"
COMMITTED_SUFFIX = ".routed"


def publish(
    tree: Tree,
    doc: dict[str, Any],
    queue: str,
    *,
    prefix: str,
    data: bytes | None = None,
) -> Path:
    """Write a pending item into ``queue``: temp file, then one rename.

    ``data`` is the item already encoded, such as by :func:`encode_new`;
    without it, ``doc`` is encoded here.
    """
    directory = tree.queue_dir(queue)
    created = parse_time(str(doc["created_at"]))
    name = pending_name(str(doc["id"]), Priority(doc["priority"]), created)
    data = encode(doc) if data is None else data
    temp = fsutil.write_temp(tree.tmp, data, durable=tree.durable)
    faults.point(f"{prefix}.after_write")
    try:
        fsutil.rename_noreplace(temp, directory / name)
    except BaseException:
        unlink_quietly(temp)
        raise
    faults.point(f"{prefix}.after_rename")
    if tree.durable:
        fsutil.fsync_dir(directory)
    return directory / name


def encode(doc: Mapping[str, Any]) -> bytes:
    try:
        return fsutil.dump_json(doc)
    except (TypeError, ValueError) as error:
        raise _not_serialisable(doc, error) from None


def encode_new(tree: Tree, doc: Mapping[str, Any]) -> bytes:
    """Encode a new item, raising InvalidItem for what a claim or the daemon
    would quarantine: JSON nested deeper than daemon.max_json_depth, an
    item larger than daemon.max_item_bytes, and NaN or Infinity."""
    settings = tree.config.daemon
    # The depth is checked first, because encoding a deeply nested
    # document raises RecursionError.
    if nested_deeper_than(doc, settings.max_json_depth):
        raise InvalidItem(
            f"invalid item {doc.get('id')!r}: JSON nested deeper than the "
            f"limit daemon.max_json_depth ({settings.max_json_depth} levels, "
            "counting the item document around the payload); flatten the "
            "payload or raise the limit in the config"
        )
    try:
        data = fsutil.dump_json(doc, allow_nan=False)
    except ValueError as error:
        if "out of range float" not in str(error).lower():
            raise _not_serialisable(doc, error) from None
        raise InvalidItem(
            f"invalid item {doc.get('id')!r}: NaN and Infinity are not JSON; "
            "replace them with null or a string"
        ) from None
    except TypeError as error:
        raise _not_serialisable(doc, error) from None
    if len(data) > settings.max_item_bytes:
        raise InvalidItem(
            f"invalid item {doc.get('id')!r}: {len(data)} bytes encoded, more "
            f"than the limit daemon.max_item_bytes ({settings.max_item_bytes} "
            "bytes); store large data in a file and pass its path, or raise "
            "the limit in the config"
        )
    return data


def _not_serialisable(doc: Mapping[str, Any], error: Exception) -> InvalidItem:
    return InvalidItem(
        f"invalid item {doc.get('id')!r}: not JSON-serialisable: {error}; "
        "payloads may hold only dicts, lists, strings, numbers, booleans "
        "and None"
    )


def finish_route(tree: Tree, holder_dir: Path, stem: str, queue: str) -> None:
    """Push a committed route's successor and archive its claim.

    Idempotent: each step is a rename that either happened or not, so the
    worker and a recovering daemon can both call it; the successor is
    pushed exactly once.
    """
    draft = holder_dir / (stem + DRAFT_SUFFIX)
    committed = holder_dir / (stem + COMMITTED_SUFFIX)
    successor_id: str | None = None
    target: str | None = None
    try:
        doc = json.loads(draft.read_bytes())
        successor_id, target = str(doc["id"]), str(doc["history"][-1]["to"])
        directory = tree.queue_dir(target)
        created = parse_time(str(doc["created_at"]))
        name = pending_name(successor_id, Priority(doc["priority"]), created)
        fsutil.rename_noreplace(draft, directory / name)
        faults.point("route.after_push")
        if tree.durable:
            fsutil.fsync_dir(directory)
    except FileNotFoundError:
        # NOTE: when an earlier call pushed the draft and died before
        # archiving, the archived parent gets no routed_to or
        # successor_id; the successor still records its parent_id.
        pass
    hop = {"event": "archived_after_route", "at": format_time(utc_now())}

    def update(archived: dict[str, Any]) -> None:
        archived["status"] = ItemStatus.ROUTED.value
        archived["finished_at"] = hop["at"]
        if target is not None:
            archived["routed_to"] = target
            archived["successor_id"] = successor_id

    with contextlib.suppress(ClaimLost):
        archive(tree, committed, "completed", None, update)


def archive(
    tree: Tree,
    source: Path,
    archive_name: str,
    doc: dict[str, Any] | None,
    update: Callable[[dict[str, Any]], None],
) -> Path:
    """Record a claim's outcome with ``update``, then move it into an
    archive.

    The move is the commit: if ``source`` is gone, the claim was lost and
    ClaimLost is raised. The outcome is swapped into ``source`` first, in
    one atomic exchange that also fails if the claim is gone, so the
    archived document always contains its outcome. A claim whose holder
    dies between the exchange and the move is not archived: recovery
    returns it to pending with the outcome's hop left in its history.
    Where the exchange is not supported, the archived file is rewritten
    after the move instead, and a crash in between leaves the original
    document in the archive.
    """
    directory = tree.archive_dir(archive_name)
    item_id = _archive_id(source, doc)
    recorded = _record_outcome(tree, source, archive_name, doc, update)
    target = directory / f"{item_id}.json"
    while True:
        try:
            fsutil.rename_noreplace(source, target)
            break
        except FileExistsError:
            target = directory / f"{item_id}.{secrets.token_hex(4)}.json"
        except FileNotFoundError:
            raise _gone(source) from None
    faults.point(f"{archive_name}.after_rename")
    if tree.durable:
        fsutil.fsync_dir(source.parent)
        fsutil.fsync_dir(directory)
    if recorded:
        return target
    # NOTE: this fallback runs only without RENAME_EXCHANGE (not Linux, or
    # a file system such as NFS), and no test in this repository reaches it.
    if doc is None:
        try:
            doc = json.loads(target.read_bytes())
        except (OSError, ValueError):
            return target
    updated = dict(doc)
    update(updated)
    fsutil.replace_file(tree.tmp, target, encode(updated), durable=tree.durable)
    return target


def _record_outcome(
    tree: Tree,
    source: Path,
    archive_name: str,
    doc: dict[str, Any] | None,
    update: Callable[[dict[str, Any]], None],
) -> bool:
    """Swap the updated document into ``source``; return whether it was.

    A write that fails (a full disk, say) raises before anything changed,
    so the claim is still held and the caller can retry.
    """
    if doc is None:
        try:
            doc = json.loads(source.read_bytes())
        except FileNotFoundError:
            raise _gone(source) from None
        except (OSError, ValueError):
            return False
    updated = dict(doc)
    update(updated)
    temp = fsutil.write_temp(tree.tmp, encode(updated), durable=tree.durable)
    try:
        swapped = fsutil.exchange(temp, source)
    except FileNotFoundError:
        raise _gone(source) from None
    finally:
        unlink_quietly(temp)
    if swapped:
        faults.point(f"{archive_name}.after_record")
    return swapped


def _gone(source: Path) -> ClaimLost:
    return ClaimLost(
        f"claim {source} is gone: it was recovered as stale or "
        "finished by another process; do not repeat its side effects"
    )


def _archive_id(source: Path, doc: Mapping[str, Any] | None) -> str:
    if doc is not None:
        return str(doc["id"])
    name = source.name
    for suffix in (COMMITTED_SUFFIX, ".json"):
        name = name.removesuffix(suffix)
    return name.rpartition("~")[2].partition(".claimed-")[0]


def unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
