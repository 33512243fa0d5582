"""Which local holders are alive, watched without polling where possible.

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
import os
import selectors
from dataclasses import dataclass

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
