import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from analysis import load, rank, report
from trainables.training import trial

CONFIG = {"task": "qg", "method": "lora", "model": "embedded", "seed": 0}


def _trial(directory: Path, status: str, metrics: dict, evaluations: list[dict] = ()) -> Path:
    """A trial directory as a sweep leaves it: its record, and Tune's result.json."""
    directory.mkdir(parents=True)
    record = {
        "trial_id": directory.name,
        "status": status,
        "error": None,
        "config": CONFIG,
        "metrics": metrics,
    }
    (directory / trial.RECORD_FILE).write_text(json.dumps(record))
    (directory / "result.json").write_text("".join(json.dumps(row) + "\n" for row in evaluations))
    return directory


def test_every_objective_is_taken_at_the_served_checkpoint_and_the_whole_cost_beside_it(tmp_path):
    evaluations = [
        {"step": 2, "quality": 0.8, "cost_usd": 0.2, "adapter_bytes": 100, "checkpoint_dir_name": "checkpoint_000000"},
        {"step": 4, "quality": 0.5, "cost_usd": 0.4, "adapter_bytes": 200, "checkpoint_dir_name": "checkpoint_000001"},
    ]  # fmt: skip
    last = evaluations[-1] | {
        trial.FULL_VALIDATION_QUALITY: 0.45,
        "latency_s": 2.0,
        "full_validation_examples": 9,
    }
    trial_dir = _trial(tmp_path / "t1", "completed", last, evaluations)
    (trial_dir / "checkpoint_000000" / trial.ADAPTER_DIR).mkdir(parents=True)  # the kept (best) one
    measured = {trial.FULL_VALIDATION_QUALITY: 0.75, "latency_s": 1.0, "full_validation_examples": 9}
    (trial_dir / load.MEASURED_FILE).write_text(
        json.dumps({"checkpoint": "checkpoint_000000", "metrics": measured})
    )
    row = load.load(tmp_path).row(0, named=True)
    assert row["best_checkpoint"].endswith("checkpoint_000000") and row["best_step"] == 2
    served = {"best_quality": 0.75, "latency_s": 1.0, "cost_usd": 0.2, "adapter_bytes": 100}
    assert {column: row[column] for column in served} == served
    assert row["total_cost_usd"] == 0.4


def test_a_trial_without_a_final_word_is_lost_and_never_ranked(tmp_path):
    # Its record still says running, and neither Tune's state nor a driver says more (killed with
    # its sweep). Every objective of its checkpoint is measured: only its status keeps it out.
    evaluations = [{"step": 2, "quality": 0.9, "cost_usd": 0.1, "adapter_bytes": 10, "checkpoint_dir_name": "checkpoint_000000"}]  # fmt: skip
    metrics = evaluations[0] | {trial.FULL_VALIDATION_QUALITY: 0.9, "latency_s": 1.0}
    trial_dir = _trial(tmp_path / "t1", "running", metrics, evaluations)
    (trial_dir / "checkpoint_000000" / trial.ADAPTER_DIR).mkdir(parents=True)
    frame = load.load(tmp_path)
    assert frame["status"].to_list() == ["lost"]
    assert not frame.select(rank.is_candidate()).item()


def test_a_directory_holding_several_sweeps_is_refused_naming_them(tmp_path, capsys):
    for sweep in ("qg/one", "qg/two", "ner/three"):
        _trial(tmp_path / sweep / "t1", "failed", {})
    assert report.main([str(tmp_path), "--no-test"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "3 sweep(s)" in error
    assert all(str(tmp_path / sweep) in error for sweep in ("qg/one", "qg/two", "ner/three"))
    assert not list(tmp_path.rglob("report.html")) and not list(tmp_path.rglob("leaderboard.csv"))
    # One sweep with its baselines and finalists beside it is one sweep.
    _trial(tmp_path / "qg" / "one" / load.BASELINES_DIR / "b1", "completed", {})
    _trial(tmp_path / "qg" / "one" / load.FINALISTS_DIR / "f1", "failed", {})
    assert load.trials(tmp_path / "qg" / "one").height == 3


def test_a_second_driver_on_a_live_sweep_is_refused(tmp_path):
    assert not load.is_live(tmp_path)
    with load.running_sweep(tmp_path):
        assert load.is_live(tmp_path)
        with pytest.raises(ValueError, match="another driver"), load.running_sweep(tmp_path):
            pass
    assert not load.is_live(tmp_path)


def _recorded_then(config: dict) -> None:
    """A Tune trainable that keeps a trial's record as trial.tune_trainable does, then ends as config says."""
    from ray import tune

    context = tune.get_context()
    trial_dir = Path(context.get_storage().trial_fs_path)
    recorder = trial.Recorder(trial_dir, config, {"trial_id": context.get_trial_id()})
    recorder.update("running", {"step": 1})
    if config["end"] == "dies":
        os._exit(1)  # as the kernel's OOM killer ends it: no exception, no final word of its own
    if config["end"] == "completes":
        recorder.update("completed", {"step": 2})
    while True:  # the one that is stopped reports until Tune stops it; the others return
        tune.report({"quality": 0.5, "stop_me": config["end"] == "is stopped"})
        if config["end"] != "is stopped":
            return
        time.sleep(0.2)


@pytest.mark.slow
def test_status_is_the_trials_final_word_else_tunes(tmp_path):
    import ray
    from ray import tune

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        tune.Tuner(
            tune.with_resources(_recorded_then, {"cpu": 1}),
            param_space={"end": tune.grid_search(["completes", "dies", "is stopped"])},
            run_config=tune.RunConfig(
                storage_path=str(tmp_path), name="ends", stop={"stop_me": True}, verbose=0
            ),
        ).fit()
    finally:
        ray.shutdown()
    frame = load.trials(tmp_path / "ends")
    ends = dict(
        frame.select(pl.col("config_without_seed").str.json_path_match("$.end"), "status").iter_rows()
    )
    assert ends == {"completes": "completed", "dies": "failed", "is stopped": "stopped_early"}
    died = frame.filter(pl.col("status") == "failed")["error"].item()
    assert "died" in died.lower(), died  # Tune's reason, from its error file


@pytest.mark.slow
def test_in_flight_trials_of_a_live_sweep_are_running_and_lost_once_its_driver_is_killed(
    tiny_model, tmp_path
):
    command = [
        sys.executable, "-m", "sweeps.run", "qg", "--smoke", "--model", tiny_model, "--storage", str(tmp_path),
        "--name", "live", "--concurrency", "1", "--max-steps", "400",
    ]  # fmt: skip
    driver = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    sweep_dir = tmp_path / "qg" / "live"
    try:
        deadline = time.time() + 600
        while time.time() < deadline and driver.poll() is None:
            try:
                frame = load.load(sweep_dir)
            except load.NotAnExperiment:  # no record yet
                frame = pl.DataFrame(schema=load.TRIALS_SCHEMA | {"best_checkpoint": pl.String})
            searching = frame.filter(rank.is_trained() & pl.col("best_checkpoint").is_not_null())
            if searching.height:  # a search trial in flight, with a kept checkpoint to rank it on
                break
            time.sleep(2)
        assert searching.height, "no search trial reported a checkpoint before the deadline"
        assert searching["status"].to_list() == ["running"]
        assert not searching.select(rank.is_candidate()).item()
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        driver.wait()
    after = load.load(sweep_dir).filter(pl.col("trial_id") == searching["trial_id"].item())
    assert after["status"].to_list() == ["lost"]
    assert not after.select(rank.is_candidate()).item()
