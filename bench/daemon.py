"""Recovery latency and the daemon's footprint (``quantd run``)."""

from __future__ import annotations

from pathlib import Path

from bench.results import Results
from bench.workload import Sizes

GROUP = "daemon"
METRICS = (
    "recovery_ms_p50",
    "recovery_ms_p99",
    "recovery_ms_p50_1000_claims",
    "recovery_ms_p99_1000_claims",
    "daemon_idle_cpu_pct",
    "daemon_rss_mb",
    "reconcile_100k_s",
    "status_lag_ms_p50",
)


def measure(results: Results, sizes: Sizes, scratch: Path) -> None:
    """Mark every daemon metric as not measured."""
    for name in METRICS:
        results.mark_missing(name, "not measured: daemon not available")
