"""Command-line entry points of the daemon: ``quantd run`` and
``quantd status``."""

from __future__ import annotations

import argparse
from typing import Any


def add_run(commands: Any) -> None:
    from quantd.cli import tree_options

    parser = commands.add_parser("run", help="supervise a tree (foreground)")
    tree_options(parser)
    parser.set_defaults(handler=_run)


def add_status(commands: Any) -> None:
    from quantd.cli import tree_options

    parser = commands.add_parser(
        "status",
        help="show queues, claims and the daemon",
        description="Show pending and claimed items per queue, claim holders "
        "and the daemon's health. Never changes the tree. Exit codes follow "
        "the LSB: 0 the daemon runs and status.json is fresh, 3 the daemon "
        "is not running or status.json is stale, 4 unknown.",
    )
    tree_options(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the status document as JSON (built from a live scan, "
        'with "daemon": null, when no daemon runs)',
    )
    parser.set_defaults(handler=_status)


def _run(args: argparse.Namespace) -> int:
    from quantd import logs
    from quantd.daemon.service import run_daemon

    logs.configure()
    return run_daemon(args.root, args.config)


def _status(args: argparse.Namespace) -> int:
    from quantd.daemon.status import status_command

    return status_command(args.root, args.config, as_json=args.json)
