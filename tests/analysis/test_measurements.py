"""The ranking figure of a kept checkpoint its trial did not measure, measured by the analysis."""

import dataclasses
import json
import os
import shutil

import pytest

from analysis import load, measurements
from trainables.evaluation import scoring
from trainables.training import trial

VALUES = {"task": "qg", "method": "lora", "max_steps": 6, "eval_every": 3, "eval_examples": 4,
          "full_eval_examples": 8, "batch_size": 4, "learning_rate": 1e-2}  # fmt: skip


def _trial_whose_best_checkpoint_came_first(tiny_model, trial_dir) -> None:
    """A trial as Tune leaves it when its first checkpoint scored best: only that one is kept."""
    results = []

    def report(metrics: dict, checkpoint) -> None:
        name = f"checkpoint_{len(results):06d}"
        shutil.copytree(checkpoint, trial_dir / name)
        results.append(
            {key: metrics[key] for key in ("method", "step", "quality")} | {"checkpoint_dir_name": name}
        )

    trial.execute(VALUES | {"model": tiny_model}, report, record_dir=trial_dir)
    shutil.rmtree(trial_dir / "checkpoint_000001")
    lines = (json.dumps(result | {"trial_id": "t1"}) for result in results)
    (trial_dir / "result.json").write_text("\n".join(lines) + "\n")


def test_the_report_measures_a_kept_checkpoint_that_is_not_the_last(tiny_model, tmp_path):
    trial_dir = tmp_path / "t1-lora"
    _trial_whose_best_checkpoint_came_first(tiny_model, trial_dir)
    before = load.load(tmp_path).row(0, named=True)
    assert before["best_step"] == 3 and before["steps"] == 6
    assert before[trial.FULL_VALIDATION_QUALITY] is not None  # the trial measured its last model...
    assert before["best_quality"] is None and before["latency_s"] is None  # ...not the one it kept

    assert measurements.measure_kept_checkpoints(load.load(tmp_path)) == 1
    after = load.load(tmp_path).row(0, named=True)
    kept = trial.score_checkpoint(
        VALUES | {"model": tiny_model}, trial_dir / "checkpoint_000000", "validation"
    )
    assert after["best_quality"] == pytest.approx(kept.metrics["quality"])
    assert after["full_validation_examples"] == VALUES["full_eval_examples"] and after["latency_s"] > 0
    assert (
        measurements.measure_kept_checkpoints(load.load(tmp_path)) == 0
    )  # kept beside the trial, not redone


def test_a_trial_that_just_ended_has_its_kept_checkpoint_measured_from_tunes_staged_results(
    tiny_model, tmp_path
):
    """What sweeps.early_measurements does when Tune says a trial ended, before the verdict."""
    sweep_dir = tmp_path / "sweep"
    trial_dir = sweep_dir / "t1-lora"
    _trial_whose_best_checkpoint_came_first(tiny_model, trial_dir)
    # Tune's logger writes result.json in a staging directory first; the trial directory gets it later.
    staged = tmp_path / "staging" / "result.json"
    staged.parent.mkdir()
    (trial_dir / "result.json").rename(staged)

    measurement = measurements.ended_trial_measurement(trial_dir, staged)
    assert measurement.checkpoint == "checkpoint_000000"
    measurement.keep(measurement.compute())
    assert measurements.ended_trial_measurement(trial_dir, staged) is None  # kept: not measured again

    staged.rename(trial_dir / "result.json")
    assert measurements.measure_kept_checkpoints(load.load(sweep_dir)) == 0  # the verdict finds it kept
    assert load.load(sweep_dir).row(0, named=True)["best_quality"] is not None


def test_a_trial_whose_last_evaluation_measured_its_kept_checkpoint_needs_nothing_more(tiny_model, tmp_path):
    trial.execute(VALUES | {"model": tiny_model}, lambda metrics, checkpoint: None, record_dir=tmp_path)
    last = json.loads((tmp_path / trial.RECORD_FILE).read_text())["metrics"]
    (tmp_path / "checkpoint_000001" / trial.ADAPTER_DIR).mkdir(parents=True)  # its last, kept
    result = {"trial_id": "t1", "method": "lora", "step": last["step"], "quality": last["quality"]}
    (tmp_path / "result.json").write_text(
        json.dumps(result | {"checkpoint_dir_name": "checkpoint_000001"}) + "\n"
    )
    assert measurements.ended_trial_measurement(tmp_path, tmp_path / "result.json") is None


def test_without_ray_the_jobs_run_in_this_process(tmp_path):
    item = scoring.KeptJob(tmp_path / "scores.json", "c", lambda: {"pid": os.getpid()})
    assert scoring.ScoringPool({"cpu": 1, "gpu": 0}, concurrency=2).run([item], "jobs") == [
        {"checkpoint": "c", "pid": os.getpid()}
    ]
    assert item.saved() == {"checkpoint": "c", "pid": os.getpid()}


@dataclasses.dataclass(frozen=True)
class _RecordingWorkers(scoring.ScoringPool):
    """Runs nothing: records the order of the jobs it is given, and answers each with its row."""

    order: list = dataclasses.field(default_factory=list)

    def run(self, items, what: str) -> list[dict]:
        self.order.extend(item.compute.args[0]["latency_s"] for item in items)
        return [{"row": item.compute.args[0]["trial_dir"]} for item in items]


def test_the_test_split_is_scored_slowest_candidate_first_and_each_score_reaches_its_own_row(tmp_path):
    latencies = {"a": 0.2, "b": 0.5, "c": None, "d": 0.3}
    rows = {}
    for name, latency in latencies.items():
        (tmp_path / name).mkdir()
        rows[name] = {"trial_dir": str(tmp_path / name), "method": "base", "best_checkpoint": None,
                      "latency_s": latency}  # fmt: skip
    workers = _RecordingWorkers()
    scored = scoring.scores_on_test(rows, workers)
    assert workers.order == [0.5, 0.3, 0.2, None]  # unmeasured latency: last
    assert list(scored) == list(rows)  # in the order asked for
    assert all(scored[name]["row"] == rows[name]["trial_dir"] for name in rows)


def test_a_kept_result_that_does_not_parse_counts_as_missing_and_is_computed_again(tmp_path):
    path = tmp_path / load.MEASURED_FILE
    computed = []
    cached = scoring.KeptJob(path, "checkpoint_000002", lambda: computed.append(1) or {"metrics": {"x": 1}})
    path.write_text('{"checkpoint": "checkpoint_000002", "metr')  # cut short by a crash
    assert cached.saved() is None
    (result,) = scoring.kept_or_computed([cached], scoring.IN_PROCESS, "kept checkpoints")
    assert computed == [1] and result["metrics"] == {"x": 1}
    assert json.loads(path.read_text()) == {"checkpoint": "checkpoint_000002", "metrics": {"x": 1}}
    assert cached.saved() == result  # kept whole this time, and reused
