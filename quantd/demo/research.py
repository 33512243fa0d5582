"""Market research functions behind the demo pipeline's four stages.

The researcher calls `propose_hypotheses`, the converter `convert_hypothesis`, the
backtester `backtest_spec` and the optimizer `optimize_strategy`. Each takes and
returns a JSON-ready dict (str, int, float, bool, list, dict or None, never NaN).
The field `kind` names the payload type: "hypothesis", "strategy_spec",
"backtest_result" or "optimization_result". Prices come from the history bundled with
the `backtesting` package, so nothing is downloaded.
"""

import random
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from quantd.demo.specs import (
    MARKETS,
    PRIORITIES,
    Payload,
    Ranges,
    convert_hypothesis,
    expand_grid,
    resolve_spec,
)
from quantd.demo.strategies import (
    backtest_positions,
    estimate_bars_per_year,
    positions_for,
)

__all__ = [
    "MARKETS",
    "backtest_spec",
    "convert_hypothesis",
    "judge_out_of_sample",
    "load_market",
    "optimize_strategy",
    "prop_firm_check",
    "propose_hypotheses",
    "size_for_prop_firm",
]

RESEARCH_FAMILIES: tuple[str, ...] = ("sma_crossover", "rsi_reversion", "breakout")
PRIORITY_WEIGHTS: tuple[int, ...] = (1, 2, 1)

# Share of proposed hypotheses flagged `direct`, which skip the converter.
DIRECT_FRACTION = 0.3

# Prop-firm style evaluation rules, applied to the whole out-of-sample period.
# Maximum fall of equity from its running peak.
PROP_MAX_DRAWDOWN_FRACTION = 0.10
# Maximum fall within a day from the previous day's closing equity.
PROP_DAILY_LOSS_LIMIT_FRACTION = 0.05
# Minimum total return over the period.
PROP_PROFIT_TARGET_FRACTION = 0.08
# Minimum number of days with at least one position change.
PROP_MIN_TRADING_DAYS = 10
# Position sizes the prop-firm check tries, as fractions of equity, largest first.
# The account trades at the largest one that keeps the max drawdown and the daily
# loss within their limits, as a prop-firm trader sizes positions to the limits.
PROP_POSITION_FRACTIONS: tuple[float, ...] = (1.0, 0.75, 0.5, 0.35, 0.25)
# Minimum annualised out-of-sample Sharpe ratio for the verdict "good".
GOOD_MIN_SHARPE_RATIO = 0.5
VERDICT_RANK: dict[str, int] = {"rejected": 0, "good": 1, "prop_firm_ready": 2}


def load_market(name: str) -> pd.DataFrame:
    """Return a copy of the bundled OHLCV history of market `name`."""
    if name not in MARKETS:
        known = ", ".join(MARKETS)
        raise ValueError(f"unknown market {name!r}. Known markets: {known}")
    # Imported here, not at the top, because importing it reads all three CSV files.
    import backtesting.test

    frame: pd.DataFrame = getattr(backtesting.test, name)
    return frame.copy()


def propose_hypotheses(count: int, seed: int) -> list[Payload]:
    """Propose `count` research hypotheses. The same seed gives the same list."""
    if count < 0:
        raise ValueError(f"count must be zero or more, got {count}")
    rng = random.Random(seed)
    return [_propose_hypothesis(rng, f"hyp-{seed}-{index}") for index in range(count)]


def backtest_spec(payload: Mapping[str, Any]) -> Payload:
    """Backtest a spec's default parameters on each of its markets.

    A hypothesis (kind "hypothesis", such as one flagged `direct`) is converted first.
    The result contains the spec, so the optimizer needs nothing else.
    """
    spec = resolve_spec(payload)
    return {
        "kind": "backtest_result",
        "hypothesis_id": spec["hypothesis_id"],
        "title": spec["title"],
        "family": spec["family"],
        "parameters": dict(spec["parameters"]),
        "markets": {
            market: _backtest_market(spec, market, spec["parameters"])
            for market in spec["markets"]
        },
        "spec": spec,
    }


def optimize_strategy(payload: Mapping[str, Any]) -> Payload:
    """Grid-search each market in-sample, then judge the best parameters out of sample.

    Accepts a backtest result, a strategy spec or a hypothesis. The first
    `train_fraction` of each market's bars is in-sample and the rest out of sample.
    Each market's `prop_firm` entry gives the position size at which its
    out-of-sample period meets the prop-firm risk limits (see `size_for_prop_firm`).
    The overall verdict and `best_params` come from the market with the best verdict,
    with ties broken by out-of-sample Sharpe ratio.
    """
    spec = resolve_spec(payload)
    combinations = expand_grid(spec["family"], spec["parameter_grid"])
    per_market = {
        market: _optimize_market(spec, market, combinations)
        for market in spec["markets"]
    }
    best_market = max(per_market, key=lambda market: _market_rank(per_market[market]))
    return {
        "kind": "optimization_result",
        "hypothesis_id": spec["hypothesis_id"],
        "title": spec["title"],
        "family": spec["family"],
        "verdict": per_market[best_market]["verdict"],
        "best_market": best_market,
        "best_params": dict(per_market[best_market]["best_params"]),
        "markets": per_market,
        "validation": dict(spec["validation"]),
        "combinations_tested": len(combinations),
        "spec": spec,
    }


def prop_firm_check(metrics: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """Check backtest metrics against the prop-firm rules.

    Returns whether every rule passes and one message per failed rule.
    """
    required = (
        "total_return",
        "max_drawdown",
        "worst_daily_loss",
        "trading_days",
        "daily_loss_observable",
    )
    missing = [name for name in required if name not in metrics]
    if missing:
        raise ValueError(f"missing metrics: {', '.join(missing)}")
    failures = _prop_firm_failures(metrics)
    return not failures, failures


def size_for_prop_firm(
    close: pd.Series,
    positions: pd.Series,
    cost_per_side: float,
    bars_per_year: float,
) -> Payload:
    """Size positions to the prop-firm risk limits, then check every rule at that size.

    Tries each fraction of PROP_POSITION_FRACTIONS, largest first, by backtesting
    `positions` times the fraction, which recomputes equity, drawdown and daily loss
    from the scaled returns and costs. The first fraction whose max drawdown and
    worst daily loss are within the limits is `position_fraction`, and the profit
    target and trading days are checked there. When no fraction is within the
    limits, `position_fraction` is None and `metrics` are those at the smallest.
    Returns `passed`, `position_fraction`, `reasons` (one per failed rule) and
    `metrics`.
    """
    # NOTE: the largest size within the limits usually earns the most, but a
    # volatile curve can earn more at a smaller size, which is not tried.
    metrics: Payload = {}
    for fraction in PROP_POSITION_FRACTIONS:
        metrics = backtest_positions(
            close, positions * fraction, cost_per_side, bars_per_year
        )
        if _within_risk_limits(metrics):
            _, failures = prop_firm_check(metrics)
            at_size = f"at {fraction:.0%} position size, the largest within the limits"
            return {
                "passed": not failures,
                "position_fraction": fraction,
                "reasons": [f"{at_size}: {failure}" for failure in failures],
                "metrics": metrics,
            }

    smallest = PROP_POSITION_FRACTIONS[-1]
    _, failures = prop_firm_check(metrics)
    sizes = ", ".join(f"{fraction:.0%}" for fraction in PROP_POSITION_FRACTIONS)
    no_size = (
        f"no position size of {sizes} keeps the max drawdown within "
        f"{PROP_MAX_DRAWDOWN_FRACTION:.0%} and the daily loss within "
        f"{PROP_DAILY_LOSS_LIMIT_FRACTION:.0%}"
    )
    return {
        "passed": False,
        "position_fraction": None,
        "reasons": [no_size]
        + [f"at {smallest:.0%} position size: {failure}" for failure in failures],
        "metrics": metrics,
    }


def judge_out_of_sample(
    metrics: Mapping[str, Any], prop_firm: Mapping[str, Any]
) -> tuple[str, list[str]]:
    """Return the verdict and its reasons for full-size out-of-sample metrics.

    `prop_firm` is the result of `size_for_prop_firm` on the same period.
    """
    if prop_firm["passed"]:
        fraction = prop_firm["position_fraction"]
        return "prop_firm_ready", [
            f"passes every prop-firm rule out of sample at {fraction:.0%} position size"
        ]
    reasons = [f"prop-firm rule failed: {reason}" for reason in prop_firm["reasons"]]
    shortfalls = []
    if metrics["sharpe_ratio"] <= GOOD_MIN_SHARPE_RATIO:
        shortfalls.append(
            f"out-of-sample Sharpe ratio {metrics['sharpe_ratio']:.2f} is not above "
            f"{GOOD_MIN_SHARPE_RATIO:.2f}"
        )
    if metrics["total_return"] <= 0.0:
        shortfalls.append(
            f"out-of-sample return {metrics['total_return']:.2%} is not positive"
        )
    if shortfalls:
        return "rejected", shortfalls + reasons
    return "good", reasons


# Hypothesis proposals


def _propose_hypothesis(rng: random.Random, hypothesis_id: str) -> Payload:
    # NOTE: ranges count bars and apply to every chosen market, so a 20-bar window
    # means 20 days on GOOG, 20 hours on EURUSD and 20 months on BTCUSD.
    family = rng.choice(RESEARCH_FAMILIES)
    ranges = _RANGE_SAMPLERS[family](rng)
    market_count = rng.randint(1, len(MARKETS))
    markets = sorted(rng.sample(MARKETS, market_count), key=MARKETS.index)
    priority = rng.choices(PRIORITIES, weights=PRIORITY_WEIGHTS)[0]
    return {
        "kind": "hypothesis",
        "id": hypothesis_id,
        "title": f"{_TITLES[family](ranges)} on {', '.join(markets)}",
        "family": family,
        "hypothesis": _STATEMENTS[family](ranges),
        "parameter_ranges": {name: [low, high] for name, (low, high) in ranges.items()},
        "markets": markets,
        "priority": priority,
        "direct": rng.random() < DIRECT_FRACTION,
    }


def _widen(
    rng: random.Random, low: tuple[int, int], width: tuple[int, int]
) -> tuple[int, int]:
    start = rng.randint(*low)
    return start, start + rng.randint(*width)


def _sample_sma_ranges(rng: random.Random) -> Ranges:
    fast = _widen(rng, (5, 15), (5, 15))
    slow = _widen(rng, (fast[1] + 10, fast[1] + 30), (20, 60))
    return {"fast_window": fast, "slow_window": slow}


def _sample_rsi_ranges(rng: random.Random) -> Ranges:
    return {
        "rsi_period": _widen(rng, (5, 10), (4, 10)),
        "oversold": _widen(rng, (15, 25), (5, 10)),
        "overbought": _widen(rng, (65, 75), (5, 10)),
    }


def _sample_breakout_ranges(rng: random.Random) -> Ranges:
    return {
        "entry_lookback": _widen(rng, (10, 30), (10, 30)),
        "exit_lookback": _widen(rng, (5, 10), (3, 10)),
    }


def _span(bounds: tuple[int, int]) -> str:
    return f"{bounds[0]}-{bounds[1]}"


_RANGE_SAMPLERS: dict[str, Callable[[random.Random], Ranges]] = {
    "sma_crossover": _sample_sma_ranges,
    "rsi_reversion": _sample_rsi_ranges,
    "breakout": _sample_breakout_ranges,
}
_TITLES: dict[str, Callable[[Ranges], str]] = {
    "sma_crossover": lambda r: (
        f"SMA crossover {_span(r['fast_window'])}/{_span(r['slow_window'])} bars"
    ),
    "rsi_reversion": lambda r: f"RSI reversion, period {_span(r['rsi_period'])}",
    "breakout": lambda r: f"Breakout, lookback {_span(r['entry_lookback'])} bars",
}
_STATEMENTS: dict[str, Callable[[Ranges], str]] = {
    "sma_crossover": lambda r: (
        f"Trends persist: holding long while the {_span(r['fast_window'])}-bar simple "
        f"moving average is above the {_span(r['slow_window'])}-bar one, and flat "
        "otherwise, earns a positive risk-adjusted return after costs."
    ),
    "rsi_reversion": lambda r: (
        f"Short-term moves revert: buying when the {_span(r['rsi_period'])}-bar RSI "
        f"falls below {_span(r['oversold'])} and selling when it rises above "
        f"{_span(r['overbought'])} earns a positive risk-adjusted return after costs."
    ),
    "breakout": lambda r: (
        "Breakouts continue: buying a close above the highest high of the previous "
        f"{_span(r['entry_lookback'])} bars and selling a close below the lowest low "
        f"of the previous {_span(r['exit_lookback'])} bars earns a positive "
        "risk-adjusted return after costs."
    ),
}


# Backtests and optimisation


def _cost_per_side(spec: Mapping[str, Any], market: str) -> float:
    costs = spec["costs"][market]
    return float(costs["commission"]) + float(costs["slippage"])


def _backtest_market(
    spec: Mapping[str, Any], market: str, parameters: Mapping[str, int]
) -> Payload:
    prices = load_market(market)
    positions = positions_for(prices, spec["family"], parameters)
    return backtest_positions(
        prices["Close"],
        positions,
        _cost_per_side(spec, market),
        estimate_bars_per_year(prices.index),
    )


def _optimize_market(
    spec: Mapping[str, Any], market: str, combinations: list[dict[str, int]]
) -> Payload:
    """Pick the in-sample best combination for one market and judge it out of sample."""
    prices = load_market(market)
    split = int(len(prices) * spec["validation"]["train_fraction"])
    if split < 2 or len(prices) - split < 2:
        raise ValueError(
            f"{market} has too few bars ({len(prices)}) to split at {split}"
        )
    cost = _cost_per_side(spec, market)
    bars_per_year = estimate_bars_per_year(prices.index)

    best: tuple[tuple[bool, float, float], dict[str, int], pd.Series, Payload] | None
    best = None
    for parameters in combinations:
        # Signals use the whole history, which is safe because every indicator only
        # looks back, and it gives the test split a warmed-up start.
        positions = positions_for(prices, spec["family"], parameters)
        metrics = backtest_positions(
            prices["Close"].iloc[:split], positions.iloc[:split], cost, bars_per_year
        )
        rank = (
            metrics["trades"] >= spec["validation"]["min_train_trades"],
            metrics["sharpe_ratio"],
            metrics["total_return"],
        )
        if best is None or rank > best[0]:
            best = (rank, parameters, positions, metrics)
    assert best is not None  # expand_grid never returns an empty list
    _, parameters, positions, in_sample = best

    test_close = prices["Close"].iloc[split:]
    test_positions = positions.iloc[split:]
    out_of_sample = backtest_positions(test_close, test_positions, cost, bars_per_year)
    prop_firm = size_for_prop_firm(test_close, test_positions, cost, bars_per_year)
    verdict, reasons = judge_out_of_sample(out_of_sample, prop_firm)
    return {
        "best_params": dict(parameters),
        "in_sample": in_sample,
        "out_of_sample": out_of_sample,
        "prop_firm": prop_firm,
        "verdict": verdict,
        "reasons": reasons,
    }


def _prop_firm_failures(metrics: Mapping[str, Any]) -> list[str]:
    failures = []
    if metrics["total_return"] < PROP_PROFIT_TARGET_FRACTION:
        failures.append(
            f"return {metrics['total_return']:.2%} is below the "
            f"{PROP_PROFIT_TARGET_FRACTION:.0%} profit target"
        )
    if metrics["max_drawdown"] > PROP_MAX_DRAWDOWN_FRACTION:
        failures.append(
            f"max drawdown {metrics['max_drawdown']:.2%} exceeds the "
            f"{PROP_MAX_DRAWDOWN_FRACTION:.0%} limit"
        )
    if not metrics["daily_loss_observable"]:
        failures.append(
            "daily loss cannot be measured because bars are longer than a day"
        )
    elif metrics["worst_daily_loss"] > PROP_DAILY_LOSS_LIMIT_FRACTION:
        failures.append(
            f"worst daily loss {metrics['worst_daily_loss']:.2%} exceeds the "
            f"{PROP_DAILY_LOSS_LIMIT_FRACTION:.0%} limit"
        )
    if metrics["trading_days"] < PROP_MIN_TRADING_DAYS:
        failures.append(
            f"{metrics['trading_days']} trading days is below the minimum of "
            f"{PROP_MIN_TRADING_DAYS}"
        )
    return failures


def _within_risk_limits(metrics: Mapping[str, Any]) -> bool:
    return bool(
        metrics["max_drawdown"] <= PROP_MAX_DRAWDOWN_FRACTION
        and metrics["daily_loss_observable"]
        and metrics["worst_daily_loss"] <= PROP_DAILY_LOSS_LIMIT_FRACTION
    )


def _market_rank(market_result: Mapping[str, Any]) -> tuple[int, float]:
    verdict_rank = VERDICT_RANK[market_result["verdict"]]
    return verdict_rank, market_result["out_of_sample"]["sharpe_ratio"]
