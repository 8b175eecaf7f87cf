"""Pareto-aware successive halving on hand-made rung results, next to Ray's own ASHA."""

import json
import math

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from sweeps import run
from sweeps.schedulers import ParetoSuccessiveHalving, crowding_distances, front_indices, ranked_above
from sweeps.settings import resolve
from trainables.training import trial


def _trial(trial_id: str) -> Trial:
    return Trial("run", trial_id=trial_id, stub=True)


def _result(quality: float, cost: float, evaluations: int = 1, **more) -> dict:
    return {"training_iteration": evaluations, "quality": quality, "cost_usd": cost, **more}


def _pareto(**options) -> ParetoSuccessiveHalving:
    return ParetoSuccessiveHalving(["quality", "cost"], **({"max_t": 4} | options))


def test_a_cheaper_trial_on_the_front_goes_on_where_scalar_asha_stops_it():
    pareto = _pareto()
    asha = ASHAScheduler(metric="quality", mode="max", max_t=4, grace_period=1, reduction_factor=2)
    strong_and_dear, weak_and_cheap = _trial("a"), _trial("b")
    for scheduler in (pareto, asha):
        scheduler.on_trial_add(None, strong_and_dear)
        scheduler.on_trial_add(None, weak_and_cheap)
        assert scheduler.on_trial_result(None, strong_and_dear, _result(0.8, 1.0)) == TrialScheduler.CONTINUE
    # Lower quality, but a fifth of the cost: on the quality-cost front.
    assert pareto.on_trial_result(None, weak_and_cheap, _result(0.5, 0.2)) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, weak_and_cheap, _result(0.5, 0.2)) == TrialScheduler.STOP


def test_a_dominated_trial_is_stopped():
    scheduler = _pareto()
    results = {"a": _result(0.8, 1.0), "b": _result(0.5, 0.2)}
    for trial_id, result in results.items():
        assert scheduler.on_trial_result(None, _trial(trial_id), result) == TrialScheduler.CONTINUE
    # b is as good on both objectives and better on both: c is on the second front.
    assert scheduler.on_trial_result(None, _trial("c"), _result(0.4, 0.9)) == TrialScheduler.STOP
    assert scheduler.stopped == 1


def test_within_the_front_the_crowded_trial_ranks_last():
    # Five trials on one front: the ends rank first, then the middle ones, the most crowded last.
    points = [(0.9, -1.0), (0.1, -0.1), (0.5, -0.5), (0.52, -0.52), (0.3, -0.3)]
    assert front_indices(points) == [0] * 5
    distances = crowding_distances(points, front_indices(points))
    assert distances[0] == distances[1] == math.inf
    assert distances[2] < distances[4] < distances[3]
    assert [ranked_above(points, index) for index in range(5)] == [0, 0, 4, 2, 3]
    # Arriving last at a rung holding the four others: only the top 5/2 go on.
    for arriving, decision in ((2, TrialScheduler.STOP), (3, TrialScheduler.CONTINUE)):
        scheduler = _pareto()
        scheduler.rungs[1] = {str(index): point for index, point in enumerate(points) if index != arriving}
        quality, negative_cost = points[arriving]
        assert (
            scheduler.on_trial_result(None, _trial(str(arriving)), _result(quality, -negative_cost))
            == decision
        )


def test_non_dominated_sorting_counts_fronts():
    points = [(3.0, 3.0), (2.0, 2.0), (1.0, 1.0), (2.5, 0.0), (0.0, 2.5)]
    assert front_indices(points) == [0, 1, 2, 1, 1]


def test_each_rung_judges_a_trial_once_and_skips_results_it_cannot_rank():
    scheduler = _pareto(max_t=8)  # rungs at 1, 2 and 4 evaluations
    assert list(scheduler.rungs) == [4, 2, 1]
    scheduler.on_trial_result(None, _trial("a"), _result(0.9, 0.1))
    # A failed trial reports NaN quality: no rung records it.
    assert scheduler.on_trial_result(None, _trial("f"), _result(float("nan"), 0.1)) == TrialScheduler.CONTINUE
    assert set(scheduler.rungs[1]) == {"a"}
    # Judged once at rung 1 (stopped there), a later result of the same rung is not judged again.
    assert scheduler.on_trial_result(None, _trial("b"), _result(0.5, 0.5)) == TrialScheduler.STOP
    assert scheduler.on_trial_result(None, _trial("b"), _result(0.4, 0.6)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, _trial("a"), _result(0.9, 0.2, evaluations=2)) == "CONTINUE"
    assert set(scheduler.rungs[2]) == {"a"}


def test_latency_measured_only_at_the_end_is_not_ranked_at_rungs():
    scheduler = ParetoSuccessiveHalving(["quality", "latency", "cost"], max_t=4)
    assert [objective.name for objective in scheduler.objectives] == ["quality", "cost"]
    scheduler.on_trial_result(None, _trial("a"), _result(0.8, 1.0))
    assert scheduler.on_trial_result(None, _trial("b"), _result(0.7, 1.1)) == TrialScheduler.STOP


def test_state_survives_save_and_restore_as_json_not_a_pickle(tmp_path):
    scheduler = _pareto()
    scheduler.on_trial_result(None, _trial("a"), _result(0.8, 1.0))
    scheduler.on_trial_result(None, _trial("b"), _result(0.7, 1.1))
    scheduler.save(str(tmp_path / "scheduler.json"))
    saved = json.loads((tmp_path / "scheduler.json").read_text())  # plain data: restoring runs no code
    assert saved["stopped"] == 1
    restored = _pareto()
    restored.restore(str(tmp_path / "scheduler.json"))
    assert restored.rungs == scheduler.rungs and restored.stopped == 1
    assert restored.on_trial_result(None, _trial("c"), _result(0.4, 1.2)) == TrialScheduler.STOP


@pytest.mark.parametrize("objectives", [[], ["quality", "speed"]])
def test_unknown_objectives_are_refused(objectives):
    with pytest.raises(ValueError, match="objectives"):
        ParetoSuccessiveHalving(objectives, max_t=4)


@pytest.mark.parametrize("scheduler", ["asha", "pareto"])
def test_the_sweeps_schedulers_leave_the_baselines_alone(tiny_model, scheduler):
    """The baselines run in the search's Tuner and report no evaluation count: counted at the first
    rung, their low quality would lower its cutoff and let a poor trained trial through."""
    settings = resolve("qg", None, {"model": tiny_model, "scheduler": scheduler, "objectives": ["quality"]})
    early_stopping = run.early_stopping(settings)
    early_stopping.set_search_properties("quality", "max")
    strong, baselines, poor = _trial("strong"), [_trial("zero-shot"), _trial("two-shot")], _trial("poor")
    for added in (strong, *baselines, poor):
        early_stopping.on_trial_add(None, added)

    def evaluated(quality: float) -> dict:
        return {"training_iteration": 1, trial.EVALUATIONS: 1, "quality": quality, "cost_usd": 1.0}

    assert early_stopping.on_trial_result(None, strong, evaluated(0.5)) == TrialScheduler.CONTINUE
    for baseline in baselines:  # what a baseline reports: no evaluation count
        result = {"training_iteration": 1, "quality": 0.1, "cost_usd": 0.1}
        assert early_stopping.on_trial_result(None, baseline, result) == TrialScheduler.CONTINUE
        early_stopping.on_trial_complete(None, baseline, result)
    assert early_stopping.on_trial_result(None, poor, evaluated(0.3)) == TrialScheduler.STOP
