"""The soak's checker: reads a drained tree and proves, item by item, that
nothing was lost or duplicated.

Every lineage starts at an item a researcher pushed (its root id) and must
end in exactly one terminal place: the output bucket, ``completed`` or
``failed`` that :mod:`soak_lib.plan` decides for its sequence number, or
``failed`` as a dead letter. The checker also proves that no successor
exists twice, that every history is coherent, and that every bad file sits
in quarantine with its bytes unchanged.
"""

from __future__ import annotations

import json
import os
import stat
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantd import Tree
from soak_lib import plan
from soak_lib.badfiles import DIRECTORY_MEMBER, Dropped, digest

CLAIMS_DIR = ".claims"


@dataclass(frozen=True)
class Found:
    """One soak item document and where it sits."""

    doc: dict[str, Any]
    place: str
    path: Path

    @property
    def id(self) -> str:
        return str(self.doc["id"])

    @property
    def root_id(self) -> str:
        return str(self.doc.get("root_id") or self.doc["id"])

    @property
    def seq(self) -> int:
        return int(self.doc["payload"]["seq"])

    @property
    def history(self) -> list[dict[str, Any]]:
        history: list[dict[str, Any]] = self.doc.get("history") or []
        return history


@dataclass(frozen=True)
class Violation:
    """A broken guarantee, with the ids involved."""

    kind: str
    ids: tuple[str, ...]
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail} [ids: {', '.join(self.ids)}]"


@dataclass
class Report:
    """Counts and violations of one check."""

    counts: dict[str, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def violate(self, kind: str, ids: list[str] | tuple[str, ...], detail: str) -> None:
        unique = tuple(dict.fromkeys(ids))
        self.violations.append(Violation(kind, unique, detail))


# -- scanning the tree -------------------------------------------------------


@dataclass
class Scan:
    """Everything found in a tree."""

    items: list[Found] = field(default_factory=list)
    foreign: list[tuple[str, Path]] = field(default_factory=list)
    leftovers: list[tuple[str, Path]] = field(default_factory=list)
    quarantine: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)


def scan_tree(tree: Tree, run: str) -> Scan:
    scan = Scan()
    config = tree.config
    for queue in config.queues:
        queue_dir = tree.queue_dir(queue)
        _scan_dir(scan, run, queue_dir, f"pending:{queue}", pending=True)
        claims = queue_dir / CLAIMS_DIR
        for holder in _listdir(claims):
            _scan_dir(scan, run, claims / holder, f"claimed:{queue}", pending=True)
    for name in config.archives:
        _scan_dir(scan, run, tree.archive_dir(name), name, pending=False)
    for bucket in config.outputs:
        _scan_dir(scan, run, tree.queue_dir(bucket), f"output:{bucket}", pending=False)
    _scan_dir(scan, run, tree.recovering, "recovering", pending=True)
    for entry in _listdir(tree.quarantine):
        reason_path = tree.quarantine / entry / "reason.json"
        try:
            reason = json.loads(reason_path.read_bytes())
        except (OSError, ValueError):
            reason = {}
        scan.quarantine.append((tree.quarantine / entry, reason))
    return scan


def _listdir(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def _scan_dir(scan: Scan, run: str, directory: Path, place: str, pending: bool) -> None:
    """Read every entry of ``directory``; in a queue or claim directory any
    entry at all is a leftover of an undrained run."""
    for name in _listdir(directory):
        if name == CLAIMS_DIR:
            continue
        path = directory / name
        doc = _read_doc(path)
        if doc is not None and _is_soak(doc, run):
            kind = place
            if name.endswith(".next"):
                kind = f"draft:{place}"
            elif name.endswith(".routed"):
                kind = f"committed:{place}"
            scan.items.append(Found(doc, kind, path))
            continue
        if pending or doc is None:
            scan.leftovers.append((place, path))
        else:
            scan.foreign.append((place, path))


def _read_doc(path: Path) -> dict[str, Any] | None:
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode):
            return None
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) and "id" in doc else None


def _is_soak(doc: dict[str, Any], run: str) -> bool:
    payload = doc.get("payload")
    return (
        isinstance(payload, dict)
        and payload.get("soak") == run
        and isinstance(payload.get("seq"), int)
    )


# -- the check ---------------------------------------------------------------


def check(tree: Tree, run: str, ledger_ids: set[str], dropped: list[Dropped]) -> Report:
    """Check a drained tree; return counts and every violation found."""
    report = Report()
    scan = scan_tree(tree, run)
    by_id: dict[str, list[Found]] = defaultdict(list)
    for found in scan.items:
        by_id[found.id].append(found)
    _check_places(report, by_id)
    _check_leftovers(report, scan)
    unique = {item_id: places[0] for item_id, places in by_id.items()}
    _check_roots(report, unique, ledger_ids)
    _check_lineages(report, unique, tree.config.daemon.max_attempts)
    for found in unique.values():
        _check_history(report, found, unique, tree)
    _check_bad_files(report, scan, dropped, tree)
    _count(report, scan, unique, tree)
    return report


def _check_places(report: Report, by_id: dict[str, list[Found]]) -> None:
    for item_id, places in sorted(by_id.items()):
        if len(places) > 1:
            where = ", ".join(f"{f.place} {f.path}" for f in places)
            report.violate(
                "duplicated",
                [item_id, places[0].root_id],
                f"item exists in {len(places)} places: {where}",
            )


def _is_terminal(place: str) -> bool:
    return place in ("completed", "failed") or place.startswith("output:")


def _check_leftovers(report: Report, scan: Scan) -> None:
    for found in scan.items:
        if not _is_terminal(found.place):
            report.violate(
                "stuck",
                [found.id, found.root_id],
                f"item still {found.place} after the drain at {found.path}",
            )
    for place, path in scan.leftovers:
        report.warnings.append(f"non-item entry left in {place}: {path}")


def _check_roots(
    report: Report, unique: dict[str, Found], ledger_ids: set[str]
) -> None:
    for item_id in sorted(ledger_ids - unique.keys()):
        report.violate(
            "lost",
            [item_id],
            "a researcher's push returned this id, but the item is nowhere in the tree",
        )
    for found in unique.values():
        if found.doc.get("parent_id") is None and found.id not in ledger_ids:
            # A researcher killed after its push and before writing the
            # ledger: a real item, just not acknowledged.
            report.counts["unacknowledged_pushes"] = (
                report.counts.get("unacknowledged_pushes", 0) + 1
            )


def _check_lineages(
    report: Report, unique: dict[str, Found], max_attempts: int
) -> None:
    children: dict[str, list[Found]] = defaultdict(list)
    roots: dict[str, Found] = {}
    for found in unique.values():
        parent = found.doc.get("parent_id")
        if parent is None:
            roots[found.id] = found
        else:
            children[str(parent)].append(found)
    for parent, kids in sorted(children.items()):
        if len(kids) > 1:
            ids = [parent, *sorted(k.id for k in kids)]
            report.violate(
                "duplicated",
                [*ids, kids[0].root_id],
                f"item {parent} has {len(kids)} successors",
            )
    by_root: dict[str, list[Found]] = defaultdict(list)
    for found in unique.values():
        by_root[found.root_id].append(found)
    for root_id, members in sorted(by_root.items()):
        if root_id not in roots:
            report.violate(
                "orphan",
                [root_id, *sorted(m.id for m in members)],
                "successors exist but their root item is nowhere in the tree",
            )
            continue
        _walk_lineage(report, roots[root_id], children, max_attempts)


def _walk_lineage(
    report: Report,
    root: Found,
    children: dict[str, list[Found]],
    max_attempts: int,
) -> None:
    path = plan.expected_path(root.seq)
    current = root
    depth = 0
    while True:
        kids = children.get(current.id, [])
        if not kids:
            _check_leaf(report, root, current, depth, path, max_attempts)
            return
        if depth >= len(path) or path[depth][1].action != "route":
            report.violate(
                "unexpected_successor",
                [root.id, current.id, kids[0].id],
                f"item at depth {depth} of seq {root.seq} was to end its "
                "lineage but has a successor",
            )
            return
        # An item still claimed or pending is reported as stuck.
        if current.place != "completed" and _is_terminal(current.place):
            report.violate(
                "misplaced",
                [root.id, current.id],
                f"routed item sits in {current.place}, not in completed",
            )
        current = min(kids, key=lambda k: k.id)
        depth += 1


def _check_leaf(
    report: Report,
    root: Found,
    leaf: Found,
    depth: int,
    path: list[tuple[str, plan.Decision]],
    max_attempts: int,
) -> None:
    ids = [root.id, leaf.id]
    if not _is_terminal(leaf.place):
        return
    if leaf.place == "failed" and _is_dead_letter(leaf, max_attempts):
        return
    if depth == len(path):
        bucket = path[-1][1].target
        if leaf.place != f"output:{bucket}":
            report.violate(
                "misplaced",
                ids,
                f"lineage of seq {root.seq} must end in output {bucket}, "
                f"ends in {leaf.place}",
            )
        return
    decision = path[depth][1]
    if decision.action == "poison":
        report.violate(
            "misplaced",
            ids,
            f"poison item of seq {root.seq} kills every worker, so it must be "
            f"dead-lettered, but it sits in {leaf.place}",
        )
        return
    if decision.action == "route":
        report.violate(
            "lost",
            ids,
            f"item (seq {root.seq}, depth {depth}) sits in {leaf.place} but "
            f"its successor into {decision.target} exists nowhere",
        )
        return
    expected_place = "completed" if decision.action == "complete" else "failed"
    if leaf.place != expected_place:
        report.violate(
            "misplaced",
            ids,
            f"lineage of seq {root.seq} must end in {expected_place}, "
            f"ends in {leaf.place}",
        )
    elif expected_place == "failed" and not leaf.doc.get("last_error"):
        report.violate(
            "reason_lost",
            ids,
            f"item of seq {root.seq} sits in failed/ without its reason "
            f"(status {leaf.doc.get('status')!r}, no last_error)",
        )


def _is_dead_letter(found: Found, max_attempts: int) -> bool:
    attempts = int(found.doc.get("attempts") or 0)
    return found.doc.get("status") == "dead_letter" or attempts >= max_attempts


def _creating_hop(found: Found) -> int | None:
    """Return the index of the hop that created this item: its routed hop
    for a successor, its pushed hop for a root."""
    parent = found.doc.get("parent_id")
    history = found.history
    for index in range(len(history) - 1, -1, -1):
        hop = history[index]
        if parent is None and hop.get("event") == "pushed":
            return index
        if hop.get("event") == "routed" and hop.get("item_id") == parent:
            return index
    return None


def _check_history(
    report: Report, found: Found, unique: dict[str, Found], tree: Tree
) -> None:
    ids = [found.id, found.root_id]
    history = found.history
    index = _creating_hop(found)
    if index is None:
        report.violate(
            "history", ids, "no pushed or routed hop records how the item was made"
        )
        return
    parent_id = found.doc.get("parent_id")
    if parent_id is not None:
        _check_routed_hop(report, found, history[index], unique, tree)
        parent = unique.get(str(parent_id))
        if parent is not None and parent.history != history[:index]:
            report.violate(
                "history",
                [*ids, str(parent_id)],
                "the successor's history does not start with its predecessor's history",
            )
    for hop in history:
        if hop.get("event") == "routed" and hop.get("item_id") not in unique:
            report.violate(
                "history",
                [*ids, str(hop.get("item_id"))],
                "a routed hop names a predecessor that is nowhere in the tree",
            )
    markers = [h.get("claim") for h in history if h.get("event") == "recovered"]
    if len(markers) != len(set(markers)):
        report.violate("history", ids, "one recovery is recorded twice")
    own = history[index + 1 :]
    recovered = sum(1 for hop in own if hop.get("event") == "recovered")
    attempts = int(found.doc.get("attempts") or 0)
    if attempts != recovered:
        report.violate(
            "attempts",
            ids,
            f"attempts is {attempts} but the history has {recovered} recovered "
            "hops since the item was made",
        )


def _check_routed_hop(
    report: Report,
    found: Found,
    hop: dict[str, Any],
    unique: dict[str, Found],
    tree: Tree,
) -> None:
    ids = [found.id, found.root_id, str(found.doc.get("parent_id"))]
    stage = tree.config.stages.get(str(hop.get("stage")))
    target = hop.get("to")
    if stage is None or target not in stage.produces:
        report.violate(
            "history",
            ids,
            f"routed hop from stage {hop.get('stage')!r} to {target!r} is not "
            "an edge of the routing graph",
        )
    parent = unique.get(str(found.doc.get("parent_id")))
    if parent is not None and parent.root_id != found.root_id:
        report.violate("history", ids, "successor and predecessor differ in root_id")


def _check_bad_files(
    report: Report, scan: Scan, dropped: list[Dropped], tree: Tree
) -> None:
    by_name: dict[str, list[tuple[Path, dict[str, Any]]]] = defaultdict(list)
    report.counts["quarantine_entries_without_item"] = 0
    for entry, reason in scan.quarantine:
        if not os.path.lexists(entry / "item"):
            # quarantine() writes the reason first: a process killed
            # before the move leaves a reason with no item.
            report.counts["quarantine_entries_without_item"] += 1
            origin = reason.get("original_path")
            what = f"a reason for {origin}" if origin else "no reason"
            report.warnings.append(f"quarantine entry {entry} holds {what} and no item")
            continue
        by_name[str(reason.get("original_name_hex"))].append((entry, reason))
    expected = {d.name_hex for d in dropped}
    report.counts["quarantined_bad_files"] = 0
    for bad in dropped:
        entries = by_name.get(bad.name_hex, [])
        label = f"{bad.kind} {bad.name!r} dropped into {bad.queue}"
        if not entries:
            where = _find_name(tree, bad.name)
            report.violate(
                "not_quarantined",
                [bad.name_hex],
                f"bad file {label} is not in quarantine; found at: {where}",
            )
            continue
        report.counts["quarantined_bad_files"] += 1
        if len(entries) > 1:
            report.violate(
                "duplicated",
                [bad.name_hex],
                f"bad file {label} is in quarantine {len(entries)} times",
            )
        problem = _compare(bad, entries[0][0] / "item")
        if problem:
            report.violate(
                "quarantine_changed",
                [bad.name_hex, entries[0][0].name],
                f"bad file {label}: {problem}",
            )
    for name_hex, entries in sorted(by_name.items()):
        if name_hex in expected:
            continue
        for entry, reason in entries:
            doc = _read_doc(entry / "item")
            if (
                doc is not None
                and isinstance(doc.get("payload"), dict)
                and doc["payload"].get("seq") is not None
            ):
                report.violate(
                    "quarantined_item",
                    [str(doc["id"])],
                    f"a valid soak item was quarantined in {entry} "
                    f"({reason.get('reason')}: {reason.get('detail')})",
                )
            else:
                report.warnings.append(
                    f"quarantine entry {entry} is no dropped bad file: "
                    f"{reason.get('reason')}: {reason.get('detail')}"
                )


def _compare(bad: Dropped, item: Path) -> str | None:
    try:
        info = os.lstat(item)
    except FileNotFoundError:
        return "the quarantine entry has no item"
    if bad.file_type == "symlink":
        if not stat.S_ISLNK(info.st_mode):
            return "was a symlink, is no longer one"
        if os.readlink(item) != bad.link_target:
            return "the symlink's target changed"
    elif bad.file_type == "fifo":
        if not stat.S_ISFIFO(info.st_mode):
            return "was a FIFO, is no longer one"
    elif bad.file_type == "directory":
        if not stat.S_ISDIR(info.st_mode):
            return "was a directory, is no longer one"
        member = item / DIRECTORY_MEMBER
        if not member.is_file() or digest(member.read_bytes()) != bad.sha256:
            return "the directory's content changed"
    else:
        if not stat.S_ISREG(info.st_mode):
            return "was a regular file, is no longer one"
        data = item.read_bytes()
        if digest(data) != bad.sha256:
            return f"bytes changed ({bad.size} bytes dropped, {len(data)} found)"
    if bad.outside_path is not None:
        outside = Path(bad.outside_path)
        if not outside.is_file() or digest(outside.read_bytes()) != bad.outside_sha256:
            return f"the file outside the tree changed: {outside}"
    return None


def _find_name(tree: Tree, name: bytes) -> str:
    """Return where files named ``name`` are, also under the longer names
    that recovery and quarantine give them (``<queue>~<holder>~<name>``)."""
    found = []
    for directory, dirs, files in os.walk(os.fsencode(tree.root)):
        for entry in [*files, *dirs]:
            if entry == name or entry.endswith(b"~" + name):
                found.append(os.fsdecode(os.path.join(directory, entry)))
    return ", ".join(found) or "nowhere"


def _count(report: Report, scan: Scan, unique: dict[str, Found], tree: Tree) -> None:
    max_attempts = tree.config.daemon.max_attempts
    counts = report.counts
    roots = [f for f in unique.values() if f.doc.get("parent_id") is None]
    counts["items"] = len(roots)
    counts["successors"] = len(unique) - len(roots)
    markers = set()
    for found in unique.values():
        for hop in found.history:
            if hop.get("event") == "recovered":
                markers.add(str(hop.get("claim")))
    counts["recoveries"] = len(markers)
    counts["dead_letters"] = sum(
        1
        for f in unique.values()
        if f.place == "failed" and _is_dead_letter(f, max_attempts)
    )
    for bucket in plan.BUCKETS:
        counts[f"output_{bucket}"] = sum(
            1 for f in unique.values() if f.place == f"output:{bucket}"
        )
    counts["unrecorded_outcomes"] = sum(
        1
        for f in unique.values()
        if f.place in ("completed", "failed")
        and f.doc.get("status") in ("pending", "in_progress")
    )
    counts["quarantine_entries"] = len(scan.quarantine)
    counts["temp_files_left"] = len(_listdir(tree.tmp))
    counts["lost"] = sum(1 for v in report.violations if v.kind == "lost")
    counts["duplicated"] = sum(1 for v in report.violations if v.kind == "duplicated")
