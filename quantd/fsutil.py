"""Atomic and durable file-system primitives.

Every state change in a tree is one ``rename(2)`` inside one file system.
New content is written under a temporary name in a directory that listers
never read, flushed, then renamed into place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _load_renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    function = getattr(libc, "renameat2", None)
    if function is None:
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, raising FileExistsError if the target
    exists.

    On Linux this is one ``renameat2(RENAME_NOREPLACE)`` call, so the check
    and the rename are atomic. Elsewhere, and on file systems that do not
    support the flag, a hard link followed by an unlink of the source gives
    the same guarantee at the cost of a second name for an instant.
    """
    if _renameat2 is not None:
        result = _renameat2(
            _AT_FDCWD,
            os.fsencode(source),
            _AT_FDCWD,
            os.fsencode(target),
            _RENAME_NOREPLACE,
        )
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(code, os.strerror(code), str(source), None, str(target))
    os.link(source, target)
    os.unlink(source)


def exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths atomically; return False where the system
    or file system cannot.

    One ``renameat2(RENAME_EXCHANGE)`` call on Linux 3.15 and later.
    Raises FileNotFoundError, and changes nothing, if either path is
    missing.
    """
    if _renameat2 is None:
        return False
    result = _renameat2(
        _AT_FDCWD,
        os.fsencode(first),
        _AT_FDCWD,
        os.fsencode(second),
        _RENAME_EXCHANGE,
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


# Directories are never writable by others, whatever the umask: any user
# who can write a queue can take or destroy its items. The group may
# write, so that workers of several users in one group can share a tree.
DIR_MODE = 0o775


def make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents with at most DIR_MODE."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries, so that renames into it survive power
    loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(prefix: str = "w") -> str:
    """Return a unique name for a file still being written; it carries the
    writer's pid (see :func:`temp_writer_pid`)."""
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(6)}.tmp"


def temp_writer_pid(name: str) -> int | None:
    """Return the pid of the process that wrote a temp file named by
    :func:`temp_name`, or None for any other name."""
    match = _TEMP_NAME.fullmatch(name)
    return int(match[1]) if match else None


_TEMP_NAME = re.compile(r"[a-z]+-(\d{1,10})-[0-9a-f]{12}\.tmp")


def write_temp(tmp_dir: Path, data: bytes, *, durable: bool) -> Path:
    """Write ``data`` to a new file in ``tmp_dir`` and return its path.

    With ``durable`` the file's content is fsynced before returning.
    """
    path = tmp_dir / temp_name()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return path


def replace_file(tmp_dir: Path, target: Path, data: bytes, *, durable: bool) -> None:
    """Atomically replace ``target``'s content: readers see the old file or
    the new one, never a mix."""
    path = write_temp(tmp_dir, data, durable=durable)
    try:
        os.replace(path, target)
    except BaseException:
        os.unlink(path)
        raise
    if durable:
        fsync_dir(target.parent)


def dump_json(document: Any, *, allow_nan: bool = True) -> bytes:
    """Encode a document the way quantd writes every item: compact JSON on
    one line, which Python's C encoder writes about three times faster
    than an indented document.

    With ``allow_nan=False``, NaN and Infinity raise ValueError, because
    they are not JSON and strict readers reject them.
    """
    text = json.dumps(document, ensure_ascii=False, allow_nan=allow_nan)
    return text.encode() + b"\n"
