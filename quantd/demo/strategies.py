"""Strategy families and a vectorised long-only backtest engine for the demo pipeline.

Each family turns a price DataFrame (Open/High/Low/Close columns on a DatetimeIndex)
and integer parameters into a signal per bar: 1.0 for long, 0.0 for flat. The signal
computed at a bar's close is the position held over the next bar, so trades fill at
the close of the signal bar. Costs are fractions of traded value and are charged per
side on every position change. Parameters that count bars use the market's own bar
size, so a 20-bar window is 20 days on daily data and 20 hours on hourly data.
"""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

Parameters = Mapping[str, int]
SignalFunction = Callable[[pd.DataFrame, Parameters], "pd.Series[float]"]

FloatArray = npt.NDArray[np.float64]

DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class Family:
    """Strategy family: its parameters with inclusive bounds and its signal function.

    When `ordered` names two parameters, the first must be strictly smaller than the
    second, for example the fast and slow moving-average windows.
    """

    name: str
    bounds: Mapping[str, tuple[int, int]]
    ordered: tuple[str, str] | None
    signal: SignalFunction


def sma_crossover_signal(prices: pd.DataFrame, parameters: Parameters) -> pd.Series:
    """Signal long while the fast simple moving average of Close is above the slow one.

    The signal is flat until both averages have a full window.
    """
    close = prices["Close"]
    fast = close.rolling(parameters["fast_window"]).mean()
    slow = close.rolling(parameters["slow_window"]).mean()
    return (fast > slow).astype(float)


def relative_strength_index(close: pd.Series, period: int) -> pd.Series:
    """Compute Wilder's RSI (0 to 100) of a price series.

    Wilder's smoothing is the exponential moving average with alpha = 1 / period. The
    RSI is NaN during the first `period` bars and wherever prices did not move at all.
    """
    change = close.diff()
    smoothing = {"alpha": 1.0 / period, "adjust": False, "min_periods": period}
    average_gain = change.clip(lower=0.0).ewm(**smoothing).mean()
    average_loss = (-change).clip(lower=0.0).ewm(**smoothing).mean()
    # 100 * gain / (gain + loss) equals the textbook 100 - 100 / (1 + gain / loss)
    # and avoids dividing by zero when there were no losses.
    total_move = (average_gain + average_loss).replace(0.0, np.nan)
    return 100.0 * average_gain / total_move


def rsi_reversion_signal(prices: pd.DataFrame, parameters: Parameters) -> pd.Series:
    """Signal long from an RSI close below `oversold` until one above `overbought`."""
    rsi = relative_strength_index(prices["Close"], parameters["rsi_period"])
    entries = rsi < parameters["oversold"]
    exits = rsi > parameters["overbought"]
    return hold_between(entries, exits)


def breakout_signal(prices: pd.DataFrame, parameters: Parameters) -> pd.Series:
    """Signal long from a close above the previous highs until one below previous lows.

    Entry needs a close above the highest High of the previous `entry_lookback` bars.
    Exit needs a close below the lowest Low of the previous `exit_lookback` bars.
    """
    close = prices["Close"]
    upper = prices["High"].rolling(parameters["entry_lookback"]).max().shift(1)
    lower = prices["Low"].rolling(parameters["exit_lookback"]).min().shift(1)
    return hold_between(close > upper, close < lower)


def buy_and_hold_signal(prices: pd.DataFrame, parameters: Parameters) -> pd.Series:
    """Signal long on every bar. This is the benchmark family and has no parameters."""
    return pd.Series(1.0, index=prices.index)


def hold_between(entries: pd.Series, exits: pd.Series) -> pd.Series:
    """Return 1.0 from each entry bar up to the next exit bar, and 0.0 elsewhere.

    An exit on the same bar as an entry wins, so that bar is flat.
    """
    state = pd.Series(np.nan, index=entries.index)
    state[entries.to_numpy(dtype=bool)] = 1.0
    state[exits.to_numpy(dtype=bool)] = 0.0
    return state.ffill().fillna(0.0)


FAMILIES: dict[str, Family] = {
    "sma_crossover": Family(
        name="sma_crossover",
        bounds={"fast_window": (2, 200), "slow_window": (3, 400)},
        ordered=("fast_window", "slow_window"),
        signal=sma_crossover_signal,
    ),
    "rsi_reversion": Family(
        name="rsi_reversion",
        bounds={"rsi_period": (2, 100), "oversold": (1, 99), "overbought": (1, 99)},
        ordered=("oversold", "overbought"),
        signal=rsi_reversion_signal,
    ),
    "breakout": Family(
        name="breakout",
        bounds={"entry_lookback": (2, 400), "exit_lookback": (1, 400)},
        ordered=None,
        signal=breakout_signal,
    ),
    "buy_and_hold": Family(
        name="buy_and_hold",
        bounds={},
        ordered=None,
        signal=buy_and_hold_signal,
    ),
}


def positions_for(
    prices: pd.DataFrame, family: str, parameters: Parameters
) -> pd.Series:
    """Compute the position held during each bar, which is the previous bar's signal."""
    signal = FAMILIES[family].signal(prices, parameters)
    return signal.shift(1, fill_value=0.0)


def estimate_bars_per_year(index: pd.DatetimeIndex) -> float:
    """Estimate bars per year from the bar count and the calendar span of the index."""
    if len(index) < 2:
        raise ValueError(
            f"need at least 2 bars to estimate the bar frequency, got {len(index)}"
        )
    return (len(index) - 1) / _span_years(index)


def backtest_positions(
    close: pd.Series,
    positions: pd.Series,
    cost_per_side: float,
    bars_per_year: float,
) -> dict[str, Any]:
    """Simulate holding `positions` on `close` and return JSON-ready metrics.

    A position is the fraction of equity held long, so a position of 0.5 scales each
    bar's return and each position change's cost by 0.5. Holding a constant fraction
    means rebalancing at every close, and that rebalancing is not charged.

    Equity starts at 1.0 at the first close and the account starts flat, so a long
    position on the first bar pays the entry cost. A position still open at the end
    is valued at the last close without an exit cost, and `trades` and `win_rate`
    count it. A bar's loss is capped at the whole account, so equity never goes
    below zero.
    """
    if len(close) < 2:
        raise ValueError(f"need at least 2 bars to backtest, got {len(close)}")
    position = positions.to_numpy(dtype=float)
    previous = np.concatenate(([0.0], position[:-1]))
    turnover = np.abs(position - previous)
    bar_returns = close.pct_change().fillna(0.0).to_numpy(dtype=float)
    strategy_returns = np.maximum(
        position * bar_returns - cost_per_side * turnover, -1.0
    )
    equity = np.cumprod(1.0 + strategy_returns)
    years = _span_years(close.index)

    trade_returns = _trade_returns(position, previous, strategy_returns)
    metrics: dict[str, Any] = {
        "start": close.index[0].isoformat(),
        "end": close.index[-1].isoformat(),
        "bars": len(close),
        "total_return": equity[-1] - 1.0,
        "cagr": _cagr(equity[-1], years),
        "sharpe_ratio": _sharpe_ratio(strategy_returns, bars_per_year),
        "max_drawdown": _max_drawdown(equity),
        "trades": len(trade_returns),
        "win_rate": float(np.mean(trade_returns > 0.0)) if len(trade_returns) else None,
        "exposure": float(np.mean(position != 0.0)),
        "buy_and_hold_return": close.iloc[-1] / close.iloc[0] - 1.0,
        **_daily_summary(pd.Series(equity, index=close.index), turnover),
    }
    return {name: _json_number(name, value) for name, value in metrics.items()}


def _span_years(index: pd.DatetimeIndex) -> float:
    span_days = (index[-1] - index[0]) / pd.Timedelta(days=1)
    if span_days <= 0:
        raise ValueError(
            f"index must span a positive time, got {index[0]} to {index[-1]}"
        )
    return float(span_days / DAYS_PER_YEAR)


def _cagr(final_equity: float, years: float) -> float:
    if final_equity <= 0.0:
        return -1.0
    return float(final_equity ** (1.0 / years) - 1.0)


def _sharpe_ratio(returns: FloatArray, bars_per_year: float) -> float:
    """Annualised Sharpe ratio of per-bar returns with a zero risk-free rate."""
    deviation = float(np.std(returns, ddof=1))
    if deviation == 0.0 or not math.isfinite(deviation):
        return 0.0
    return float(np.mean(returns) / deviation * math.sqrt(bars_per_year))


def _max_drawdown(equity: FloatArray) -> float:
    """Largest fall from a running peak as a fraction of that peak, from 0 to 1."""
    peaks = np.maximum.accumulate(np.concatenate(([1.0], equity)))[1:]
    return float(np.max(1.0 - equity / peaks))


def _trade_returns(
    position: FloatArray, previous: FloatArray, strategy_returns: FloatArray
) -> FloatArray:
    """Compound return of each trade, from its entry bar to its exit bar inclusive.

    The exit bar is where the position returns to zero, so it carries the exit cost.
    """
    entries = (position != 0.0) & (previous == 0.0)
    trade_ids = np.cumsum(entries)
    in_trade = (position != 0.0) | (previous != 0.0)
    growth = pd.Series(1.0 + strategy_returns[in_trade])
    per_trade = growth.groupby(trade_ids[in_trade]).prod() - 1.0
    trade_returns: FloatArray = per_trade.to_numpy(dtype=float)
    return trade_returns


def _daily_summary(equity: pd.Series, turnover: FloatArray) -> dict[str, Any]:
    """Summarise the equity curve per calendar day for the prop-firm rules.

    `worst_daily_loss` is the largest fall from the previous day's closing equity to
    the lowest equity of a day. Equity is marked only at bar closes, so moves inside
    a bar are missed. `trading_days` counts days with at least one position change.
    When bars are longer than a day, a day's loss cannot be measured, and
    `daily_loss_observable` is False.
    """
    days = equity.index.normalize()
    day_close = equity.groupby(days).last()
    day_low = equity.groupby(days).min()
    previous_close = day_close.shift(1, fill_value=1.0)
    traded = pd.Series(turnover > 0.0, index=equity.index).groupby(days).any()
    bar_spacing = equity.index.to_series().diff().median()
    return {
        "worst_daily_loss": max(0.0, float((1.0 - day_low / previous_close).max())),
        "trading_days": int(traded.sum()),
        "days_with_bars": len(day_close),
        "daily_loss_observable": bool(bar_spacing <= pd.Timedelta(days=1)),
    }


def _json_number(name: str, value: Any) -> Any:
    """Convert numpy scalars to Python ones, and raise on NaN or infinity."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            raise ValueError(
                f"metric {name!r} is not finite ({value}). "
                "Check the prices for zeros or missing values."
            )
        return float(value)
    return value
