"""Bootstrap confidence intervals: every evaluation figure is reported with one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A statistic with its bootstrap interval (percentile method)."""

    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap(
    samples: np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """``statistic`` of ``samples`` (rows = independent units, e.g. pairs) and its ``level``
    interval over ``resamples`` resamplings of the rows with replacement."""
    samples = np.asarray(samples)
    n = len(samples)
    if n == 0:
        raise ValueError("bootstrap needs at least one sample")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(resamples, n))
    values = np.array([statistic(samples[p]) for p in picks])
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return Estimate(float(statistic(samples)), float(low), float(high), n)
