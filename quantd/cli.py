"""The ``quantd`` command: a thin layer over the library.

Exit codes: 0 success; 1 error; 2 invalid usage; 4 the claim was lost
(ClaimLost); 75 nothing to claim (``EX_TEMPFAIL``: try again later).
``quantd status`` follows the LSB: 0 running, 3 not running, 4 unknown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import psutil

from quantd import __version__
from quantd.errors import ClaimLost, QuantdError
from quantd.filestore import check_edge
from quantd.items import Item, Priority
from quantd.tree import Tree, init_tree, open_tree
from quantd.worker import Worker

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CLAIM_LOST = 4
EXIT_NOTHING_TO_CLAIM = 75

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        # The top-level parser would print its own usage; the command's
        # usage is the one that shows what the command accepts.
        command_parser = _command_parser(parser, args.command)
        command_parser.error(f"unrecognized arguments: {' '.join(extras)}")
    handler: Handler = args.handler
    warnings.simplefilter("default")
    try:
        return handler(args)
    except ClaimLost as error:
        print(f"quantd: {error}", file=sys.stderr)
        return EXIT_CLAIM_LOST
    except QuantdError as error:
        print(f"quantd: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:
        # A full disk or a permission problem in the tree: the message
        # names the file, and a traceback would add nothing.
        print(f"quantd: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantd",
        description="File queue and supervisor for research pipelines.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(
        required=True, metavar="COMMAND", dest="command", parser_class=CommandParser
    )
    _add_init(commands)
    _add_push(commands)
    _add_claim(commands)
    _add_finish_commands(commands)
    _add_heartbeat(commands)
    _add_extensions(commands)
    return parser


class CommandParser(argparse.ArgumentParser):
    """The parser of one command.

    With ``intermixed=True``, positionals may follow options, as in
    ``quantd push to-convert --worker researcher-0 idea.json``. Plain
    argparse matches all positionals at their first run, so it rejects a
    file after an option as an unrecognized argument when an earlier
    positional is optional or variable-length.
    """

    def __init__(self, *args: Any, intermixed: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.intermixed = intermixed
        self._parsing_intermixed = False

    def parse_known_args(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        if not self.intermixed or self._parsing_intermixed:
            return super().parse_known_args(args, namespace)
        # parse_known_intermixed_args calls parse_known_args for each of
        # its two passes, and those calls take the plain path above.
        self._parsing_intermixed = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing_intermixed = False


def _command_parser(
    parser: argparse.ArgumentParser, command: str
) -> argparse.ArgumentParser:
    # argparse has no public accessor for its subcommand parsers.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[command]
            return found
    return parser


def tree_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--root`` and ``--config`` to a command."""
    parser.add_argument(
        "--root",
        help="tree root directory (default: $QUANTD_ROOT, the config's "
        "tree.root, or the current directory)",
    )
    parser.add_argument(
        "--config",
        help="config file (default: $QUANTD_CONFIG, or quantd.toml in the "
        "tree root, or the built-in reference pipeline)",
    )


def _worker_options(parser: argparse.ArgumentParser) -> None:
    tree_options(parser)
    parser.add_argument("--worker", help="worker id (default: $QUANTD_WORKER)")
    parser.add_argument(
        "--stage",
        help="stage of the worker (default: $QUANTD_STAGE, or the stage "
        "whose worker patterns match the worker id)",
    )
    parser.add_argument(
        "--pid",
        type=int,
        help="process that holds the claims (default: the calling process: "
        "this command's parent, or the shell whose subshell ran it)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print results as JSON documents"
    )


def _add_extensions(commands: Any) -> None:
    from quantd.daemon.commands import add_run, add_status

    add_run(commands)
    add_status(commands)
    from quantd.demo.commands import add_demo

    add_demo(commands)


def _add_init(commands: Any) -> None:
    parser = commands.add_parser(
        "init", help="create a tree and, if none exists, its config file"
    )
    tree_options(parser)
    parser.set_defaults(handler=_run_init)


def _run_init(args: argparse.Namespace) -> int:
    tree, written = init_tree(args.root, args.config)
    config = tree.config.source or "built-in reference pipeline"
    state = "written" if written else "kept"
    print(f"tree ready at {tree.root} (config {config}, {state})")
    return 0


def _add_push(commands: Any) -> None:
    parser = commands.add_parser(
        "push", help="push a new item; prints its id", intermixed=True
    )
    parser.add_argument("queue", help="queue or output to push into")
    parser.add_argument(
        "file",
        nargs="?",
        default="-",
        help="JSON object to use as the payload; '-' reads stdin (default)",
    )
    parser.add_argument(
        "--priority",
        choices=[p.value for p in Priority],
        default=Priority.MEDIUM.value,
        help="claim priority (default: medium)",
    )
    _worker_options(parser)
    parser.set_defaults(handler=_run_push)


def _run_push(args: argparse.Namespace) -> int:
    with _worker(args) as worker:
        # The edge is checked before reading, so a wrong queue or stage is
        # reported before anyone types a payload on stdin.
        check_edge(worker.tree, worker.stage, args.queue, worker.worker)
        payload = read_payload(args.file, worker.tree.config.daemon.max_item_bytes)
        item_id = worker.push(args.queue, payload, priority=args.priority)
    _print(args, item_id, {"id": item_id, "queue": args.queue})
    return 0


def _add_claim(commands: Any) -> None:
    parser = commands.add_parser(
        "claim",
        intermixed=True,
        help="claim the next item; prints its id, or the item with --json",
        description="Claim the next item from the given queues: highest "
        "priority first, then oldest. The claim is held for the calling "
        "process (or --pid), so it outlives this command. Exits 75 when "
        "there is nothing to claim.",
    )
    parser.add_argument(
        "queues",
        nargs="*",
        help="queues to claim from (default: those the stage consumes)",
    )
    parser.add_argument(
        "--wait",
        type=wait_seconds,
        metavar="SECONDS",
        help="wait up to this many seconds for an item",
    )
    _worker_options(parser)
    parser.set_defaults(handler=_run_claim)


def wait_seconds(text: str) -> float:
    """Parse ``--wait``: a number of seconds, zero or more."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid number of seconds: {text!r}"
        ) from None
    # NaN fails every comparison, so it is rejected here too.
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(
            f"invalid number of seconds: {text!r}; must be 0 or more"
        )
    return seconds


def _run_claim(args: argparse.Namespace) -> int:
    with _worker(args) as worker:
        queues = worker.queues_to_claim(args.queues or None)
        item = worker.claim(queues, wait_s=args.wait)
    if item is None:
        names = ", ".join(queues)
        print(f"quantd: nothing to claim in {names}", file=sys.stderr)
        return EXIT_NOTHING_TO_CLAIM
    _print(args, item.id, item_json(item))
    return 0


def _add_finish_commands(commands: Any) -> None:
    complete = commands.add_parser("complete", help="archive a claimed item as done")
    complete.add_argument("id", help="exact id of the claimed item")
    _worker_options(complete)
    complete.set_defaults(handler=_run_complete)

    fail = commands.add_parser("fail", help="archive a claimed item as failed")
    fail.add_argument("id", help="exact id of the claimed item")
    fail.add_argument("--reason", required=True, help="why the item failed")
    _worker_options(fail)
    fail.set_defaults(handler=_run_fail)

    route = commands.add_parser(
        "route",
        intermixed=True,
        help="finish a claimed item by pushing its successor; prints the "
        "successor's id",
    )
    route.add_argument("id", help="exact id of the claimed item")
    route.add_argument("target", help="queue or output for the successor")
    route.add_argument(
        "file",
        nargs="?",
        default="-",
        help="JSON object for the successor's payload; '-' reads stdin (default)",
    )
    route.add_argument(
        "--priority",
        choices=[p.value for p in Priority],
        help="successor's priority (default: the claimed item's)",
    )
    _worker_options(route)
    route.set_defaults(handler=_run_route)


def _run_complete(args: argparse.Namespace) -> int:
    with _worker(args) as worker:
        worker.complete(worker.find_claim(args.id))
    _print(args, args.id, {"id": args.id, "status": "completed"})
    return 0


def _run_fail(args: argparse.Namespace) -> int:
    with _worker(args) as worker:
        worker.fail(worker.find_claim(args.id), args.reason)
    _print(args, args.id, {"id": args.id, "status": "failed"})
    return 0


def _run_route(args: argparse.Namespace) -> int:
    with _worker(args) as worker:
        check_edge(worker.tree, worker.stage, args.target, worker.worker)
        payload = read_payload(args.file, worker.tree.config.daemon.max_item_bytes)
        item = worker.find_claim(args.id)
        successor = worker.route(item, args.target, payload, priority=args.priority)
    _print(
        args, successor, {"id": successor, "parent_id": args.id, "queue": args.target}
    )
    return 0


def _add_heartbeat(commands: Any) -> None:
    parser = commands.add_parser(
        "heartbeat",
        intermixed=True,
        help="renew the lease of claimed items (needed only for claims whose "
        "holder the daemon cannot watch)",
    )
    parser.add_argument("ids", nargs="+", help="exact ids of claimed items")
    _worker_options(parser)
    parser.set_defaults(handler=_run_heartbeat)


def _run_heartbeat(args: argparse.Namespace) -> int:
    with _worker(args) as worker:
        items = [worker.find_claim(item_id) for item_id in args.ids]
        lost = worker.store.heartbeat(items)
    if lost:
        ids = ", ".join(item.id for item in lost)
        raise ClaimLost(f"claims lost while renewing: {ids}")
    return 0


def open_tree_from(args: argparse.Namespace) -> Tree:
    """Open the tree that ``--root`` and ``--config`` name."""
    return open_tree(args.root, args.config)


def _worker(args: argparse.Namespace) -> Worker:
    pid = calling_process() if args.pid is None else args.pid
    return Worker(open_tree_from(args), args.worker, stage=args.stage, pid=pid)


def calling_process() -> int:
    """Return the process that this command's claims are held for.

    That is the parent process, unless the parent is a copy of its own
    parent that never called exec. A shell's subshell, as in
    ``id=$(quantd claim | jq -r .item.id)``, is such a copy. It exits as
    soon as the command returns, so a claim held for it would have a dead
    holder at once. Such copies are skipped up to the shell that made them.
    A copy has the same executable, arguments and initial environment as
    its parent, while a shell started by a shell differs at least in
    ``SHLVL``.
    """
    pid = os.getppid()
    while pid > 1:
        try:
            process = psutil.Process(pid)
            parent = process.parent()
            if parent is None or parent.pid <= 1 or not _same_image(process, parent):
                return pid
        except psutil.Error:
            return pid
        pid = parent.pid
    return pid


def _same_image(process: psutil.Process, parent: psutil.Process) -> bool:
    return (
        process.exe() == parent.exe()
        and process.cmdline() == parent.cmdline()
        and process.environ() == parent.environ()
    )


def read_payload(source: str, max_bytes: int) -> dict[str, Any]:
    """Read a JSON object from a file, or from stdin for ``-``.

    At most ``max_bytes + 1`` bytes are read, so an endless source such as
    ``/dev/zero`` or ``yes |`` is rejected instead of filling memory.
    """
    where = "stdin" if source == "-" else source
    data = _read_limited(source, where, max_bytes)
    if not data.strip():
        place = "on stdin" if source == "-" else f"in {source}"
        raise QuantdError(f"the payload {place} is empty; pass a JSON object")
    if len(data) > max_bytes:
        raise QuantdError(
            f"payload in {where} is larger than the limit "
            f"daemon.max_item_bytes ({max_bytes} bytes); pass a smaller "
            "payload, or store large data in a file and pass its path"
        )
    try:
        payload = json.loads(data, parse_constant=_reject_constant(where))
    except RecursionError:
        raise QuantdError(
            f"invalid JSON payload in {where}: nested too deeply to parse; "
            "the limit daemon.max_json_depth allows far less, so flatten it"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise QuantdError(
            f"invalid JSON payload in {where}: {error}; pass a JSON object "
            'such as \'{"title": "RSI divergence"}\''
        ) from None
    if not isinstance(payload, dict):
        raise QuantdError(
            f"invalid payload in {where}: must be a JSON object, "
            f"got {type(payload).__name__}"
        )
    return payload


def _reject_constant(where: str) -> Callable[[str], Any]:
    def reject(name: str) -> Any:
        raise QuantdError(
            f"invalid JSON payload in {where}: {name}: NaN and Infinity are "
            "not JSON; use null or a string"
        )

    return reject


def _read_limited(source: str, where: str, max_bytes: int) -> bytes:
    try:
        if source == "-":
            return sys.stdin.buffer.read(max_bytes + 1)
        with open(source, "rb") as file:
            return file.read(max_bytes + 1)
    except OSError as error:
        raise QuantdError(
            f"cannot read payload from {where}: {error.strerror}"
        ) from None


def item_json(item: Item) -> dict[str, Any]:
    return {"queue": item.queue, "path": str(item.path), "item": item.doc}


def _print(args: argparse.Namespace, text: str, document: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(text)


if __name__ == "__main__":
    sys.exit(main())
