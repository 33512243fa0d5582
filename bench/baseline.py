"""The baseline: the reference file protocol, step for step as documented.

quantd's ``docs/PROTOCOL.md`` stays compatible with this layout. Each step
follows the reference document as written, flaws included, because that is
what a team has before quantd:

* push writes a ``tmp*.json`` file with ``indent=2`` into the queue
  directory, then moves it to ``<id>.json``; the id is the item type plus
  the local time to the microsecond; nothing is fsynced;
* claim lists the queue directory, sorts the names, and renames the first
  that still exists to ``<stem>.claimed-<worker>.json``, then reads it;
* complete lists the queue directory again to find the claimed file by
  substring, and moves it to ``../completed/``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

CLAIMED_MARKER = ".claimed"


def push(queue_dir: Path, item: dict[str, Any]) -> str:
    """Write ``item`` into ``queue_dir`` under a new id and return the id."""
    item_id = f"{item['type']}-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    item["id"] = item_id
    item["created_at"] = datetime.now().isoformat()
    item["status"] = "pending"
    fd, temp_path = tempfile.mkstemp(suffix=".json", dir=queue_dir)
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(item, file, indent=2)
        shutil.move(temp_path, queue_dir / f"{item_id}.json")
    except BaseException:
        os.unlink(temp_path)
        raise
    return item_id


def claim(queue_dir: Path, worker_id: str) -> dict[str, Any] | None:
    """Claim the first pending item by name; None when the queue is empty."""
    names = sorted(
        name
        for name in os.listdir(queue_dir)
        if name.endswith(".json") and CLAIMED_MARKER not in name
    )
    for name in names:
        claimed = name.replace(".json", f"{CLAIMED_MARKER}-{worker_id}.json")
        try:
            os.rename(queue_dir / name, queue_dir / claimed)
            with open(queue_dir / claimed) as file:
                item: dict[str, Any] = json.load(file)
        except FileNotFoundError:
            continue
        item["status"] = "in_progress"
        item["claimed_by"] = worker_id
        item["claimed_at"] = datetime.now().isoformat()
        return item
    return None


def complete(queue_dir: Path, item_id: str, success: bool = True) -> None:
    """Move the claimed file of ``item_id`` to the archive."""
    claimed = [
        name
        for name in os.listdir(queue_dir)
        if item_id in name and CLAIMED_MARKER in name
    ]
    if not claimed:
        raise ValueError(f"no claimed item found: {item_id}")
    archive = "completed" if success else "failed"
    target = queue_dir / ".." / archive / claimed[0].replace(CLAIMED_MARKER, "")
    shutil.move(queue_dir / claimed[0], target)


def new_item(payload: dict[str, Any], worker: str) -> dict[str, Any]:
    """Return a reference item document before :func:`push` names it."""
    return {
        "type": "hyp",
        "created_by": worker,
        "priority": "medium",
        "claimed_by": None,
        "claimed_at": None,
        "payload": payload,
    }


def make_tree(root: Path) -> Path:
    """Create ``queues/to-convert`` and ``queues/completed`` under ``root``
    and return the queue directory."""
    queue_dir = root / "queues" / "to-convert"
    queue_dir.mkdir(parents=True)
    (root / "queues" / "completed").mkdir()
    (root / "queues" / "failed").mkdir()
    return queue_dir


def fill_direct(queue_dir: Path, first: int, count: int, payload_of: Any) -> None:
    """Write ``count`` pending items straight to ``<id>.json``, numbered from
    ``first``; only for building deep queues quickly."""
    for number in range(first, first + count):
        item = new_item(payload_of(number), "researcher-0")
        item_id = f"hyp-{number:09d}"
        item.update(id=item_id, created_at=datetime.now().isoformat(), status="pending")
        with open(queue_dir / f"{item_id}.json", "x") as file:
            json.dump(item, file, indent=2)
