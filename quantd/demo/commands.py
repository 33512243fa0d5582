"""Command-line entry point of ``quantd demo``.

Only argparse is imported here, because the ``quantd`` command builds this
parser on every call. The runner, rich and the research code are imported
when the demo runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_HYPOTHESES = 12
DEFAULT_WORKERS = 2
DEFAULT_CHAOS_INTERVAL_S = 2.0
DEFAULT_SEED = 7
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_WORK_S = 1.5


def add_demo(commands: Any) -> None:
    """Add the ``demo`` command to the ``quantd`` parser."""
    parser = commands.add_parser(
        "demo",
        help="run the reference research pipeline on real market data",
        description="Create a tree, start 'quantd run' and several workers per "
        "stage, push research hypotheses, and follow them through converter, "
        "backtester and optimizer to the good, prop_firm_ready or rejected "
        "output, using GOOG, EURUSD and BTCUSD prices bundled with the "
        "backtesting package. The summary accounts for every hypothesis; the "
        "exit status is 1 if one was lost or duplicated, 130 on Ctrl-C. The "
        "first converter, converter-0, is a shell script that uses only the "
        "quantd command, and so is a converter started in its place after a "
        "kill; every other worker is a Python process.",
    )
    parser.add_argument(
        "--root",
        type=Path,
        help="tree root: a new or empty directory, never removed (default: a "
        "new temporary directory, removed at the end unless --keep or the "
        "run failed)",
    )
    parser.add_argument(
        "--hypotheses",
        type=_positive_int,
        default=DEFAULT_HYPOTHESES,
        metavar="N",
        help=f"hypotheses the researcher proposes (default: {DEFAULT_HYPOTHESES})",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"worker processes per stage (default: {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--chaos",
        action="store_true",
        help="SIGKILL a random worker that holds a claim every --chaos-interval-s "
        "seconds and start a replacement; a claim that one more loss would "
        "dead-letter is spared",
    )
    parser.add_argument(
        "--chaos-interval-s",
        type=_positive_float,
        default=DEFAULT_CHAOS_INTERVAL_S,
        metavar="SECONDS",
        help=f"seconds between kills with --chaos "
        f"(default: {DEFAULT_CHAOS_INTERVAL_S:g})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed of the hypotheses, work times and chaos (default: {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--work-s",
        type=_non_negative_float,
        default=DEFAULT_WORK_S,
        metavar="SECONDS",
        help="average minimum seconds a worker holds each item, so the flow "
        "can be watched; each item takes 0.5 to 1.5 times this (default: "
        f"{DEFAULT_WORK_S:g}; 0 runs at full speed)",
    )
    parser.add_argument(
        "--timeout-s",
        type=_positive_float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="give up after this many seconds and report the hypotheses not "
        f"accounted for as lost (default: {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary tree for inspection",
    )
    parser.add_argument(
        "--summary-json",
        type=Path,
        metavar="PATH",
        help="also write the summary as a JSON document to PATH",
    )
    parser.add_argument(
        "--no-bad-input",
        dest="bad_input",
        action="store_false",
        help="skip the two invalid hypotheses and the file that is not an item",
    )
    parser.add_argument(
        "--no-daemon",
        dest="daemon",
        action="store_false",
        help="run without 'quantd run': workers still make progress, but "
        "claims of killed workers are never recovered",
    )
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from quantd.demo.runner import Demo, DemoOptions
    from quantd.demo.view import make_view

    options = DemoOptions(
        root=args.root,
        hypotheses=args.hypotheses,
        workers=args.workers,
        chaos=args.chaos,
        chaos_interval_s=args.chaos_interval_s,
        seed=args.seed,
        keep=args.keep,
        summary_json=args.summary_json,
        timeout_s=args.timeout_s,
        work_s=args.work_s,
        bad_input=args.bad_input,
        daemon=args.daemon,
    )
    return Demo(options, make_view()).run()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value
