"""Scores the trials did not take themselves, computed in the driver and kept beside each trial.

- The final measurements (quality on the whole validation split, latency) of a kept checkpoint
  whose trial did not measure it: ASHA stopped the trial, or its best evaluation came before its
  last. Without them a trial is not a candidate, since that figure is the one that ranks.
- Per-example test scores of the candidates a verdict compares, and of the untouched base model.

Each result is written into the trial's directory under the name of the checkpoint it belongs to,
so rebuilding a report reuses it and a later checkpoint (a resumed sweep) replaces it.
"""

import functools
import json
from collections.abc import Callable
from pathlib import Path

import polars as pl

from analysis import load, rank
from trainables import trial

TEST_SCORES_FILE = "test_scores.json"
BASELINE_CHECKPOINT = "untouched"  # a baseline keeps no checkpoint: the base model itself is scored


def _cached(path: Path, checkpoint: str, compute: Callable[[], dict]) -> dict:
    if path.is_file() and (saved := json.loads(path.read_text()))["checkpoint"] == checkpoint:
        return saved
    result = {"checkpoint": checkpoint} | compute()
    path.write_text(json.dumps(result, default=str))
    return result


def _config(trial_dir: str) -> dict:
    return json.loads((Path(trial_dir) / trial.RECORD_FILE).read_text())["config"]


def unmeasured() -> pl.Expr:
    """Trained trials that ended, whose kept checkpoint has no final measurements yet."""
    ended = pl.col("status").is_in(["completed", "stopped_early"])
    trained = (pl.col("method") != rank.BASELINE) & pl.col("best_checkpoint").is_not_null()
    return ended & trained & pl.col("best_quality").is_null()


def measure_kept_checkpoints(frame: pl.DataFrame) -> int:
    """Measures every kept checkpoint that unmeasured() selects; returns how many it measured."""
    todo = frame.filter(unmeasured()).select("trial_dir", "best_checkpoint")
    for trial_dir, best_checkpoint in todo.iter_rows():  # a handful of trials, each loading a model
        checkpoint = Path(best_checkpoint)
        measure = functools.partial(_final_measurements, trial_dir, checkpoint)
        _cached(Path(trial_dir) / load.MEASURED_FILE, checkpoint.name, measure)
    return todo.height


def _final_measurements(trial_dir: str, checkpoint: Path) -> dict:
    return {"metrics": trial.measure_checkpoint(_config(trial_dir), checkpoint)}


def _evaluate_on_test(row: dict) -> trial.Evaluation:
    config = _config(row["trial_dir"])
    if row["method"] == rank.BASELINE:
        return trial.score_base_model(config, split="test")
    return trial.score_checkpoint(config, Path(row["best_checkpoint"]), split="test")


def scores_on_test(row: dict) -> dict:
    """A trial's test metrics and per-example primary metric (a leaderboard row): a trained trial's
    kept checkpoint, or the base model as a baseline trial prompted it (its shots)."""

    def compute() -> dict:
        evaluation = _evaluate_on_test(row)
        metrics = {key: value for key, value in evaluation.metrics.items() if key != "sample_output"}
        return {"metrics": metrics, "per_example": evaluation.per_example}

    baseline = row["method"] == rank.BASELINE
    checkpoint = BASELINE_CHECKPOINT if baseline else Path(row["best_checkpoint"]).name
    return _cached(Path(row["trial_dir"]) / TEST_SCORES_FILE, checkpoint, compute)
