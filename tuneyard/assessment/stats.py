"""Figures with their uncertainty: percentile bootstrap intervals for means, and whether a
difference between two candidates stands out of the noise.

The resampling is numpy's (a dependency of sacrebleu and rouge-score), with a fixed seed so a
summary reads the same every time it is computed.
"""

from __future__ import annotations

from typing import Any

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
# Resamples drawn at once: bounds the memory of a large sample (chunk x rows indices).
CHUNK_CELLS = 2_000_000


def bootstrap_mean(values: list[float], resamples: int = RESAMPLES) -> dict[str, Any]:
    """{"mean", "ci": [low, high], "n"} with a 95% percentile bootstrap interval; for fewer
    than two values the interval is None (nothing to resample)."""
    import numpy as np

    n = len(values)
    if n == 0:
        return {"mean": None, "ci": None, "n": 0}
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if n < 2:
        return {"mean": mean, "ci": None, "n": n}
    rng = np.random.default_rng(SEED)
    chunk = max(1, min(resamples, CHUNK_CELLS // n))
    means = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        means.append(data[rng.integers(0, n, size=(size, n))].mean(axis=1))
    spread = np.concatenate(means)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(spread, [tail, 100 - tail])
    return {"mean": mean, "ci": [float(low), float(high)], "n": n}


def within_noise(estimate: dict[str, Any], null: float) -> bool | None:
    """Whether the interval holds `null` (no difference); None when there is no interval."""
    ci = estimate.get("ci")
    if ci is None:
        return None
    return bool(ci[0] <= null <= ci[1])


def paired_difference(first: list[float | None], second: list[float | None]) -> dict[str, Any]:
    """second - first over the rows where both have a value, with its interval and whether it
    is within noise (the interval holds 0)."""
    pairs = [(a, b) for a, b in zip(first, second, strict=True) if a is not None and b is not None]
    estimate = bootstrap_mean([b - a for a, b in pairs])
    estimate["within_noise"] = within_noise(estimate, 0.0)
    return estimate
