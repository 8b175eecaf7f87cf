"""An experiment directory -> polars frames with explicit schemas.

trials: one row per trial, from each trial's self-describing record (works on a running sweep and
on failed trials). curves: one row per evaluation, from Ray Tune's result.json files. The best
evaluation of each trial whose checkpoint is still on disk gives best_checkpoint; that checkpoint's
quality on the whole validation split is best_quality, the figure that ranks.
"""

import io
import json
import re
from pathlib import Path

import polars as pl

from sweeps.spaces import hyperparameter_names
from trainables.config import BASELINE
from trainables.trial import ADAPTER_DIR, FULL_VALIDATION_QUALITY, RECORD_FILE

# Each method's searched hyperparameters under their own names (lora.learning_rate), as trials carry them.
HYPERPARAMETERS = ["shots", *hyperparameter_names()]
# What analysis.rescore measured of a kept checkpoint the trial itself did not measure.
MEASURED_FILE = "kept_checkpoint.json"
# Where a sweep re-trains its finalists with more seeds (--finalist-seeds).
FINALISTS_DIR = "finalists"
METRICS = {
    "quality": "quality",
    FULL_VALIDATION_QUALITY: FULL_VALIDATION_QUALITY,
    "full_validation_examples": "full_validation_examples",
    "cost_usd": "cost_usd",
    "train_time_s": "train_time_s",
    "wall_time_s": "wall_time_s",
    "eval_time_s": "eval_time_s",
    "latency_s": "latency_s",
    "latency_per_token_s": "latency_per_token_s",
    "tokens_per_s": "gen_tokens_per_s",
    "truncated_rate": "truncated_rate",
    "max_new_tokens": "max_new_tokens",
    "train_tokens_per_s": "train_tokens_per_s",
    "trainable_params": "trainable_params",
    "adapter_bytes": "adapter_bytes",
    "peak_memory_mb": "peak_memory_mb",
    "val_loss": "val_loss",
    "perplexity": "perplexity",
    "train_loss": "train_loss",
    "steps": "step",
}
TRIALS_SCHEMA = {
    "trial_id": pl.String,
    "method": pl.String,
    "status": pl.String,
    **dict.fromkeys(METRICS, pl.Float64),
    "error": pl.String,
    **dict.fromkeys(HYPERPARAMETERS, pl.Float64),
    "task": pl.String,
    "model": pl.String,
    "seed": pl.Int64,
    # A finalist's re-runs share it with the finalist: the same trial but for its seed.
    "config_without_seed": pl.String,
    "finalist_rerun": pl.Boolean,
    "trial_dir": pl.String,
}
# Taken once per trial, on its kept checkpoint: column in the ranked frame <- column in trials.
FINAL_MEASUREMENTS = {
    "best_quality": FULL_VALIDATION_QUALITY,
    "full_validation_examples": "full_validation_examples",
    "latency_s": "latency_s",
    "latency_per_token_s": "latency_per_token_s",
    "tokens_per_s": "tokens_per_s",
}
CURVES_SCHEMA = {
    "trial_id": pl.String,
    "method": pl.String,
    "step": pl.Int64,
    "quality": pl.Float64,
    "train_loss": pl.Float64,
    "val_loss": pl.Float64,
    "checkpoint_dir_name": pl.String,
}


NON_FINITE = re.compile(rb"(?<=[:\[,])\s*(?:-?Infinity|NaN)(?=\s*[,}\]])")


class NotAnExperiment(ValueError):
    """The directory holds no trials that can be reported on."""


def _trial_row(path: Path, sweep_finished: bool) -> dict:
    record = json.loads(path.read_text())
    metrics, config = record["metrics"], record["config"]
    status = record["status"]
    if status == "running" and sweep_finished:
        status = "stopped_early"  # ASHA ended it between two evaluations
    return {
        "trial_id": record.get("trial_id") or path.parent.name,
        "method": config.get("method"),
        "status": status,
        **{column: metrics.get(key) for column, key in METRICS.items()},
        "error": record.get("error"),
        **{name: config.get(name) for name in HYPERPARAMETERS},
        "task": config.get("task"),
        "model": config.get("model"),
        "seed": config.get("seed"),
        "config_without_seed": json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True),
        "finalist_rerun": path.parent.parent.name == FINALISTS_DIR,
        "trial_dir": str(path.parent),
    }


def trials(experiment_dir: Path, sweep_finished: bool = True) -> pl.DataFrame:
    """Every trial under the directory (search trials and baselines) in a fixed schema."""
    rows = [_trial_row(path, sweep_finished) for path in sorted(experiment_dir.glob(f"**/{RECORD_FILE}"))]
    return pl.DataFrame(rows, schema=TRIALS_SCHEMA, strict=False)


def _strict_json(path: Path) -> io.BytesIO:
    """Ray writes NaN and Infinity (a failed trial's quality is NaN), which strict JSON rejects."""
    return io.BytesIO(NON_FINITE.sub(b" null", path.read_bytes()))


def curves(experiment_dir: Path) -> pl.DataFrame:
    """Every evaluation of every trial, with the trial directory it came from."""
    files = sorted(path for path in experiment_dir.glob("**/result.json") if path.stat().st_size)
    frames = [
        pl.read_ndjson(_strict_json(path), schema=CURVES_SCHEMA).with_columns(
            trial_dir=pl.lit(str(path.parent))
        )
        for path in files
    ]
    return pl.concat(frames) if frames else pl.DataFrame(schema=CURVES_SCHEMA | {"trial_dir": pl.String})


def _kept_checkpoints(experiment_dir: Path) -> pl.DataFrame:
    kept = [
        {"trial_dir": str(adapter.parent.parent), "checkpoint_dir_name": adapter.parent.name}
        for adapter in experiment_dir.glob(f"**/checkpoint_*/{ADAPTER_DIR}")
    ]
    return pl.DataFrame(kept, schema={"trial_dir": pl.String, "checkpoint_dir_name": pl.String})


def _measured_checkpoints(experiment_dir: Path) -> pl.DataFrame:
    """What analysis.rescore measured, by trial directory and checkpoint."""
    rows = []
    for path in experiment_dir.glob(f"**/{MEASURED_FILE}"):
        measured = json.loads(path.read_text())
        metrics = {
            column: measured["metrics"].get(METRICS[raw]) for column, raw in FINAL_MEASUREMENTS.items()
        }
        rows.append({"trial_dir": str(path.parent), "checkpoint_dir_name": measured["checkpoint"]} | metrics)
    schema = {"trial_dir": pl.String, "checkpoint_dir_name": pl.String} | dict.fromkeys(
        FINAL_MEASUREMENTS, pl.Float64
    )
    return pl.DataFrame(rows, schema=schema).rename(
        {column: f"measured_{column}" for column in FINAL_MEASUREMENTS}
    )


def load(experiment_dir: Path, sweep_finished: bool = True) -> pl.DataFrame:
    """trials + best_checkpoint (the best evaluation whose checkpoint is kept), subset_quality (its
    figure on the eval_examples rows) and FINAL_MEASUREMENTS of that checkpoint: measured by the
    trial when it was its last evaluation (a baseline's only one), else by analysis.rescore; null
    until then, and a trial without them is not a candidate.
    """
    if not experiment_dir.is_dir():
        raise NotAnExperiment(f"{experiment_dir}: no such directory")
    frame = trials(experiment_dir, sweep_finished)
    if frame.is_empty():
        raise NotAnExperiment(f"{experiment_dir}: no trials found (is it a sweep's experiment directory?)")
    best = (
        curves(experiment_dir)
        .join(_kept_checkpoints(experiment_dir), on=["trial_dir", "checkpoint_dir_name"], how="inner")
        .sort("quality", descending=True, nulls_last=True)
        .group_by("trial_dir", maintain_order=True)
        .first()
        .select(
            "trial_dir",
            "checkpoint_dir_name",
            subset_quality=pl.col("quality"),
            best_step=pl.col("step"),
            best_checkpoint=pl.concat_str(pl.col("trial_dir"), pl.lit("/"), pl.col("checkpoint_dir_name")),
        )
    )
    measured_by_trial = (pl.col("method") == BASELINE) | (pl.col("best_step") == pl.col("steps"))
    return (
        frame.join(best, on="trial_dir", how="left")
        .join(_measured_checkpoints(experiment_dir), on=["trial_dir", "checkpoint_dir_name"], how="left")
        .with_columns(
            pl.coalesce(f"measured_{column}", pl.when(measured_by_trial).then(pl.col(raw))).alias(column)
            for column, raw in FINAL_MEASUREMENTS.items()
        )
        .drop("checkpoint_dir_name", *(f"measured_{column}" for column in FINAL_MEASUREMENTS))
    )
