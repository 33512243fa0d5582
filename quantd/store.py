"""The interface between workers and the storage of a pipeline.

:class:`Worker` talks to a :class:`Store` only. :class:`FileStore` keeps a
pipeline in a directory tree on one host; a store for pipelines that span
hosts (a database queue, say) implements the same methods, and workers'
code does not change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from quantd.config import Stage
from quantd.filestore import Holder
from quantd.items import Item, Priority


class Store(Protocol):
    """Where items wait and who holds them."""

    def push(
        self,
        queue: str,
        payload: Mapping[str, Any],
        *,
        priority: Priority | str = Priority.MEDIUM,
        stage: Stage | None,
        worker: str,
    ) -> str: ...

    def claim(
        self, queues: Iterable[str], holder: Holder, *, wait_s: float | None = None
    ) -> Item | None: ...

    def complete(self, item: Item, holder: Holder) -> None: ...

    def fail(self, item: Item, holder: Holder, reason: str) -> None: ...

    def route(
        self,
        item: Item,
        holder: Holder,
        target: str,
        payload: Mapping[str, Any],
        *,
        priority: Priority | str | None = None,
    ) -> str: ...

    def heartbeat(self, items: Iterable[Item]) -> list[Item]: ...

    def close(self) -> None: ...
