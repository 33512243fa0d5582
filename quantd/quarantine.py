"""Quarantine: where anything that is not a valid item is moved, never
deleted.

Each entry is a directory ``<quarantine>/<time>-<random>/`` holding
``reason.json`` and the moved file itself under the name ``item``, its
bytes unchanged. A symlink is moved as a link, never followed.
"""

from __future__ import annotations

import enum
import os
import secrets
from pathlib import Path
from typing import Any

from quantd import fsutil
from quantd.items import format_time, utc_now
from quantd.tree import Tree


class Reason(enum.StrEnum):
    """Machine-readable reason for a quarantine."""

    INVALID_JSON = "invalid_json"
    EMPTY_FILE = "empty_file"
    INVALID_ITEM = "invalid_item"
    TOO_LARGE = "too_large"
    TOO_DEEP = "too_deep"
    SYMLINK = "symlink"
    DIRECTORY = "directory"
    SPECIAL_FILE = "special_file"
    HARD_LINK = "hard_link"
    BAD_NAME = "bad_name"
    UNREADABLE = "unreadable"
    ROUTING_VIOLATION = "routing_violation"
    DUPLICATE = "duplicate"


def quarantine(
    tree: Tree,
    path: Path,
    reason: Reason,
    detail: str,
    *,
    queue: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Move ``path`` into a new quarantine entry and return the entry.

    The reason is written first, so a crash leaves at worst an entry with
    a reason and no item, never an item without its reason. Raises
    FileNotFoundError if ``path`` vanished before the move.
    """
    now = utc_now()
    entry = tree.quarantine / f"{now.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
    entry.mkdir()
    raw_name = os.fsencode(path.name)
    record: dict[str, Any] = {
        "reason": reason.value,
        "detail": detail,
        "queue": queue,
        "original_path": os.fsdecode(path).encode("utf-8", "backslashreplace").decode(),
        "original_name_hex": raw_name.hex(),
        "quarantined_at": format_time(now),
        "quarantined_by_pid": os.getpid(),
        **(extra or {}),
    }
    fsutil.replace_file(
        tree.tmp, entry / "reason.json", fsutil.dump_json(record), durable=tree.durable
    )
    try:
        os.rename(path, entry / "item")
    except FileNotFoundError:
        # Nothing was moved, so the entry holds only our own record.
        (entry / "reason.json").unlink()
        entry.rmdir()
        raise
    if tree.durable:
        fsutil.fsync_dir(entry)
        fsutil.fsync_dir(path.parent)
    return entry
