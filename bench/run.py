"""Run the benchmark suite and print its tables.

Usage: ``python -m bench [--quick] [--json PATH] [--only GROUP ...]``
or ``python bench/run.py`` with the same options.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

if not __package__:
    # Run as a script: make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import daemon, depth, drain, handoff, push, report
from bench.results import Results
from bench.workload import FULL, QUICK, Sizes

Group = Callable[[Results, Sizes, Path], None]

GROUPS: dict[str, Group] = {
    "push": push.measure,
    "claim+complete": drain.measure,
    "depth": depth.measure,
    "handoff": handoff.measure,
    "daemon": daemon.measure,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure quantd against the reference protocol, peer "
        "queue libraries and the disk, in one run.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and one repeat: a smoke check in under a minute",
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="write every figure to PATH as JSON"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(GROUPS),
        metavar="GROUP",
        help=f"run only these groups ({', '.join(GROUPS)})",
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        metavar="DIR",
        help="parent directory of the queues under test, whose file system is "
        "the one measured (default: the system's temporary directory); the "
        "run's own subdirectory is removed afterwards",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the selected groups; return 1 if any correctness check failed."""
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that every worker process and daemon
    # started so far is killed and the scratch directory removed.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    sizes = QUICK if args.quick else FULL
    scratch = Path(tempfile.mkdtemp(prefix="quantd-bench-", dir=args.scratch))
    results = Results()
    started = time.monotonic()
    print(report.machine_summary(scratch, quick=args.quick), flush=True)
    try:
        for name in args.only or list(GROUPS):
            group_started = time.monotonic()
            print(f"running {name} ...", file=sys.stderr, flush=True)
            GROUPS[name](results, sizes, scratch)
            took = time.monotonic() - group_started
            print(f"  {name} took {took:.1f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(report.render(results, time.monotonic() - started))
    if args.json:
        args.json.write_text(
            json.dumps(results.to_json(), indent=2, sort_keys=True) + "\n"
        )
    return 1 if results.failures else 0


def _exit_on_signal(number: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + number)


if __name__ == "__main__":
    sys.exit(main())
