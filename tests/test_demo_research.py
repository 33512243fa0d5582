"""Tests for the demo pipeline's research functions on the bundled market history."""

import copy
import json
import math
import re
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest

from quantd.demo.research import (
    GOOD_MIN_SHARPE_RATIO,
    MARKETS,
    PROP_DAILY_LOSS_LIMIT_FRACTION,
    PROP_MAX_DRAWDOWN_FRACTION,
    PROP_MIN_TRADING_DAYS,
    PROP_POSITION_FRACTIONS,
    PROP_PROFIT_TARGET_FRACTION,
    backtest_spec,
    convert_hypothesis,
    judge_out_of_sample,
    load_market,
    optimize_strategy,
    prop_firm_check,
    propose_hypotheses,
    size_for_prop_firm,
)
from quantd.demo.specs import MAX_GRID_COMBINATIONS, expand_grid
from quantd.demo.strategies import (
    FAMILIES,
    backtest_positions,
    estimate_bars_per_year,
    positions_for,
    relative_strength_index,
)

SMA_HYPOTHESIS: dict[str, Any] = {
    "id": "test-sma",
    "title": "SMA crossover on GOOG and EURUSD",
    "family": "sma_crossover",
    "hypothesis": "Trends persist.",
    "parameter_ranges": {"fast_window": [5, 20], "slow_window": [30, 80]},
    "markets": ["GOOG", "EURUSD"],
    "priority": "high",
    "direct": False,
}


def buy_and_hold_spec(
    market: str, commission: float, slippage: float
) -> dict[str, Any]:
    spec = convert_hypothesis(
        {"family": "buy_and_hold", "parameter_ranges": {}, "markets": [market]}
    )
    spec["costs"] = {market: {"commission": commission, "slippage": slippage}}
    return spec


def passing_metrics() -> dict[str, Any]:
    return {
        "total_return": PROP_PROFIT_TARGET_FRACTION + 0.01,
        "max_drawdown": PROP_MAX_DRAWDOWN_FRACTION / 2,
        "worst_daily_loss": PROP_DAILY_LOSS_LIMIT_FRACTION / 2,
        "trading_days": PROP_MIN_TRADING_DAYS,
        "daily_loss_observable": True,
        "sharpe_ratio": 2.0,
    }


def prop_firm_at_full_size(metrics: dict[str, Any]) -> dict[str, Any]:
    passed, failures = prop_firm_check(metrics)
    return {
        "passed": passed,
        "position_fraction": 1.0 if passed else None,
        "reasons": failures,
        "metrics": metrics,
    }


def daily_curve(growth: list[float]) -> pd.Series:
    """Return daily closes from 100.0 that grow by each factor in turn."""
    index = pd.date_range("2024-01-01", periods=len(growth) + 1, freq="D")
    closes = 100.0 * np.concatenate(([1.0], np.cumprod(growth)))
    return pd.Series(closes, index=index)


def long_except_every_fourth_bar(close: pd.Series) -> pd.Series:
    """Hold long but go flat every fourth bar, so every few days has a trade."""
    values = [0.0 if bar % 4 == 0 else 1.0 for bar in range(len(close))]
    return pd.Series(values, index=close.index)


def iter_numbers(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [n for item in value.values() for n in iter_numbers(item)]
    if isinstance(value, list):
        return [n for item in value for n in iter_numbers(item)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [float(value)]
    return []


def assert_json_ready(payload: Any) -> None:
    text = json.dumps(payload, allow_nan=False)
    assert json.loads(text) == payload
    assert all(math.isfinite(number) for number in iter_numbers(payload))


# Market data


@pytest.mark.parametrize("name", MARKETS)
def test_load_market_returns_ohlcv(name: str) -> None:
    prices = load_market(name)
    assert list(prices.columns) == ["Open", "High", "Low", "Close", "Volume"]
    assert isinstance(prices.index, pd.DatetimeIndex)
    assert prices.index.is_monotonic_increasing
    assert len(prices) > 100
    assert not prices.isna().any().any()


def test_load_market_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError) as error:
        load_market("AAPL")
    message = str(error.value)
    assert "'AAPL'" in message
    for name in MARKETS:
        assert name in message


def test_load_market_returns_independent_copy() -> None:
    first = load_market("GOOG")
    first.loc[first.index[0], "Close"] = -1.0
    assert load_market("GOOG")["Close"].iloc[0] > 0.0


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("GOOG", 245.0, 260.0), ("EURUSD", 5000.0, 6500.0), ("BTCUSD", 11.5, 12.5)],
)
def test_bars_per_year_matches_bar_size(name: str, low: float, high: float) -> None:
    bars_per_year = estimate_bars_per_year(load_market(name).index)
    assert low <= bars_per_year <= high


# Hypotheses


def test_propose_hypotheses_deterministic_for_seed() -> None:
    assert propose_hypotheses(12, seed=5) == propose_hypotheses(12, seed=5)


def test_propose_hypotheses_differ_across_seeds() -> None:
    assert propose_hypotheses(12, seed=5) != propose_hypotheses(12, seed=6)


def test_propose_hypotheses_fields_are_valid() -> None:
    hypotheses = propose_hypotheses(60, seed=11)
    assert len(hypotheses) == 60
    assert len({h["id"] for h in hypotheses}) == 60
    for hypothesis in hypotheses:
        assert hypothesis["kind"] == "hypothesis"
        assert hypothesis["title"]
        assert hypothesis["hypothesis"]
        assert hypothesis["priority"] in ("high", "medium", "low")
        assert isinstance(hypothesis["direct"], bool)
        assert hypothesis["markets"]
        assert set(hypothesis["markets"]) <= set(MARKETS)
        for low, high in hypothesis["parameter_ranges"].values():
            assert low <= high
        assert_json_ready(hypothesis)
    families = {h["family"] for h in hypotheses}
    assert families == {"sma_crossover", "rsi_reversion", "breakout"}
    direct_flags = {h["direct"] for h in hypotheses}
    assert direct_flags == {True, False}


def test_propose_hypotheses_count_zero_and_negative() -> None:
    assert propose_hypotheses(0, seed=1) == []
    with pytest.raises(ValueError, match="count"):
        propose_hypotheses(-1, seed=1)


# Conversion


def test_convert_hypothesis_defaults_are_range_middles() -> None:
    spec = convert_hypothesis(SMA_HYPOTHESIS)
    assert spec["kind"] == "strategy_spec"
    assert spec["family"] == "sma_crossover"
    assert spec["parameters"] == {"fast_window": 12, "slow_window": 55}
    assert spec["markets"] == ["GOOG", "EURUSD"]
    assert spec["hypothesis_id"] == "test-sma"
    assert spec["priority"] == "high"
    assert_json_ready(spec)


def test_convert_hypothesis_grid_covers_ranges() -> None:
    spec = convert_hypothesis(SMA_HYPOTHESIS)
    grid = spec["parameter_grid"]
    assert grid["fast_window"][0] == 5
    assert grid["fast_window"][-1] == 20
    assert grid["slow_window"][0] == 30
    assert grid["slow_window"][-1] == 80
    assert len(expand_grid("sma_crossover", grid)) <= MAX_GRID_COMBINATIONS


def test_convert_hypothesis_costs_per_market() -> None:
    spec = convert_hypothesis(SMA_HYPOTHESIS)
    assert set(spec["costs"]) == {"GOOG", "EURUSD"}
    for costs in spec["costs"].values():
        assert 0.0 < costs["commission"] < 0.01
        assert 0.0 <= costs["slippage"] < 0.01
    assert spec["validation"]["train_fraction"] == pytest.approx(0.7)


def test_convert_every_proposed_hypothesis() -> None:
    for hypothesis in propose_hypotheses(60, seed=3):
        spec = convert_hypothesis(hypothesis)
        combinations = expand_grid(spec["family"], spec["parameter_grid"])
        assert 1 <= len(combinations) <= MAX_GRID_COMBINATIONS


def malformed(**changes: Any) -> dict[str, Any]:
    hypothesis = copy.deepcopy(SMA_HYPOTHESIS)
    hypothesis.update(changes)
    return hypothesis


@pytest.mark.parametrize(
    ("hypothesis", "field"),
    [
        (malformed(family="momentum"), "'family'"),
        (malformed(markets=[]), "'markets'"),
        (malformed(markets=["GOOG", "AAPL"]), "'markets'"),
        (malformed(markets="GOOG"), "'markets'"),
        (
            malformed(
                parameter_ranges={"fast_window": [20, 5], "slow_window": [30, 80]}
            ),
            "'parameter_ranges.fast_window'",
        ),
        (
            malformed(
                parameter_ranges={"fast_window": [5, 40], "slow_window": [30, 80]}
            ),
            "'parameter_ranges.fast_window'",
        ),
        (
            malformed(
                parameter_ranges={"fast_window": [5, 20], "slow_window": [30.5, 80]}
            ),
            "'parameter_ranges.slow_window'",
        ),
        (
            malformed(
                parameter_ranges={"fast_window": [0, 20], "slow_window": [30, 80]}
            ),
            "'parameter_ranges.fast_window'",
        ),
        (malformed(parameter_ranges={"fast_window": [5, 20]}), "'parameter_ranges'"),
        (malformed(priority="urgent"), "'priority'"),
        (malformed(title=7), "'title'"),
    ],
)
def test_convert_malformed_hypothesis_names_field(
    hypothesis: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError) as error:
        convert_hypothesis(hypothesis)
    assert field in str(error.value)


def test_backtest_rejects_unordered_parameters() -> None:
    spec = convert_hypothesis(SMA_HYPOTHESIS)
    spec["parameters"]["fast_window"] = 90
    with pytest.raises(ValueError, match=re.escape("'parameters.fast_window'")):
        backtest_spec(spec)


def test_backtest_rejects_negative_commission() -> None:
    spec = convert_hypothesis(SMA_HYPOTHESIS)
    spec["costs"]["GOOG"]["commission"] = -0.001
    with pytest.raises(ValueError, match=re.escape("'costs.GOOG.commission'")):
        backtest_spec(spec)


def test_backtest_rejects_unknown_payload_kind() -> None:
    with pytest.raises(ValueError, match="report"):
        backtest_spec({"kind": "report"})


# Strategy engine


@pytest.mark.parametrize("family", ["sma_crossover", "rsi_reversion", "breakout"])
def test_signals_do_not_look_ahead(family: str) -> None:
    prices = load_market("GOOG")
    spec = convert_hypothesis(
        {
            "family": family,
            "markets": ["GOOG"],
            "parameter_ranges": propose_ranges(family),
        }
    )
    full = positions_for(prices, family, spec["parameters"])
    cut = 1200
    truncated = positions_for(prices.iloc[:cut], family, spec["parameters"])
    pd.testing.assert_series_equal(full.iloc[:cut], truncated)


def propose_ranges(family: str) -> dict[str, list[int]]:
    for hypothesis in propose_hypotheses(30, seed=2):
        if hypothesis["family"] == family:
            ranges: dict[str, list[int]] = hypothesis["parameter_ranges"]
            return ranges
    raise AssertionError(f"seed 2 proposed no {family} hypothesis")


def test_rsi_stays_within_bounds() -> None:
    rsi = relative_strength_index(load_market("EURUSD")["Close"], 14).dropna()
    assert len(rsi) > 4000
    assert rsi.min() >= 0.0
    assert rsi.max() <= 100.0


def test_backtest_positions_known_drawdown() -> None:
    index = pd.date_range("2024-01-01", periods=4, freq="D")
    close = pd.Series([100.0, 50.0, 100.0, 110.0], index=index)
    positions = pd.Series([0.0, 1.0, 1.0, 1.0], index=index)
    metrics = backtest_positions(close, positions, 0.0, 365.0)
    assert metrics["max_drawdown"] == pytest.approx(0.5)
    assert metrics["total_return"] == pytest.approx(0.1)
    assert metrics["trades"] == 1
    assert metrics["win_rate"] == pytest.approx(1.0)
    assert metrics["worst_daily_loss"] == pytest.approx(0.5)
    assert metrics["trading_days"] == 1
    assert metrics["exposure"] == pytest.approx(0.75)


def test_backtest_positions_flat_has_no_trades() -> None:
    prices = load_market("GOOG")
    flat = pd.Series(0.0, index=prices.index)
    metrics = backtest_positions(prices["Close"], flat, 0.001, 252.0)
    assert metrics["total_return"] == 0.0
    assert metrics["trades"] == 0
    assert metrics["win_rate"] is None
    assert metrics["sharpe_ratio"] == 0.0
    assert metrics["max_drawdown"] == 0.0


# Backtests


def test_buy_and_hold_matches_first_last_close() -> None:
    close = load_market("GOOG")["Close"]
    metrics = backtest_spec(buy_and_hold_spec("GOOG", 0.0, 0.0))["markets"]["GOOG"]
    expected = close.iloc[-1] / close.iloc[0] - 1.0
    assert metrics["total_return"] == pytest.approx(expected, rel=1e-9)
    assert metrics["buy_and_hold_return"] == pytest.approx(expected, rel=1e-9)
    assert metrics["trades"] == 1
    assert metrics["exposure"] == pytest.approx((len(close) - 1) / len(close))


def test_buy_and_hold_pays_one_entry_cost() -> None:
    close = load_market("GOOG")["Close"]
    cost = 0.002
    result = backtest_spec(buy_and_hold_spec("GOOG", 0.0015, 0.0005))
    metrics = result["markets"]["GOOG"]
    # The entry cost is subtracted from the first held bar's return.
    first_growth = close.iloc[1] / close.iloc[0]
    expected = (first_growth - cost) / first_growth * close.iloc[-1] / close.iloc[0]
    assert metrics["total_return"] == pytest.approx(expected - 1.0, rel=1e-9)


def test_cagr_consistent_with_total_return() -> None:
    metrics = backtest_spec(buy_and_hold_spec("GOOG", 0.0, 0.0))["markets"]["GOOG"]
    years = (
        pd.Timestamp(metrics["end"]) - pd.Timestamp(metrics["start"])
    ).days / 365.25
    expected = (1.0 + metrics["total_return"]) ** (1.0 / years) - 1.0
    assert metrics["cagr"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("market", MARKETS)
def test_costs_reduce_returns(market: str) -> None:
    hypothesis = malformed(markets=[market])
    with_costs = convert_hypothesis(hypothesis)
    without_costs = copy.deepcopy(with_costs)
    without_costs["costs"][market] = {"commission": 0.0, "slippage": 0.0}
    costly = backtest_spec(with_costs)["markets"][market]
    free = backtest_spec(without_costs)["markets"][market]
    assert costly["trades"] > 0
    assert costly["trades"] == free["trades"]
    assert costly["total_return"] < free["total_return"]
    assert costly["sharpe_ratio"] < free["sharpe_ratio"]


def test_backtest_metrics_are_in_range() -> None:
    for hypothesis in propose_hypotheses(9, seed=21):
        result = backtest_spec(hypothesis)
        assert_json_ready(result)
        assert set(result["markets"]) == set(hypothesis["markets"])
        for metrics in result["markets"].values():
            assert 0.0 <= metrics["max_drawdown"] <= 1.0
            assert 0.0 <= metrics["exposure"] <= 1.0
            assert 0.0 <= metrics["worst_daily_loss"] <= 1.0
            assert metrics["trades"] >= 0
            assert metrics["trading_days"] <= metrics["days_with_bars"]
            if metrics["win_rate"] is not None:
                assert 0.0 <= metrics["win_rate"] <= 1.0


def test_backtest_direct_hypothesis_equals_converted() -> None:
    direct = backtest_spec(SMA_HYPOTHESIS)
    converted = backtest_spec(convert_hypothesis(SMA_HYPOTHESIS))
    assert direct == converted


def test_daily_loss_unobservable_for_monthly_bars() -> None:
    spec = convert_hypothesis(
        {"family": "buy_and_hold", "parameter_ranges": {}, "markets": list(MARKETS)}
    )
    markets = backtest_spec(spec)["markets"]
    assert markets["GOOG"]["daily_loss_observable"] is True
    assert markets["EURUSD"]["daily_loss_observable"] is True
    assert markets["BTCUSD"]["daily_loss_observable"] is False


# Prop-firm rules and verdicts


def test_prop_firm_check_passes_within_limits() -> None:
    assert prop_firm_check(passing_metrics()) == (True, [])


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"max_drawdown": PROP_MAX_DRAWDOWN_FRACTION + 0.01}, "drawdown"),
        ({"worst_daily_loss": PROP_DAILY_LOSS_LIMIT_FRACTION + 0.01}, "daily loss"),
        ({"total_return": PROP_PROFIT_TARGET_FRACTION - 0.01}, "profit target"),
        ({"trading_days": PROP_MIN_TRADING_DAYS - 1}, "trading days"),
        ({"daily_loss_observable": False}, "longer than a day"),
    ],
)
def test_prop_firm_check_rejects_rule_breach(change: dict[str, Any], word: str) -> None:
    passed, failures = prop_firm_check({**passing_metrics(), **change})
    assert passed is False
    assert len(failures) == 1
    assert word in failures[0]


def test_prop_firm_check_missing_metric_raises() -> None:
    metrics = passing_metrics()
    del metrics["max_drawdown"]
    with pytest.raises(ValueError, match="max_drawdown"):
        prop_firm_check(metrics)


def test_judge_prop_firm_ready_names_size() -> None:
    metrics = {**passing_metrics(), "max_drawdown": 0.3}
    prop_firm = {**prop_firm_at_full_size(passing_metrics()), "position_fraction": 0.5}
    verdict, reasons = judge_out_of_sample(metrics, prop_firm)
    assert verdict == "prop_firm_ready"
    assert reasons == ["passes every prop-firm rule out of sample at 50% position size"]


def test_judge_good_despite_prop_failure() -> None:
    metrics = {**passing_metrics(), "max_drawdown": 0.3, "total_return": 0.2}
    verdict, reasons = judge_out_of_sample(metrics, prop_firm_at_full_size(metrics))
    assert verdict == "good"
    assert any("drawdown" in reason for reason in reasons)


def test_judge_rejected_when_sharpe_low() -> None:
    metrics = {
        **passing_metrics(),
        "max_drawdown": 0.3,
        "sharpe_ratio": GOOD_MIN_SHARPE_RATIO,
    }
    verdict, reasons = judge_out_of_sample(metrics, prop_firm_at_full_size(metrics))
    assert verdict == "rejected"
    assert any("Sharpe" in reason for reason in reasons)


def test_judge_rejected_when_return_negative() -> None:
    metrics = {**passing_metrics(), "total_return": -0.01, "max_drawdown": 0.3}
    verdict, reasons = judge_out_of_sample(metrics, prop_firm_at_full_size(metrics))
    assert verdict == "rejected"
    assert any("not positive" in reason for reason in reasons)


# Position sizing for the prop-firm rules


def test_sizing_shrinks_position_to_drawdown_limit() -> None:
    # Up 1% a day for 30 days, down 1.5% a day for 14, then up 1.5% a day for 35.
    close = daily_curve([1.01] * 30 + [0.985] * 14 + [1.015] * 35)
    positions = long_except_every_fourth_bar(close)
    full = backtest_positions(close, positions, 0.001, 365.0)
    assert full["max_drawdown"] > PROP_MAX_DRAWDOWN_FRACTION

    sizing = size_for_prop_firm(close, positions, 0.001, 365.0)
    fraction = sizing["position_fraction"]
    assert fraction in PROP_POSITION_FRACTIONS
    assert fraction < 1.0
    assert sizing["metrics"]["max_drawdown"] <= PROP_MAX_DRAWDOWN_FRACTION
    assert sizing["metrics"]["total_return"] >= PROP_PROFIT_TARGET_FRACTION
    assert sizing["passed"] is True
    assert sizing["reasons"] == []
    assert_json_ready(sizing)

    larger = [f for f in PROP_POSITION_FRACTIONS if f > fraction]
    for size in larger:
        scaled = backtest_positions(close, positions * size, 0.001, 365.0)
        assert scaled["max_drawdown"] > PROP_MAX_DRAWDOWN_FRACTION


def test_sizing_scales_returns_and_costs() -> None:
    close = daily_curve([1.01] * 30 + [0.985] * 14 + [1.015] * 35)
    positions = long_except_every_fourth_bar(close)
    cost = 0.001
    sizing = size_for_prop_firm(close, positions, cost, 365.0)
    fraction = sizing["position_fraction"]

    held = positions.to_numpy()
    turnover = np.abs(np.diff(held, prepend=0.0))
    bar_returns = close.pct_change().fillna(0.0).to_numpy()
    full_returns = held * bar_returns - cost * turnover
    equity = np.cumprod(1.0 + fraction * full_returns)
    drawdown = np.max(1.0 - equity / np.maximum.accumulate(equity))
    assert sizing["metrics"]["total_return"] == pytest.approx(equity[-1] - 1.0)
    assert sizing["metrics"]["max_drawdown"] == pytest.approx(drawdown)


def test_sizing_shrinks_position_to_daily_loss_limit() -> None:
    # One 12% fall in a rising series breaks only the daily loss limit at full size.
    close = daily_curve([1.01] * 40 + [0.88] + [1.01] * 40)
    positions = long_except_every_fourth_bar(close)
    full = backtest_positions(close, positions, 0.0, 365.0)
    assert full["worst_daily_loss"] > PROP_DAILY_LOSS_LIMIT_FRACTION

    sizing = size_for_prop_firm(close, positions, 0.0, 365.0)
    assert sizing["position_fraction"] < 1.0
    assert sizing["metrics"]["worst_daily_loss"] <= PROP_DAILY_LOSS_LIMIT_FRACTION
    assert sizing["metrics"]["max_drawdown"] <= PROP_MAX_DRAWDOWN_FRACTION


def test_sizing_fails_unreachable_profit_target() -> None:
    # Up 0.08% a day: no drawdown, but under 8% in 80 days even at full size.
    close = daily_curve([1.0008] * 79)
    positions = long_except_every_fourth_bar(close)
    sizing = size_for_prop_firm(close, positions, 0.0001, 365.0)
    assert sizing["passed"] is False
    assert sizing["position_fraction"] == max(PROP_POSITION_FRACTIONS)
    assert sizing["metrics"]["total_return"] < PROP_PROFIT_TARGET_FRACTION
    assert len(sizing["reasons"]) == 1
    assert "8% profit target" in sizing["reasons"][0]
    assert "100% position size" in sizing["reasons"][0]


def test_sizing_fails_when_no_size_fits() -> None:
    # Down 10% a day for 10 days: a 65% drawdown at full size and 22% at 25%.
    close = daily_curve([1.01] * 20 + [0.9] * 10 + [1.01] * 20)
    positions = long_except_every_fourth_bar(close)
    sizing = size_for_prop_firm(close, positions, 0.0, 365.0)
    assert sizing["passed"] is False
    assert sizing["position_fraction"] is None
    assert sizing["metrics"]["max_drawdown"] > PROP_MAX_DRAWDOWN_FRACTION
    assert "no position size" in sizing["reasons"][0]
    assert any("25% position size" in reason for reason in sizing["reasons"][1:])


def test_sizing_fails_monthly_bars() -> None:
    prices = load_market("BTCUSD")
    positions = pd.Series(1.0, index=prices.index)
    bars_per_year = estimate_bars_per_year(prices.index)
    sizing = size_for_prop_firm(prices["Close"], positions, 0.002, bars_per_year)
    assert sizing["passed"] is False
    assert sizing["position_fraction"] is None
    assert any("longer than a day" in reason for reason in sizing["reasons"])


def test_optimize_sizes_goog_breakout_to_pass() -> None:
    hypothesis = {
        "family": "breakout",
        "markets": ["GOOG"],
        "parameter_ranges": {"entry_lookback": [17, 42], "exit_lookback": [7, 17]},
    }
    outcome = optimize_strategy(hypothesis)["markets"]["GOOG"]
    assert outcome["out_of_sample"]["max_drawdown"] > PROP_MAX_DRAWDOWN_FRACTION
    assert outcome["verdict"] == "prop_firm_ready"
    assert outcome["prop_firm"]["passed"] is True
    assert outcome["prop_firm"]["position_fraction"] < 1.0
    assert prop_firm_check(outcome["prop_firm"]["metrics"]) == (True, [])


# Optimisation


@pytest.fixture(scope="module")
def optimized() -> tuple[dict[str, Any], dict[str, Any], float]:
    result = backtest_spec(SMA_HYPOTHESIS)
    started = time.perf_counter()
    optimization = optimize_strategy(result)
    elapsed = time.perf_counter() - started
    return result, optimization, elapsed


def test_optimize_payload_is_json_ready(
    optimized: tuple[dict[str, Any], dict[str, Any], float],
) -> None:
    _, optimization, _ = optimized
    assert_json_ready(optimization)
    assert optimization["kind"] == "optimization_result"
    assert optimization["verdict"] in ("good", "prop_firm_ready", "rejected")
    best = optimization["markets"][optimization["best_market"]]
    assert optimization["verdict"] == best["verdict"]
    assert optimization["best_params"] == best["best_params"]


def test_optimize_splits_train_and_test(
    optimized: tuple[dict[str, Any], dict[str, Any], float],
) -> None:
    _, optimization, _ = optimized
    for market, outcome in optimization["markets"].items():
        bars = len(load_market(market))
        in_sample = outcome["in_sample"]
        out_of_sample = outcome["out_of_sample"]
        assert in_sample["bars"] == int(bars * 0.7)
        assert in_sample["bars"] + out_of_sample["bars"] == bars
        assert pd.Timestamp(in_sample["end"]) < pd.Timestamp(out_of_sample["start"])


def test_optimize_picks_best_in_sample_sharpe(
    optimized: tuple[dict[str, Any], dict[str, Any], float],
) -> None:
    result, optimization, _ = optimized
    spec = result["spec"]
    for market, outcome in optimization["markets"].items():
        prices = load_market(market)
        split = outcome["in_sample"]["bars"]
        costs = spec["costs"][market]
        cost = costs["commission"] + costs["slippage"]
        bars_per_year = estimate_bars_per_year(prices.index)
        best_sharpe = outcome["in_sample"]["sharpe_ratio"]
        for parameters in expand_grid(spec["family"], spec["parameter_grid"]):
            positions = positions_for(prices, spec["family"], parameters).iloc[:split]
            metrics = backtest_positions(
                prices["Close"].iloc[:split], positions, cost, bars_per_year
            )
            if metrics["trades"] >= spec["validation"]["min_train_trades"]:
                assert metrics["sharpe_ratio"] <= best_sharpe


def test_optimize_verdict_follows_rules(
    optimized: tuple[dict[str, Any], dict[str, Any], float],
) -> None:
    _, optimization, _ = optimized
    for outcome in optimization["markets"].values():
        out_of_sample = outcome["out_of_sample"]
        passed = outcome["prop_firm"]["passed"]
        if passed:
            assert prop_firm_check(outcome["prop_firm"]["metrics"]) == (True, [])
            expected = "prop_firm_ready"
        elif (
            out_of_sample["sharpe_ratio"] > GOOD_MIN_SHARPE_RATIO
            and out_of_sample["total_return"] > 0.0
        ):
            expected = "good"
        else:
            expected = "rejected"
        assert outcome["verdict"] == expected
        assert outcome["reasons"]


def test_optimize_accepts_every_family() -> None:
    for family in FAMILIES:
        if family == "buy_and_hold":
            continue
        hypothesis = {
            "family": family,
            "markets": list(MARKETS),
            "parameter_ranges": propose_ranges(family),
        }
        optimization = optimize_strategy(hypothesis)
        assert_json_ready(optimization)
        assert set(optimization["markets"]) == set(MARKETS)
