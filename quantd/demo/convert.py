"""The work filter of the shell converter (converter.sh).

Reads the document that ``quantd claim --json`` prints from stdin::

    python -m quantd.demo.convert id       # prints the item id
    python -m quantd.demo.convert title    # prints the payload's title
    python -m quantd.demo.convert spec     # prints the strategy spec

``spec`` exits 3 with the reason on stderr when the hypothesis is invalid,
so that the script can fail the item with that reason.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

EXIT_INVALID_INPUT = 3


def read_claim(text: str) -> dict[str, Any]:
    """Return the item document from ``quantd claim --json`` output."""
    document = json.loads(text)
    item = document.get("item") if isinstance(document, dict) else None
    if not isinstance(item, dict):
        raise ValueError("expected the output of 'quantd claim --json'")
    return item


def main(argv: Sequence[str] | None = None) -> int:
    """Print the requested part of a claimed item; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m quantd.demo.convert")
    parser.add_argument("field", choices=("id", "title", "spec"))
    parser.add_argument(
        "--work-s",
        type=float,
        default=0.0,
        help="average minimum seconds that 'spec' takes; each run takes "
        "between half and one and a half times this (default: 0)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        item = read_claim(sys.stdin.read())
    except ValueError as error:
        print(f"invalid claim document on stdin: {error}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    payload = item.get("payload") or {}
    if args.field == "id":
        print(item.get("id", ""))
        return 0
    if args.field == "title":
        print(payload.get("title") or item.get("id", ""))
        return 0
    return _print_spec(payload, started, args.work_s)


def _print_spec(payload: dict[str, Any], started: float, work_s: float) -> int:
    from quantd.demo.research import convert_hypothesis

    try:
        spec = convert_hypothesis(payload)
    except (ValueError, KeyError, TypeError) as error:
        reason = f"invalid payload: {type(error).__name__}: {error}"
        print(reason.replace("\n", " "), file=sys.stderr)
        return EXIT_INVALID_INPUT
    remaining_s = work_s * random.uniform(0.5, 1.5) - (time.monotonic() - started)
    if remaining_s > 0:
        time.sleep(remaining_s)
    json.dump(spec, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
