"""File-system events as hints for the main loop.

watchdog's observer thread only records the paths it is told about and
wakes the main loop through an eventfd (a pipe where there is none); the
main loop drains the paths and reconciles them. Events are never the
source of truth: :meth:`Watcher.drain` says when they may be incomplete
(a new directory, an inotify queue overflow, a burst of events), and the
main loop then reconciles the whole tree.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdog import events as watchdog_events
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from quantd.daemon.journal import Journal

_EVENTS_LOST = getattr(watchdog_events, "EventsLostEvent", None)
_WATCH_LIMIT_ERRORS = (errno.ENOSPC, errno.EMFILE)
POLLING_INTERVAL_S = 1.0
_INOTIFY_LOGGER = "watchdog.observers.inotify"
# Reads change nothing; the daemon's own reads would wake it again.
_IGNORED_EVENTS = ("opened", "closed_no_write")


@dataclass
class Batch:
    """The paths recorded since the last drain."""

    paths: set[str] = field(default_factory=set)
    events: int = 0
    new_dirs: set[str] = field(default_factory=set)
    lost: bool = False


class _Recorder(watchdog_events.FileSystemEventHandler):
    """Runs in the observer thread: records and wakes, nothing else."""

    def __init__(self, watcher: Watcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: watchdog_events.FileSystemEvent) -> None:
        self._watcher.note(event)


class _LimitWarnings(logging.Handler):
    """Catches watchdog's warning that a directory could not be watched.

    watchdog's inotify emitter logs "Unable to watch" and goes on without
    that directory when adding a watch fails with ENOSPC or EMFILE after
    start-up (watchdog 7.x), so the daemon would go partly deaf.
    """

    def __init__(self, watcher: Watcher) -> None:
        super().__init__(logging.WARNING)
        self._watcher = watcher

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("Unable to watch"):
            self._watcher.note_limit(record.getMessage())


class _Wakeup:
    """An fd that becomes readable when :meth:`set` is called."""

    def __init__(self) -> None:
        if hasattr(os, "eventfd"):
            self._read = self._write = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:
            self._read, self._write = os.pipe()
            os.set_blocking(self._read, False)
            os.set_blocking(self._write, False)

    def fileno(self) -> int:
        return self._read

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._write, (1).to_bytes(8, "little"))

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass

    def close(self) -> None:
        os.close(self._read)
        if self._write != self._read:
            os.close(self._write)


class Watcher:
    """A watchdog observer over the tree's queues, outputs and recovery
    directory, restarted when it dies."""

    def __init__(
        self,
        recursive: list[Path],
        flat: list[Path],
        journal: Journal,
        observer_class: Callable[[], Any] = Observer,
    ) -> None:
        self._recursive = recursive
        self._flat = flat
        self._journal = journal
        self._lock = threading.Lock()
        self._batch = Batch()
        self._wakeup = _Wakeup()
        self._observer: Any = None
        self.mode = "stopped"
        self.restarts = 0
        self._polling_forced = False
        self._observer_class = observer_class
        self._limit_handler = _LimitWarnings(self)
        self._limit_error: str | None = None
        self._watched: dict[Path, tuple[int, int] | None] = {}

    def fileno(self) -> int:
        return self._wakeup.fileno()

    def note(self, event: watchdog_events.FileSystemEvent) -> None:
        """Record one event; called in the observer thread."""
        if event.event_type in _IGNORED_EVENTS:
            return
        if event.is_directory and event.event_type == "modified":
            # Every change inside a directory comes with its own event, and
            # looking at the whole directory again would list every item.
            return
        with self._lock:
            batch = self._batch
            batch.events += 1
            if _EVENTS_LOST is not None and isinstance(event, _EVENTS_LOST):
                batch.lost = True
            for path in (event.src_path, getattr(event, "dest_path", "")):
                if path:
                    batch.paths.add(os.fsdecode(path))
            if event.is_directory and event.event_type in ("created", "moved"):
                batch.new_dirs.add(os.fsdecode(event.dest_path or event.src_path))
        self._wakeup.set()

    def drain(self) -> Batch:
        """Take the paths recorded so far."""
        self._wakeup.clear()
        with self._lock:
            batch, self._batch = self._batch, Batch()
        return batch

    def start(self) -> None:
        """Start observing; fall back to polling when inotify runs out of
        watches or instances."""
        if not self._polling_forced:
            logging.getLogger(_INOTIFY_LOGGER).addHandler(self._limit_handler)
            try:
                self._observer = self._started(self._observer_class())
                self.mode = _observer_mode(self._observer)
                return
            except OSError as error:
                if error.errno not in _WATCH_LIMIT_ERRORS:
                    raise
                self._fall_back(str(error))
        self._observer = self._started(PollingObserver(timeout=POLLING_INTERVAL_S))
        self.mode = "polling"

    def _fall_back(self, error: str) -> None:
        """Switch to polling for the rest of this process's life."""
        self._polling_forced = True
        logging.getLogger(_INOTIFY_LOGGER).removeHandler(self._limit_handler)
        self._journal.count("errors")
        self._journal.record(
            "watcher_limit_reached",
            "error",
            error=error,
            reason="inotify ran out of watches or instances; polling instead, "
            "which notices changes up to a second later and costs a scan of "
            "every watched directory per second. Raise the sysctl "
            "fs.inotify.max_user_watches (and fs.inotify.max_user_instances), "
            "then restart the daemon",
        )

    def note_limit(self, message: str) -> None:
        """Record that inotify could not watch a directory; called in the
        emitter thread. The main loop then switches to polling."""
        self._limit_error = message
        self._wakeup.set()

    def _started(self, observer: Any) -> Any:
        handler = _Recorder(self)
        try:
            for paths, recursive in ((self._recursive, True), (self._flat, False)):
                for path in paths:
                    self._schedule(observer, handler, path, recursive)
            observer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                observer.stop()
            raise
        return observer

    def _schedule(
        self, observer: Any, handler: _Recorder, path: Path, recursive: bool
    ) -> None:
        self._watched[path] = _identity(path)
        if not path.is_dir():
            # The sweep reports the missing directory on every pass; the
            # other directories stay watched.
            self._journal.log("watched_dir_missing", "error", path=str(path))
            return
        observer.schedule(handler, str(path), recursive=recursive)

    def alive(self) -> bool:
        """Return whether the observer thread and every emitter thread run."""
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        return all(emitter.is_alive() for emitter in observer.emitters)

    def ensure_alive(self) -> bool:
        """Restart a dead observer, or switch to polling once inotify could
        not watch a directory; return whether the watcher was restarted.

        The caller reconciles the whole tree after a restart, since events
        were lost while the observer was dead or partly deaf.
        """
        if self._limit_error is not None and not self._polling_forced:
            self._fall_back(self._limit_error)
            reason = "watch_limit_reached"
        elif not self.alive():
            reason = "observer_died"
        elif self._replaced():
            reason = "watched_dir_replaced"
        else:
            return False
        self.restarts += 1
        self._journal.count("watcher_restarts")
        self._journal.record("watcher_restarted", "warning", reason=reason)
        self.stop()
        self.start()
        return True

    def _replaced(self) -> bool:
        """Return whether a watched directory was removed, created or
        replaced since it was scheduled, because its watch no longer follows it."""
        return any(_identity(path) != seen for path, seen in self._watched.items())

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is None:
            return
        with contextlib.suppress(Exception):
            observer.stop()
        if observer.is_alive() and observer is not threading.current_thread():
            observer.join(timeout=5)

    def close(self) -> None:
        self.stop()
        logging.getLogger(_INOTIFY_LOGGER).removeHandler(self._limit_handler)
        self._wakeup.close()

    def info(self) -> dict[str, Any]:
        return {"mode": self.mode, "alive": self.alive(), "restarts": self.restarts}

    @property
    def observer(self) -> Any:
        """The running watchdog observer, for tests that stop it."""
        return self._observer


def _identity(path: Path) -> tuple[int, int] | None:
    """Return a directory's device and inode, None if it is not there."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def _observer_mode(observer: Any) -> str:
    name = type(observer).__name__.lower()
    for mode in ("inotify", "fsevents", "kqueue", "windows", "polling"):
        if mode in name:
            return mode
    return name.removesuffix("observer")
