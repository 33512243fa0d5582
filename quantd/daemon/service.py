"""The daemon's lifecycle and main loop.

One daemon runs per tree: it holds an exclusive ``flock`` on
``.quantd/daemon.lock`` for its whole life (the kernel releases it when the
process dies, even by SIGKILL) and writes its pid there.

The main loop waits in one selector on the watcher's wake-up fd, the
signal wake-up fd and one pidfd per live holder, then acts in
:meth:`Daemon.step`. Signal handlers and the watcher thread only record
what happened.

status.json is rebuilt from a fresh :func:`status.scan_tree` only after
something may have changed the tree. That is a file event, a pidfd exit, a
due lease re-check, a sweep that acted or found a different file count, a
watcher restart, a suspected overflow, a failed step or a reload. The
periodic write that only shows the daemon is alive reuses the last scan's
queue figures, refreshing ``generated_at`` and the daemon section. The
first change after a quiet period is written at once, and later changes
are coalesced into one write at the end of the window that follows.

The full sweep is a safety net for lost events. While the watcher is
healthy (inotify, alive, no suspected overflow) the next sweep comes after
max(``daemon.reconcile_interval_s``, ``SWEEP_COST_FACTOR`` times the last
sweep's duration), so that sweeping a large tree stays a bounded share of
the daemon's time. Otherwise it comes after the configured interval. A
watcher restart, a suspected overflow or a failed step still sweeps at
once or within ``FAILED_STEP_RETRY_S``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import selectors
import signal
import time
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from quantd import __version__
from quantd.daemon import status as status_file
from quantd.daemon.holders import HolderRegistry, PidfdTag
from quantd.daemon.journal import Journal
from quantd.daemon.notify import Notifier
from quantd.daemon.reconcile import Reconciler
from quantd.daemon.watcher import Watcher
from quantd.errors import QuantdError
from quantd.holder import HolderKey, host_name
from quantd.items import format_time
from quantd.tree import open_tree

# Upper bound of one wait: how often the observer thread's health is
# checked and, where there are no pidfds, how often holders are polled.
TICK_S = 1.0
# The tree is scanned for status.json at most once per this many times the
# duration of the last scan. Likewise status.json is written at most once
# per this many times the duration of the last write. Both keep counting a
# large tree a small share of the daemon's work.
STATUS_COST_FACTOR = 10.0
# While the watcher is healthy, full sweeps are at least this many times
# their own duration apart, so that sweeping takes at most about 1 % of the
# daemon's time.
SWEEP_COST_FACTOR = 100.0
# ...but never more than this many times the configured interval, so one
# sweep slowed by a loaded machine cannot put the next one off for hours.
MAX_SWEEP_STRETCH = 10.0
# After a step failed, the whole tree is swept again this soon at the latest.
FAILED_STEP_RETRY_S = 5.0
# How often the cache of files found valid is saved, besides at shutdown.
CACHE_SAVE_INTERVAL_S = 300.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_WAKE_WATCHER = "watcher"
_WAKE_SIGNAL = "signal"


class DaemonRunning(QuantdError):
    """Another daemon already supervises this tree."""


class Daemon:
    """``quantd run``: supervises one tree until SIGTERM or SIGINT."""

    def __init__(self, root: str | None = None, config: str | None = None) -> None:
        self._root_arg = root
        self._config_arg = config
        self.tree = open_tree(root, config)
        self.journal = Journal()
        self.selector = selectors.DefaultSelector()
        self.registry = HolderRegistry(self.selector)
        self.reconciler = Reconciler(self.tree, self.registry, self.journal)
        self.watcher = self._new_watcher()
        self.notifier = Notifier()
        self._lock_fd: int | None = None
        self._signals: list[int] = []
        self._signal_pipe: tuple[int, int] | None = None
        self._stopping = False
        self._started_at = datetime.now(UTC)
        self._last_reconcile_at: datetime | None = None
        self._next_reconcile = 0.0
        self._reconcile_interval_s = self.tree.config.daemon.reconcile_interval_s
        # What the last sweep counted, and whether the last sweep acted or
        # counted differently from the one before. Either means events were
        # missed and the last status scan may be outdated.
        self._last_sweep_counts: tuple[int, int, int] | None = None
        self._sweep_changed = False
        self._next_status = 0.0
        self._status_due: float | None = None
        self._status_cost_s = 0.0
        # The last scan_tree result that status.json shows, when it was
        # taken (``time.time()``), how long it took, and whether the tree
        # may have changed since.
        self._scan: dict[str, Any] | None = None
        self._scanned_at: float | None = None
        self._scan_cost_s = 0.0
        self._scan_stale = True
        self._last_watchdog = 0.0
        self._next_cache_save = 0.0

    # -- lifecycle ------------------------------------------------------

    def run(self) -> int:
        """Supervise the tree until a stop signal; return the exit code."""
        self.lock()
        self._install_signals()
        try:
            self.start(time.time())
            while not self._stopping:
                self.step(self.wait(time.time()), time.time())
            self.shutdown()
        finally:
            self.close()
        return 0

    def lock(self) -> None:
        """Take the tree's daemon lock, raising DaemonRunning if it is held."""
        path = status_file.daemon_lock_path(self.tree)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise DaemonRunning(
                f"another daemon (pid {holder or 'unknown'}) already supervises "
                f"tree {self.tree.root}: it holds the lock {path}; stop it "
                "first, or run this one on another tree"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def start(self, now: float) -> None:
        """Recover what a crash left, start watching, sweep the whole tree,
        then report ready."""
        self.journal.log(
            "daemon_started",
            root=str(self.tree.root),
            pid=os.getpid(),
            version=__version__,
        )
        self.reconciler.finish_recovering()
        self.reconciler.load_checked()
        # Watching starts before the sweep, so that nothing that changes
        # during the sweep goes unnoticed.
        self.watcher.start()
        self.full_reconcile(now)
        self.write_status(time.time())
        self.notifier.ready()
        self.journal.log("daemon_ready", watcher=self.watcher.mode)

    def shutdown(self) -> None:
        self.notifier.stopping()
        self.journal.log("daemon_stopping", pid=os.getpid())
        self.watcher.stop()
        self._save_checked()
        self._guarded_status(time.time(), state="stopped")
        self.journal.log("daemon_stopped", pid=os.getpid())

    def close(self) -> None:
        self.watcher.close()
        self.registry.close()
        self.selector.close()
        self.notifier.close()
        if self._signal_pipe is not None:
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(-1)
            for fd in self._signal_pipe:
                os.close(fd)
            self._signal_pipe = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _install_signals(self) -> None:
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._signal_pipe = (read_fd, write_fd)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for number in (*_STOP_SIGNALS, signal.SIGHUP):
            signal.signal(number, self._record_signal)
        self.selector.register(read_fd, selectors.EVENT_READ, _WAKE_SIGNAL)

    def _record_signal(self, number: int, frame: FrameType | None) -> None:
        self._signals.append(number)

    # -- the loop -------------------------------------------------------

    def wait(self, now: float) -> list[HolderKey]:
        """Wait for an event or the next deadline; return the holders whose
        pidfd reported an exit."""
        timeout = max(0.0, self._next_deadline(now) - now)
        exited = []
        for key, _ in self.selector.select(timeout):
            tag = key.data
            if isinstance(tag, PidfdTag):
                exited.append(tag.key)
            elif tag == _WAKE_SIGNAL:
                with contextlib.suppress(BlockingIOError):
                    os.read(key.fd, 4096)
        return exited

    def step(self, exited: list[HolderKey], now: float) -> None:
        """Act on everything recorded since the last step, at time ``now``."""
        healthy = True
        try:
            self._handle_signals(now)
            self._act(exited, now)
        except Exception as error:
            healthy = False
            self.journal.failed("main_loop", error, path=str(self.tree.root))
            # Paths drained from the watcher may not have been looked at.
            retry = now + min(FAILED_STEP_RETRY_S, self._reconcile_interval())
            self._next_reconcile = min(self._next_reconcile, retry)
            self._note_change(now)
        if self._status_due is not None and now >= self._status_due:
            self._guarded_status(now, rescan=self._scan_stale or self._scan is None)
        elif now >= self._next_status:
            # A change waiting for its window is scanned when the window
            # ends, so this periodic write reuses the last scan. An outdated
            # scan with no rescan scheduled remains after a failed scan.
            outdated = self._scan_stale and self._status_due is None
            self._guarded_status(now, rescan=self._scan is None or outdated)
        if healthy:
            self._renew_watchdog(now)

    def _act(self, exited: list[HolderKey], now: float) -> None:
        tree_changed = False
        if self.watcher.ensure_alive():
            self.full_reconcile(now, healthy=False)
            tree_changed = True
        polled = self.registry.poll()
        for key in [*exited, *polled]:
            self.reconciler.holder_exited(key, now)
            tree_changed = True
        batch = self.watcher.drain()
        limit = self.tree.config.daemon.event_burst_limit
        if batch.lost or batch.events > limit:
            self.journal.count("overflows_suspected")
            self.journal.log(
                "events_maybe_lost",
                "warning",
                events=batch.events,
                lost=batch.lost,
                limit=limit,
            )
            self.full_reconcile(now, healthy=False)
            tree_changed = True
        else:
            for path in batch.paths | batch.new_dirs:
                self.reconciler.reconcile_path(path, now)
        if batch.events:
            tree_changed = True
        for path in self.reconciler.take_due(now):
            self.reconciler.reconcile_path(path, now)
            tree_changed = True
        if now >= self._next_reconcile:
            self.full_reconcile(now)
            tree_changed = tree_changed or self._sweep_changed
        if now >= self._next_cache_save:
            self._next_cache_save = now + CACHE_SAVE_INTERVAL_S
            self._save_checked()
        if tree_changed:
            self._note_change(now)
        elif self.journal.changed and self._status_due is None:
            # Counters or events changed but the tree did not, so the next
            # write reuses the last scan and costs little.
            self._status_due = now
        self.journal.changed = False

    def _note_change(self, now: float) -> None:
        """Mark the last scan outdated and schedule the write that rescans.

        The write happens at once when no scan was taken within the
        window, otherwise at the end of the window, so changes inside one
        window share a single scan. The window is the larger of
        ``daemon.status_debounce_s`` and ``STATUS_COST_FACTOR`` times the
        duration of the last scan.
        """
        self._scan_stale = True
        if self._status_due is not None and self._status_due > now:
            return
        window = max(self.tree.config.daemon.status_debounce_s, self._scan_gap_s())
        quiet_since = self._scanned_at if self._scanned_at is not None else now
        self._status_due = max(now, quiet_since + window)

    def full_reconcile(self, now: float, *, healthy: bool = True) -> dict[str, Any]:
        """Sweep the whole tree and schedule the next sweep.

        ``healthy`` False means the sweep follows a watcher restart or a
        suspected overflow, so the next sweep keeps the configured interval
        instead of one stretched by the sweep's cost.
        """
        watcher_ok = healthy and self.watcher.mode == "inotify" and self.watcher.alive()
        configured = self.tree.config.daemon.reconcile_interval_s

        def schedule(duration_s: float) -> float:
            return sweep_interval_s(configured, duration_s, healthy=watcher_ok)

        summary = self.reconciler.reconcile(now, schedule)
        self._last_reconcile_at = datetime.now(UTC)
        self._reconcile_interval_s = float(summary["interval_s"])
        counts = (summary["files"], summary["valid"], summary["holders"])
        acted = ("recovered", "dead_lettered", "quarantined", "routes_finished")
        self._sweep_changed = counts != self._last_sweep_counts or any(
            summary[name] for name in acted
        )
        self._last_sweep_counts = counts
        self._next_reconcile = now + self._reconcile_interval_s
        if not healthy:
            self._scan_stale = True
        return summary

    def _reconcile_interval(self) -> float:
        return self._reconcile_interval_s

    def _save_checked(self) -> None:
        try:
            self.reconciler.save_checked()
        except OSError as error:
            self.journal.failed("save_checked", error)

    def _next_deadline(self, now: float) -> float:
        deadlines = [now + TICK_S, self._next_reconcile, self._next_status]
        if self._status_due is not None:
            deadlines.append(self._status_due)
        due = self.reconciler.next_due()
        if due is not None:
            deadlines.append(due)
        return min(deadlines)

    def _handle_signals(self, now: float) -> None:
        signals, self._signals = self._signals, []
        for number in signals:
            if number in _STOP_SIGNALS:
                self._stopping = True
                self.journal.log("signal_received", signal=signal.Signals(number).name)
            elif number == signal.SIGHUP:
                self.reload(now)

    def reload(self, now: float) -> None:
        """Re-read the configuration; keep the old one if the new one is
        invalid."""
        self.notifier.reloading()
        try:
            tree = open_tree(self._root_arg, self._config_arg)
        except QuantdError as error:
            self.journal.count("errors")
            self.journal.log("config_reload_failed", "error", error=str(error))
            self.notifier.ready()
            return
        self.tree = tree
        self.reconciler.set_tree(tree)
        self.selector.unregister(self.watcher.fileno())
        self.watcher.close()
        self.watcher = self._new_watcher()
        self.watcher.start()
        self.journal.log("config_reloaded", source=str(tree.config.source))
        self.full_reconcile(now, healthy=False)
        self._note_change(now)
        self.notifier.ready()

    def _new_watcher(self) -> Watcher:
        recursive = [self.tree.root / p for p in self.tree.config.targets().values()]
        watcher = Watcher(recursive, [self.tree.recovering], self.journal)
        self.selector.register(watcher.fileno(), selectors.EVENT_READ, _WAKE_WATCHER)
        return watcher

    def _renew_watchdog(self, now: float) -> None:
        interval = self.notifier.watchdog_interval_s()
        if interval is None:
            return
        if now - self._last_watchdog >= min(TICK_S, interval / 4):
            self.notifier.watchdog()
            self._last_watchdog = now

    # -- status ---------------------------------------------------------

    def _guarded_status(
        self, now: float, state: str = "running", *, rescan: bool = True
    ) -> None:
        try:
            self.write_status(now, state, rescan=rescan)
        except Exception as error:
            self.journal.failed("write_status", error, path=str(self.tree.status_path))
            self._next_status = now + self.tree.config.daemon.status_interval_s

    def write_status(
        self, now: float, state: str = "running", *, rescan: bool = True
    ) -> None:
        """Publish status.json and the one-line status for the service
        manager.

        ``rescan`` False reuses the last scan's queue figures when the tree
        has not changed since, and refreshes only ``generated_at``, the
        daemon section, holders, counters, events and the watcher.
        """
        started = time.monotonic()
        # A reused scan that is outdated keeps the rescan that is due later.
        if rescan or not self._scan_stale:
            self._status_due = None
        self._next_status = now + self.tree.config.daemon.status_interval_s
        moment = datetime.fromtimestamp(now, UTC)
        scan, scan_s = self._current_scan(now, moment, rescan=rescan)
        document = status_file.build_status(
            self.tree,
            daemon=self._daemon_section(state),
            queues=scan["queues"],
            holders=self.reconciler.holders(),
            counters=self.journal.counters,
            events=list(self.journal.events),
            watcher=self.watcher.info(),
            now=moment,
        )
        status_file.write_status(self.tree, document)
        self.notifier.status(_summary(scan["queues"], self.journal.counters, state))
        # Writing a large document takes a while, so status.json is written
        # less often than configured when it would otherwise use more than
        # a tenth of the daemon's time. The scan's cost bounds the rescans
        # instead, in _note_change.
        self._status_cost_s = time.monotonic() - started - scan_s
        interval = max(self.tree.config.daemon.status_interval_s, self._status_gap_s())
        self._next_status = now + interval

    def _current_scan(
        self, now: float, moment: datetime, *, rescan: bool
    ) -> tuple[dict[str, Any], float]:
        """Return the scan that status.json shows and the seconds spent
        scanning now, 0 when the last scan is reused."""
        if self._scan is not None and not rescan:
            return self._scan, 0.0
        started = time.monotonic()
        self._scan = status_file.scan_tree(self.tree, moment)
        # Events from the scan's duration are drained in the next step,
        # which marks this scan outdated again.
        self._scan_stale = False
        self._scanned_at = now
        self._scan_cost_s = time.monotonic() - started
        return self._scan, self._scan_cost_s

    def _status_gap_s(self) -> float:
        return STATUS_COST_FACTOR * self._status_cost_s

    def _scan_gap_s(self) -> float:
        return STATUS_COST_FACTOR * self._scan_cost_s

    def _daemon_section(self, state: str) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": host_name(),
            "version": __version__,
            "state": state,
            # Readers judge status.json stale by this interval, so it is the
            # one actually used.
            "status_interval_s": max(
                self.tree.config.daemon.status_interval_s, self._status_gap_s()
            ),
            "started_at": format_time(self._started_at),
            "last_reconcile_at": (
                format_time(self._last_reconcile_at)
                if self._last_reconcile_at
                else None
            ),
            # The interval until the next full sweep, which may exceed the
            # configured one when sweeping is slow.
            "reconcile_interval_s": self._reconcile_interval_s,
            "scanned_at": (
                format_time(datetime.fromtimestamp(self._scanned_at, UTC))
                if self._scanned_at is not None
                else None
            ),
            "watched_holders": self.registry.pidfd_count,
            "config": str(self.tree.config.source) if self.tree.config.source else None,
        }


def sweep_interval_s(configured_s: float, duration_s: float, *, healthy: bool) -> float:
    """Return the seconds until the next full sweep.

    While the watcher is healthy this is max(``configured_s``,
    ``SWEEP_COST_FACTOR`` * ``duration_s``), so a slow sweep is repeated
    less often, capped at ``MAX_SWEEP_STRETCH`` * ``configured_s``.
    Otherwise it is ``configured_s``.
    """
    if not healthy:
        return configured_s
    stretched = max(configured_s, SWEEP_COST_FACTOR * duration_s)
    return min(stretched, MAX_SWEEP_STRETCH * configured_s)


def _summary(queues: dict[str, Any], counters: dict[str, Any], state: str) -> str:
    pending = sum(
        sum(q.get("pending", {}).values())
        for q in queues.values()
        if q.get("kind") == "queue"
    )
    claimed = sum(int(q.get("claimed", 0)) for q in queues.values())
    return (
        f"{state}: {pending} pending, {claimed} claimed; recovered "
        f"{counters.get('recovered', 0)}, quarantined {counters.get('quarantined', 0)}"
    )


def run_daemon(root: str | None, config: str | None) -> int:
    """Run ``quantd run`` in the foreground; return the exit code."""
    return Daemon(root, config).run()
