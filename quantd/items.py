"""Item documents, ids, priorities and the file names that encode them.

A pending item's file name carries its sort key, so that a claimer orders
a queue by listing names, without opening files::

    <rank>-<created>~<id>.json     written by quantd
    <id>.json                      written by reference-protocol workers

``rank`` is 0 for high, 1 for medium and 2 for low priority, and
``created`` is the UTC creation time as ``YYYYmmddTHHMMSSffffff``, so
sorting names sorts by priority, then age.
"""

from __future__ import annotations

import contextlib
import enum
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quantd.errors import InvalidId, InvalidItem

MAX_ID_BYTES = 200
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_KEY_PATTERN = re.compile(r"([012])-(\d{8}T\d{12})")
_NAME_TIME_FORMAT = "%Y%m%dT%H%M%S%f"
REFERENCE_CLAIM_MARKER = ".claimed"
# Reference-protocol workers write each item to ``tempfile.mkstemp(
# suffix=".json", dir=<queue>)`` before moving it to ``<id>.json``: "tmp",
# then 8 characters of Python's temp-name alphabet. Claiming such a file
# would take a half-written item and break its writer's move.
_REFERENCE_TEMP_PATTERN = re.compile(r"tmp[a-z0-9_]{8}")


class Priority(enum.StrEnum):
    """Claim order: every high item is claimed before any medium one."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        return _PRIORITY_RANKS[self]

    @classmethod
    def parse(cls, value: object) -> Priority:
        """Convert a string to a Priority, raising InvalidItem otherwise."""
        if isinstance(value, str) and value in cls._value2member_map_:
            return cls(value)
        allowed = ", ".join(p.value for p in cls)
        raise InvalidItem(f"invalid priority {value!r}: must be one of {allowed}")


_PRIORITY_RANKS = {Priority.HIGH: 0, Priority.MEDIUM: 1, Priority.LOW: 2}


class ItemStatus(enum.StrEnum):
    """The stage of an item's life, written into archived documents."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    ROUTED = "routed"
    DEAD_LETTER = "dead_letter"


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """Format a UTC time the way item documents store it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 time; a time without a zone is taken as UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def validate_id(item_id: object) -> str:
    """Return ``item_id`` if it is safe as a file name, else raise InvalidId.

    Ids are ASCII letters, digits, ``.``, ``_`` and ``-``, start with a
    letter or digit, contain no ``..`` and are at most 200 bytes, so an id
    can never name a path outside its queue directory.
    """
    if not isinstance(item_id, str):
        raise InvalidId(f"invalid item id {item_id!r}: must be a string")
    if not item_id:
        raise InvalidId("invalid item id '': must not be empty")
    size = len(item_id.encode("utf-8", "surrogateescape"))
    if size > MAX_ID_BYTES:
        raise InvalidId(
            f"invalid item id {item_id[:40]!r}...: {size} bytes, "
            f"the limit is {MAX_ID_BYTES}"
        )
    if not _ID_PATTERN.fullmatch(item_id) or ".." in item_id:
        raise InvalidId(
            f"invalid item id {item_id!r}: use ASCII letters, digits, '.', '_' "
            "and '-', starting with a letter or digit, with no '..'"
        )
    if REFERENCE_CLAIM_MARKER in item_id or item_id.endswith(".json"):
        raise InvalidId(
            f"invalid item id {item_id!r}: must not contain '.claimed' "
            "or end with '.json'"
        )
    return item_id


def new_id(prefix: str, now: datetime | None = None) -> str:
    """Generate an id that is unique across processes and hosts.

    The time makes ids readable and roughly ordered; 64 random bits make a
    collision between two producers practically impossible.
    """
    moment = (now or utc_now()).astimezone(UTC)
    return validate_id(
        f"{prefix}-{moment.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(8)}"
    )


@dataclass(frozen=True, order=True)
class SortKey:
    """Claim order of a pending item: priority rank, then creation time."""

    rank: int
    created: str


def pending_name(item_id: str, priority: Priority, created: datetime) -> str:
    """Build the file name of a pending item written by quantd."""
    stamp = created.astimezone(UTC).strftime(_NAME_TIME_FORMAT)
    return f"{priority.rank}-{stamp}~{item_id}.json"


@dataclass(frozen=True)
class PendingName:
    """A parsed pending file name; ``key`` is None for reference names."""

    stem: str
    item_id: str
    key: SortKey | None


def parse_pending_name(name: str) -> PendingName | None:
    """Parse a pending item's file name; None if it is not one.

    Temp files (a reference worker's ``tmpXXXXXXXX.json`` too),
    reference-protocol claims and hidden entries are not pending items.
    """
    if not name.endswith(".json") or name.startswith("."):
        return None
    stem = name[:-5]
    if REFERENCE_CLAIM_MARKER in stem or _REFERENCE_TEMP_PATTERN.fullmatch(stem):
        return None
    key_text, tilde, item_id = stem.rpartition("~")
    if not tilde:
        return PendingName(stem, stem, None) if _is_valid_id(stem) else None
    match = _KEY_PATTERN.fullmatch(key_text)
    if match is None or not _is_valid_id(item_id):
        return None
    return PendingName(stem, item_id, SortKey(int(match[1]), match[2]))


@dataclass(frozen=True)
class ReferenceClaimName:
    """A claim taken by a reference-protocol worker: ``<stem>.claimed-<w>``."""

    stem: str
    item_id: str
    worker: str


def parse_reference_claim(name: str) -> ReferenceClaimName | None:
    """Parse ``<stem>.claimed-<worker>.json``; None for any other name."""
    if not name.endswith(".json"):
        return None
    stem, marker, worker = name[:-5].rpartition(REFERENCE_CLAIM_MARKER + "-")
    if not marker or not worker:
        return None
    pending = parse_pending_name(stem + ".json")
    if pending is None:
        return None
    return ReferenceClaimName(stem, pending.item_id, worker)


def _is_valid_id(text: str) -> bool:
    try:
        validate_id(text)
    except InvalidId:
        return False
    return True


def key_from_document(doc: Mapping[str, Any], fallback_created: str) -> SortKey:
    """Compute the sort key of a reference-protocol item from its content."""
    try:
        rank = Priority(doc.get("priority", "low")).rank
    except ValueError:
        rank = Priority.LOW.rank
    created = fallback_created
    created_at = doc.get("created_at")
    if isinstance(created_at, str):
        with contextlib.suppress(ValueError):
            moment = parse_time(created_at).astimezone(UTC)
            created = moment.strftime(_NAME_TIME_FORMAT)
    return SortKey(rank, created)


def validate_document(doc: object) -> dict[str, Any]:
    """Check that ``doc`` is a queue item, raising InvalidItem otherwise.

    Fields that quantd does not know are allowed and kept.
    """
    if not isinstance(doc, dict):
        raise InvalidItem(
            f"invalid item: the document must be a JSON object, "
            f"got {type(doc).__name__}"
        )
    if "id" not in doc:
        raise InvalidItem("invalid item: missing field 'id'")
    try:
        validate_id(doc["id"])
    except InvalidId as error:
        raise InvalidItem(f"invalid item: field 'id': {error}") from None
    if "priority" in doc:
        Priority.parse(doc["priority"])
    payload = doc.get("payload")
    if not isinstance(payload, dict):
        raise InvalidItem(
            f"invalid item {doc['id']!r}: field 'payload' must be a JSON "
            f"object, got {type(payload).__name__}"
        )
    for field, kind in _OPTIONAL_FIELDS.items():
        value = doc.get(field)
        if value is not None and not isinstance(value, kind):
            raise InvalidItem(
                f"invalid item {doc['id']!r}: field {field!r} must be "
                f"{kind.__name__}, got {type(value).__name__}"
            )
    attempts = doc.get("attempts")
    if isinstance(attempts, bool) or (isinstance(attempts, int) and attempts < 0):
        raise InvalidItem(
            f"invalid item {doc['id']!r}: field 'attempts' must be a "
            f"non-negative integer, got {attempts!r}"
        )
    return doc


_OPTIONAL_FIELDS: dict[str, type] = {
    "created_at": str,
    "created_by": str,
    "stage": str,
    "status": str,
    "attempts": int,
    "history": list,
    "last_error": str,
    "parent_id": str,
    "root_id": str,
}


@dataclass
class Item:
    """An item as a worker sees it: its document and where it sits.

    ``doc`` is the whole JSON document, unknown fields included; the
    properties read the fields quantd uses.
    """

    doc: dict[str, Any]
    queue: str
    path: Path

    @property
    def id(self) -> str:
        return str(self.doc["id"])

    @property
    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = self.doc["payload"]
        return payload

    @property
    def priority(self) -> Priority:
        try:
            return Priority(self.doc.get("priority", Priority.LOW))
        except ValueError:
            return Priority.LOW

    @property
    def attempts(self) -> int:
        return int(self.doc.get("attempts") or 0)

    @property
    def history(self) -> list[dict[str, Any]]:
        history: list[dict[str, Any]] = self.doc.get("history") or []
        return history

    @property
    def root_id(self) -> str:
        return str(self.doc.get("root_id") or self.id)
