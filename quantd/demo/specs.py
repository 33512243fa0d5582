"""Strategy specs: conversion from hypotheses, validation and parameter grids.

A hypothesis gives each parameter an inclusive integer range. A strategy spec fixes
default parameters (the middle of each range), the grid the optimizer searches, the
markets, trading costs and the validation settings. Every check raises ValueError
naming the invalid field, so a worker can reject a malformed item with that message.
"""

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from quantd.demo.strategies import FAMILIES

Payload = dict[str, Any]
Ranges = dict[str, tuple[int, int]]

# Bundled histories: GOOG daily 2004-2013, EURUSD hourly 2017-2018, BTCUSD monthly
# 2012-2024.
MARKETS: tuple[str, ...] = ("GOOG", "EURUSD", "BTCUSD")
PRIORITIES: tuple[str, ...] = ("high", "medium", "low")

# Costs per side as fractions of traded value. These are round-number estimates for
# the demo, not quotes from any broker.
DEFAULT_COSTS: dict[str, dict[str, float]] = {
    "GOOG": {"commission": 0.001, "slippage": 0.0005},
    "EURUSD": {"commission": 0.00002, "slippage": 0.00005},
    "BTCUSD": {"commission": 0.001, "slippage": 0.001},
}
MAX_COST_PER_SIDE_FRACTION = 0.1

MAX_GRID_COMBINATIONS = 25
TRAIN_FRACTION = 0.7
# Grid points with fewer in-sample trades than this rank below all others.
MIN_TRAIN_TRADES = 3


def convert_hypothesis(hypothesis: Mapping[str, Any]) -> Payload:
    """Convert a hypothesis into a strategy spec with defaults, grid, costs and checks.

    Raises ValueError naming the invalid field.
    """
    family = _check_family("hypothesis", hypothesis.get("family"))
    markets = _check_markets("hypothesis", hypothesis.get("markets"))
    ranges = _check_ranges(family, hypothesis.get("parameter_ranges"))
    priority = hypothesis.get("priority", "medium")
    if priority not in PRIORITIES:
        raise _invalid(
            "hypothesis", "priority", f"got {priority!r}, expected one of {PRIORITIES}"
        )
    return {
        "kind": "strategy_spec",
        "hypothesis_id": _optional_text("hypothesis", hypothesis, "id"),
        "title": _optional_text("hypothesis", hypothesis, "title"),
        "family": family,
        "parameters": {name: (low + high) // 2 for name, (low, high) in ranges.items()},
        "parameter_grid": _build_grid(ranges),
        "markets": markets,
        "costs": {market: dict(DEFAULT_COSTS[market]) for market in markets},
        "validation": {
            "method": "holdout",
            "train_fraction": TRAIN_FRACTION,
            "selection_metric": "sharpe_ratio",
            "min_train_trades": MIN_TRAIN_TRADES,
        },
        "priority": priority,
    }


def resolve_spec(payload: Mapping[str, Any]) -> Payload:
    """Return the validated strategy spec that a payload contains or implies.

    A payload without `kind` is read as a hypothesis if it has `parameter_ranges`
    and as a spec if it has `parameters`.
    """
    if not isinstance(payload, Mapping):
        raise ValueError(f"expected a payload mapping, got {type(payload).__name__}")
    kind = payload.get("kind")
    if kind is None and "parameter_ranges" in payload:
        kind = "hypothesis"
    elif kind is None and "parameters" in payload:
        kind = "strategy_spec"
    if kind == "hypothesis":
        return convert_hypothesis(payload)
    if kind == "strategy_spec":
        return _check_spec(payload)
    if kind in ("backtest_result", "optimization_result") and "spec" in payload:
        return _check_spec(payload["spec"])
    raise ValueError(
        f"payload of kind {kind!r} contains no strategy spec. Expected kind "
        "'hypothesis', 'strategy_spec', 'backtest_result' or 'optimization_result'"
    )


def expand_grid(family: str, grid: Mapping[str, list[int]]) -> list[dict[str, int]]:
    """List every parameter combination of a grid that satisfies the family's order."""
    names = list(grid)
    combinations = [
        dict(zip(names, values, strict=True))
        for values in itertools.product(*(grid[name] for name in names))
    ]
    ordered = FAMILIES[family].ordered
    if ordered is not None:
        first, second = ordered
        combinations = [c for c in combinations if c[first] < c[second]]
        if not combinations:
            raise ValueError(
                f"parameter_grid has no combination with {first} below {second}"
            )
    return combinations


# Validation


def _invalid(kind: str, field: str, problem: str) -> ValueError:
    return ValueError(f"invalid {kind} field {field!r}: {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_text(kind: str, payload: Mapping[str, Any], field: str) -> str | None:
    value = payload.get(field)
    if value is not None and not isinstance(value, str):
        raise _invalid(kind, field, f"expected a string, got {value!r}")
    return value


def _check_family(kind: str, family: Any) -> str:
    if not isinstance(family, str) or family not in FAMILIES:
        known = ", ".join(FAMILIES)
        raise _invalid(
            kind, "family", f"unknown family {family!r}. Known families: {known}"
        )
    return str(family)


def _check_markets(kind: str, markets: Any) -> list[str]:
    if not isinstance(markets, list) or not markets:
        raise _invalid(kind, "markets", f"expected a non-empty list, got {markets!r}")
    unknown = [market for market in markets if market not in MARKETS]
    if unknown:
        known = ", ".join(MARKETS)
        raise _invalid(
            kind, "markets", f"unknown markets {unknown}. Known markets: {known}"
        )
    if len(set(markets)) != len(markets):
        raise _invalid(kind, "markets", f"contains duplicates: {markets}")
    return list(markets)


def _check_ranges(family: str, ranges: Any) -> Ranges:
    """Validate a hypothesis's `parameter_ranges` and return (low, high) pairs."""
    bounds = FAMILIES[family].bounds
    if not isinstance(ranges, Mapping) or set(ranges) != set(bounds):
        expected = sorted(bounds)
        raise _invalid(
            "hypothesis",
            "parameter_ranges",
            f"expected keys {expected} for {family}, got {ranges!r}",
        )
    checked: Ranges = {}
    for name, (minimum, maximum) in bounds.items():
        field = f"parameter_ranges.{name}"
        pair = ranges[name]
        if (
            not isinstance(pair, list | tuple)
            or len(pair) != 2
            or not all(map(_is_int, pair))
        ):
            raise _invalid(
                "hypothesis", field, f"expected [low, high] integers, got {pair!r}"
            )
        low, high = pair
        if low > high:
            raise _invalid(
                "hypothesis", field, f"low {low} is above high {high}. Swap the bounds."
            )
        if low < minimum or high > maximum:
            raise _invalid(
                "hypothesis", field, f"{pair} is outside [{minimum}, {maximum}]"
            )
        checked[name] = (low, high)
    _check_range_order(family, checked)
    return checked


def _check_range_order(family: str, ranges: Ranges) -> None:
    ordered = FAMILIES[family].ordered
    if ordered is None:
        return
    first, second = ordered
    if ranges[first][1] >= ranges[second][0]:
        raise _invalid(
            "hypothesis",
            f"parameter_ranges.{first}",
            f"range {list(ranges[first])} must lie below "
            f"{second} range {list(ranges[second])}",
        )


def _check_spec(spec: Mapping[str, Any]) -> Payload:
    """Validate a strategy spec that may have been edited by hand, and return a copy."""
    family = _check_family("strategy spec", spec.get("family"))
    markets = _check_markets("strategy spec", spec.get("markets"))
    _check_parameters(family, spec.get("parameters"))
    _check_grid(family, spec.get("parameter_grid"))
    _check_costs(markets, spec.get("costs"))
    _check_validation(spec.get("validation"))
    checked = dict(spec)
    checked.setdefault("hypothesis_id", None)
    checked.setdefault("title", None)
    return checked


def _check_parameters(family: str, parameters: Any) -> None:
    bounds = FAMILIES[family].bounds
    if not isinstance(parameters, Mapping) or set(parameters) != set(bounds):
        raise _invalid(
            "strategy spec",
            "parameters",
            f"expected keys {sorted(bounds)}, got {parameters!r}",
        )
    for name, (minimum, maximum) in bounds.items():
        value = parameters[name]
        if not _is_int(value) or not minimum <= value <= maximum:
            raise _invalid(
                "strategy spec",
                f"parameters.{name}",
                f"expected an integer in [{minimum}, {maximum}], got {value!r}",
            )
    ordered = FAMILIES[family].ordered
    if ordered is not None and parameters[ordered[0]] >= parameters[ordered[1]]:
        raise _invalid(
            "strategy spec", f"parameters.{ordered[0]}", f"must be below {ordered[1]}"
        )


def _check_grid(family: str, grid: Any) -> None:
    bounds = FAMILIES[family].bounds
    if not isinstance(grid, Mapping) or set(grid) != set(bounds):
        raise _invalid(
            "strategy spec",
            "parameter_grid",
            f"expected keys {sorted(bounds)}, got {grid!r}",
        )
    for name, (minimum, maximum) in bounds.items():
        values = grid[name]
        valid = isinstance(values, list) and values and all(_is_int(v) for v in values)
        if not valid or not all(minimum <= v <= maximum for v in values):
            raise _invalid(
                "strategy spec",
                f"parameter_grid.{name}",
                f"expected a non-empty list of integers in [{minimum}, {maximum}], "
                f"got {values!r}",
            )
    size = math.prod(len(values) for values in grid.values())
    if size > MAX_GRID_COMBINATIONS:
        raise _invalid(
            "strategy spec",
            "parameter_grid",
            f"{size} combinations exceed {MAX_GRID_COMBINATIONS}",
        )


def _check_costs(markets: list[str], costs: Any) -> None:
    if not isinstance(costs, Mapping):
        raise _invalid(
            "strategy spec", "costs", f"expected a mapping per market, got {costs!r}"
        )
    for market in markets:
        entry = costs.get(market)
        for part in ("commission", "slippage"):
            value = entry.get(part) if isinstance(entry, Mapping) else None
            if not _is_cost_fraction(value):
                raise _invalid(
                    "strategy spec",
                    f"costs.{market}.{part}",
                    f"expected a fraction in [0, {MAX_COST_PER_SIDE_FRACTION}], "
                    f"got {value!r}",
                )


def _is_cost_fraction(value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return 0.0 <= value <= MAX_COST_PER_SIDE_FRACTION


def _check_validation(validation: Any) -> None:
    fraction = (
        validation.get("train_fraction") if isinstance(validation, Mapping) else None
    )
    if not isinstance(fraction, float) or not 0.0 < fraction < 1.0:
        raise _invalid(
            "strategy spec",
            "validation.train_fraction",
            f"expected a fraction between 0 and 1, got {fraction!r}",
        )
    minimum = validation.get("min_train_trades")
    if not _is_int(minimum) or minimum < 0:
        raise _invalid(
            "strategy spec",
            "validation.min_train_trades",
            f"expected a non-negative integer, got {minimum!r}",
        )


# Grid construction


def _build_grid(ranges: Ranges) -> dict[str, list[int]]:
    """Spread up to MAX_GRID_COMBINATIONS combinations evenly over the ranges."""
    counts = _points_per_parameter(list(ranges.values()))
    grid: dict[str, list[int]] = {}
    for (name, (low, high)), count in zip(ranges.items(), counts, strict=True):
        points: list[float] = np.linspace(low, high, count).tolist()
        grid[name] = sorted({round(point) for point in points})
    return grid


def _points_per_parameter(ranges: list[tuple[int, int]]) -> list[int]:
    """Add grid points to each parameter in turn up to MAX_GRID_COMBINATIONS in total.

    A parameter never gets more points than its range has integers.
    """
    counts = [1] * len(ranges)
    grew = True
    while grew:
        grew = False
        for index, (low, high) in enumerate(ranges):
            trial = counts[index] + 1
            product = math.prod(counts) // counts[index] * trial
            if trial <= high - low + 1 and product <= MAX_GRID_COMBINATIONS:
                counts[index] = trial
                grew = True
    return counts
