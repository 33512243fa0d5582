"""Helpers for testing workers against a temporary tree.

::

    from quantd.testing import pending_items, push_item, run_worker, temp_tree

    def test_converter_routes_to_backtest() -> None:
        with temp_tree() as tree:
            push_item(tree, "to-convert", {"title": "RSI divergence"})
            run_worker(["python", "converter.py"], tree, worker="converter-0")
            assert [d["parent_id"] for d in pending_items(tree, "to-backtest")]

Nothing here is needed in production, and nothing here mocks the file
system: every helper works on real files in a real tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from quantd.config import CONFIG_ENV, ROOT_ENV
from quantd.filestore import new_document
from quantd.holder import host_name
from quantd.items import (
    Priority,
    format_time,
    key_from_document,
    parse_pending_name,
    utc_now,
)
from quantd.transitions import publish
from quantd.tree import CLAIMS_DIR, Tree, init_tree, open_tree
from quantd.worker import STAGE_ENV, WORKER_ENV, Worker

TESTING_STAGE = "testing"
TESTING_WORKER = "quantd-testing"


@contextlib.contextmanager
def temp_tree(
    config: str | Path | Mapping[str, Any] | None = None, *, durable: bool = False
) -> Iterator[Tree]:
    """Create a tree in a new temporary directory, yield it, then delete it.

    ``config`` is a config file, a TOML document as a mapping, or None for
    the built-in reference pipeline. ``durable`` defaults to False, so
    nothing is fsynced and tests run faster; a crash of a process still
    loses nothing.
    """
    directory = Path(tempfile.mkdtemp(prefix="quantd-test-"))
    try:
        config_path: Path | None = None
        if isinstance(config, Mapping):
            config_path = directory / "quantd.toml"
            config_path.write_text(tomli_w.dumps(dict(config)))
        elif config is not None:
            config_path = Path(config)
        root = directory / "tree"
        init_tree(root, config_path)
        yield open_tree(root, config_path, durable=durable)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def push_item(
    tree: Tree,
    queue: str,
    payload: Mapping[str, Any],
    *,
    priority: Priority | str = Priority.MEDIUM,
    stage: str | None = None,
) -> str:
    """Push an item into any queue or output, whatever the routing graph
    allows, and return its id.

    The item records ``stage`` as its producer; by default the first stage
    that may produce into ``queue``, else ``testing``.
    """
    if stage is None:
        stage = _producer(tree, queue)
    now = utc_now()
    hop = {
        "event": "pushed",
        "at": format_time(now),
        "queue": queue,
        "worker": TESTING_WORKER,
        "stage": stage,
        "host": host_name(),
    }
    doc = new_document(
        payload,
        priority=Priority.parse(priority),
        stage=stage,
        worker=TESTING_WORKER,
        now=now,
        history=[hop],
    )
    publish(tree, doc, queue, prefix="push")
    return str(doc["id"])


def pending_items(tree: Tree, queue: str) -> list[dict[str, Any]]:
    """Return the documents waiting in ``queue``, in claim order, without
    claiming them. Files that are not valid JSON objects are left out."""
    directory = tree.queue_dir(queue)
    keyed = []
    for path in directory.iterdir():
        parsed = parse_pending_name(path.name)
        doc = _read(path) if parsed is not None else None
        if parsed is None or doc is None:
            continue
        key = parsed.key or key_from_document(doc, "")
        keyed.append(((key.rank, key.created, path.name), doc))
    return [doc for _, doc in sorted(keyed, key=lambda pair: pair[0])]


def claimed_items(tree: Tree, queue: str) -> list[dict[str, Any]]:
    """Return the documents claimed from ``queue`` and not yet finished."""
    holders = tree.queue_dir(queue) / CLAIMS_DIR
    paths = sorted(holders.glob("*/*.json")) if holders.is_dir() else []
    return [doc for doc in map(_read, paths) if doc is not None]


def archived_items(tree: Tree, archive: str) -> list[dict[str, Any]]:
    """Return the documents in an archive (``completed`` or ``failed``),
    sorted by file name."""
    paths = sorted(tree.archive_dir(archive).glob("*.json"))
    return [doc for doc in map(_read, paths) if doc is not None]


def drain(tree: Tree, queue: str) -> list[dict[str, Any]]:
    """Claim and complete every item in ``queue``; return their documents
    in claim order. Use it to collect what a worker pushed into an output
    or to empty a queue between steps."""
    documents = []
    with Worker(tree, TESTING_WORKER) as worker:
        while (item := worker.claim(queue)) is not None:
            documents.append(item.doc)
            worker.complete(item)
    return documents


def worker_env(
    tree: Tree, worker: str | None = None, stage: str | None = None
) -> dict[str, str]:
    """Return the variables that point quantd in a child process at
    ``tree``: ``QUANTD_ROOT``, ``QUANTD_CONFIG`` when the tree has a config
    file, and ``QUANTD_WORKER`` and ``QUANTD_STAGE`` when given."""
    env = {ROOT_ENV: str(tree.root)}
    if tree.config.source is not None:
        env[CONFIG_ENV] = str(tree.config.source)
    if worker:
        env[WORKER_ENV] = worker
    if stage:
        env[STAGE_ENV] = stage
    return env


def run_worker(
    command: Sequence[str],
    tree: Tree,
    *,
    worker: str | None = None,
    stage: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run a worker command against ``tree`` and return its result.

    The command inherits this environment plus :func:`worker_env` and
    ``env``. It runs in a new session; when it outlives ``timeout_s``, the
    whole session is killed with SIGKILL and subprocess.TimeoutExpired is
    raised. A non-zero exit is returned, not raised.
    """
    full_env = {**os.environ, **worker_env(tree, worker, stage), **(env or {})}
    process = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_session(process)
        stdout, stderr = process.communicate()
        raise subprocess.TimeoutExpired(
            process.args, timeout_s, output=stdout, stderr=stderr
        ) from None
    except BaseException:
        _kill_session(process)
        process.wait()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def reference_config_document() -> dict[str, Any]:
    """Return the built-in reference pipeline as a TOML document, to edit
    and pass to :func:`temp_tree`."""
    from quantd.config import _reference_document

    return _reference_document()


def _producer(tree: Tree, queue: str) -> str:
    for stage in tree.config.stages.values():
        if queue in stage.produces:
            return stage.name
    return TESTING_STAGE


def _kill_session(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


__all__ = [
    "archived_items",
    "claimed_items",
    "drain",
    "pending_items",
    "push_item",
    "reference_config_document",
    "run_worker",
    "temp_tree",
    "worker_env",
]
