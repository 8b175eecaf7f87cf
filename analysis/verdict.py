"""Uncertainty on every comparison: paired bootstrap intervals on per-example test scores.

Every candidate is scored on the same test examples, so one set of resamples serves them all and a
comparison is paired: each resample draws the same examples for both sides, so the difference
varies with how the two disagree, not with how hard the drawn examples happen to be. The mean of
per-example differences is the difference of means, so a paired interval is the interval of a mean.

A side trained with several seeds (a compared method's runs) has one row of scores per run. Each
resample then also draws that side's runs, with replacement and apart from the other side's, so
the interval covers how much training with another seed moves the figure as well as which test
examples happened to be drawn: a two-level bootstrap of runs and examples.
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


def run_weights(runs: int, resamples: int, stream: int) -> np.ndarray:
    """Row r: the share of each of a side's runs among those resample r draws, with replacement
    (resamples x runs, rows summing to 1). `stream` keeps each side's draws apart from the other's."""
    drawn = np.random.default_rng([SEED, stream]).integers(0, runs, size=(resamples, runs))
    counts = np.zeros((resamples, runs))
    np.add.at(counts, (np.arange(resamples)[:, None], drawn), 1.0)
    return counts / runs


def resampled_means(scores, indices: np.ndarray, stream: int = 1) -> np.ndarray:
    """One mean per resample of a side's scores (one run's list, or runs x examples): the examples
    that `indices` draws and, with several runs, runs drawn afresh in each resample."""
    runs = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if runs.shape[0] == 1:
        return runs[0][indices].mean(axis=1)
    per_example = run_weights(runs.shape[0], indices.shape[0], stream) @ runs  # resamples x examples
    return np.take_along_axis(per_example, indices, axis=1).mean(axis=1)


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


def _percentiles(value: float, resampled: np.ndarray) -> Estimate:
    low, high = np.quantile(resampled, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Estimate(float(value), float(low), float(high))


def mean_interval(scores, indices: np.ndarray) -> Estimate:
    """The mean of per-example scores (of every run, with several), with the percentile interval of
    its resampled means."""
    return _percentiles(np.mean(scores), resampled_means(scores, indices))


def difference_interval(scores, other, indices: np.ndarray) -> Estimate:
    """mean(scores) - mean(other), paired: both sides resampled on the same examples; each side's
    runs, when it has several, drawn apart."""
    resampled = resampled_means(scores, indices, stream=1) - resampled_means(other, indices, stream=2)
    return _percentiles(np.mean(scores) - np.mean(other), resampled)


def _number(value: float) -> str:
    return f"{value:.{DIGITS}f}"


def interval_words(estimate: Estimate) -> str:
    return f"{_number(estimate.value)} (95% CI {_number(estimate.low)} to {_number(estimate.high)})"


@dataclass(frozen=True)
class Side:
    """One side of a comparison: its name, the optimizer steps it trained, the seeds it ran with."""

    name: str
    steps: int
    seeds: int = 1
    trains: bool = True  # False: the untouched base model, which trains nothing by design


@dataclass(frozen=True)
class Comparison:
    side: Side
    against: Side
    difference: Estimate

    @property
    def equal_budget(self) -> bool:
        """Both sides trained as long; against the untouched base, there is no budget to match."""
        return not self.against.trains or self.side.steps == self.against.steps

    @property
    def real_difference(self) -> bool:
        return self.equal_budget and self.difference.distinguishable

    def meaning(self) -> str:
        if not self.equal_budget:
            return (
                f"unequal budgets: {self.side.name} trained {self.side.steps} steps, "
                f"{self.against.name} trained {self.against.steps}"
            )
        return "a real difference" if self.difference.distinguishable else "not distinguishable on this data"

    def words(self) -> str:
        """e.g. 'lora beats ia3 by 0.021 (95% CI -0.008 to 0.050): not distinguishable on this data'."""
        gap, name, against = self.difference, self.side.name, self.against.name
        if gap.value == 0:
            return f"{name} and {against} tie: difference {interval_words(gap)}: {self.meaning()}"
        if gap.value > 0:
            return f"{name} beats {against} by {interval_words(gap)}: {self.meaning()}"
        # Said of the gap by which it trails, so the interval is of that gap too.
        behind = Estimate(-gap.value, -gap.high, -gap.low)
        return f"{name} trails {against} by {interval_words(behind)}: {self.meaning()}"

    def as_json(self) -> dict:
        return {
            "against": self.against.name,
            "difference": self.difference.value,
            "ci95": self.difference.ci95,
            "distinguishable": self.difference.distinguishable,
            "steps": self.side.steps,
            "seeds": self.side.seeds,
            "against_steps": self.against.steps,
            "against_seeds": self.against.seeds,
            "equal_budget": self.equal_budget,
            "real_difference": self.real_difference,
            "meaning": self.meaning(),
        }


def compare(side: Side, scores, against: dict[Side, list], indices: np.ndarray) -> list[Comparison]:
    """side against each of `against` (side -> its per-example scores on the same examples, a run's
    list or runs x examples)."""
    return [
        Comparison(side, other, difference_interval(scores, other_scores, indices))
        for other, other_scores in against.items()
    ]
