"""Recovery latency and the daemon's footprint, with ``quantd run``.

* Recovery: a worker process (``bench.holder``) claims an item and holds
  it. Once status.json counts the claim and lists the worker as a live
  holder, the worker is SIGKILLed and the clock runs until the item's file
  is pending again in its queue. Measured with only that claim live, and
  with 1,000 more claims held by 4 other live workers. The run then
  claims the recovered item itself and checks that it is the killed
  worker's item with one attempt counted.
* status.json lag: from a push until status.json counts the new item.
* Footprint (full mode only): the daemon on a tree of 100,000 pending items
  and 1,000 live claims. Start-up reconcile is the time between its
  ``daemon_started`` and ``daemon_ready`` log events, on its first start
  (no cache of checked files) and on a restart; idle CPU is read with
  psutil over a window longer than one periodic reconcile; RSS at its end.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import psutil

import quantd
from bench.results import Results, percentile
from bench.workload import QUEUE, Sizes, fill_quantd_queue, new_tree

GROUP = "daemon"
REPOSITORY = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 600.0
RECOVERY_TIMEOUT_S = 30.0
STATUS_TIMEOUT_S = 30.0
POLL_S = 0.0005
STATUS_POLL_S = 0.005
LIVE_CLAIMS = 1000
LIVE_HOLDERS = 4
QUICK_ONLY_MISSING = (
    "daemon_idle_cpu_pct",
    "daemon_rss_mb",
    "reconcile_100k_s",
    "reconcile_100k_restart_s",
)
METRICS = (
    "recovery_ms_p50",
    "recovery_ms_p99",
    "recovery_ms_p50_1000_claims",
    "recovery_ms_p99_1000_claims",
    "status_lag_ms_p50",
    *QUICK_ONLY_MISSING,
)


class DaemonUnavailable(Exception):
    """``quantd run`` did not start or did not report ready."""


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTD_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPOSITORY), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


class DaemonProcess:
    """``python -m quantd run --root ROOT``, logging JSON lines to a file."""

    def __init__(self, root: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115
        self._offset = log_path.stat().st_size
        self.process = subprocess.Popen(
            [sys.executable, "-m", "quantd", "run", "--root", str(root)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=_environment(),
        )

    def wait_for(self, event: str, timeout_s: float) -> dict[str, Any]:
        """Return the first log record of ``event`` written since start."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for record in self.records():
                if record.get("event") == event:
                    return record
            if self.process.poll() is not None:
                raise DaemonUnavailable(
                    f"quantd run exited with code {self.process.returncode} "
                    f"before logging {event!r}; see {self.log_path}"
                )
            time.sleep(0.05)
        raise DaemonUnavailable(f"quantd run logged no {event!r} in {timeout_s} s")

    def records(self) -> list[dict[str, Any]]:
        with open(self.log_path, "rb") as file:
            file.seek(self._offset)
            lines = file.read().splitlines()
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def stop(self) -> None:
        """SIGTERM the daemon, then SIGKILL it if it has not exited in 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._log.close()


class HolderProcess:
    """A ``bench.holder`` process holding ``count`` claims."""

    def __init__(self, root: Path, worker: str, count: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.holder", str(root), worker, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_environment(),
        )
        self.claims: list[Path] = []

    def wait_ready(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            text = line.strip()
            if text == "ready":
                return
            if text.startswith("error"):
                raise RuntimeError(f"holder process failed: {text}")
            self.claims.append(Path(text))
        raise RuntimeError(f"holder process exited with code {self.process.wait()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def measure(results: Results, sizes: Sizes, scratch: Path) -> None:
    """Record recovery latency, status lag and, in full mode, the daemon's
    footprint on a large tree; mark them not measured if the daemon does
    not start."""
    try:
        _measure_small_tree(results, sizes, scratch)
    except DaemonUnavailable as error:
        for name in METRICS:
            results.mark_missing(name, f"not measured: daemon not available ({error})")
        return
    if sizes.daemon_tree_items:
        _measure_footprint(results, sizes, scratch / "daemon-large")
    else:
        for name in QUICK_ONLY_MISSING:
            results.mark_missing(
                name, "not measured in quick mode: the 100,000-item tree takes too long"
            )


def _measure_small_tree(results: Results, sizes: Sizes, scratch: Path) -> None:
    for repeat in range(sizes.repeats):
        root = scratch / f"daemon-{repeat}"
        tree = new_tree(root, durable=False)
        fill_quantd_queue(tree, 0, LIVE_CLAIMS + 2 * sizes.recovery_victims)
        daemon = DaemonProcess(root, scratch / f"daemon-{repeat}.log")
        holders: list[HolderProcess] = []
        try:
            daemon.wait_for("daemon_ready", START_TIMEOUT_S)
            _recoveries(results, tree, sizes, "", 0)
            holders = _hold_claims(root, LIVE_CLAIMS)
            _recoveries(results, tree, sizes, "_1000_claims", LIVE_CLAIMS)
            _status_lags(results, tree, sizes)
        finally:
            for holder in holders:
                holder.kill()
            daemon.stop()


def _hold_claims(root: Path, count: int) -> list[HolderProcess]:
    holders = [
        HolderProcess(root, f"converter-live-{index}", count // LIVE_HOLDERS)
        for index in range(LIVE_HOLDERS)
    ]
    for holder in holders:
        holder.wait_ready()
    return holders


def _recoveries(
    results: Results, tree: quantd.Tree, sizes: Sizes, suffix: str, live: int
) -> None:
    latencies_ms = []
    for index in range(sizes.recovery_victims):
        latency_ms = _recover_one(
            results, tree, f"converter-victim{suffix}-{index}", live
        )
        if latency_ms is not None:
            latencies_ms.append(latency_ms)
    if not latencies_ms:
        return
    what = f"{live:,} other live claims" if live else "no other live claim"
    for name, fraction in (("p50", 0.5), ("p99", 0.99)):
        results.add(
            f"recovery_ms_{name}{suffix}",
            percentile(latencies_ms, fraction),
            unit="ms",
            group=GROUP,
            label=f"SIGKILL of a claim holder -> item pending, {name} of "
            f"{len(latencies_ms)}, {what}",
        )


def _recover_one(
    results: Results, tree: quantd.Tree, worker: str, live: int
) -> float | None:
    """Kill a worker that holds one claim; return the ms until its item is
    pending again, or None after recording a failure."""
    victim = HolderProcess(tree.root, worker, 1)
    try:
        victim.wait_ready()
        claim = victim.claims[0]
        pid = victim.process.pid
        _wait_status(tree, lambda status: _watches(status, pid, live + 1))
        pending = tree.queue_dir(QUEUE) / claim.name
        killed_at = time.monotonic()
        victim.process.send_signal(signal.SIGKILL)
        back = _poll(pending.exists, RECOVERY_TIMEOUT_S, POLL_S)
        latency_ms = (time.monotonic() - killed_at) * 1000
    finally:
        victim.kill()
    if not back:
        results.fail(
            f"recovery: {claim.name} not pending {RECOVERY_TIMEOUT_S} s after SIGKILL"
        )
        return None
    _take_back(results, tree, claim)
    return latency_ms


def _take_back(results: Results, tree: quantd.Tree, claim: Path) -> None:
    """Claim the recovered item and check that it is the killed worker's
    item with one attempt counted; complete it so it is not claimed again."""
    with quantd.Worker(tree, "converter-checker") as checker:
        item = checker.claim(QUEUE)
        expected_id = claim.name[: -len(".json")].rpartition("~")[2]
        if item is None or item.id != expected_id or item.attempts != 1:
            found = None if item is None else (item.id, item.attempts)
            results.fail(
                f"recovery: expected item {expected_id} with 1 attempt, claimed {found}"
            )
        if item is not None:
            checker.complete(item)


def _status_lags(results: Results, tree: quantd.Tree, sizes: Sizes) -> None:
    lags_ms = []
    with quantd.Worker(tree, "researcher-0") as producer:
        for _ in range(sizes.status_samples):
            before = _pending(_read_status(tree))
            pushed_at = time.monotonic()
            producer.push(QUEUE, {"n": -1})
            seen = _wait_status(tree, functools.partial(_counts_more, before))
            if seen is None:
                results.fail("status.json did not count a pushed item within 30 s")
                continue
            lags_ms.append((time.monotonic() - pushed_at) * 1000)
    if lags_ms:
        results.add(
            "status_lag_ms_p50",
            percentile(lags_ms, 0.5),
            unit="ms",
            group=GROUP,
            label=f"push -> status.json counts it, median of {len(lags_ms)}",
        )


def _measure_footprint(results: Results, sizes: Sizes, root: Path) -> None:
    tree = new_tree(root, durable=False)
    fill_quantd_queue(tree, 0, sizes.daemon_tree_items)
    holders = _hold_claims(root, LIVE_CLAIMS)
    try:
        for start, name in ((0, "reconcile_100k_s"), (1, "reconcile_100k_restart_s")):
            daemon = DaemonProcess(root, root.parent / f"daemon-large-{start}.log")
            try:
                took = _startup_seconds(daemon)
                first = (
                    "first start, no cache of checked files"
                    if start == 0
                    else "restart"
                )
                results.add(
                    name,
                    took,
                    unit="s",
                    group=GROUP,
                    label=f"daemon_started -> daemon_ready, 100k pending + "
                    f"1,000 claims, {first}",
                )
                if start == 0:
                    _idle(results, daemon, sizes.daemon_idle_s)
            finally:
                daemon.stop()
    finally:
        for holder in holders:
            holder.kill()


def _startup_seconds(daemon: DaemonProcess) -> float:
    started = daemon.wait_for("daemon_started", START_TIMEOUT_S)
    ready = daemon.wait_for("daemon_ready", START_TIMEOUT_S)
    return _timestamp(ready) - _timestamp(started)


def _idle(results: Results, daemon: DaemonProcess, seconds: float) -> None:
    process = psutil.Process(daemon.process.pid)
    time.sleep(1.0)
    before = process.cpu_times()
    started = time.monotonic()
    time.sleep(seconds)
    after = process.cpu_times()
    elapsed = time.monotonic() - started
    used = (after.user - before.user) + (after.system - before.system)
    results.add(
        "daemon_idle_cpu_pct",
        100.0 * used / elapsed,
        unit="% of a core",
        group=GROUP,
        label=f"idle daemon, 100k pending + 1,000 claims, over {seconds:g} s",
    )
    results.add(
        "daemon_rss_mb",
        process.memory_info().rss / 2**20,
        unit="MB",
        group=GROUP,
        label="resident memory of that daemon",
    )


def _timestamp(record: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(
        str(record["timestamp"]).replace("Z", "+00:00")
    ).timestamp()


def _read_status(tree: quantd.Tree) -> dict[str, Any]:
    try:
        document: dict[str, Any] = json.loads(tree.status_path.read_bytes())
    except (OSError, ValueError):
        return {}
    return document


def _watches(status: dict[str, Any], pid: int, claims: int) -> bool:
    """Return whether status.json counts ``claims`` claims and lists the
    process ``pid`` as a live holder, which the daemon then watches."""
    claimed = int(status.get("queues", {}).get(QUEUE, {}).get("claimed", -1))
    holders = status.get("holders") or []
    alive = any(h.get("pid") == pid and h.get("verdict") == "alive" for h in holders)
    return claimed >= claims and alive


def _counts_more(before: int, status: dict[str, Any]) -> bool:
    return _pending(status) > before


def _pending(status: dict[str, Any]) -> int:
    counts = status.get("queues", {}).get(QUEUE, {}).get("pending", {})
    return int(sum(counts.values())) if counts else -1


def _wait_status(
    tree: quantd.Tree, condition: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    """Poll status.json until ``condition`` holds; None after the timeout."""
    deadline = time.monotonic() + STATUS_TIMEOUT_S
    while time.monotonic() < deadline:
        status = _read_status(tree)
        if status and condition(status):
            return status
        time.sleep(STATUS_POLL_S)
    return None


def _poll(condition: Callable[[], bool], timeout_s: float, interval_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()
