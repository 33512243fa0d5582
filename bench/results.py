"""Figures collected by one benchmark run: repeated samples, notes on what
was not measured, and correctness failures."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


@dataclass
class Figure:
    """One metric: a sample per repeated run, summarised by its median."""

    name: str
    unit: str
    group: str
    label: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def minimum(self) -> float:
        return min(self.samples)

    @property
    def maximum(self) -> float:
        return max(self.samples)


@dataclass
class Results:
    """Everything one run measured, in the order it was measured."""

    figures: dict[str, Figure] = field(default_factory=dict)
    # Metric name -> why it has no number ("not supported: ...").
    missing: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(
        self, name: str, value: float, *, unit: str, group: str, label: str
    ) -> None:
        """Record one sample of ``name``; the first call fixes its unit."""
        figure = self.figures.get(name)
        if figure is None:
            figure = Figure(name, unit, group, label)
            self.figures[name] = figure
        figure.samples.append(value)

    def mark_missing(self, name: str, reason: str) -> None:
        self.missing[name] = reason

    def fail(self, message: str) -> None:
        """Record a correctness failure: a lost, duplicated or stray item."""
        self.failures.append(message)

    def median(self, name: str) -> float | None:
        figure = self.figures.get(name)
        return figure.median if figure and figure.samples else None

    def to_json(self) -> dict[str, float]:
        """Return every figure as ``{metric_name: number}``.

        The metric's name maps to the median, and ``<name>_min`` and
        ``<name>_max`` map to the extremes over the repeated runs.
        """
        document: dict[str, float] = {}
        for name, figure in self.figures.items():
            document[name] = figure.median
            document[f"{name}_min"] = figure.minimum
            document[f"{name}_max"] = figure.maximum
        document["correctness_failures"] = float(len(self.failures))
        return document


def percentile(values: list[float], fraction: float) -> float:
    """Return the ``fraction`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def check_exactly_once(
    results: Results, what: str, expected: set[int], consumed: list[int]
) -> None:
    """Record a failure unless ``consumed`` contains each expected item once."""
    seen = set(consumed)
    duplicates = len(consumed) - len(seen)
    lost = len(expected - seen)
    stray = len(seen - expected)
    if duplicates or lost or stray:
        results.fail(
            f"{what}: {duplicates} duplicate, {lost} lost and {stray} unknown "
            f"items out of {len(expected)}"
        )
