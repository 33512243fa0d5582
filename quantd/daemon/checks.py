"""Checks that decide whether an entry of a queue is a valid item.

Each check returns a :class:`Rejection` naming the quarantine reason, or
None when the entry passes. They read files but never move them: the
reconciler decides what to do with a rejection.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantd.config import Config, DaemonSettings
from quantd.itemfile import BadFile, nested_deeper_than, read_item_file
from quantd.items import parse_pending_name
from quantd.quarantine import Reason

# Reasons that a file still being written shows until it is complete.
UNFINISHED = (Reason.EMPTY_FILE, Reason.INVALID_JSON)
# json.loads builds exactly these types for JSON objects and arrays.
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Rejection:
    """The reason an entry is not a valid item, with fields for
    ``reason.json``."""

    reason: Reason
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)


def decode_name(raw: bytes) -> str | None:
    """Return a file name as text, or None if it is not valid UTF-8 or
    contains control characters."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _CONTROL_CHARACTERS.search(name):
        return None
    return name


def check_kind(info: os.stat_result) -> Rejection | None:
    """Reject what is not a regular file with exactly one name."""
    mode = info.st_mode
    if stat.S_ISLNK(mode):
        return Rejection(
            Reason.SYMLINK, "symbolic links are not items; the target was not touched"
        )
    if stat.S_ISDIR(mode):
        return Rejection(Reason.DIRECTORY, "directories are not items")
    if not stat.S_ISREG(mode):
        return Rejection(Reason.SPECIAL_FILE, "only regular files are items")
    if info.st_nlink > 1:
        return Rejection(
            Reason.HARD_LINK,
            f"the file has {info.st_nlink} names; another name could change it",
        )
    return None


def read_checked(
    path: Path, info: os.stat_result, settings: DaemonSettings
) -> tuple[dict[str, Any] | None, Rejection | None]:
    """Read an item file and check its size, JSON, schema and nesting.

    Returns the document, or the rejection. The size is checked from
    ``info`` before the file is opened.
    """
    limit = settings.max_item_bytes
    if info.st_size > limit:
        detail = f"{info.st_size} bytes; the limit daemon.max_item_bytes is {limit}"
        return None, Rejection(Reason.TOO_LARGE, detail)
    try:
        doc = read_item_file(path, limit)
    except BadFile as error:
        return None, Rejection(error.reason, error.detail)
    if nested_deeper_than(doc, settings.max_json_depth):
        detail = (
            "JSON nested deeper than the limit daemon.max_json_depth "
            f"({settings.max_json_depth})"
        )
        return None, Rejection(Reason.TOO_DEEP, detail)
    return doc, None


def check_name_matches(name: str, doc: dict[str, Any]) -> Rejection | None:
    """Reject an item whose file name gives another id than its document:
    finishing by id looks a claim up by its name, so such an item could
    never be completed by id."""
    parsed = parse_pending_name(name)
    if parsed is None or parsed.item_id == doc.get("id"):
        return None
    return Rejection(
        Reason.INVALID_ITEM,
        f"the file name gives id {parsed.item_id!r} but the document's id "
        f"is {doc.get('id')!r}",
    )


def check_route(config: Config, queue: str, doc: dict[str, Any]) -> Rejection | None:
    """Reject an item whose producing stage has no edge to ``queue``.

    The producer is the item's ``stage``, else the stage whose worker
    patterns match its ``created_by``.
    """
    stage_name = doc.get("stage")
    worker = doc.get("created_by")
    if isinstance(stage_name, str):
        stage = config.stages.get(stage_name)
        producer = stage_name
    elif isinstance(worker, str) and config.stage_for_worker(worker) is not None:
        stage = config.stage_for_worker(worker)
        producer = stage.name if stage else worker
    else:
        # NOTE: an item that names neither a stage nor a worker that the
        # config maps to one (reference-protocol items often name
        # neither) cannot be attributed, so it is let through.
        return None
    if stage is not None and queue in stage.produces:
        return None
    edge = f"{producer}->{queue}"
    allowed = ", ".join(stage.produces) if stage else "nothing: unknown stage"
    return Rejection(
        Reason.ROUTING_VIOLATION,
        f"stage {producer!r} may not produce into {queue!r}; "
        f"it may produce into {allowed}",
        {"stage": producer, "edge": edge, "item_id": doc.get("id")},
    )
