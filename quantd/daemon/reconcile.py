"""Reconcile: bring a tree back in line with the protocol.

One code path serves the periodic full sweep (:meth:`Reconciler.reconcile`)
and every file-system event (:meth:`Reconciler.reconcile_path`): an event
only makes the daemon look at one path sooner. Looking at a path means:

* a file in a queue or output must be a valid item produced by a stage
  with an edge to that queue, else it is quarantined;
* a claim whose holder is proven dead, or whose lease ran out, is
  recovered, and a committed route is finished;
* an entry of ``.quantd/recovering/`` left by a crash is finished.

Both methods take the time (epoch seconds) as a parameter, so tests drive
them without sleeping.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantd import fsutil, recovery
from quantd.daemon.checks import (
    UNFINISHED,
    Rejection,
    check_kind,
    check_name_matches,
    check_route,
    decode_name,
    read_checked,
)
from quantd.daemon.holders import HolderRegistry, HolderViews
from quantd.daemon.journal import Journal
from quantd.holder import HolderKey
from quantd.items import parse_pending_name, parse_reference_claim
from quantd.liveness import Liveness, Verdict, check_lease, last_heartbeat
from quantd.quarantine import Reason, quarantine
from quantd.recovery import REFERENCE_HOLDER, Outcome
from quantd.transitions import COMMITTED_SUFFIX, DRAFT_SUFFIX
from quantd.tree import CLAIMS_DIR, Tree

# A committed route is finished by its worker within milliseconds; the
# daemon finishes one that is older than this, for any holder.
COMMITTED_ROUTE_GRACE_S = 2.0
# A temp file whose writer is gone is removed once it is this old, so a
# writer that has just started is never raced.
ABANDONED_TEMP_AGE_S = 60.0
# The files found valid, keyed by inode, mtime, ctime and size. The kernel
# sets ctime on every change to a file, content or name, so an entry
# matches only a file that did not change since it was checked.
CHECKED_CACHE = "checked.json"
CHECKED_CACHE_VERSION = 1
# A lease is judged again this long after it would run out, so that the
# re-check does not land a hair before the expiry.
LEASE_RECHECK_MARGIN_S = 0.05
_ValidKey = tuple[int, int, int, int]
_CLAIMS_DIR_BYTES = os.fsencode(CLAIMS_DIR)


class Reconciler:
    """The daemon's view of one tree, and the actions that repair it."""

    def __init__(self, tree: Tree, registry: HolderRegistry, journal: Journal) -> None:
        self._registry = registry
        self._journal = journal
        self._valid: dict[str, _ValidKey] = {}
        self._recheck: dict[str, float] = {}
        self._views = HolderViews(tree.holders)
        self.set_tree(tree)

    def set_tree(self, tree: Tree) -> None:
        """Switch to a reloaded configuration."""
        self.tree = tree
        config = tree.config
        self._targets = {
            tree.root / path: name for name, path in config.targets().items()
        }
        self._tree_dirs = {*tree.all_dirs(), tree.internal}
        self._views.records_dir = tree.holders
        self._valid.clear()

    # -- entry points ---------------------------------------------------

    def reconcile(
        self, now: float, schedule: Callable[[float], float] | None = None
    ) -> dict[str, Any]:
        """Check the whole tree; return what the sweep found and did.

        ``schedule`` maps the sweep's duration in seconds to the interval
        until the next sweep. Its result is logged and returned as
        ``interval_s``.
        """
        started = time.monotonic()
        before = {k: v for k, v in self._journal.counters.items() if isinstance(v, int)}
        self._views.reset()
        seen: set[str] = set()
        self.finish_recovering()
        files = 0
        for directory, queue in self._targets.items():
            files += self._scan_queue(queue, directory, now, seen)
        self._prune_holder_records()
        self._guard("remove_abandoned_temps", self.tree.tmp, self._remove_temps, now)
        self._valid = {p: k for p, k in self._valid.items() if p in seen}
        self._journal.count("reconciles")
        counts = {
            name: int(self._journal.counters[name]) - before.get(name, 0)
            for name in ("recovered", "dead_lettered", "quarantined", "routes_finished")
        }
        summary: dict[str, Any] = {
            "files": files,
            "valid": len(seen),
            "holders": len(self._views),
            **counts,
            "duration_s": round(time.monotonic() - started, 3),
        }
        if schedule is not None:
            summary["interval_s"] = round(schedule(summary["duration_s"]), 3)
        self._journal.log("reconcile_finished", **summary)
        return summary

    def reconcile_path(self, path: str | Path, now: float) -> None:
        """Check the one entry that an event named, or its directory."""
        path = Path(path)
        self._recheck.pop(str(path), None)
        if path.parent == self.tree.recovering:
            self._guard("finish_recovering", path, self._finish_entry, path)
            return
        located = self._locate(path)
        if located is None:
            return
        queue, directory, parts = located
        if not parts:
            self._scan_queue(queue, directory, now, set())
        elif parts[0] != CLAIMS_DIR or len(parts) == 1:
            entry = directory / parts[0]
            if not os.path.lexists(entry):
                self._views.forget(str(entry))
                self._valid.pop(str(entry), None)
                return
            raw = os.fsencode(parts[0])
            self._guard(
                "check_entry", path, self._check_entry, queue, directory, raw, now
            )
        else:
            holder_dir = directory / CLAIMS_DIR / parts[1]
            self._guard(
                "check_holder", holder_dir, self._check_holder, queue, holder_dir, now
            )

    def holder_exited(self, key: HolderKey, now: float) -> None:
        """Recover every claim of a holder whose pidfd reported its exit."""
        self._registry.exited(key)
        for directory, queue in self._targets.items():
            holder_dir = directory / CLAIMS_DIR / str(key)
            if os.path.lexists(holder_dir):
                self._guard(
                    "check_holder",
                    holder_dir,
                    self._check_holder,
                    queue,
                    holder_dir,
                    now,
                )
        self._views.drop(str(key))
        self._prune_holder_records()

    def finish_recovering(self) -> None:
        """Finish every recovery that a crash interrupted."""
        try:
            names = sorted(os.listdir(self.tree.recovering))
        except FileNotFoundError:
            return
        for name in names:
            path = self.tree.recovering / name
            self._guard("finish_recovering", path, self._finish_entry, path)

    def load_checked(self) -> int:
        """Load the files that an earlier daemon found valid; return how
        many. A missing or unreadable cache only costs re-reading files."""
        try:
            data = (self.tree.internal / CHECKED_CACHE).read_bytes()
        except FileNotFoundError:
            return 0
        except OSError as error:
            self._journal.log("checked_cache_unused", error=str(error))
            return 0
        try:
            document = json.loads(data)
            current = document["checks"] == self._checks_fingerprint()
            entries = document["entries"] if current else {}
            self._valid = {
                str(path): (int(a), int(b), int(c), int(d))
                for path, (a, b, c, d) in entries.items()
            }
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            self._journal.log("checked_cache_unused", error=repr(error))
            self._valid = {}
        return len(self._valid)

    def save_checked(self) -> None:
        """Save the files found valid, so that a restart need not read
        them again."""
        document = {"checks": self._checks_fingerprint(), "entries": self._valid}
        data = json.dumps(document, separators=(",", ":")).encode()
        target = self.tree.internal / CHECKED_CACHE
        fsutil.replace_file(self.tree.tmp, target, data, durable=False)

    def _checks_fingerprint(self) -> str:
        """Return a hash of the settings that decide whether a file is
        valid: a cache saved under other settings is not used."""
        config = self.tree.config
        settings = config.daemon
        checks = [
            CHECKED_CACHE_VERSION,
            settings.max_item_bytes,
            settings.max_json_depth,
            sorted(config.targets().items()),
            sorted((s.name, s.produces, s.workers) for s in config.stages.values()),
        ]
        return hashlib.sha256(repr(checks).encode()).hexdigest()

    def take_due(self, now: float) -> list[str]:
        """Return the paths whose re-check is due, and forget them."""
        due = [p for p, at in self._recheck.items() if at <= now]
        for path in due:
            del self._recheck[path]
        return due

    def next_due(self) -> float | None:
        return min(self._recheck.values(), default=None)

    def holders(self) -> list[dict[str, Any]]:
        """The holders seen so far, as the status file lists them."""
        return self._views.listed()

    # -- queues ---------------------------------------------------------

    def _scan_queue(
        self, queue: str, directory: Path, now: float, seen: set[str]
    ) -> int:
        try:
            with os.scandir(os.fsencode(directory)) as scan:
                names = [entry.name for entry in scan]
        except OSError as error:
            self._journal.failed("scan_queue", error, path=str(directory), queue=queue)
            return 0
        for raw in names:
            try:
                self._check_entry(queue, directory, raw, now, seen)
            except FileNotFoundError:
                pass
            except Exception as error:
                path = os.path.join(os.fsencode(directory), raw)
                self._journal.failed("check_entry", error, path=_printable(path))
        return len(names)

    def _check_entry(
        self,
        queue: str,
        directory: Path,
        raw: bytes,
        now: float,
        seen: set[str] | None = None,
    ) -> None:
        text = os.path.join(str(directory), os.fsdecode(raw))
        info = os.lstat(text)
        # Only regular files that passed every check are cached, so an
        # unchanged entry needs no more than this lstat.
        key = (info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_size)
        if self._valid.get(text) == key:
            if seen is not None:
                seen.add(text)
            return
        path = Path(text)
        if raw == _CLAIMS_DIR_BYTES and stat.S_ISDIR(info.st_mode):
            self._scan_claims(queue, path, now)
            return
        name = decode_name(raw)
        if name is None:
            detail = "the name is not valid UTF-8 or contains control characters"
            self._quarantine(queue, path, Rejection(Reason.BAD_NAME, detail))
            return
        if stat.S_ISDIR(info.st_mode) and path in self._tree_dirs:
            return
        reference = parse_reference_claim(name)
        if reference is not None and stat.S_ISREG(info.st_mode):
            self._check_reference_claim(queue, path, reference.worker, now)
            return
        if self._check_file(queue, path, name, info, now):
            self._valid[text] = key
            if seen is not None:
                seen.add(text)

    def _check_file(
        self, queue: str, path: Path, name: str, info: os.stat_result, now: float
    ) -> bool:
        """Check a file that should be an item; return whether it is one.

        What may still be written (a fresh second name of a file pushed by
        link and unlink, a file that is empty, truncated, or named like a
        temp file) gets until the grace period ends.
        """
        rejection = check_kind(info)
        if rejection is None and parse_pending_name(name) is None:
            detail = "not an item file name: <id>.json or <rank>-<created>~<id>.json"
            rejection = Rejection(Reason.BAD_NAME, detail)
        doc = None
        if rejection is None:
            doc, rejection = read_checked(path, info, self.tree.config.daemon)
        if rejection is None and doc is not None:
            rejection = check_name_matches(name, doc)
        if rejection is None and doc is not None:
            rejection = check_route(self.tree.config, queue, doc)
        if rejection is None:
            return True
        waits = rejection.reason in (*UNFINISHED, Reason.HARD_LINK, Reason.BAD_NAME)
        if not (waits and self._young(path, info, now)):
            self._quarantine(queue, path, rejection)
        return False

    def _young(self, path: Path, info: os.stat_result, now: float) -> bool:
        """Return whether a file may still be being written; if so, schedule a
        re-check for when the grace period ends."""
        changed = max(info.st_mtime, info.st_ctime)
        due = changed + self.tree.config.daemon.write_grace_s
        if now >= due:
            return False
        self._recheck[str(path)] = due
        return True

    def _quarantine(self, queue: str, path: Path, rejection: Rejection) -> None:
        try:
            entry = quarantine(
                self.tree,
                path,
                rejection.reason,
                rejection.detail,
                queue=queue,
                extra=rejection.extra,
            )
        except FileNotFoundError:
            return
        self._valid.pop(str(path), None)
        self._recheck.pop(str(path), None)
        self._journal.count("quarantined")
        if rejection.reason is Reason.ROUTING_VIOLATION:
            self._journal.count_violation(rejection.extra["edge"])
        self._journal.record(
            "item_quarantined",
            "warning",
            path=_printable(path),
            queue=queue,
            reason=rejection.reason.value,
            detail=rejection.detail,
            entry=str(entry),
            item_id=rejection.extra.get("item_id"),
        )

    # -- claims ---------------------------------------------------------

    def _scan_claims(self, queue: str, claims_dir: Path, now: float) -> None:
        with os.scandir(claims_dir) as scan:
            holder_dirs = [
                claims_dir / e.name for e in scan if e.is_dir(follow_symlinks=False)
            ]
        for holder_dir in holder_dirs:
            self._guard(
                "check_holder", holder_dir, self._check_holder, queue, holder_dir, now
            )

    def _check_holder(self, queue: str, holder_dir: Path, now: float) -> None:
        name = holder_dir.name
        try:
            names = sorted(os.listdir(holder_dir))
        except (FileNotFoundError, NotADirectoryError):
            self._views.forget(str(holder_dir))
            return
        key = HolderKey.parse(name)
        if key is None or not key.is_local:
            why = "no_pid" if key is None else "other_machine"
            self._check_leases(queue, holder_dir, names, now, why)
            return
        liveness = self._registry.check(key)
        if liveness.verdict.recoverable:
            self._recover_holder(queue, holder_dir, names, liveness)
            return
        self._finish_old_routes(queue, holder_dir, names, now)
        claims = sum(1 for n in names if n.endswith(".json"))
        self._views.note(name, key, str(holder_dir), queue, liveness, claims)

    def _check_leases(
        self, queue: str, holder_dir: Path, names: list[str], now: float, why: str
    ) -> None:
        """Judge each claim of a holder that cannot be watched by its lease."""
        holder = holder_dir.name
        key = HolderKey.parse(holder)
        held = 0
        for name in names:
            path = holder_dir / name
            if not name.endswith(".json"):
                continue
            liveness = self._judge_lease(path, now, why)
            if liveness.verdict.recoverable and "~" not in holder:
                self._recover(queue, path, holder, liveness, key)
            else:
                held += 1
        self._finish_old_routes(queue, holder_dir, names, now)
        self._remove_stale_drafts(queue, holder_dir, now)
        liveness = Liveness(Verdict.UNKNOWN, why)
        self._views.note(holder, key, str(holder_dir), queue, liveness, held)

    def _remove_stale_drafts(self, queue: str, holder_dir: Path, now: float) -> None:
        """Remove drafts whose claim is gone and whose lease ran out.

        A draft without its claim can never be committed: a holder that
        still runs gets ClaimLost at the commit and removes the draft
        itself, so only a dead holder's drafts are left.
        """
        names = set(os.listdir(holder_dir))
        for name in names:
            stem = name.removesuffix(DRAFT_SUFFIX)
            if stem == name or {stem + ".json", stem + COMMITTED_SUFFIX} & names:
                continue
            draft = holder_dir / name
            renewed = last_heartbeat(draft)
            if renewed is None or now - renewed <= self.tree.config.daemon.lease_s:
                continue
            with contextlib.suppress(FileNotFoundError):
                draft.unlink()
            self._journal.log("draft_removed", path=str(draft), queue=queue)

    def _judge_lease(self, path: Path, now: float, why: str) -> Liveness:
        """Judge a claim by its lease; schedule a re-check for when a lease
        that still runs would expire."""
        lease_s = self.tree.config.daemon.lease_s
        liveness = check_lease(path, lease_s, now, why)
        renewed = last_heartbeat(path)
        if not liveness.verdict.recoverable and renewed is not None:
            self._recheck[str(path)] = renewed + lease_s + LEASE_RECHECK_MARGIN_S
        return liveness

    def _check_reference_claim(
        self, queue: str, path: Path, worker: str, now: float
    ) -> None:
        liveness = self._judge_lease(path, now, "no_pid")
        if liveness.verdict.recoverable:
            self._views.forget(str(path))
            self._recover(queue, path, REFERENCE_HOLDER, liveness, None, worker)
            return
        name = f"{REFERENCE_HOLDER}:{worker}"
        self._views.note(name, None, str(path), queue, liveness, 1, worker)

    def _recover_holder(
        self, queue: str, holder_dir: Path, names: list[str], liveness: Liveness
    ) -> None:
        self._views.forget(str(holder_dir))
        holder = holder_dir.name
        key = HolderKey.parse(holder)
        for name in names:
            path = holder_dir / name
            if name.endswith(".json"):
                self._recover(queue, path, holder, liveness, key)
            elif name.endswith(COMMITTED_SUFFIX):
                self._finish_route(queue, path, holder, key)
        for name in os.listdir(holder_dir):
            if name.endswith(DRAFT_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    (holder_dir / name).unlink()
                self._journal.log(
                    "draft_removed", path=str(holder_dir / name), queue=queue
                )
        try:
            holder_dir.rmdir()
        except OSError as error:
            self._journal.log(
                "holder_dir_kept", "warning", path=str(holder_dir), error=error.strerror
            )
        if key is not None:
            self._registry.forget(key)

    def _recover(
        self,
        queue: str,
        path: Path,
        holder: str,
        liveness: Liveness,
        key: HolderKey | None,
        worker: str | None = None,
    ) -> None:
        worker = worker or self._views.record(holder).get("worker")
        outcome = recovery.recover_claim(
            self.tree, path, queue, holder, liveness, worker
        )
        detail = {"verdict": liveness.verdict.value, "reason": liveness.reason}
        self._log_outcome(outcome, queue, worker, key.pid if key else None, detail)

    def _finish_route(
        self, queue: str, path: Path, holder: str, key: HolderKey | None
    ) -> None:
        outcome = recovery.finish_committed_route(self.tree, path, queue)
        worker = self._views.record(holder).get("worker")
        self._log_outcome(outcome, queue, worker, key.pid if key else None, {})

    def _finish_old_routes(
        self, queue: str, holder_dir: Path, names: list[str], now: float
    ) -> None:
        key = HolderKey.parse(holder_dir.name)
        for name in names:
            if not name.endswith(COMMITTED_SUFFIX):
                continue
            path = holder_dir / name
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            due = max(info.st_mtime, info.st_ctime) + COMMITTED_ROUTE_GRACE_S
            if now >= due:
                self._finish_route(queue, path, holder_dir.name, key)
            else:
                self._recheck[str(path)] = due

    def _log_outcome(
        self,
        outcome: Outcome,
        queue: str,
        worker: str | None,
        pid: int | None,
        detail: dict[str, Any],
    ) -> None:
        fields: dict[str, Any] = {
            "item_id": outcome.item_id,
            "queue": queue,
            "worker": worker,
            "pid": pid,
        }
        logged = _OUTCOME_EVENTS.get(outcome.action)
        if logged is None:
            return
        counter, event, level = logged
        if outcome.action in ("requeued", "dead_lettered"):
            fields.update(attempts=outcome.attempts, **detail)
        elif outcome.action == "quarantined":
            fields["reason"] = outcome.reason
        self._journal.count(counter)
        self._journal.record(event, level, **fields)

    def _finish_entry(self, path: Path) -> None:
        if not os.path.lexists(path):
            return
        if path.name.count("~") < 2:
            self._journal.log("recovering_entry_unknown", "warning", path=str(path))
            return
        outcome = recovery.finish_recovering(self.tree, path)
        queue, holder, _ = path.name.split("~", 2)
        key = HolderKey.parse(holder)
        worker = self._views.record(holder).get("worker")
        detail = {"reason": "finished after a daemon restart"}
        self._log_outcome(outcome, queue, worker, key.pid if key else None, detail)

    # -- holders --------------------------------------------------------

    def _remove_temps(self, now: float) -> None:
        """Remove temp files whose writer died before renaming them.

        A temp file never became an item, so removing it loses nothing.
        The writer's pid is in the name; a file is removed only when that
        pid is gone and the file is older than ABANDONED_TEMP_AGE_S.
        """
        removed = 0
        with os.scandir(self.tree.tmp) as scan:
            for entry in scan:
                pid = fsutil.temp_writer_pid(entry.name)
                if pid is None or _pid_exists(pid):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if now - entry.stat(follow_symlinks=False).st_mtime > (
                        ABANDONED_TEMP_AGE_S
                    ):
                        os.unlink(entry.path)
                        removed += 1
        if removed:
            self._journal.log("abandoned_temps_removed", count=removed)

    def _prune_holder_records(self) -> None:
        """Remove the records of local holders that are dead and hold no
        claim directory any more."""
        try:
            names = os.listdir(self.tree.holders)
        except FileNotFoundError:
            return
        for name in names:
            key = HolderKey.parse(name.removesuffix(".json"))
            if key is None or not key.is_local:
                continue
            if not self._registry.check(key).verdict.recoverable:
                continue
            if any(os.path.lexists(d / CLAIMS_DIR / str(key)) for d in self._targets):
                continue
            with contextlib.suppress(FileNotFoundError):
                (self.tree.holders / name).unlink()
            self._views.uncache(str(key))

    # -- helpers --------------------------------------------------------

    def _locate(self, path: Path) -> tuple[str, Path, tuple[str, ...]] | None:
        for directory, queue in self._targets.items():
            if path == directory:
                return queue, directory, ()
            if directory in path.parents:
                return queue, directory, path.relative_to(directory).parts
        return None

    def _guard(
        self, where: str, path: Path, action: Callable[..., Any], *args: Any
    ) -> None:
        """Run one handler; a vanished file is not an error, and any other
        error is logged and counted without stopping the others."""
        try:
            action(*args)
        except FileNotFoundError:
            pass
        except Exception as error:
            self._journal.failed(where, error, path=_printable(path))


# The counter, event name and log level of each recovery outcome; a lost
# race is not logged.
_OUTCOME_EVENTS = {
    "requeued": ("recovered", "claim_recovered", "warning"),
    "dead_lettered": ("dead_lettered", "item_dead_lettered", "error"),
    "routed": ("routes_finished", "route_finished", "info"),
    "quarantined": ("quarantined", "item_quarantined", "warning"),
}


def _printable(path: str | bytes | Path) -> str:
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode()


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
