"""Which holders are alive, watched without polling where possible, and
what the status file lists about them.

On Linux the registry keeps a pidfd (``os.pidfd_open``) for every live
local holder; the main loop puts it in its selector, and the pidfd becomes
readable the moment the process exits, so a death is acted on at once.
The start time is read again after the pidfd is open: the pid may have
been reused between the first check and the open. Where pidfds are not
available, :meth:`HolderRegistry.poll` re-checks every watched holder with
psutil once per loop tick.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantd.holder import HolderKey
from quantd.liveness import Liveness, Verdict, check_process

_HAS_PIDFD = hasattr(os, "pidfd_open")


@dataclass(frozen=True)
class PidfdTag:
    """Selector data of a holder's pidfd."""

    key: HolderKey


class HolderRegistry:
    """Live local holders, each watched by a pidfd or by polling."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        self._pidfds: dict[HolderKey, int] = {}
        self._polled: set[HolderKey] = set()

    def check(self, key: HolderKey) -> Liveness:
        """Decide whether a local holder lives, and watch it if it does.

        A holder that is already watched is alive until its pidfd or a
        poll reports an exit, so this costs no system call.
        """
        if key in self._pidfds or key in self._polled:
            return Liveness(Verdict.ALIVE, "watched")
        verdict = check_process(key)
        if verdict.verdict is not Verdict.ALIVE:
            return verdict
        return self._watch(key)

    def _watch(self, key: HolderKey) -> Liveness:
        if not _HAS_PIDFD:
            self._polled.add(key)
            return Liveness(Verdict.ALIVE, "running")
        try:
            fd = os.pidfd_open(key.pid)
        except ProcessLookupError:
            return Liveness(Verdict.DEAD, "pid_gone")
        except OSError:
            # Too many open files or a kernel without pidfds: poll instead.
            self._polled.add(key)
            return Liveness(Verdict.ALIVE, "running")
        # The pid may have been reused between the check and the open, so
        # the process the pidfd refers to is checked again.
        verdict = check_process(key)
        if verdict.verdict is not Verdict.ALIVE:
            os.close(fd)
            return verdict
        self._pidfds[key] = fd
        self._selector.register(fd, selectors.EVENT_READ, PidfdTag(key))
        return verdict

    def exited(self, key: HolderKey) -> None:
        """Stop watching a holder whose pidfd became readable."""
        self.forget(key)

    def forget(self, key: HolderKey) -> None:
        fd = self._pidfds.pop(key, None)
        if fd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)
            os.close(fd)
        self._polled.discard(key)

    def poll(self) -> list[HolderKey]:
        """Re-check the holders that no pidfd watches; return those that are
        no longer alive (and stop watching them)."""
        gone = [
            k for k in self._polled if check_process(k).verdict is not Verdict.ALIVE
        ]
        for key in gone:
            self._polled.discard(key)
        return gone

    def watched(self) -> list[HolderKey]:
        return [*self._pidfds, *self._polled]

    @property
    def pidfd_count(self) -> int:
        return len(self._pidfds)

    def close(self) -> None:
        for key in list(self._pidfds):
            self.forget(key)
        self._polled.clear()


class HolderViews:
    """The status file's entry for each holder: who it is, its verdict,
    and how many claims it has in which queues."""

    def __init__(self, records_dir: Path) -> None:
        self.records_dir = records_dir
        self._views: dict[str, dict[str, Any]] = {}
        self._records: dict[str, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._views)

    def reset(self) -> None:
        self._views = {}

    def note(
        self,
        name: str,
        key: HolderKey | None,
        where: str,
        queue: str,
        liveness: Liveness,
        claims: int,
        worker: str | None = None,
    ) -> None:
        """Record how many claims a holder has at ``where`` (its claim
        directory, or the claim file of a reference-protocol worker)."""
        view = self._views.get(name)
        if view is None:
            record = self.record(name)
            view = {
                "key": name,
                "worker": worker or record.get("worker"),
                "stage": record.get("stage"),
                "pid": key.pid if key else None,
                "host": record.get("host"),
                "held": {},
            }
            self._views[name] = view
        view["verdict"] = liveness.verdict.value
        view["reason"] = liveness.reason
        view["held"][where] = (queue, claims)

    def forget(self, where: str) -> None:
        """Forget the claims counted at ``where``, which is gone."""
        for name, view in list(self._views.items()):
            if view["held"].pop(where, None) is not None and not view["held"]:
                del self._views[name]

    def drop(self, name: str) -> None:
        self._views.pop(name, None)

    def listed(self) -> list[dict[str, Any]]:
        listed = []
        for view in self._views.values():
            held = view["held"].values()
            entry = {k: v for k, v in view.items() if k != "held"}
            entry["claims"] = sum(count for _, count in held)
            entry["queues"] = sorted({queue for queue, count in held if count})
            listed.append(entry)
        return listed

    def record(self, holder: str) -> dict[str, Any]:
        """Return the record of who a holder key belongs to, or {}."""
        cached = self._records.get(holder)
        if cached is not None:
            return cached
        try:
            record = json.loads((self.records_dir / f"{holder}.json").read_bytes())
        except (OSError, ValueError):
            return {}
        if not isinstance(record, dict):
            return {}
        if len(self._records) > 10_000:
            self._records.clear()
        self._records[holder] = record
        return record

    def uncache(self, holder: str) -> None:
        self._records.pop(holder, None)
