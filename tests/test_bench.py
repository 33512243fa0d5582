"""The benchmark suite runs in quick mode and reports every metric.

This checks that ``python -m bench --quick --json PATH`` works and finds no
lost or duplicated item; it never checks a speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
# Quick mode skips the 100,000-item depth and the daemon's footprint on a
# 100,000-item tree.
EXPECTED_METRICS = [
    "limit_push_per_s",
    "limit_push_durable_per_s",
    "push_per_s",
    "push_durable_per_s",
    "claim_complete_per_s_1w",
    "claim_complete_per_s_4w",
    "baseline_claim_complete_per_s_4w",
    "peer_persistqueue_claim_complete_per_s_1w",
    "peer_litequeue_claim_complete_per_s_4w",
    "peer_dirq_claim_complete_per_s_4w",
    "peer_diskcache_claim_complete_per_s_4w",
    "claim_per_s_depth_1k",
    "claim_per_s_depth_10k",
    "baseline_claim_per_s_depth_1k",
    "baseline_claim_per_s_depth_10k",
    "handoff_ms_p50",
    "handoff_ms_p99",
    "handoff_ms_p50_idle",
    "waiting_claimer_cpu_pct",
    "recovery_ms_p50",
    "recovery_ms_p99",
    "recovery_ms_p50_1000_claims",
    "recovery_ms_p99_1000_claims",
    "status_lag_ms_p50",
]


@pytest.mark.timeout(300)
def test_quick_run_writes_metrics(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(output)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(output.read_text())
    assert figures["correctness_failures"] == 0
    missing = [name for name in EXPECTED_METRICS if name not in figures]
    assert missing == []
    not_positive = [name for name in EXPECTED_METRICS if not figures[name] > 0]
    # CPU use of a waiting claimer may round to zero.
    assert not_positive in ([], ["waiting_claimer_cpu_pct"])
    for name in EXPECTED_METRICS:
        assert figures[f"{name}_min"] <= figures[name] <= figures[f"{name}_max"]
