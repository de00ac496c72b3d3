"""Medians, percentiles and paired ratios. Contenders run alternately in each round, so a
ratio is taken within a round (same load on the machine) and the median over rounds is
reported."""

from __future__ import annotations

import statistics


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values, p: float):
    """Nearest-rank percentile (p in 0..100) of a list of numbers."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    rank = max(1, min(len(values), int(-(-p * len(values) // 100))))
    return values[rank - 1]


def paired_ratio(rounds: list[dict], name: str, base: str, key: str):
    """Median over rounds of rounds[i][name][key] / rounds[i][base][key]."""
    ratios = []
    for r in rounds:
        a, b = r.get(name, {}).get(key), r.get(base, {}).get(key)
        if a is not None and b:
            ratios.append(a / b)
    return median(ratios)


def paired_difference(rounds: list[dict], name: str, base: str, key: str):
    """Median over rounds of rounds[i][name][key] - rounds[i][base][key]."""
    diffs = []
    for r in rounds:
        a, b = r.get(name, {}).get(key), r.get(base, {}).get(key)
        if a is not None and b is not None:
            diffs.append(a - b)
    return median(diffs)


def rotate(items: list, k: int) -> list:
    """The contenders' order for round k: each one goes first in turn."""
    k %= len(items)
    return items[k:] + items[:k]
