"""Block until a directory changes, woken by the kernel, not by polling.

A watchdog observer (inotify on Linux, FSEvents on macOS) sets an event
whenever an entry is created in or moved into a watched directory.
"""

from __future__ import annotations

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


class DirectoryWaiter:
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
