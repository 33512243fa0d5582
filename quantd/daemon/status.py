"""The status document: live counts of a tree, and the daemon's
``status.json`` that ``quantd status`` and dashboards read.

:func:`scan_tree` reads the tree and never changes it, so the counts are
available with no daemon running. The daemon adds its own state with
:func:`build_status` and publishes the result with :func:`write_status`,
which replaces ``<root>/status.json`` atomically.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import json
import os
import stat
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from quantd import __version__, fsutil
from quantd.daemon.status_view import DaemonState, render_status
from quantd.errors import QuantdError
from quantd.holder import HolderKey, host_name
from quantd.itemfile import BadFile, read_item_file
from quantd.items import (
    Priority,
    SortKey,
    format_time,
    key_from_document,
    parse_pending_name,
    parse_reference_claim,
    parse_time,
)
from quantd.liveness import Liveness, Verdict, check_claim, check_process
from quantd.tree import CLAIMS_DIR, Tree, open_tree

SCHEMA_VERSION = 1
STATUS_FILE_MODE = 0o640
DAEMON_LOCK_NAME = "daemon.lock"
# status.json older than this many status intervals is stale: the daemon
# that wrote it has stopped publishing.
STALE_INTERVALS = 3
MAX_EVENTS = 20
# Reference-protocol items (``<id>.json``) carry their priority inside the
# file. A scan opens up to this many per queue to read it. The rest count
# as low, so that a scan of a large queue stays a directory listing.
MAX_REFERENCE_READS = 256
REFERENCE_HOLDER = "reference"

_PRIORITY_BY_RANK = {p.rank: p.value for p in Priority}
_NAME_TIME_FORMAT = "%Y%m%dT%H%M%S%f"
_warned_groups: set[str] = set()


class StatusError(QuantdError):
    """status.json cannot be read or is not a status document."""


def daemon_lock_path(tree: Tree) -> Path:
    """Return the file that a running daemon holds an flock on."""
    return tree.internal / DAEMON_LOCK_NAME


# -- live counts ----------------------------------------------------------


def scan_tree(
    tree: Tree, now: datetime, *, lease_s: float | None = None
) -> dict[str, Any]:
    """Count pending and claimed items of every queue, output and archive,
    and judge every claim holder, reading the tree without changing it.

    Returns ``{"queues": {name: {"pending": {"high", "medium", "low"},
    "claimed", "oldest_pending_created_at", "kind", "items"}}, "holders":
    [{"key", "worker", "stage", "pid", "host", "verdict", "reason",
    "claims", "queues"}]}``. ``items`` is the pending total of a queue or
    output and the item count of an archive, whose other counts are 0.
    Only holders with at least one claim are listed. ``lease_s`` defaults
    to the config's ``daemon.lease_s``.
    """
    lease = tree.config.daemon.lease_s if lease_s is None else lease_s
    queues: dict[str, Any] = {}
    holders: dict[str, _HolderScan] = {}
    kinds = (
        ("queue", tree.config.queues),
        ("output", tree.config.outputs),
        ("archive", tree.config.archives),
    )
    for kind, table in kinds:
        for name, relative in table.items():
            directory = tree.root / relative
            queues[name] = _scan_queue(tree, name, directory, kind, holders)
    return {
        "queues": queues,
        "holders": [h.report(tree, lease, now) for h in holders.values()],
    }


@dataclass
class _HolderScan:
    """The claims of one holder key, or of one reference-protocol worker."""

    key: str
    reference_worker: str | None
    claims: list[Path]
    queues: list[str]

    def add(self, queue: str, claim: Path) -> None:
        self.claims.append(claim)
        if queue not in self.queues:
            self.queues.append(queue)

    def report(self, tree: Tree, lease_s: float, now: datetime) -> dict[str, Any]:
        record: dict[str, Any] = {}
        parsed = HolderKey.parse(self.key)
        if self.reference_worker is None:
            record = _read_holder_record(tree, self.key)
        liveness = self._judge(parsed, lease_s, now.timestamp())
        return {
            "key": self.key,
            "worker": self.reference_worker or record.get("worker"),
            "stage": record.get("stage"),
            "pid": parsed.pid if parsed else None,
            "host": record.get("host"),
            "verdict": liveness.verdict.value,
            "reason": liveness.reason,
            "claims": len(self.claims),
            "queues": self.queues,
        }

    def _judge(self, key: HolderKey | None, lease_s: float, now: float) -> Liveness:
        if self.reference_worker is None and key is None:
            return Liveness(Verdict.UNKNOWN, "invalid_holder_key")
        if key is not None and key.is_local:
            return check_process(key)
        # A holder that cannot be watched is judged by its leases: it is
        # expired only when every one of its claims is.
        verdicts = [check_claim(path, key, lease_s, now) for path in self.claims]
        for liveness in verdicts:
            if liveness.verdict is not Verdict.EXPIRED:
                return liveness
        return verdicts[0]


def _scan_queue(
    tree: Tree,
    name: str,
    directory: Path,
    kind: str,
    holders: dict[str, _HolderScan],
) -> dict[str, Any]:
    pending = {p.value: 0 for p in Priority}
    oldest: str | None = None
    claimed = 0
    items = 0
    reference_reads = 0
    for entry in _list_dir(directory):
        if kind == "archive":
            if entry.name.endswith(".json") and not entry.name.startswith("."):
                items += 1
            continue
        reference_claim = parse_reference_claim(entry.name)
        if reference_claim is not None:
            claimed += 1
            key = f"{REFERENCE_HOLDER}:{reference_claim.worker}"
            scan = holders.setdefault(
                key, _HolderScan(REFERENCE_HOLDER, reference_claim.worker, [], [])
            )
            scan.add(name, Path(entry.path))
            continue
        parsed = parse_pending_name(entry.name)
        if parsed is None:
            continue
        sort_key = parsed.key
        if sort_key is None:
            sort_key = _reference_sort_key(tree, entry, reference_reads)
            reference_reads += 1
            if sort_key is None:
                continue
        pending[_PRIORITY_BY_RANK.get(sort_key.rank, Priority.LOW.value)] += 1
        if oldest is None or sort_key.created < oldest:
            oldest = sort_key.created
    if kind != "archive":
        claimed += _scan_claims(directory / CLAIMS_DIR, name, holders)
        items = sum(pending.values())
    return {
        "pending": pending,
        "claimed": claimed,
        "oldest_pending_created_at": _name_time_to_iso(oldest),
        "kind": kind,
        "items": items,
    }


def _scan_claims(claims_dir: Path, queue: str, holders: dict[str, _HolderScan]) -> int:
    count = 0
    for holder_dir in _list_dir(claims_dir):
        if not holder_dir.is_dir(follow_symlinks=False):
            continue
        claims = [
            Path(entry.path)
            for entry in _list_dir(Path(holder_dir.path))
            if entry.name.endswith(".json") and not entry.name.startswith(".")
        ]
        if not claims:
            continue
        scan = holders.setdefault(
            holder_dir.name, _HolderScan(holder_dir.name, None, [], [])
        )
        for claim in claims:
            scan.add(queue, claim)
        count += len(claims)
    return count


def _list_dir(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as scan:
            return list(scan)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _reference_sort_key(
    tree: Tree, entry: os.DirEntry[str], reads: int
) -> SortKey | None:
    """Order a reference-protocol item by its content while the per-queue
    read budget lasts, else as low priority by its modification time.

    None when the file vanished meanwhile.
    """
    try:
        info = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None
    stamp = datetime.fromtimestamp(info.st_mtime, UTC).strftime(_NAME_TIME_FORMAT)
    fallback = SortKey(Priority.LOW.rank, stamp)
    if reads >= MAX_REFERENCE_READS or not stat.S_ISREG(info.st_mode):
        return fallback
    limit = tree.config.daemon.max_item_bytes
    try:
        return key_from_document(read_item_file(Path(entry.path), limit), stamp)
    except FileNotFoundError:
        return None
    except (BadFile, OSError):
        return fallback


def _read_holder_record(tree: Tree, key: str) -> dict[str, Any]:
    try:
        document = json.loads((tree.holders / f"{key}.json").read_bytes())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _name_time_to_iso(stamp: str | None) -> str | None:
    if stamp is None:
        return None
    try:
        moment = datetime.strptime(stamp, _NAME_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return format_time(moment)


# -- the document ---------------------------------------------------------


def default_counters() -> dict[str, Any]:
    """Return the counters of a daemon that has done nothing yet."""
    return {
        "recovered": 0,
        "dead_lettered": 0,
        "quarantined": 0,
        "routing_violations": {},
        "reconciles": 0,
        "watcher_restarts": 0,
    }


def build_status(
    tree: Tree,
    *,
    daemon: dict[str, Any] | None,
    queues: dict[str, Any],
    holders: list[dict[str, Any]],
    counters: dict[str, Any],
    events: list[dict[str, Any]],
    watcher: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    """Assemble the status document.

    ``daemon`` None means no daemon runs, as when ``quantd status`` builds
    the document from a scan. Otherwise missing ``pid``, ``host``,
    ``version`` and ``status_interval_s`` are filled in for the calling
    process. Only the last ``MAX_EVENTS`` events are kept.
    """
    daemon_section: dict[str, Any] | None = None
    if daemon is not None:
        daemon_section = {
            "pid": os.getpid(),
            "host": host_name(),
            "version": __version__,
            "status_interval_s": tree.config.daemon.status_interval_s,
            **daemon,
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": format_time(now),
        "root": str(tree.root),
        "daemon": daemon_section,
        "queues": queues,
        "holders": holders,
        "counters": {**default_counters(), **counters},
        "events": list(events[-MAX_EVENTS:]),
        "watcher": {"mode": None, "alive": False, "restarts": 0, **watcher},
    }


# -- status.json ----------------------------------------------------------


def write_status(tree: Tree, document: dict[str, Any]) -> None:
    """Replace ``<root>/status.json`` atomically with ``document``.

    The file is written under ``.quantd/tmp``, given mode 0640 and the
    group ``daemon.status_group`` when set, fsynced, then renamed over the
    old one, so a reader sees the old document or the new one, never a
    partial or empty file.
    """
    data = json.dumps(document, indent=2, ensure_ascii=False).encode() + b"\n"
    gid = _status_gid(tree.config.daemon.status_group)
    path = tree.tmp / fsutil.temp_name("status")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, STATUS_FILE_MODE)
    try:
        _fill_status_file(fd, data, gid, tree.config.daemon.status_group)
        os.close(fd)
        os.replace(path, tree.status_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    if tree.durable:
        fsutil.fsync_dir(tree.root)


def _fill_status_file(fd: int, data: bytes, gid: int | None, group: str) -> None:
    if gid is not None:
        try:
            os.fchown(fd, -1, gid)
        except PermissionError as error:
            _warn_group_once(
                group,
                f"cannot give status.json the group {group!r}: {error.strerror}; "
                "add the daemon's user to that group",
            )
    # fchmod after fchown, because a chown clears the set-id bits, and
    # because the umask may have removed the group's read bit at creation.
    os.fchmod(fd, STATUS_FILE_MODE)
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fsync(fd)


def _status_gid(group: str) -> int | None:
    if not group:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        _warn_group_once(
            group,
            f"group {group!r} from daemon.status_group does not exist; "
            "status.json keeps the daemon's group. Create the group or "
            "change daemon.status_group in the config",
        )
        return None


def _warn_group_once(group: str, message: str) -> None:
    if group in _warned_groups:
        return
    _warned_groups.add(group)
    _log().warning("status_group_unusable", group=group, reason=message)


def read_status(tree: Tree) -> dict[str, Any] | None:
    """Read ``status.json``; None if it does not exist.

    Raises StatusError when it cannot be read or is not a status document.
    """
    path = tree.status_path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StatusError(f"cannot read {path}: {error.strerror}") from None
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StatusError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(document, dict) or "schema_version" not in document:
        raise StatusError(f"{path} is not a status document: no schema_version")
    if "generated_at" not in document:
        raise StatusError(f"{path} is not a status document: no generated_at")
    return document


def status_age_s(document: dict[str, Any], now: datetime) -> float | None:
    """Return how old a status document is in seconds; None if its
    ``generated_at`` is invalid."""
    try:
        generated = parse_time(str(document["generated_at"]))
    except (KeyError, ValueError):
        return None
    return (now - generated).total_seconds()


@dataclass(frozen=True)
class DaemonProbe:
    """Whether a daemon holds the tree's lock, and the pid it wrote there."""

    running: bool
    pid: int | None


def probe_daemon(tree: Tree) -> DaemonProbe:
    """Probe the daemon's lock without blocking and without creating it.

    A shared lock that cannot be taken means a daemon holds it; the probe
    releases its own lock at once. Raises OSError when the lock file
    exists but cannot be opened or locked.
    """
    path = daemon_lock_path(tree)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return DaemonProbe(False, None)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            return DaemonProbe(True, _read_pid(fd))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return DaemonProbe(False, None)
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


# -- quantd status --------------------------------------------------------

EXIT_RUNNING = 0
EXIT_NOT_RUNNING = 3
EXIT_UNKNOWN = 4
_EXIT_CODES = {
    DaemonState.RUNNING: EXIT_RUNNING,
    DaemonState.STALE: EXIT_NOT_RUNNING,
    DaemonState.NOT_RUNNING: EXIT_NOT_RUNNING,
    DaemonState.UNKNOWN: EXIT_UNKNOWN,
}


def status_command(root: str | None, config: str | None, *, as_json: bool) -> int:
    """Print the status of a tree and return the LSB exit code: 0 the
    daemon runs and its status is fresh, 3 it does not run or its status
    is stale, 4 unknown. Reads the tree and never changes it."""
    now = datetime.now(UTC)
    try:
        tree = open_tree(root, config)
        probe = probe_daemon(tree)
        stored, problem = _read_stored(tree)
        state = judge_daemon(tree, probe, stored, problem, now)
        document = _document_for(tree, state, stored, now, as_json=as_json)
    except (QuantdError, OSError) as error:
        print(f"quantd: status unknown: {error}", file=sys.stderr)
        return EXIT_UNKNOWN
    if state is DaemonState.UNKNOWN:
        print(
            f"quantd: status unknown: daemon pid {probe.pid} holds "
            f"{daemon_lock_path(tree)}, but "
            f"{problem or 'status.json has an invalid generated_at'}",
            file=sys.stderr,
        )
    if as_json:
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        print(render_status(document, daemon_state=state, now=now), end="")
    return _EXIT_CODES[state]


def judge_daemon(
    tree: Tree,
    probe: DaemonProbe,
    stored: dict[str, Any] | None,
    problem: str | None,
    now: datetime,
) -> DaemonState:
    """Decide the daemon's state from its lock and its status.json.

    status.json is stale when it is older than ``STALE_INTERVALS`` times
    the daemon's ``status_interval_s``.
    """
    if not probe.running:
        return DaemonState.NOT_RUNNING
    if stored is None or problem is not None:
        return DaemonState.UNKNOWN
    age_s = status_age_s(stored, now)
    if age_s is None:
        return DaemonState.UNKNOWN
    daemon = stored.get("daemon") or {}
    interval_s = daemon.get("status_interval_s")
    if not isinstance(interval_s, int | float) or interval_s <= 0:
        interval_s = tree.config.daemon.status_interval_s
    if age_s > STALE_INTERVALS * interval_s:
        return DaemonState.STALE
    return DaemonState.RUNNING


def _read_stored(tree: Tree) -> tuple[dict[str, Any] | None, str | None]:
    try:
        stored = read_status(tree)
    except StatusError as error:
        return None, str(error)
    if stored is None:
        return None, f"{tree.status_path} does not exist yet"
    return stored, None


def _document_for(
    tree: Tree,
    state: DaemonState,
    stored: dict[str, Any] | None,
    now: datetime,
    *,
    as_json: bool,
) -> dict[str, Any]:
    """Choose the document to print.

    The daemon's own document when it runs, unchanged for ``--json`` even
    when stale. The human view of a stale document keeps its daemon
    section but shows live counts. Otherwise a document built from a scan,
    with ``daemon`` None.
    """
    if stored is not None and state is DaemonState.RUNNING:
        return stored
    if stored is not None and state is DaemonState.STALE:
        return stored if as_json else {**stored, **scan_tree(tree, now)}
    live = scan_tree(tree, now)
    return build_status(
        tree,
        daemon=None,
        queues=live["queues"],
        holders=live["holders"],
        counters={},
        events=[],
        watcher={},
        now=now,
    )


def _log() -> Any:
    # A fresh logger per call: with cache_logger_on_first_use, a logger
    # kept at module level would keep the configuration of its first use.
    return structlog.get_logger(__name__)
