"""Block until a directory changes, woken by the kernel, not by polling.

On Linux an inotify descriptor of this process's own is waited on with
``select``. watchdog is not used there: its inotify reader (watchdog 7.1)
keeps a rename out of a directory for half a second while it looks for
the matching rename in, and the events behind it wait too. Every claim
renames an item out of its queue, so a push right after a claim was seen
half a second late. Elsewhere a watchdog observer
(FSEvents on macOS, kqueue on BSD) sets an event whenever an entry is
created in or moved into a watched directory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import sys
import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

# Waits are cut into slices of this length, so a missed event (an
# overflowed inotify queue, say) costs at most one slice of latency.
MAX_WAIT_SLICE_S = 1.0


class _ChangeHandler(FileSystemEventHandler):
    def __init__(self, changed: threading.Event) -> None:
        self.changed = changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("created", "moved", "closed"):
            self.changed.set()


class _WatchdogWaiter:
    """Waits for entries to appear in a set of directories."""

    def __init__(self) -> None:
        self._changed = threading.Event()
        self._observer: BaseObserver | None = None
        self._watched: set[Path] = set()
        self._lock = threading.Lock()

    def arm(self, directories: list[Path]) -> None:
        """Start watching ``directories`` and forget earlier changes.

        Call this before looking for items, so that an item arriving
        between the look and :meth:`wait` still wakes the waiter.
        """
        with self._lock:
            if self._observer is None:
                self._observer = Observer()
                self._observer.daemon = True
                self._observer.start()
            for directory in directories:
                if directory not in self._watched:
                    self._observer.schedule(
                        _ChangeHandler(self._changed), str(directory), recursive=False
                    )
                    self._watched.add(directory)
        self._changed.clear()

    def wait(self, timeout_s: float) -> bool:
        """Block until a change or ``timeout_s``; return whether one came."""
        return self._changed.wait(min(timeout_s, MAX_WAIT_SLICE_S))

    def close(self) -> None:
        with self._lock:
            if self._observer is not None:
                self._observer.stop()
                self._observer.join(timeout=5)
                self._observer = None
                self._watched.clear()


_IN_CREATE = 0x100
_IN_MOVED_TO = 0x80
_IN_CLOSE_WRITE = 0x8
_IN_ONLYDIR = 0x1000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_WATCH_MASK = _IN_CREATE | _IN_MOVED_TO | _IN_CLOSE_WRITE | _IN_ONLYDIR


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    if not hasattr(libc, "inotify_init1"):
        return None
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    return libc


_libc = _load_libc()


class _InotifyWaiter:
    """Waits on an inotify descriptor that watches each directory for new
    entries; an event wakes the waiter at once."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._libc = libc
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1 failed: {os.strerror(code)}")
        self._fd: int | None = fd
        self._watched: set[Path] = set()

    def arm(self, directories: list[Path]) -> None:
        """Watch ``directories`` and forget earlier changes."""
        assert self._fd is not None
        for directory in directories:
            if directory in self._watched:
                continue
            result = self._libc.inotify_add_watch(
                self._fd, os.fsencode(directory), _WATCH_MASK
            )
            if result < 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code), str(directory))
            self._watched.add(directory)
        self._drain()

    def wait(self, timeout_s: float) -> bool:
        """Block until a change or ``timeout_s``; return whether one came."""
        assert self._fd is not None
        ready, _, _ = select.select(
            [self._fd], [], [], min(timeout_s, MAX_WAIT_SLICE_S)
        )
        if not ready:
            return False
        self._drain()
        return True

    def _drain(self) -> None:
        assert self._fd is not None
        while True:
            try:
                if not os.read(self._fd, 65536):
                    return
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno == errno.EINTR:
                    continue
                raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._watched.clear()


class DirectoryWaiter:
    """Waits for entries to appear in a set of directories: inotify on
    Linux, a watchdog observer elsewhere."""

    def __init__(self) -> None:
        self._waiter: _InotifyWaiter | _WatchdogWaiter = (
            _InotifyWaiter(_libc) if _libc is not None else _WatchdogWaiter()
        )

    def arm(self, directories: list[Path]) -> None:
        """Start watching ``directories`` and forget earlier changes.

        Call this before looking for items, so that an item arriving
        between the look and :meth:`wait` still wakes the waiter.
        """
        self._waiter.arm(directories)

    def wait(self, timeout_s: float) -> bool:
        """Block until a change or ``timeout_s``; return whether one came."""
        return self._waiter.wait(timeout_s)

    def close(self) -> None:
        self._waiter.close()
