"""Ids, pending names, sort keys and document validation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from quantd import InvalidId, InvalidItem, Priority, validate_id
from quantd.items import (
    Item,
    SortKey,
    key_from_document,
    new_id,
    parse_pending_name,
    parse_reference_claim,
    pending_name,
    validate_document,
)

HOSTILE_IDS: list[object] = [
    "../x",
    "a/b",
    "..",
    ".",
    ".hidden",
    "a..b",
    "x\x00y",
    "x\ny",
    "tab\there",
    "bell\x07",
    "del\x7f",
    "a" * 201,
    "é",
    "a b",
    "a~b",
    "-leading-dash",
    "_leading",
    "",
    "x.claimed-w",
    "x.json",
    None,
    17,
    b"bytes",
    ["list"],
]


@pytest.mark.parametrize("bad", HOSTILE_IDS, ids=repr)
def test_validate_id_rejects(bad: object) -> None:
    with pytest.raises(InvalidId):
        validate_id(bad)


@pytest.mark.parametrize(
    "good", ["a", "hyp-1", "hyp-2026-01-26-001", "A.b_c-9", "9", "a" * 200]
)
def test_validate_id_accepts(good: str) -> None:
    assert validate_id(good) == good


def test_new_id_is_valid_and_unique() -> None:
    ids = {new_id("researcher") for _ in range(1000)}
    assert len(ids) == 1000
    for item_id in ids:
        assert validate_id(item_id) == item_id
        assert item_id.startswith("researcher-")


def test_pending_name_sorts_by_priority_then_age() -> None:
    early = datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    late = datetime(2026, 1, 1, 0, 0, 0, 2, tzinfo=UTC)
    names = [
        pending_name("c", Priority.LOW, early),
        pending_name("b", Priority.MEDIUM, late),
        pending_name("a", Priority.HIGH, late),
        pending_name("d", Priority.MEDIUM, early),
    ]
    assert [parse_pending_name(n).item_id for n in sorted(names)] == [  # type: ignore[union-attr]
        "a",
        "d",
        "b",
        "c",
    ]


def test_pending_name_round_trip() -> None:
    moment = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    name = pending_name("hyp-1", Priority.HIGH, moment)
    parsed = parse_pending_name(name)
    assert parsed is not None
    assert parsed.item_id == "hyp-1"
    assert parsed.key == SortKey(0, "20260304T050607891011")
    assert parsed.stem == name[:-5]


@pytest.mark.parametrize(
    "name",
    [
        "tmp.tmp",
        ".hidden.json",
        "x.claimed-w.json",
        "1-20260101T000000000000~x.claimed-w.json",
        "...json",
        "a..b.json",
        "9-20260101T000000000000~x.json",
        "1-2026~x.json",
        "1-20260101T000000000000~.json",
        "ctl\x01.json",
        "bad\udcff.json",
        "a" * 201 + ".json",
        "x.json.tmp",
        "tmp3k_9zq1x.json",
    ],
)
def test_parse_pending_name_ignores(name: str) -> None:
    assert parse_pending_name(name) is None


def test_parse_pending_name_reference() -> None:
    parsed = parse_pending_name("hyp-10.json")
    assert parsed is not None
    assert parsed.item_id == "hyp-10"
    assert parsed.key is None


def test_parse_reference_claim() -> None:
    parsed = parse_reference_claim("hyp-1.claimed-backtester-pane-0.json")
    assert parsed is not None
    assert parsed.item_id == "hyp-1"
    assert parsed.stem == "hyp-1"
    assert parsed.worker == "backtester-pane-0"
    assert parse_reference_claim("hyp-1.json") is None
    assert parse_reference_claim("../x.claimed-w.json") is None


def test_key_from_document_uses_priority_and_utc_time() -> None:
    doc = {"priority": "high", "created_at": "2026-01-01T10:00:00+02:00"}
    assert key_from_document(doc, "fallback") == SortKey(0, "20260101T080000000000")


def test_key_from_document_defaults() -> None:
    assert key_from_document({}, "F") == SortKey(2, "F")
    assert key_from_document({"created_at": "not a time"}, "F") == SortKey(2, "F")


def _doc(**fields: Any) -> dict[str, Any]:
    return {"id": "x", "payload": {}, **fields}


@pytest.mark.parametrize(
    "doc",
    [
        [],
        "x",
        {"payload": {}},
        _doc(id="../x"),
        _doc(id=5),
        _doc(payload=[1]),
        {"id": "x"},
        _doc(priority="urgent"),
        _doc(priority=["high"]),
        _doc(attempts=-1),
        _doc(attempts=True),
        _doc(attempts="1"),
        _doc(history={}),
        _doc(created_at=5),
    ],
    ids=repr,
)
def test_validate_document_rejects(doc: object) -> None:
    with pytest.raises(InvalidItem):
        validate_document(doc)


def test_validate_document_keeps_unknown_fields() -> None:
    doc = _doc(custom={"nested": [1, 2]}, type="hypothesis")
    assert validate_document(doc) is doc
    assert doc["custom"] == {"nested": [1, 2]}


def test_priority_parse() -> None:
    assert Priority.parse("low") is Priority.LOW
    with pytest.raises(InvalidItem, match="must be one of high, medium, low"):
        Priority.parse("HIGH")


def test_item_properties_defaults(tmp_path: Any) -> None:
    item = Item({"id": "x", "payload": {"a": 1}}, "q", tmp_path / "x.json")
    assert item.priority is Priority.LOW
    assert item.attempts == 0
    assert item.history == []
    assert item.root_id == "x"
    assert item.payload == {"a": 1}
