"""What the search measures for the verdict while its last trials run: the baselines' test scores."""

from pathlib import Path

from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial

from sweeps.early_measurements import MeasureEndedTrials
from trainables.evaluation import scoring
from trainables.methods import BASELINE
from trainables.training import trial

BASELINE_VALUES = {"task": "qg", "method": BASELINE, "eval_examples": 4, "full_eval_examples": 6}


def _tune_trial(sweep_dir, name: str, config: dict, status: str, last_result: dict | None = None) -> Trial:
    made = Trial(
        "run",
        config=config,
        stub=True,
        storage=StorageContext(str(sweep_dir.parent), sweep_dir.name, trial_dir_name=name),
    )
    made.set_status(status)
    made.update_last_result(last_result or {})
    return made


def _baseline_trial(tiny_model, sweep_dir, name: str, shots: int) -> Trial:
    """A baseline trial that ran for real (its record in its directory), as Tune ends it."""
    values = BASELINE_VALUES | {"model": tiny_model, "shots": shots}
    trial.execute(values, lambda metrics, checkpoint: None, record_dir=sweep_dir / name)
    return _tune_trial(sweep_dir, name, values, Trial.TERMINATED, {"status": "completed"})


def test_the_baselines_are_scored_on_test_in_the_searchs_tail_and_the_verdict_waits_for_them(
    tiny_model, tmp_path, local_ray, counting_workers
):
    sweep_dir = tmp_path / "sweep"
    zero_shot = _baseline_trial(tiny_model, sweep_dir, "b0-base", shots=0)
    two_shot = _baseline_trial(tiny_model, sweep_dir, "b2-base", shots=2)
    running = _tune_trial(sweep_dir, "t1-lora", {"method": "lora"}, Trial.RUNNING)
    waiting = _tune_trial(sweep_dir, "t2-lora", {"method": "lora"}, Trial.PENDING)
    workers = counting_workers
    callback = MeasureEndedTrials(workers, planned=4)
    for ended in (zero_shot, two_shot):
        callback.on_trial_complete(0, [zero_shot, two_shot, running], ended)

    callback.on_step_begin(0, [zero_shot, two_shot, running])  # a trial still to come
    callback.on_step_begin(0, [zero_shot, two_shot, running, waiting])  # one waits for a slot
    callback.on_experiment_end([])
    assert workers.submitted == []  # nothing scored yet

    waiting.set_status(Trial.RUNNING)  # the last trial has its slot: the tail of the search
    callback.on_step_begin(0, [zero_shot, two_shot, running, waiting])
    callback.on_experiment_end([])  # the search ends without waiting for them
    assert len(workers.submitted) == 2

    rows = {
        baseline.trial_id: {"trial_dir": baseline.path, "method": BASELINE, "best_checkpoint": None}
        for baseline in (zero_shot, two_shot)
    }
    scored = scoring.scores_on_test(rows, workers)  # the verdict's scoring, with the same workers
    assert len(workers.submitted) == 2  # waited for, not started again
    assert workers.in_flight == {}
    for baseline in (zero_shot, two_shot):
        assert scoring.baseline_test_scoring(Path(baseline.path)) is None  # kept
        in_process = trial.score_base_model(baseline.config, split="test")
        assert scored[baseline.trial_id]["per_example"] == in_process.per_example
        assert len(in_process.per_example) == BASELINE_VALUES["full_eval_examples"]


def test_a_baseline_that_failed_is_left_to_the_verdict(tiny_model, tmp_path, local_ray):
    sweep_dir = tmp_path / "sweep"
    failed = _baseline_trial(tiny_model, sweep_dir, "b0-base", shots=0)
    failed.update_last_result({"status": "failed"})
    callback = MeasureEndedTrials(scoring.ScoringPool({"cpu": 1, "gpu": 0}, concurrency=2), planned=1)
    callback.on_trial_complete(0, [failed], failed)
    callback.on_step_begin(0, [failed])
    callback.on_experiment_end([])
    assert scoring.baseline_test_scoring(sweep_dir / "b0-base") is not None
