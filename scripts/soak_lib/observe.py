"""Read-only looks at a tree while the soak runs."""

from __future__ import annotations

import os
from pathlib import Path

from quantd import Tree
from quantd.items import parse_pending_name

CLAIMS_DIR = ".claims"


def listdir(directory: Path) -> list[str]:
    """Return the sorted names in ``directory``; none if it is missing."""
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def pending_count(tree: Tree) -> int:
    """Return how many pending items the queues hold."""
    count = 0
    for queue in tree.config.queues:
        for name in listdir(tree.queue_dir(queue)):
            if parse_pending_name(name) is not None:
                count += 1
    return count


def finished_count(tree: Tree) -> int:
    """Return how many files the archives and outputs hold."""
    dirs = [tree.archive_dir(name) for name in tree.config.archives]
    dirs += [tree.queue_dir(name) for name in tree.config.outputs]
    return sum(len(listdir(d)) for d in dirs)


def is_empty(tree: Tree) -> bool:
    """Return whether every queue, claim directory and recovery is empty."""
    for queue in tree.config.queues:
        if [n for n in listdir(tree.queue_dir(queue)) if n != CLAIMS_DIR]:
            return False
        claims = tree.claims_dir(queue)
        if any(listdir(claims / holder) for holder in listdir(claims)):
            return False
    return not listdir(tree.recovering)


def claims_of(tree: Tree, pid: int) -> list[Path]:
    """Return the claim files of the holder with process id ``pid``."""
    found = []
    for queue in tree.config.queues:
        claims_dir = tree.claims_dir(queue)
        for holder in listdir(claims_dir):
            if holder.partition("-")[0] != str(pid):
                continue
            for name in listdir(claims_dir / holder):
                if name.endswith(".json"):
                    found.append(claims_dir / holder / name)
    return found
