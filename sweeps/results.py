"""The sweep's table: one row per trial, built from every trial's self-describing record."""

import json
from pathlib import Path

import polars as pl

from trainables.trial import RECORD_FILE

HYPERPARAMETERS = ["shots", "learning_rate", "dropout", "rank", "alpha", "target_rank", "num_virtual_tokens"]
METRICS = {
    "quality": "quality",
    "cost_usd": "cost_usd",
    "train_time_s": "train_time_s",
    "wall_time_s": "wall_time_s",
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
SCHEMA = {
    "trial_id": pl.String,
    "method": pl.String,
    "status": pl.String,
    **{column: pl.Float64 for column in METRICS},
    "error": pl.String,
    **{name: pl.Float64 for name in HYPERPARAMETERS},
    "trial_dir": pl.String,
}
SUMMARY_COLUMNS = ["trial_id", "method", "status", "quality", "cost_usd", "latency_s", "train_time_s"]


def _row(path: Path, sweep_finished: bool) -> dict:
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
        "trial_dir": str(path.parent),
    }


def collect(sweep_dir: Path, sweep_finished: bool = True) -> pl.DataFrame:
    """Every trial under sweep_dir (search trials and baselines), in a fixed schema."""
    rows = [_row(path, sweep_finished) for path in sorted(sweep_dir.glob(f"**/{RECORD_FILE}"))]
    return pl.DataFrame(rows, schema=SCHEMA, strict=False)


def write_tables(trials: pl.DataFrame, sweep_dir: Path) -> None:
    trials.write_csv(sweep_dir / "trials.csv")
    trials.write_parquet(sweep_dir / "trials.parquet")


def summary(trials: pl.DataFrame) -> str:
    table = trials.select(SUMMARY_COLUMNS).sort("quality", descending=True, nulls_last=True)
    with pl.Config(
        tbl_rows=-1, tbl_cols=-1, tbl_width_chars=140, float_precision=4, tbl_hide_dataframe_shape=True
    ):
        return str(table)
