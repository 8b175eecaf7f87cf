"""The sweep's objectives (--objectives): what each is called in the trials' results, and its
direction, which is analysis.rank's, so that the search and the report agree on what is better.

Free of Ray: settings validate objective names before Ray is imported.
"""

import math
from dataclasses import dataclass

from analysis import rank

# What every evaluation reports of each objective. Analysis ranks quality on the whole validation
# split (best_quality), measured once at the end; a rung compares the evaluations' own figure, on
# the same eval_examples rows for every trial.
REPORTED = {"quality": "quality", "cost": "cost_usd", "latency": "latency_s", "size": "adapter_bytes"}
NAMES = list(REPORTED)
# Latency is measured once, on the model a trial ends with (trainables.training.trial.final_measurements),
# not at every evaluation: early stopping cannot rank on it, the sampler learns it at the end.
AT_THE_END_ONLY = {"latency"}


@dataclass(frozen=True)
class Objective:
    """One of the sweep's objectives: its name on the command line, what results call it, and its
    direction (analysis.rank's, so that the search and the report agree on what is better)."""

    name: str

    @property
    def metric(self) -> str:
        return REPORTED[self.name]

    @property
    def larger_is_better(self) -> bool:
        return rank.OBJECTIVES[rank.WEIGHT_NAMES[self.name]]

    @property
    def at_every_evaluation(self) -> bool:
        return self.name not in AT_THE_END_ONLY

    @property
    def mode(self) -> str:
        return "max" if self.larger_is_better else "min"

    def gain(self, result: dict) -> float | None:
        """The result's value oriented so that larger is better; None when it has no finite value."""
        value = result.get(self.metric)
        if not isinstance(value, int | float) or not math.isfinite(value):
            return None
        return value if self.larger_is_better else -value
