"""Uncertainty on every comparison: paired bootstrap intervals on per-example test scores.

Every candidate is scored on the same test examples, so one set of resamples serves them all and a
comparison is paired: each resample draws the same examples for both sides, so the difference
varies with how the two disagree, not with how hard the drawn examples happen to be. The mean of
per-example differences is the difference of means, so a paired interval is the interval of a mean.
"""

from dataclasses import dataclass

import numpy as np

RESAMPLES = 2_000
SEED = 0
LEVEL = 0.95
DIGITS = 3


def resample_indices(examples: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Row r: the examples bootstrap resample r draws, with replacement (resamples x examples)."""
    return np.random.default_rng(seed).integers(0, examples, size=(resamples, examples), dtype=np.int32)


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    @property
    def distinguishable(self) -> bool:
        """Whether the interval leaves out 0 (meaningful for a difference)."""
        return not self.low <= 0.0 <= self.high

    @property
    def ci95(self) -> list[float]:
        return [self.low, self.high]


def mean_interval(scores, indices: np.ndarray) -> Estimate:
    """The mean of per-example scores, with the percentile interval of its resampled means."""
    values = np.asarray(scores, dtype=np.float64)
    resampled = values[indices].mean(axis=1)  # one mean per resample, all at once
    low, high = np.quantile(resampled, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Estimate(float(values.mean()), float(low), float(high))


def difference_interval(scores, other, indices: np.ndarray) -> Estimate:
    """mean(scores) - mean(other), paired: both sides resampled on the same examples."""
    return mean_interval(np.asarray(scores, dtype=np.float64) - np.asarray(other, dtype=np.float64), indices)


def _number(value: float) -> str:
    return f"{value:.{DIGITS}f}"


def interval_words(estimate: Estimate) -> str:
    return f"{_number(estimate.value)} (95% CI {_number(estimate.low)} to {_number(estimate.high)})"


@dataclass(frozen=True)
class Comparison:
    name: str
    against: str
    difference: Estimate

    def words(self) -> str:
        """e.g. 'lora beats ia3 by 0.021 (95% CI -0.008 to 0.050): not distinguishable on this data'."""
        gap = self.difference
        meaning = "a real difference" if gap.distinguishable else "not distinguishable on this data"
        if gap.value == 0:
            return f"{self.name} and {self.against} tie: difference {interval_words(gap)}: {meaning}"
        if gap.value > 0:
            return f"{self.name} beats {self.against} by {interval_words(gap)}: {meaning}"
        # Said of the gap by which it trails, so the interval is of that gap too.
        behind = Estimate(-gap.value, -gap.high, -gap.low)
        return f"{self.name} trails {self.against} by {interval_words(behind)}: {meaning}"

    def as_json(self) -> dict:
        return {
            "against": self.against,
            "difference": self.difference.value,
            "ci95": self.difference.ci95,
            "distinguishable": self.difference.distinguishable,
        }


def compare(name: str, scores, against: dict[str, list[float]], indices: np.ndarray) -> list[Comparison]:
    """name against each of `against` (name -> per-example scores on the same examples)."""
    return [
        Comparison(name, other, difference_interval(scores, other_scores, indices))
        for other, other_scores in against.items()
    ]
