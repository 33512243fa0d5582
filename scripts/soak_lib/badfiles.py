"""Files that are not valid items, dropped into queues during the soak.

Each file is built in a staging directory on the tree's file system and
renamed into a queue in one step. Its name and a digest of its bytes are
recorded, so the checker can find it in quarantine by the
``original_name_hex`` of ``reason.json`` and compare.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Every kind, in the order the driver drops them.
KINDS = (
    "invalid_json",
    "empty",
    "wrong_schema",
    "too_large",
    "too_deep",
    "deep_item",
    "symlink",
    "directory",
    "fifo",
    "hard_link",
    "non_utf8_name",
    "control_char_name",
)
# Nesting depth that makes Python's json module raise RecursionError.
RECURSION_DEPTH = 200_000
DIRECTORY_MEMBER = "inside.json"


@dataclass(frozen=True)
class Dropped:
    """A bad file as it was dropped: what must reappear in quarantine."""

    kind: str
    queue: str
    name_hex: str
    file_type: str
    sha256: str | None
    size: int
    link_target: str | None = None
    # The file whose bytes must stay unchanged: the decoy a symlink points
    # at, or the other name of a hard link.
    outside_path: str | None = None
    outside_sha256: str | None = None

    @property
    def name(self) -> bytes:
        return bytes.fromhex(self.name_hex)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> Dropped:
        fields: dict[str, Any] = json.loads(line)
        return cls(**fields)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def drop(
    kind: str,
    queue: str,
    queue_dir: Path,
    staging: Path,
    index: int,
    *,
    max_item_bytes: int,
    max_json_depth: int,
) -> Dropped:
    """Build a bad file of ``kind`` and rename it into ``queue_dir``."""
    name = _name(kind, index)
    staged = os.path.join(os.fsencode(staging), name)
    target = os.path.join(os.fsencode(queue_dir), name)
    record = _build(
        kind, queue, name, staged, staging, index, max_item_bytes, max_json_depth
    )
    os.rename(staged, target)
    return record


def _name(kind: str, index: int) -> bytes:
    if kind == "non_utf8_name":
        return b"bad-\xff\xfe-%d.json" % index
    if kind == "control_char_name":
        return b"bad-\x01\t\n\x1b[31m-%d.json" % index
    return f"bad-{kind.replace('_', '-')}-{index}.json".encode()


def _build(
    kind: str,
    queue: str,
    name: bytes,
    staged: bytes,
    staging: Path,
    index: int,
    max_item_bytes: int,
    max_json_depth: int,
) -> Dropped:
    def regular(data: bytes) -> Dropped:
        with open(staged, "wb") as file:
            file.write(data)
        return Dropped(kind, queue, name.hex(), "file", digest(data), len(data))

    if kind == "invalid_json":
        return regular(b'{"id": "bad-invalid-json", "payload": {"x": ')
    if kind == "empty":
        return regular(b"")
    if kind == "wrong_schema":
        return regular(b'{"id": "bad wrong schema!", "payload": [1, 2, 3]}\n')
    if kind == "too_large":
        filler = "x" * (max_item_bytes + 4096)
        return regular(
            json.dumps(
                {"id": f"bad-large-{index}", "payload": {"filler": filler}}
            ).encode()
        )
    if kind == "too_deep":
        return regular(b"[" * RECURSION_DEPTH + b"]" * RECURSION_DEPTH)
    if kind == "deep_item":
        # A valid item whose payload nests deeper than daemon.max_json_depth
        # but not deep enough to break the JSON parser.
        depth = max_json_depth + 16
        nested = '{"a": ' * depth + "0" + "}" * depth
        text = f'{{"id": "bad-deep-item-{index}", "payload": {nested}}}'
        return regular(text.encode())
    if kind in ("non_utf8_name", "control_char_name"):
        # The content is a valid item: only the name is wrong.
        text = json.dumps({"id": f"bad-name-{index}", "payload": {}})
        return regular(text.encode())
    if kind == "symlink":
        return _symlink(kind, queue, name, staged, staging, index)
    if kind == "directory":
        data = b'{"id": "inside-a-directory", "payload": {}}\n'
        os.mkdir(staged)
        with open(os.path.join(staged, DIRECTORY_MEMBER.encode()), "wb") as file:
            file.write(data)
        return Dropped(kind, queue, name.hex(), "directory", digest(data), len(data))
    if kind == "fifo":
        os.mkfifo(staged)
        return Dropped(kind, queue, name.hex(), "fifo", None, 0)
    if kind == "hard_link":
        data = json.dumps({"id": f"bad-hard-link-{index}", "payload": {}}).encode()
        other = staging / f"hard-link-{index}.json"
        other.write_bytes(data)
        os.link(other, staged)
        return Dropped(
            kind,
            queue,
            name.hex(),
            "file",
            digest(data),
            len(data),
            outside_path=str(other),
            outside_sha256=digest(data),
        )
    raise ValueError(f"unknown bad file kind {kind!r}; known: {', '.join(KINDS)}")


def _symlink(
    kind: str, queue: str, name: bytes, staged: bytes, staging: Path, index: int
) -> Dropped:
    # The link points at a valid item outside the tree: a reader that
    # follows it would take the decoy for an item.
    decoy = staging / f"decoy-{index}.json"
    data = json.dumps({"id": f"decoy-{index}", "payload": {"decoy": True}}).encode()
    decoy.write_bytes(data)
    os.symlink(decoy, staged)
    return Dropped(
        kind,
        queue,
        name.hex(),
        "symlink",
        None,
        0,
        link_target=str(decoy),
        outside_path=str(decoy),
        outside_sha256=digest(data),
    )
