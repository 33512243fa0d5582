"""The watcher: real inotify and polling observers, and the fall-back to
polling when inotify runs out of watches."""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_support import wait_for
from watchdog.observers import Observer

from quantd.daemon.journal import Journal
from quantd.daemon.watcher import Watcher


class _NoWatchesObserver(Observer):  # type: ignore[misc,valid-type]
    """An inotify observer on a system whose watch limit is used up: it
    raises what watchdog's inotify emitter raises then."""

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")


@pytest.fixture
def journal() -> Journal:
    return Journal()


@contextlib.contextmanager
def watching(
    tmp_path: Path, journal: Journal, observer_class: Any = Observer
) -> Iterator[Watcher]:
    watched = tmp_path / "queue"
    watched.mkdir()
    watcher = Watcher([watched], [], journal, observer_class)
    try:
        watcher.start()
        yield watcher
    finally:
        watcher.close()


def test_events_recorded(tmp_path: Path, journal: Journal) -> None:
    with watching(tmp_path, journal) as watcher:
        assert watcher.info()["mode"] == "inotify"
        (tmp_path / "queue" / "a.json").write_bytes(b"{}")
        (tmp_path / "queue" / "sub").mkdir()

        sub = str(tmp_path / "queue" / "sub")
        wait_for(lambda: sub in watcher._batch.new_dirs, what="the new directory")
        batch = watcher.drain()

        assert str(tmp_path / "queue" / "a.json") in batch.paths
        assert sub in batch.new_dirs
        assert watcher.drain().events == 0


def test_watch_limit_falls_back_to_polling(tmp_path: Path, journal: Journal) -> None:
    with watching(tmp_path, journal, _NoWatchesObserver) as watcher:
        assert watcher.info() == {"mode": "polling", "alive": True, "restarts": 0}
        [event] = list(journal.events)
        assert event["event"] == "watcher_limit_reached"
        assert journal.counters["errors"] == 1

        (tmp_path / "queue" / "b.json").write_bytes(b"{}")

        wait_for(
            lambda: str(tmp_path / "queue" / "b.json") in watcher._batch.paths,
            what="the polling observer",
        )


def test_partial_watch_switches_to_polling(tmp_path: Path, journal: Journal) -> None:
    with watching(tmp_path, journal) as watcher:
        error = OSError(errno.ENOSPC, "inotify watch limit reached")
        logging.getLogger("watchdog.observers.inotify").warning(
            "Unable to watch %r: %s", str(tmp_path / "queue" / "new"), error
        )

        assert watcher.ensure_alive() is True

        assert watcher.info()["mode"] == "polling"
        assert journal.counters["watcher_restarts"] == 1
        assert watcher.ensure_alive() is False


def test_dead_observer_restarted(tmp_path: Path, journal: Journal) -> None:
    with watching(tmp_path, journal) as watcher:
        watcher.observer.stop()
        watcher.observer.join(timeout=30)
        assert watcher.info()["alive"] is False

        assert watcher.ensure_alive() is True

        assert watcher.info() == {"mode": "inotify", "alive": True, "restarts": 1}


def test_recreated_directory_watched_again(tmp_path: Path, journal: Journal) -> None:
    with watching(tmp_path, journal) as watcher:
        queue = tmp_path / "queue"
        queue.rmdir()
        wait_for(lambda: not watcher.alive(), what="the emitter of the removed dir")
        assert watcher.ensure_alive() is True
        queue.mkdir()

        assert watcher.ensure_alive() is True
        reasons = [
            e["reason"] for e in journal.events if e["event"] == "watcher_restarted"
        ]
        assert reasons[-1] == "watched_dir_replaced"
        assert watcher.ensure_alive() is False

        (queue / "c.json").write_bytes(b"{}")
        wait_for(
            lambda: str(queue / "c.json") in watcher._batch.paths,
            what="an event from the recreated directory",
        )
