"""A worker process that claims items and holds them until it is killed.

Usage: ``python -m bench.holder ROOT WORKER COUNT``. It claims ``COUNT``
items from the benchmark queue, prints each claim's path, then ``ready``,
and blocks reading standard input. The daemon benchmarks SIGKILL it.
"""

from __future__ import annotations

import sys

import quantd
from bench.workload import QUEUE


def main(argv: list[str]) -> int:
    root, worker, count = argv[0], argv[1], int(argv[2])
    tree = quantd.open_tree(root, durable=False)
    claimer = quantd.Worker(tree, worker)
    for _ in range(count):
        item = claimer.claim(QUEUE)
        if item is None:
            print(f"error: queue {QUEUE!r} of {root} is empty", flush=True)
            return 1
        print(item.path, flush=True)
    print("ready", flush=True)
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
