"""Pareto-aware asynchronous successive halving (MO-ASHA, Schmucker et al. 2021) as a Ray Tune
TrialScheduler.

Scalar ASHA stops a trial at a rung when its quality falls below the rung's top 1/eta, so a cheap,
fast, slightly weaker trial is stopped even when it would sit on the quality-cost front. Here a
trial that reaches a rung is ranked among every trial recorded there by non-dominated sorting over
the sweep's objectives (front 0 is the rung's Pareto front), ties within a front broken by crowding
distance (NSGA-II's: a trial alone in its stretch of the front ranks above one in a crowd, and the
ends of each front rank first). It goes on when fewer than n/eta of the n recorded trials rank
strictly above it, the rule ASHA applies to a single metric; with one objective it is ASHA.
"""

import json
import math
from collections.abc import Sequence
from pathlib import Path

import polars as pl
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from analysis import rank
from sweeps.objectives import NAMES, Objective

Point = tuple[float, ...]  # a trial's objectives at a rung, each oriented so that larger is better


def front_indices(points: Sequence[Point]) -> list[int]:
    """Non-dominated sorting: 0 for the points no other dominates, 1 for those only front 0
    dominates, and so on (dominance as analysis.rank defines it)."""
    axes = {f"objective_{axis}": True for axis in range(len(points[0]) if points else 0)}
    remaining = pl.DataFrame(points, schema=list(axes), orient="row").with_row_index("point")
    fronts = [-1] * len(points)
    level = 0
    while remaining.height:
        beaten = rank.dominated(remaining, axes)
        for index in remaining.filter(~beaten)["point"]:
            fronts[index] = level
        remaining = remaining.filter(beaten)
        level += 1
    return fronts


def crowding_distances(points: Sequence[Point], fronts: Sequence[int]) -> list[float]:
    """NSGA-II's crowding distance within each front: for each objective, the gap between a point's
    neighbours along the front over the front's spread; the ends of a front get infinity."""
    distances = [0.0] * len(points)
    for level in set(fronts):
        members = [i for i, front in enumerate(fronts) if front == level]
        for axis in range(len(points[0]) if points else 0):
            ordered = sorted(members, key=lambda i: points[i][axis])
            spread = points[ordered[-1]][axis] - points[ordered[0]][axis]
            distances[ordered[0]] = distances[ordered[-1]] = math.inf
            for before, here, after in zip(ordered, ordered[1:], ordered[2:], strict=False):
                if spread > 0:
                    distances[here] += (points[after][axis] - points[before][axis]) / spread
    return distances


def ranked_above(points: Sequence[Point], index: int) -> int:
    """How many points rank strictly above points[index]: on an earlier front, or on its front and
    less crowded."""
    fronts = front_indices(points)
    crowding = crowding_distances(points, fronts)
    key = [(front, -distance) for front, distance in zip(fronts, crowding, strict=True)]
    return sum(1 for other in key if other < key[index])


def promoted(points: Sequence[Point], index: int, reduction_factor: float) -> bool:
    """Whether points[index] is in the rung's top 1/eta (the first trial at a rung always is)."""
    return ranked_above(points, index) < len(points) / reduction_factor


class ParetoSuccessiveHalving(FIFOScheduler):
    """Asynchronous successive halving whose rungs rank trials by Pareto dominance.

    Rungs sit at grace_period * reduction_factor**k (in time_attr units) below max_t. A trial is
    judged once per rung, against the trials that reached the rung before it, as in ASHA: no trial
    waits for others. A result missing an objective (a failed trial's NaN quality) is not judged.
    objectives: names from sweeps.objectives; those measured only at a trial's end are not ranked.
    """

    def __init__(
        self,
        objectives: Sequence[str],
        max_t: int,
        grace_period: int = 1,
        reduction_factor: float = 2,
        time_attr: str = "training_iteration",
    ):
        if not objectives or any(name not in NAMES for name in objectives):
            raise ValueError(f"objectives: {list(objectives)}; known: {', '.join(NAMES)}")
        if not 0 < grace_period <= max_t or reduction_factor <= 1:
            raise ValueError("need 0 < grace_period <= max_t and reduction_factor > 1")
        super().__init__()
        # Ranked on what every evaluation reports (latency, measured at a trial's end, is not).
        self.objectives = [o for o in map(Objective, objectives) if o.at_every_evaluation]
        self.reduction_factor = reduction_factor
        self.time_attr = time_attr
        milestones, milestone = [], grace_period
        while milestone < max_t:
            milestones.append(milestone)
            milestone *= reduction_factor
        # Milestone -> trial id -> its objectives there; highest milestone first, as a result is
        # judged at the highest rung it has reached and not yet been judged at.
        self.rungs: dict[float, dict[str, Point]] = {m: {} for m in reversed(milestones)}
        self.stopped = 0

    def set_search_properties(self, metric, mode, **spec) -> bool:
        # The objectives are the scheduler's own; Tune's single metric (if any) does not replace them.
        return True

    def point(self, result: dict) -> Point | None:
        gains = [objective.gain(result) for objective in self.objectives]
        return None if None in gains or not gains else tuple(gains)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        point = self.point(result)
        if self.time_attr not in result or point is None:
            return TrialScheduler.CONTINUE
        progress = result[self.time_attr]
        rung = next((rung for milestone, rung in self.rungs.items() if progress >= milestone), None)
        if rung is None or trial.trial_id in rung:
            return TrialScheduler.CONTINUE
        rung[trial.trial_id] = point
        ids = list(rung)
        if promoted([rung[i] for i in ids], ids.index(trial.trial_id), self.reduction_factor):
            return TrialScheduler.CONTINUE
        self.stopped += 1
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        rungs = ", ".join(f"{milestone:g}: {len(rung)} trials" for milestone, rung in self.rungs.items())
        names = ",".join(objective.name for objective in self.objectives)
        return f"ParetoSuccessiveHalving({names}): {self.stopped} stopped; rungs {rungs}"

    def save(self, checkpoint_path: str) -> None:
        """JSON, not a pickle: restoring a sweep's state runs no code from its files."""
        state = {
            "rungs": [[milestone, {trial: list(point) for trial, point in rung.items()}]
                      for milestone, rung in self.rungs.items()],
            "stopped": self.stopped,
        }  # fmt: skip
        Path(checkpoint_path).write_text(json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.rungs = {milestone: {trial: tuple(point) for trial, point in rung.items()}
                      for milestone, rung in state["rungs"]}  # fmt: skip
        self.stopped = state["stopped"]
