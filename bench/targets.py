"""quantd's performance targets, each a ratio or bound checked against
figures from the same run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.contenders import CONTENDERS
from bench.results import Results


@dataclass(frozen=True)
class Verdict:
    """One target: what was measured against what is required."""

    target: str
    measured: str
    required: str
    # None when a figure it needs was not measured.
    met: bool | None
    shortfall: str


def _at_least(
    target: str, value: float | None, bound: float, fmt: Callable[[float], str]
) -> Verdict:
    if value is None:
        return Verdict(target, "not measured", f">= {fmt(bound)}", None, "")
    met = value >= bound
    shortfall = "" if met else f"missed by {100 * (1 - value / bound):.0f} %"
    return Verdict(target, fmt(value), f">= {fmt(bound)}", met, shortfall)


def _at_most(
    target: str, value: float | None, bound: float, fmt: Callable[[float], str]
) -> Verdict:
    if value is None:
        return Verdict(target, "not measured", f"<= {fmt(bound)}", None, "")
    met = value <= bound
    shortfall = "" if met else f"missed: {value / bound:.1f}x the bound"
    return Verdict(target, fmt(value), f"<= {fmt(bound)}", met, shortfall)


def _ratio(results: Results, numerator: str, denominator: str) -> float | None:
    top = results.median(numerator)
    bottom = results.median(denominator)
    if top is None or not bottom:
        return None
    return top / bottom


def _times(value: float) -> str:
    return f"{value:.2f}x"


def _pct(value: float) -> str:
    return f"{100 * value:.0f} %"


def _ms(value: float) -> str:
    return f"{value:.1f} ms"


def _core_pct(value: float) -> str:
    return f"{value:.2f} % of a core"


def evaluate(results: Results) -> list[Verdict]:
    """Return the verdict on every target, in the order of the report."""
    median = results.median
    verdicts = [
        _at_least(
            "durable push vs write+fsync+rename+fsync(dir)",
            median("push_durable_vs_limit"),
            0.8,
            _pct,
        ),
        _at_least("push vs write+rename", median("push_vs_limit"), 0.8, _pct),
        _at_least(
            "claim+complete, 4 workers, vs baseline",
            _ratio(
                results, "claim_complete_per_s_4w", "baseline_claim_complete_per_s_4w"
            ),
            3.0,
            _times,
        ),
    ]
    for contender in CONTENDERS.values():
        if contender.name in ("quantd", "baseline"):
            continue
        name = f"peer_{contender.name}_claim_complete_per_s_4w"
        if contender.multi_process_unsupported is not None:
            continue
        verdicts.append(
            _at_least(
                f"claim+complete, 4 workers, vs {contender.label}",
                _ratio(results, "claim_complete_per_s_4w", name),
                1.0,
                _times,
            )
        )
    verdicts += [
        _at_least(
            "claims/s at 100k pending vs at 1k",
            _ratio(results, "claim_per_s_depth_100k", "claim_per_s_depth_1k"),
            0.5,
            _pct,
        ),
        _at_most("hand-off median", median("handoff_ms_p50"), 5.0, _ms),
        _at_most(
            "waiting claimer CPU", median("waiting_claimer_cpu_pct"), 1.0, _core_pct
        ),
        _at_most("recovery median, 1 claim", median("recovery_ms_p50"), 20.0, _ms),
        _at_most("recovery p99, 1 claim", median("recovery_ms_p99"), 100.0, _ms),
        _at_most(
            "recovery median, 1,000 live claims",
            median("recovery_ms_p50_1000_claims"),
            20.0,
            _ms,
        ),
        _at_most(
            "recovery p99, 1,000 live claims",
            median("recovery_ms_p99_1000_claims"),
            100.0,
            _ms,
        ),
        _at_most("daemon idle CPU", median("daemon_idle_cpu_pct"), 1.0, _core_pct),
        _at_most("daemon RSS", median("daemon_rss_mb"), 100.0, lambda v: f"{v:.0f} MB"),
        _at_most(
            "start-up reconcile of 100k items",
            median("reconcile_100k_s"),
            3.0,
            lambda v: f"{v:.2f} s",
        ),
        _at_most("status.json lag, median", median("status_lag_ms_p50"), 250.0, _ms),
    ]
    return verdicts
