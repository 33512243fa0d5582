"""Reading one item file safely: no symlink followed, no FIFO opened for
a blocking read, a size limit checked before reading, and the document
validated."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from quantd.errors import InvalidItem
from quantd.items import validate_document
from quantd.quarantine import Reason

_CONTAINERS = (dict, list)


def read_item_file(
    path: Path, max_bytes: int, *, max_depth: int | None = None
) -> dict[str, Any]:
    """Read and validate one item file without following symlinks.

    With ``max_depth``, JSON nested deeper than that is rejected too.
    Raises :class:`BadFile` naming the quarantine reason.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise BadFile(Reason.SYMLINK, "symbolic links are not items") from None
        if error.errno in (errno.EACCES, errno.EPERM):
            raise BadFile(Reason.UNREADABLE, f"cannot read: {error}") from None
        # open(2) of a Unix socket fails with ENXIO.
        if error.errno in (errno.ENXIO, errno.ENODEV):
            raise BadFile(Reason.SPECIAL_FILE, "only regular files are items") from None
        raise
    try:
        doc = _read_open_file(fd, max_bytes)
    finally:
        os.close(fd)
    if max_depth is not None and nested_deeper_than(doc, max_depth):
        raise BadFile(
            Reason.TOO_DEEP,
            f"JSON nested deeper than the limit daemon.max_json_depth ({max_depth})",
        )
    return doc


def _read_open_file(fd: int, max_bytes: int) -> dict[str, Any]:
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        raise BadFile(Reason.DIRECTORY, "directories are not items")
    if not stat.S_ISREG(info.st_mode):
        raise BadFile(Reason.SPECIAL_FILE, "only regular files are items")
    if info.st_nlink > 1:
        raise BadFile(
            Reason.HARD_LINK,
            f"the file has {info.st_nlink} names; another name could change it",
        )
    if info.st_size > max_bytes:
        raise BadFile(
            Reason.TOO_LARGE,
            f"{info.st_size} bytes; the limit daemon.max_item_bytes is {max_bytes}",
        )
    data = os.read(fd, max_bytes + 1)
    while len(data) < info.st_size and len(data) <= max_bytes:
        chunk = os.read(fd, max_bytes + 1 - len(data))
        if not chunk:
            break
        data += chunk
    if not data:
        raise BadFile(Reason.EMPTY_FILE, "the file is empty")
    try:
        doc = json.loads(data)
    except RecursionError:
        raise BadFile(Reason.TOO_DEEP, "JSON nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadFile(Reason.INVALID_JSON, f"invalid JSON: {error}") from None
    try:
        return validate_document(doc)
    except InvalidItem as error:
        raise BadFile(Reason.INVALID_ITEM, str(error)) from None


class BadFile(Exception):
    """A file in a queue is not a valid item."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def nested_deeper_than(document: Any, limit: int) -> bool:
    """Return whether JSON containers nest more than ``limit`` levels deep in
    ``document`` (``{}`` is one level), walking one level at a time."""
    level = [document] if type(document) in _CONTAINERS else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for value in level:
            children = value.values() if type(value) is dict else value
            below += [child for child in children if type(child) in _CONTAINERS]
        level = below
    return False
