"""An experiment directory -> polars frames with explicit schemas.

trials: one row per trial, from each trial's self-describing record (works on a running sweep and
on failed trials). curves: one row per evaluation, from Ray Tune's result.json files. The best
evaluation of each trial whose checkpoint is still on disk gives best_quality and best_checkpoint.
"""

import io
import json
import re
from pathlib import Path

import polars as pl

from trainables.trial import ADAPTER_DIR, RECORD_FILE

HYPERPARAMETERS = ["shots", "learning_rate", "dropout", "rank", "alpha", "target_rank", "num_virtual_tokens"]
METRICS = {
    "quality": "quality",
    "cost_usd": "cost_usd",
    "train_time_s": "train_time_s",
    "wall_time_s": "wall_time_s",
    "eval_time_s": "eval_time_s",
    "latency_s": "latency_s",
    "tokens_per_s": "gen_tokens_per_s",
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
    "trial_dir": pl.String,
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


def load(experiment_dir: Path, sweep_finished: bool = True) -> pl.DataFrame:
    """trials + best_quality and best_checkpoint (the best evaluation whose checkpoint is kept)."""
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
            best_quality=pl.col("quality"),
            best_step=pl.col("step"),
            best_checkpoint=pl.concat_str(pl.col("trial_dir"), pl.lit("/"), pl.col("checkpoint_dir_name")),
        )
    )
    return frame.join(best, on="trial_dir", how="left").with_columns(
        best_quality=pl.coalesce("best_quality", "quality")  # baselines keep no checkpoint
    )
