"""The trainable under a real Ray Tune: reports, checkpoints, records, and failures as records."""

import json
from pathlib import Path

import pytest
from ray import tune

from trainables import measure
from trainables.training import trial

pytestmark = pytest.mark.slow


def test_tune_runs_trials_and_a_failure_becomes_a_record(local_ray, tiny_model, tmp_path):
    good = {"method": "lora"}
    impossible = {"method": "adalora", "adalora.tinit": 3, "adalora.tfinal": 3}  # a 4-step run cannot hold it
    space = {
        "task": "qg", "model": tiny_model, "max_steps": 4, "eval_every": 2, "eval_examples": 4, "batch_size": 4,
        "case": tune.grid_search([good, impossible]),
    }  # fmt: skip

    def trainable(config):
        trial.tune_trainable({key: value for key, value in config.items() if key != "case"} | config["case"])

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=space,
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="direct"),
    )
    grid = tuner.fit()
    assert grid.num_errors == 0, "a deterministic failure must not be an errored (retried) trial"
    by_method = {result.metrics["method"]: result for result in grid}
    assert by_method["lora"].metrics["status"] == "completed" and by_method["lora"].checkpoint is not None
    # Charged for what Tune gave it: one CPU core.
    assert by_method["lora"].metrics["price_per_hour"] == pytest.approx(measure.CPU_CORE_HOURLY_USD)
    failed = by_method["adalora"].metrics
    assert failed["status"] == "failed" and "adalora.tinit + adalora.tfinal" in failed["error"]
    records = [json.loads(p.read_text()) for p in Path(tmp_path, "direct").glob("*/trial_record.json")]
    assert sorted(r["status"] for r in records) == ["completed", "failed"]
    assert all(r["trial_id"] and r["node_id"] for r in records)
