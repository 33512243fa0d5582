"""Command-line entry point of ``quantd demo``."""

from __future__ import annotations

import argparse
from typing import Any


def add_demo(commands: Any) -> None:
    from quantd.cli import tree_options

    parser = commands.add_parser("demo", help="run the reference pipeline")
    tree_options(parser)
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    raise NotImplementedError
